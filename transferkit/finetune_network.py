"""The networks of a fine-tuned classifier: which layers are frozen, the head, the views.

Owns what :class:`transferkit.FineTunedClassifier` trains and predicts with, built from
one backbone (:func:`transferkit.network.build_trunk`) and deterministic given its seeds:
the frozen prefix (preprocessing and every layer up to ``freeze_until``), the trainable
rest up to the cut, pooling, the new head, the augmentation in front, and the networks
composed of them (:class:`FineTuneNetwork`). Also where ``freeze_until`` is resolved
against the cut (:func:`resolve_freeze`), and how a fitted classifier's network splits at
its last feature map for Grad-CAM (:func:`explanation_parts`).

Does not own: training those networks (:mod:`transferkit.training`), running them on
batches (:mod:`transferkit.network`), the estimator's parameters or its fitted attributes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from .keras_setup import seeded_keras_init
from .network import NetworkLayout, build_trunk, pool

__all__ = ["FineTuneNetwork", "block_depths", "build_finetune_network", "explanation_parts",
           "head_block_layers", "head_keep", "head_layers_read", "reframed",
           "resolve_freeze", "view_and_rest"]


@dataclass
class FineTuneNetwork:
    """Every network of one fine-tuned classifier; they share their layers and weights.

    Attributes
    ----------
    model : keras.Model
        Images at the source size -> class probabilities: central crop, frozen prefix,
        trainable part, pooling, head, softmax. What ``predict`` runs and pickles carry.
    train_net : keras.Model
        Images at the source size -> logits through the augmentation (what training runs
        when the frozen activations are not cached).
    central_net : keras.Model
        Images at the source size -> logits of their central crop (what that training
        runs when the augmented views do not help).
    frozen_net : keras.Model
        Images at the source size -> frozen activations of their central crop.
    augment_net : keras.Model
        Images at the source size -> one augmented view at the input size.
    prefix : keras.Model
        Input-size pixels -> frozen activations (preprocessing included); not trainable.
    trainable_net : keras.Model
        Frozen activations -> logits (trainable part, pooling, head).
    pooled_net : keras.Model
        Frozen activations -> pooled features.
    head : keras.Model
        Pooled features -> logits.
    layout : NetworkLayout
        ``n_features`` is the number of classes; ``source_size`` the size images are
        loaded at.
    freeze_layer : str or None
        The last frozen layer, None when nothing is frozen.
    framing : float
        The part of each side of the loaded image that the central view keeps.
    augmentations : tuple of str
        The augmentations of ``augment_net`` and ``train_net``.
    augment_seed : int
        Their first seed.
    learning_rate_scales : dict
        For each trainable weight of ``trainable_net`` below the last block, by its
        ``path``, the factor its learning rate is multiplied by (``layer_decay`` to the
        power of the number of blocks between it and the cut); weights absent from it,
        the last block's and the head's, learn at the full rate.
    head_layers : tuple of str
        The layers whose pooled outputs the head can read, concatenated in this order:
        block ends below the cut (shallowest first), then the cut. Where some of them lie
        in the frozen part, the prefix gives one flat row per image: its activations,
        flattened, then those blocks' pooled outputs; ``trainable_net`` takes that row.
    head_widths : tuple of int
        The number of columns of each of ``head_layers``.
    batchnorm_layers : tuple of keras.layers.BatchNormalization
        The trainable part's, in the order it runs them (none where it has none).
    batchnorm_inputs : keras.Model or None
        Frozen activations -> the input of each of ``batchnorm_layers``: what
        :mod:`transferkit.batchnorm_statistics` re-estimates their statistics from.
    """

    model: Any
    train_net: Any
    central_net: Any
    frozen_net: Any
    augment_net: Any
    prefix: Any
    trainable_net: Any
    pooled_net: Any
    head: Any
    layout: NetworkLayout
    freeze_layer: str | None
    framing: float
    augmentations: tuple[str, ...]
    augment_seed: int
    learning_rate_scales: dict = field(default_factory=dict)
    head_layers: tuple[str, ...] = ()
    head_widths: tuple[int, ...] = ()
    batchnorm_layers: tuple = ()
    batchnorm_inputs: Any = None


def block_depths(full: Any, cut_layer: Any, layers: list, *, module: str, name: str,
                 backbone_kwargs: dict | None) -> dict[str, int]:
    """For each of ``layers`` (of ``full``, before the cut), how many block ends of the
    backbone (:func:`transferkit.list_cut_points`) lie between it and the cut: 0 for the
    last block, 1 for the one before, ...; by layer name."""
    from .cut_points import list_cut_points, resolve_cut
    from .hub_backbones import HUB_MODULE, hub_block_ends

    order = {id(op): i for i, op in enumerate(full.operations)}
    cut_position = order[id(cut_layer)]
    # A keras-hub model carries its blocks (the usual layer-wise decay of a ViT recipe).
    blocks = (hub_block_ends(full) if module == HUB_MODULE
              else list_cut_points(name, backbone_kwargs))
    ends = sorted(order[id(resolve_cut(full, block, module))] for block in blocks)
    ends = [position for position in ends if position < cut_position]
    return {layer.name: sum(position >= order[id(layer)] for position in ends)
            for layer in layers if id(layer) in order}


def head_block_layers(full: Any, cut_layer: Any, head_blocks: int, *, module: str,
                      name: str, backbone_kwargs: dict | None) -> list:
    """The block ends below the cut whose pooled outputs the head reads besides the cut's.

    ``head_blocks - 1`` of them, every second block end counting down from the cut
    (blocks 11 and 9 of MobileNet's 13 for a cut at the last), shallowest first; fewer
    where the backbone has fewer blocks below the cut. A middle block describes texture
    and local pattern, which the last block of an ImageNet network has specialised away
    (docs/benchmarks.rst, "A head on several blocks").
    """
    from .cut_points import list_cut_points, resolve_cut
    from .hub_backbones import HUB_MODULE, hub_block_ends

    if head_blocks <= 1:
        return []
    order = {id(op): i for i, op in enumerate(full.operations)}
    blocks = (hub_block_ends(full) if module == HUB_MODULE
              else list_cut_points(name, backbone_kwargs))
    ends = sorted((resolve_cut(full, block, module) for block in blocks),
                  key=lambda op: order[id(op)])
    below = [op for op in ends if order[id(op)] < order[id(cut_layer)]]
    return below[-2::-2][:head_blocks - 1][::-1]


def resolve_freeze(full: Any, cut_layer: Any, freeze_until: Any, *, module: str, name: str,
                   backbone_kwargs: dict | None, cut: Any) -> Any:
    """The last frozen layer (None: nothing frozen), checked to come before the cut."""
    from .cut_points import list_cut_points, resolve_cut
    from .hub_backbones import HUB_MODULE, hub_block_ends

    order = {id(op): i for i, op in enumerate(full.operations)}
    cut_position = order[id(cut_layer)]
    if freeze_until is None:
        return None
    if isinstance(freeze_until, str) and freeze_until == "auto":
        # A keras-hub model carries its blocks; a name is looked up in keras.applications.
        blocks = (hub_block_ends(full) if module == HUB_MODULE
                  else list_cut_points(name, backbone_kwargs))
        ends = [resolve_cut(full, block, module) for block in blocks]
        before = [op for op in ends if order[id(op)] < cut_position]
        return before[-1] if before else None
    layer = resolve_cut(full, freeze_until, module)
    if order[id(layer)] > cut_position:
        raise ValueError(
            f"freeze_until={freeze_until!r} (layer {layer.name!r}) comes after "
            f"cut={cut!r} (layer {cut_layer.name!r}), so it is not part of the "
            "truncated network; choose a layer at or before the cut (see "
            "transferkit.list_cut_points())."
        )
    return layer


def build_finetune_network(
    backbone: str,
    *,
    weights: Any,
    input_size: Any,
    cut: Any,
    backbone_kwargs: dict | None,
    freeze_until: Any,
    train_batchnorm: bool,
    pooling: str | None,
    dropout: float,
    hidden_units: int | None,
    head_l2: float,
    crop_fraction: float | str,
    augmentations: tuple[str, ...],
    n_classes: int,
    seeds: dict[str, int],
    framing: float | None = None,
    hub_preset: dict | None = None,
    layer_decay: float = 1.0,
    head_blocks: int = 1,
) -> FineTuneNetwork:
    """Build every network of a fine-tuned classifier; deterministic given ``seeds``.

    Parameters are those of :class:`transferkit.FineTunedClassifier` (``augmentations``
    as :func:`transferkit.augmentation.augmentation_names` gives them); ``seeds`` has the
    keys ``"init"``, ``"dropout"`` and ``"augment"``. Images are loaded at the size whose
    central part is the input for the smallest framing ``crop_fraction`` allows
    (:func:`transferkit.augmentation.framings`); ``framing`` is the one the central view
    keeps (default: the first allowed; a fit that chooses between them calls
    :func:`reframed`); ``hub_preset`` is that of :func:`transferkit.network.build_trunk`.
    ``layer_decay``: each block below the last one trained learns at this factor of the
    rate of the block above it (``learning_rate_scales``). ``head_blocks``: how many block
    outputs the head reads, pooled and concatenated (:func:`head_block_layers`); the
    frozen ones leave the prefix flattened behind its activations (see
    :class:`FineTuneNetwork`).

    Returns
    -------
    FineTuneNetwork
    """
    import keras

    from .augmentation import framings, source_size

    layers = keras.layers
    trunk = build_trunk(backbone, weights=weights, input_size=input_size, cut=cut,
                        backbone_kwargs=backbone_kwargs, random_state=seeds["init"],
                        hub_preset=hub_preset)
    full, cut_layer, size = trunk.full, trunk.cut_layer, trunk.input_size
    freeze_layer = resolve_freeze(full, cut_layer, freeze_until, module=trunk.module,
                                  name=trunk.name, backbone_kwargs=backbone_kwargs, cut=cut)

    extra = (head_block_layers(full, cut_layer, head_blocks, module=trunk.module,
                               name=trunk.name, backbone_kwargs=backbone_kwargs)
             if pooling is not None else [])
    order = {id(op): i for i, op in enumerate(full.operations)}
    # Blocks the head reads that come before the frozen part ends are computed (and
    # cached) with it; the others by the trainable part.
    frozen_extra = [layer for layer in extra if freeze_layer is not None
                    and order[id(layer)] <= order[id(freeze_layer)]]
    tuned_extra = [layer for layer in extra if layer not in frozen_extra]
    tuned_outputs = [layer.output for layer in tuned_extra] + [cut_layer.output]
    tuned_outputs = tuned_outputs if len(tuned_outputs) > 1 else tuned_outputs[0]

    pixels = keras.Input((size[0], size[1], 3), dtype="float32", name="pixels")
    preprocessed = trunk.preprocess(pixels)
    frozen_shape = None  # of the frozen activations, when the prefix flattens them
    frozen_widths: list[int] = []  # of the frozen blocks' pooled outputs it gives after them
    if freeze_layer is None:
        prefix = keras.Model(pixels, preprocessed, name="frozen")
        suffix = keras.Model(full.inputs, tuned_outputs, name="trainable")
    elif frozen_extra:
        head_of_trunk = keras.Model(
            full.inputs, [freeze_layer.output, *(layer.output for layer in frozen_extra)])
        activation, *maps = head_of_trunk(preprocessed)
        frozen_shape = tuple(int(d) for d in activation.shape[1:])
        # One row per image: every phase (the cached views, the validation inputs, the
        # batches of a fine-tuning epoch) handles the frozen part's output as one array.
        pooled_maps = [pool(m, pooling, trunk.prefix_tokens, suffix=f"_head_block_{k}")
                       for k, m in enumerate(maps)]
        frozen_widths = [int(m.shape[-1]) for m in pooled_maps]
        flat = layers.Concatenate(name="frozen_outputs")(
            [layers.Flatten(name="frozen_activations")(activation), *pooled_maps])
        prefix = keras.Model(pixels, flat, name="frozen")
    else:
        head_of_trunk = keras.Model(full.inputs, freeze_layer.output)
        prefix = keras.Model(pixels, head_of_trunk(preprocessed), name="frozen")
    if freeze_layer is cut_layer:
        suffix = None  # everything is frozen: only the head is trained
    elif freeze_layer is not None:
        try:
            suffix = keras.Model(freeze_layer.output, tuned_outputs, name="trainable")
        except ValueError as exc:
            raise ValueError(
                f"freeze_until={freeze_until!r} (layer {freeze_layer.name!r}) does not "
                f"split {trunk.name} in two: layers after it also read earlier outputs (a "
                "residual connection). Use a block boundary from "
                f"transferkit.list_cut_points({trunk.name!r})."
            ) from exc
    prefix.trainable = False
    batchnorm_layers = tuple(layer for layer in (suffix.layers if suffix is not None else [])
                             if isinstance(layer, layers.BatchNormalization))
    if suffix is not None and not train_batchnorm:
        # Frozen statistics and no update; see the train_batchnorm docstring for why.
        for layer in suffix.layers:
            if isinstance(layer, layers.BatchNormalization):
                layer.trainable = False

    with seeded_keras_init(seeds["init"] + 1):
        activations = keras.Input(tuple(prefix.output.shape[1:]), name="frozen_output")
        x, frozen_features = activations, []
        if frozen_shape is not None:
            size_of = math.prod(frozen_shape)
            x = layers.Reshape(frozen_shape, name="frozen_activations")(x[:, :size_of])
            frozen_features = [activations[:, size_of:]]
        if suffix is not None:
            x = suffix(x, training=None if train_batchnorm else False)
        *tuned_maps, x = x if isinstance(x, (list, tuple)) else [x]
        x = pool(x, pooling, trunk.prefix_tokens)
        widths = [int(x.shape[-1])]
        if extra:
            # Shallowest first, the cut's own features last.
            tuned_features = [pool(m, pooling, trunk.prefix_tokens,
                                   suffix=f"_head_block_{len(frozen_extra) + k}")
                              for k, m in enumerate(tuned_maps)]
            widths = [*frozen_widths, *(int(f.shape[-1]) for f in tuned_features),
                      int(x.shape[-1])]
            x = layers.Concatenate(name="head_blocks")([*frozen_features, *tuned_features, x])
        pooled_net = keras.Model(activations, x, name="pooled")

        regularizer = keras.regularizers.L2(head_l2) if head_l2 else None
        features = keras.Input((int(x.shape[-1]),), name="features")
        h = features
        if extra:
            from .head_layers import Standardization

            h = Standardization(name="head_standardize")(h)
        h = layers.Dropout(dropout, seed=seeds["dropout"], name="head_dropout")(h)
        if hidden_units is not None:
            h = layers.Dense(hidden_units, activation="relu", name="head_hidden",
                             kernel_regularizer=regularizer)(h)
            h = layers.Dropout(dropout, seed=seeds["dropout"] + 1,
                               name="head_hidden_dropout")(h)
        # Training works on logits (a saturated softmax has no gradient left to follow).
        logits = layers.Dense(n_classes, name="head_logits", kernel_regularizer=regularizer)(h)
        head = keras.Model(features, logits, name="head")

    trainable_net = keras.Model(activations, head(pooled_net(activations)), name="tuned")
    scales = {}
    if suffix is not None and layer_decay != 1.0:
        depths = block_depths(full, cut_layer, suffix.layers, module=trunk.module,
                              name=trunk.name, backbone_kwargs=backbone_kwargs)
        for layer in suffix.layers:
            if depths.get(layer.name):
                for variable in layer.trainable_weights:
                    scales[variable.path] = float(layer_decay ** depths[layer.name])
    layout = NetworkLayout(trunk.name, cut_layer.name, size,
                           source_size(size, min(framings(crop_fraction))),
                           trunk.preprocessing, n_classes, hub_preset=trunk.hub_preset)
    framing = framings(crop_fraction)[0] if framing is None else framing
    return FineTuneNetwork(**_pixel_networks(prefix, trainable_net, layout, framing,
                                             augmentations, seeds["augment"]),
                           prefix=prefix, trainable_net=trainable_net, pooled_net=pooled_net,
                           head=head, layout=layout,
                           freeze_layer=None if freeze_layer is None else freeze_layer.name,
                           framing=framing, augmentations=augmentations,
                           augment_seed=seeds["augment"], learning_rate_scales=scales,
                           head_layers=(*(layer.name for layer in extra), cut_layer.name),
                           head_widths=tuple(widths), batchnorm_layers=batchnorm_layers,
                           batchnorm_inputs=_batchnorm_inputs(
                               prefix, full, freeze_layer, frozen_shape, batchnorm_layers))


def _batchnorm_inputs(prefix: Any, full: Any, freeze_layer: Any, frozen_shape: Any,
                      batchnorm_layers: tuple) -> Any:
    """Frozen activations (the prefix's output) -> the input of each layer of
    ``batchnorm_layers`` (the trainable part's BatchNormalization layers); None without
    any."""
    import keras

    if not batchnorm_layers:
        return None
    start = full.inputs if freeze_layer is None else freeze_layer.output
    # Each layer's first input is the one it has in the backbone, which the trainable
    # part was cut from: the same layers, so the same statistics, reached the same way.
    to_inputs = keras.Model(start, [layer.input for layer in batchnorm_layers])
    activations = keras.Input(tuple(prefix.output.shape[1:]), name="frozen_output")
    x = activations
    if frozen_shape is not None:  # the prefix flattened them, the frozen blocks' after
        x = keras.layers.Reshape(frozen_shape)(x[:, :math.prod(frozen_shape)])
    outputs = to_inputs(x)
    return keras.Model(activations, outputs if isinstance(outputs, (list, tuple))
                       else [outputs], name="batchnorm_inputs")


def _pixel_networks(prefix: Any, trainable_net: Any, layout: NetworkLayout, framing: float,
                    augmentations: tuple[str, ...], seed: int) -> dict[str, Any]:
    """The networks that take images at the source size, around ``prefix`` and
    ``trainable_net``: the central view keeps ``framing`` of each side."""
    import keras

    from .augmentation import CentralView, augmented

    size, source = layout.input_size, layout.source_size
    # Every network below takes images loaded at the source size: their central view is
    # what the backbone sees, unless training crops at random.
    loaded = keras.Input((source[0], source[1], 3), dtype="float32", name="loaded_pixels")
    central = CentralView(size[0], size[1], framing, name="central_crop")(loaded)
    pixel_logits = trainable_net(prefix(central, training=False))
    model = keras.Model(loaded, keras.layers.Softmax(name="probabilities")(pixel_logits),
                        name=f"{layout.backbone_name}_finetuned")
    # Loaded pixels -> augmented pixels at the input size (identity but for the framing
    # when there is no augmentation): also makes the augmented views of the head phase.
    views = augmented(loaded, augmentations, size, seed, central, framing)
    return {
        "model": model,
        "augment_net": keras.Model(loaded, views, name="augment"),
        "train_net": keras.Model(
            loaded, trainable_net(prefix(views, training=False)) if augmentations
            else pixel_logits, name="pixels_to_logits"),
        "frozen_net": keras.Model(loaded, prefix(central, training=False),
                                  name="frozen_central"),
        "central_net": keras.Model(loaded, pixel_logits, name="central_pixels_to_logits"),
    }


def head_keep(network: FineTuneNetwork) -> Any:
    """The columns of its features that ``network``'s head reads, by the ``keep`` weights
    of its standardisation; None for a head without one (it reads them all)."""
    names = {layer.name for layer in network.head.layers}
    if "head_standardize" not in names:
        return None
    return network.head.get_layer("head_standardize").get_weights()[2] > 0


def head_layers_read(network: FineTuneNetwork) -> list[str]:
    """The layers of ``network.head_layers`` whose columns its head reads
    (:func:`head_keep`)."""
    keep = head_keep(network)
    if keep is None:
        return list(network.head_layers)
    starts = [0]
    for width in network.head_widths:
        starts.append(starts[-1] + width)
    return [layer for k, layer in enumerate(network.head_layers)
            if keep[starts[k]:starts[k + 1]].all()]


def reframed(network: FineTuneNetwork, framing: float) -> FineTuneNetwork:
    """``network`` with its central view keeping ``framing`` of each side.

    The prefix, trainable part and head, and so their weights, are the same objects:
    training either network trains both. The image networks are new.
    """
    if framing == network.framing:
        return network
    return replace(network, framing=framing,
                   **_pixel_networks(network.prefix, network.trainable_net, network.layout,
                                     framing, network.augmentations, network.augment_seed))


def view_and_rest(model: Any) -> tuple[Any, Any]:
    """Split a fitted classifier's ``model_`` after its central view.

    Returns
    -------
    view : keras.Model
        Images at the source size -> their central view at the input size.
    rest : keras.Model
        That view -> class probabilities (frozen part, trainable part, head, softmax).
    """
    import keras

    central = model.get_layer("central_crop")
    prefix, tuned = model.get_layer("frozen"), model.get_layer("tuned")
    softmax = model.get_layer("probabilities")
    images = model.inputs[0]
    view = keras.Model(images, central(images), name="central_view")
    pixels = keras.Input(tuple(view.output.shape[1:]), name="view_pixels")
    rest = keras.Model(pixels, softmax(tuned(prefix(pixels, training=False), training=False)),
                       name=f"{model.name}_after_view")
    return view, rest


def explanation_parts(model: Any) -> tuple[Any, Any]:
    """Split a fitted classifier's ``model_`` at its last spatial feature map, for Grad-CAM.

    Parameters
    ----------
    model : keras.Model
        The ``model`` of a :class:`FineTuneNetwork` (``FineTunedClassifier.model_``).

    Returns
    -------
    to_map : keras.Model
        Images at the source size -> the cut layer's output for their central crop; for a
        head that reads several blocks (``head_layers``), ``[that map, the pooled
        features of the other blocks]``.
    to_logits : keras.Model
        What ``to_map`` gives -> class scores before the softmax (pooling and head).
    """
    import keras

    central = model.get_layer("central_crop")
    prefix = model.get_layer("frozen")
    tuned = model.get_layer("tuned")
    pooled, head = tuned.get_layer("pooled"), tuned.get_layer("head")
    names = [layer.name for layer in pooled.layers]
    # The trainable part up to the cut is absent when everything is frozen.
    suffix = pooled.get_layer("trainable") if "trainable" in names else None
    pooling = [pooled.get_layer(name) for name in names
               if name in ("avg_pool", "max_pool", "flatten")]
    block_pooling = sorted((layer for layer in pooled.layers
                            if "_head_block_" in layer.name),
                           key=lambda layer: int(layer.name.rsplit("_", 1)[1]))
    images = model.inputs[0]
    feature_map = prefix(central(images), training=False)
    others = []
    if "frozen_activations" in names:  # one flat row: activations, then pooled blocks
        reshape = pooled.get_layer("frozen_activations")
        size_of = math.prod(reshape.target_shape)
        others.append(feature_map[:, size_of:])
        feature_map = reshape(feature_map[:, :size_of])
    if suffix is not None:
        feature_map = suffix(feature_map, training=False)
        if isinstance(feature_map, (list, tuple)):
            *maps, feature_map = feature_map
            others.extend(layer(m) for layer, m in zip(block_pooling, maps, strict=True))
    spatial = keras.Input(tuple(feature_map.shape[1:]), name="feature_map")
    x = spatial
    for layer in pooling:
        x = layer(x)
    if not others:
        to_map = keras.Model(images, feature_map, name="images_to_feature_map")
        to_logits = keras.Model(spatial, head(x, training=False),
                                name="feature_map_to_logits")
        return to_map, to_logits
    rest = others[0] if len(others) == 1 else keras.layers.Concatenate()(others)
    to_map = keras.Model(images, [feature_map, rest], name="images_to_feature_map")
    blocks = keras.Input(tuple(rest.shape[1:]), name="other_blocks")
    features = keras.layers.Concatenate()([blocks, x])
    to_logits = keras.Model([spatial, blocks], head(features, training=False),
                            name="feature_map_to_logits")
    return to_map, to_logits
