"""A built network and how it runs: the one layer under both estimators, the pictures,
Dask and Spark.

Owns

* what a built network is: :class:`NetworkLayout` (backbone, cut layer, input and source
  size, preprocessing kind, feature width), plain data that estimators copy into their
  fitted attributes;
* building a backbone and finding its cut, for a named ``keras.applications`` backbone or
  a user's ``keras.Model`` (:func:`build_trunk`), the pooling block (:func:`pool`), and the
  feature network every extractor runs: central crop, preprocessing, truncated trunk,
  pooling (:func:`build_feature_network`); finding the trunk in it again
  (:func:`trunk_of`);
* running: the one factory of forward passes, which also chooses the runtime and checks it
  against the precision (:func:`make_forward`: traced TensorFlow, with BatchNormalization
  folded where the weights are frozen, or OpenVINO), and the one batch runner
  (:func:`run_batches`), which decodes each batch of images once for every pass over it.

Does not own: parameters and their checks (the estimators, with
:mod:`transferkit.parameters`), the feature cache (:mod:`transferkit.cache`), the
fine-tuning network's freezing and head (:mod:`transferkit.finetune_network`) and its
training (:mod:`transferkit.training`). Keras-wide settings (seeds, dtype policy) come from
:mod:`transferkit.keras_setup`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .image_input import ImageCollection
from .keras_setup import ForwardPass, is_keras_model, keras_precision, seeded_keras_init
from .openvino_runtime import check_runtime, make_openvino_forward

__all__ = ["NetworkLayout", "Trunk", "build_feature_network", "build_trunk", "make_forward",
           "pool", "run_batches", "trunk_of"]

logger = logging.getLogger(__name__)

POOLINGS = ("avg", "max", "cls", "cls+avg", None)
"""What ``pooling=`` takes. For a vision transformer's tokens, "avg" and "max" pool the patch
tokens (not the class token nor registers), "cls" is the class token and "cls+avg" both,
concatenated (the usual linear-probe features of DINOv2)."""

Pass = Callable[[np.ndarray], np.ndarray]
"""A forward pass: float32 batch (images or activations) -> ndarray, one row per item."""


@dataclass(frozen=True)
class NetworkLayout:
    """What a built network is, as plain data.

    Attributes
    ----------
    backbone_name : str
        The ``keras.applications`` name, or the user model's name.
    cut_layer : str
        Name of the layer whose output the trunk ends with.
    input_size : (int, int)
        (height, width) the backbone sees.
    source_size : (int, int)
        (height, width) images are loaded at; larger than ``input_size`` when a central
        crop is taken.
    preprocessing : str
        The kind of ``preprocess_input`` (see :func:`transferkit.list_backbones`), or
        ``"user_model"``.
    n_features : int
        Width of the network's output per image.
    hub_preset : dict or None
        For a keras-hub backbone, what builds it again without its preset
        (``transferkit.hub_backbones.HubBackbone.architecture``); None otherwise.
    """

    backbone_name: str
    cut_layer: str
    input_size: tuple[int, int]
    source_size: tuple[int, int]
    preprocessing: str
    n_features: int
    hub_preset: dict | None = None


@dataclass
class Trunk:
    """A backbone built whole, with the layer it is cut at.

    ``full`` is the whole backbone (its layers own the weights), ``cut_layer`` a layer of
    it; ``module`` is the ``keras.applications`` module the cut points come from (None for
    a user's model), ``preprocess`` its ``preprocess_input`` (None: the model preprocesses
    itself).
    """

    full: Any
    cut_layer: Any
    name: str
    module: str | None
    input_size: tuple[int, int]
    preprocess: Callable[[Any], Any] | None
    preprocessing: str
    prefix_tokens: int | None = None
    """For a vision transformer, the tokens before the patch tokens (class token,
    registers); None for a spatial map."""
    hub_preset: dict | None = None
    """For a keras-hub backbone, what builds it again without its preset."""


# ---------------------------------------------------------------------- building
def build_trunk(backbone: Any, *, weights: Any, input_size: Any, cut: Any,
                backbone_kwargs: dict | None, random_state: Any,
                hub_preset: dict | None = None) -> Trunk:
    """Build a named backbone (or take a user's ``keras.Model``) and find its cut layer.

    Parameters
    ----------
    backbone : str or keras.Model
        A name from :func:`transferkit.list_backbones`, or a model with one image input.
    weights : "imagenet", None or path
        For a named backbone; a user's model keeps its own (only "imagenet" or None).
    input_size : int, (int, int) or None
        None: the backbone's default (224 for a user's model with a free input size).
    cut : str, int or None
        As :func:`transferkit.cut_points.resolve_cut` takes it.
    backbone_kwargs : dict or None
        Constructor arguments of a named backbone.
    random_state : int, RandomState or None
        Seeds the initial weights (random ones, or layers ImageNet weights do not cover).
    hub_preset : dict, default=None
        For a keras-hub backbone, ``NetworkLayout.hub_preset`` of an earlier build: the
        same network, randomly initialised, without its preset (loading a saved estimator).

    Returns
    -------
    Trunk
    """
    from .backbones import build_backbone, get_backbone_spec, resolve_input_size
    from .cut_points import resolve_cut
    from .hub_backbones import HUB_MODULE, build_hub_backbone, is_hub_backbone

    # A loaded estimator's preset directory may be gone: its architecture came with it.
    if hub_preset is not None or is_hub_backbone(backbone):
        size = None if input_size is None else resolve_input_size(input_size, 0)
        with seeded_keras_init(random_state):
            hub = build_hub_backbone(backbone, weights=weights, input_size=size,
                                     backbone_kwargs=backbone_kwargs, architecture=hub_preset)
        return Trunk(hub.full, resolve_cut(hub.full, cut, HUB_MODULE), hub.name, HUB_MODULE,
                     hub.input_size, hub.preprocess, "keras_hub", hub.prefix_tokens,
                     hub.architecture)
    if isinstance(backbone, str):
        spec = get_backbone_spec(backbone)
        size = resolve_input_size(input_size, spec.default_size)
        with seeded_keras_init(random_state):
            full = build_backbone(spec.name, weights=weights, input_size=size,
                                  backbone_kwargs=backbone_kwargs)
        return Trunk(full, resolve_cut(full, cut, spec.module), spec.name, spec.module, size,
                     spec.preprocess_input, spec.preprocessing)

    model = backbone
    if len(model.inputs) != 1 or len(model.inputs[0].shape) != 4:
        shapes = [tuple(t.shape) for t in model.inputs]
        raise ValueError(
            f"backbone model {model.name!r} has inputs {shapes}; expected a single image "
            "input of shape (batch, height, width, 3)."
        )
    if weights not in ("imagenet", None):
        raise ValueError(
            f"weights={weights!r} cannot be applied to a keras.Model backbone: load the "
            "weights into your model (model.load_weights) before passing it."
        )
    if backbone_kwargs:
        raise ValueError("backbone_kwargs only applies to a backbone given by name.")
    fixed = tuple(model.inputs[0].shape[1:3])
    if None not in fixed:
        size = (int(fixed[0]), int(fixed[1]))
        if input_size is not None and resolve_input_size(input_size, 0) != size:
            raise ValueError(
                f"input_size={input_size!r} differs from the fixed input size {size} of "
                f"backbone model {model.name!r}; leave input_size=None."
            )
    else:
        size = resolve_input_size(input_size, 224)
    return Trunk(model, resolve_cut(model, cut, None), model.name, None, size, None,
                 "user_model")


def pool(x: Any, pooling: str | None, prefix_tokens: int | None = None) -> Any:
    """Global average or max pooling of a spatial map or of a transformer's patch tokens;
    the class token ("cls", "cls+avg"); anything else is flattened.

    ``prefix_tokens`` is the number of tokens before the patch tokens (class token and
    registers), None for a spatial map.
    """
    import keras

    if len(x.shape) == 3 and prefix_tokens is not None and pooling is not None:
        patches = x[:, prefix_tokens:, :]
        average = keras.ops.mean(patches, axis=1)
        if pooling == "avg":
            return average
        if pooling == "max":
            return keras.ops.max(patches, axis=1)
        if prefix_tokens == 0:
            raise ValueError(
                f"pooling={pooling!r} needs a class token, and this transformer has none "
                "(SigLIP pools its tokens with its own attention head: cut=None gives that "
                "embedding). Use pooling='avg' or 'max' over the patch tokens."
            )
        if pooling == "cls":
            return x[:, 0, :]
        return keras.ops.concatenate([x[:, 0, :], average], axis=-1)
    if pooling in ("cls", "cls+avg") and len(x.shape) != 2:
        raise ValueError(
            f"pooling={pooling!r} takes a vision transformer's class token; this cut outputs "
            f"a spatial map of shape {tuple(x.shape[1:])}. Use pooling='avg' or 'max'."
        )
    if len(x.shape) == 4 and pooling == "avg":
        return keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if len(x.shape) == 4 and pooling == "max":
        return keras.layers.GlobalMaxPooling2D(name="max_pool")(x)
    if len(x.shape) != 2:
        return keras.layers.Flatten(name="flatten")(x)
    return x


def build_feature_network(backbone: Any, *, weights: Any, input_size: Any, cut: Any,
                          backbone_kwargs: dict | None, random_state: Any,
                          crop_fraction: float, pooling: str | None,
                          precision: str, hub_preset: dict | None = None
                          ) -> tuple[Any, NetworkLayout]:
    """Pixels at the source size -> central crop -> preprocessing -> trunk -> pooling.

    Parameters are those of :class:`transferkit.KerasFeatureExtractor`, and ``hub_preset``
    that of :func:`build_trunk`.

    Returns
    -------
    model : keras.Model
        Takes float32 images of ``layout.source_size`` with values in [0, 255]; gives
        float32 features whatever the compute precision.
    layout : NetworkLayout
    """
    import keras

    from .augmentation import CentralCrop, source_size
    from .cut_points import truncate

    with keras_precision(precision):
        trunk = build_trunk(backbone, weights=weights, input_size=input_size, cut=cut,
                            backbone_kwargs=backbone_kwargs, random_state=random_state,
                            hub_preset=hub_preset)
        size = trunk.input_size
        source = source_size(size, crop_fraction)
        pixels = keras.Input((source[0], source[1], 3), dtype="float32", name="pixels")
        x = pixels
        if source != size:
            # float32 whatever the policy: a bfloat16 crop would round the pixel values.
            x = CentralCrop(size[0], size[1], dtype="float32", name="central_crop")(x)
        x = trunk.preprocess(x) if trunk.preprocess is not None else x
        x = pool(truncate(trunk.full, trunk.cut_layer)(x), pooling, trunk.prefix_tokens)
        # Features leave the model as float32 whatever the compute precision.
        x = keras.layers.Activation("linear", dtype="float32", name="features")(x)
    model = keras.Model(pixels, x, name=f"{trunk.name}_features")
    layout = NetworkLayout(trunk.name, trunk.cut_layer.name, size, source, trunk.preprocessing,
                           int(x.shape[-1]), trunk.hub_preset)
    logger.debug("built %s cut at %s: input %s, %d features", layout.backbone_name,
                 layout.cut_layer, size, layout.n_features)
    return model, layout


def trunk_of(model: Any) -> Any:
    """The truncated backbone inside a model :func:`build_feature_network` built."""
    import keras

    trunks = [op for op in model.operations if isinstance(op, keras.Model)]
    if len(trunks) != 1:
        raise ValueError(
            f"{model.name!r} is not a feature network built by transferkit: expected exactly "
            f"one nested keras.Model (the truncated backbone), found {len(trunks)}."
        )
    return trunks[0]


# ---------------------------------------------------------------------- running
def make_forward(network: Any, size: tuple[int, int] | None = None, *,
                 runtime: str = "tensorflow", precision: str = "float32",
                 fold: bool = False) -> Pass:
    """The one way transferkit runs a network on batches: ``float32 batch -> ndarray``.

    Skips ``Model.predict``'s per-call overhead: the network is traced once by
    ``tf.function`` (with a fixed input signature when ``size`` is given).

    Parameters
    ----------
    network : keras.Model or callable
        A model, run with ``training=False``; or a callable of tensors (such as a pass
        that draws augmented views), traced as it is.
    size : (int, int), default=None
        (height, width) of the images; None for inputs of any shape (activations).
    runtime : {"tensorflow", "openvino"}, default="tensorflow"
        OpenVINO compiles the model's current weights (``size`` needed, float32 only).
    precision : {"float32", "bfloat16"}, default="float32"
        The compute precision the network was built with, checked against ``runtime``.
    fold : bool, default=False
        Run an inference copy with every BatchNormalization folded into the convolution
        before it (see :mod:`transferkit.batchnorm_folding`): only for a model whose weights
        no one changes afterwards.

    Returns
    -------
    callable
    """
    check_runtime(runtime, precision)
    if runtime == "openvino":
        if size is None or not is_keras_model(network):
            raise ValueError("runtime='openvino' runs a keras.Model on images of a known size.")
        return make_openvino_forward(network, size)
    import keras

    if fold and is_keras_model(network):
        from .batchnorm_folding import fold_batch_norms

        network, n_folded = fold_batch_norms(network)
        logger.debug("folded %d BatchNormalization layers for inference", n_folded)
    call = ForwardPass(network) if is_keras_model(network) else network
    if keras.backend.backend() != "tensorflow":
        return lambda batch: keras.ops.convert_to_numpy(call(batch))
    import tensorflow as tf

    signature = None if size is None else [tf.TensorSpec((None, size[0], size[1], 3),
                                                         tf.float32)]
    compiled = tf.function(call, input_signature=signature, reduce_retracing=True)
    return lambda batch: compiled(tf.convert_to_tensor(batch, tf.float32)).numpy()


def run_batches(passes: Sequence[Pass], inputs: Any, size: tuple[int, int], batch_size: int,
                *, on_error: str = "raise", progress: Any = None,
                into: Sequence[np.ndarray] | None = None) -> list[np.ndarray]:
    """Apply every pass to each batch of ``inputs``; each batch is loaded once for all.

    Decoding a large photograph can cost more than a small network's forward pass, so
    passes over the same images share one decoding.

    Parameters
    ----------
    passes : sequence of callables
        From :func:`make_forward`.
    inputs : ImageCollection or ndarray
        Images (loaded at ``size``, in batches, on worker threads) or arrays already in
        memory (activations), cut into batches along the first axis.
    size : (int, int)
        (height, width) images are loaded at.
    batch_size : int
        Items per pass.
    on_error : {"raise", "nan"}, default="raise"
        For images: whether one that cannot be loaded raises; with "nan" its slot is
        zeros and ``inputs.failures`` names it (callers blank its rows).
    progress : object with ``update(n_done)``, default=None
        Told after every batch, such as a ``keras.utils.Progbar``.
    into : sequence of ndarray, default=None
        One array per pass to write the rows into; by default they are concatenated.

    Returns
    -------
    list of ndarray
        One per pass, one row per input.
    """
    if isinstance(inputs, ImageCollection):
        batches = inputs.batches(size, batch_size, on_error=on_error)
    else:
        batches = ((start, inputs[start:start + batch_size])
                   for start in range(0, len(inputs), batch_size))
    parts: list[list[np.ndarray]] = [[] for _ in passes]
    for start, batch in batches:
        for k, forward in enumerate(passes):
            rows = forward(batch)
            if into is not None:
                into[k][start:start + len(batch)] = rows
            else:
                parts[k].append(rows)
        if progress is not None:
            progress.update(start + len(batch))
    if into is not None:
        return list(into)
    return [np.concatenate(rows) if rows else np.empty((0,), np.float32) for rows in parts]
