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
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .advice import advised
from .image_input import ImageCollection
from .keras_setup import ForwardPass, is_keras_model, keras_precision, seeded_keras_init
from .openvino_runtime import check_runtime, make_openvino_forward

__all__ = ["NetworkLayout", "StageChain", "StagedBackbone", "Trunk", "build_feature_network",
           "build_tap_network",
           "build_trunk", "deepest",
           "make_forward", "pool", "resolve_cuts", "run_batches", "several_cuts",
           "several_maps_error", "trunk_of"]

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
    cut_layers : tuple of str
        With several cuts, the layer of each, in the order their features are
        concatenated (``cut_layer`` is the deepest); with one, ``(cut_layer,)``.
    cut_labels : tuple of str
        What each cut is called in feature names: the block or layer name as it was given,
        the layer's name for an index.
    cut_widths : tuple of int
        Width of each cut's pooled features; they add up to ``n_features``.
    boundaries : tuple of str
        The layers ending the backbone's blocks, shallowest first, all of them (empty for a
        user's model): where the feature cache shares pooled features between cuts, and
        where a deeper cut resumes (:func:`build_tap_network`).
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
    cut_layers: tuple[str, ...] = ()
    cut_labels: tuple[str, ...] = ()
    cut_widths: tuple[int, ...] = ()
    boundaries: tuple[str, ...] = ()
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
    blocks: dict[str, Any] | None = None  # block name -> the layer ending it, once asked

    def block_layers(self) -> dict[str, Any]:
        """The layer ending each block, shallowest first (read once per backbone)."""
        if self.blocks is None:
            from .cut_points import block_layers

            self.blocks = block_layers(self.full, self.module)
        return self.blocks


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


def several_cuts(cut: Any) -> bool:
    """Whether ``cut`` asks for several layers: a list or tuple, or ``"blocks"``."""
    return isinstance(cut, (list, tuple)) or (isinstance(cut, str) and cut == "blocks")


def resolve_cuts(trunk: Trunk, cut: Any, backbone_kwargs: dict | None = None
                 ) -> tuple[list[Any], list[str]]:
    """The layers of a list of cuts (or of ``"blocks"``: every block boundary), with labels.

    Parameters
    ----------
    trunk : Trunk
        The backbone, built whole.
    cut : list, tuple or "blocks"
        Names and indices, as :func:`transferkit.cut_points.resolve_cut` takes each.
    backbone_kwargs : dict or None
        Constructor arguments of a named backbone (they change its blocks).

    Returns
    -------
    layers : list
        One per cut, in the order given.
    labels : list of str
        What each is called in feature names: a name as given, the layer's name for an
        index.

    Raises
    ------
    ValueError
        When the list is empty or two cuts end at the same layer.
    """
    from .cut_points import list_cut_points, resolve_cut
    from .hub_backbones import HUB_MODULE

    if isinstance(cut, str) and trunk.module == HUB_MODULE:
        cut = list(trunk.block_layers())  # a preset's blocks: its name is no table entry
    elif isinstance(cut, str):
        source = trunk.name if trunk.module is not None else trunk.full
        cut = list_cut_points(source, backbone_kwargs)
    cuts = list(cut)
    if not cuts:
        raise advised(ValueError, "{cuts_given} names no layer; list one or more of "
                      "{list_cut_points}, or pass a single cut.", cut=cut)
    layers = [resolve_cut(trunk.full, one, trunk.module) for one in cuts]
    labels = [one if isinstance(one, str) else layer.name
              for one, layer in zip(cuts, layers, strict=True)]
    seen: dict[int, Any] = {}
    for one, layer in zip(cuts, layers, strict=True):
        if id(layer) in seen:
            raise advised(ValueError, "{cuts_given} names layer {layer!r} twice ({first!r} "
                          "and {second!r}); list each cut once.", cut=cut, layer=layer.name,
                          first=seen[id(layer)], second=one)
        seen[id(layer)] = one
    return layers, labels


def deepest(model: Any, layers: Sequence[Any]) -> Any:
    """The layer of ``layers`` that comes last in ``model``'s order of operations."""
    order = {id(op): i for i, op in enumerate(model.operations)}
    return max(layers, key=lambda layer: order[id(layer)])


def pool(x: Any, pooling: str | None, prefix_tokens: int | None = None,
         suffix: str = "") -> Any:
    """Global average or max pooling of a spatial map or of a transformer's patch tokens;
    the class token ("cls", "cls+avg"); anything else is flattened.

    ``prefix_tokens`` is the number of tokens before the patch tokens (class token and
    registers), None for a spatial map. ``suffix`` tells the layers of several pooled maps
    apart.
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
        return keras.layers.GlobalAveragePooling2D(name=f"avg_pool{suffix}")(x)
    if len(x.shape) == 4 and pooling == "max":
        return keras.layers.GlobalMaxPooling2D(name=f"max_pool{suffix}")(x)
    if len(x.shape) != 2:
        return keras.layers.Flatten(name=f"flatten{suffix}")(x)
    return x


def build_feature_network(backbone: Any, *, weights: Any, input_size: Any, cut: Any,
                          backbone_kwargs: dict | None, random_state: Any,
                          crop_fraction: float, pooling: str | None,
                          precision: str, trunk: Trunk | None = None,
                          hub_preset: dict | None = None) -> tuple[Any, NetworkLayout]:
    """Pixels at the source size -> central crop -> preprocessing -> trunk -> pooling.

    Parameters are those of :class:`transferkit.KerasFeatureExtractor`, and ``hub_preset``
    that of :func:`build_trunk`. With several cuts (a list, or ``"blocks"``), the trunk is
    truncated at the deepest and the pooled features of every cut are concatenated, in the
    order given: one forward pass for all. ``trunk``, from :func:`build_trunk` with the
    same parameters, is used instead of building the backbone again: networks cut at
    different places share its layers and weights.

    Returns
    -------
    model : keras.Model
        Takes float32 images of ``layout.source_size`` with values in [0, 255]; gives
        float32 features whatever the compute precision.
    layout : NetworkLayout
    """
    import keras

    from .augmentation import CentralCrop, source_size
    from .cut_points import resolve_cut, truncate

    several = several_cuts(cut)
    with keras_precision(precision):
        if trunk is None:
            trunk = build_trunk(backbone, weights=weights, input_size=input_size, cut=None,
                                backbone_kwargs=backbone_kwargs, random_state=random_state,
                                hub_preset=hub_preset)
        if several:
            layers, labels = resolve_cuts(trunk, cut, backbone_kwargs)
            if pooling is None and len(layers) > 1:
                raise several_maps_error(cut)
        else:
            layers = [resolve_cut(trunk.full, cut, trunk.module)]
            labels = [layers[0].name]
        cut_layer = deepest(trunk.full, layers)
        size = trunk.input_size
        source = source_size(size, crop_fraction)
        pixels = keras.Input((source[0], source[1], 3), dtype="float32", name="pixels")
        x = pixels
        if source != size:
            # float32 whatever the policy: a bfloat16 crop would round the pixel values.
            x = CentralCrop(size[0], size[1], dtype="float32", name="central_crop")(x)
        x = trunk.preprocess(x) if trunk.preprocess is not None else x
        if several:
            # One truncated trunk with an output per cut: every layer runs once.
            maps = truncate(trunk.full, layers)(x)
            pooled = [pool(m, pooling, trunk.prefix_tokens, suffix=f"_{k}")
                      for k, m in enumerate(maps)]
            widths = [int(p.shape[-1]) for p in pooled]
            x = (keras.layers.Concatenate(name="cuts")(pooled) if len(pooled) > 1
                 else pooled[0])
        else:
            x = pool(truncate(trunk.full, cut_layer)(x), pooling, trunk.prefix_tokens)
            widths = [int(x.shape[-1])]
        # Features leave the model as float32 whatever the compute precision.
        x = keras.layers.Activation("linear", dtype="float32", name="features")(x)
    model = keras.Model(pixels, x, name=f"{trunk.name}_features")
    layout = NetworkLayout(trunk.name, cut_layer.name, size, source, trunk.preprocessing,
                           int(x.shape[-1]), tuple(layer.name for layer in layers),
                           tuple(labels), tuple(widths),
                           tuple(layer.name for layer in trunk.block_layers().values()),
                           trunk.hub_preset)
    logger.debug("built %s cut at %s: input %s, %d features", layout.backbone_name,
                 layout.cut_layer, size, layout.n_features)
    return model, layout


def build_tap_network(model: Any, taps: Sequence[tuple[str, str | None]], *,
                      start: str | None = None, keep: str | None = None,
                      backbone: Any = None) -> Any:
    """A network of the layers of a feature network that gives several pooled outputs.

    The same layers (and weights) as ``model``, from the pixels or from the activation of
    one of its layers, to the pooled output of several ("taps"), and the activation of one
    layer kept whole, so that the work can go on from there later.

    Parameters
    ----------
    model : keras.Model
        From :func:`build_feature_network`.
    taps : sequence of (str, str)
        ``(layer name, pooling)``: the outputs, in this order.
    start : str, default=None
        A layer of the trunk whose activation the network takes instead of the pixels.
    keep : str, default=None
        A layer whose activation is the last output.
    backbone : keras.Model, default=None
        Where the layers are found: the whole backbone ``model``'s trunk was cut from (its
        layers beyond the cut too), or an inference copy of it whose layers keep their
        names (:func:`transferkit.batchnorm_folding.fold_batch_norms`); by default that
        trunk.

    Returns
    -------
    keras.Model
        One output per tap, then the kept activation, all float32.
    """
    import keras

    trunk = trunk_of(model)
    graph = backbone or trunk
    # Each layer's output in this graph: a folded copy shares the layers it did not fold
    # with the original, where ``layer.output`` would be the original's tensor.
    produced = {node.operation.name: node.output_tensors[0]
                for nodes in graph._nodes_by_depth.values() for node in nodes
                if node.output_tensors}
    names = list(dict.fromkeys([layer for layer, _ in taps] + ([keep] if keep else [])))
    ends = [produced[name] for name in names]
    if start is None:
        inputs = model.inputs
        # The trunk's input inside the feature network: the cropped, preprocessed pixels.
        x = trunk._inbound_nodes[0].input_tensors[0]
        maps = keras.Model((backbone or trunk).inputs, ends, name=f"{trunk.name}_taps")(x)
    else:
        first = produced[start]
        inputs = keras.Input(tuple(first.shape[1:]), dtype="float32", name="activation")
        maps = keras.Model(first, ends, name=f"{trunk.name}_from_{start}")(inputs)
    maps = maps if isinstance(maps, (list, tuple)) else [maps]
    by_layer = dict(zip(names, maps, strict=True))
    outputs = [pool(by_layer[layer], pooling, suffix=f"_{k}")
               for k, (layer, pooling) in enumerate(taps)]
    if keep:
        outputs.append(by_layer[keep])
    return keras.Model(inputs, outputs if len(outputs) > 1 else outputs[0],
                       name=f"{model.name}_taps")


class StagedBackbone:
    """A backbone run in a few fixed stages, the same way whatever the cut.

    Every computation starts from the pixels or from the activation at a *resume point*
    (every ``step``-th block boundary) and crosses each resume point as the end of one pass
    and the start of the next, so a cut's features come out of the same passes whether an
    image starts from its pixels or resumes from an activation the feature cache kept:
    bit-identical, which one network per cut cannot promise (a kernel's choice, and its
    rounding, depends on whether its input is the graph's input). Each pass also gives the
    average and the maximum of the block boundaries it is asked for. Passes are folded and
    traced once, for every extractor of the network.

    Parameters
    ----------
    model : keras.Model
        A network of :func:`build_feature_network`: where the pixels are cropped and
        preprocessed.
    backbone : keras.Model
        The whole backbone ``model``'s trunk was cut from.
    boundaries : sequence of str
        The layers ending its blocks, shallowest first.
    source_size : (int, int)
        (height, width) of the images.
    fold : bool
        Fold BatchNormalization into the convolutions (see :func:`make_forward`).
    step : int, default=4
        Block boundaries per stage: fewer passes per batch with more, fewer places to
        resume from.
    """

    def __init__(self, model: Any, backbone: Any, boundaries: Sequence[str],
                 source_size: tuple[int, int], fold: bool, step: int = 4) -> None:
        self.model, self.backbone = model, backbone
        self.boundaries = tuple(boundaries)
        self.source_size, self.fold = tuple(source_size), fold
        # A pass can start only where everything after depends on that activation alone
        # (not at a NASNet cell, which also reads the cell before): every step-th such
        # boundary, the last one excluded (nothing is left to resume there).
        from .cut_points import articulation_names

        resumable = articulation_names(backbone)
        candidates = [i for i, name in enumerate(self.boundaries[:-1]) if name in resumable]
        self.resume_points = tuple(candidates[step - 1::step])
        self._passes: dict[tuple, tuple[Callable[[Any], Any], tuple[int, ...]]] = {}
        self._chains: dict[tuple, Pass] = {}
        self._folded: Any = None
        self._lock = threading.Lock()

    def _layers(self) -> Any:
        # Folded once for every pass, not pass by pass: cloning the layers is what folding
        # costs (0.12 s a pass of MobileNetV2), and a search builds several passes over the
        # same blocks. A folded BatchNormalization keeps its name, so every boundary does.
        if self._folded is None:
            from .batchnorm_folding import fold_batch_norms

            self._folded = fold_batch_norms(self.backbone)[0] if self.fold else self.backbone
        return self._folded

    def _pass(self, start: int | None, end: int, activation: bool,
              tapped: tuple[int, ...]) -> tuple[Callable[[Any], Any], tuple[int, ...]]:
        """One stage's traced network, and the shape of one input to it."""
        key = (start, end, activation, tapped)
        with self._lock:
            if key not in self._passes:
                taps = [(self.boundaries[index], pooling) for index in tapped
                        for pooling in ("avg", "max")]
                network = build_tap_network(
                    self.model, taps, backbone=self._layers(),
                    start=None if start is None else self.boundaries[start],
                    keep=self.boundaries[end] if activation else None)
                shape = (self.source_size if start is None
                         else tuple(int(d) for d in network.inputs[0].shape[1:]))
                self._passes[key] = (make_forward(network, shape, tensors=True), shape)
            return self._passes[key]

    def kept_point(self, start: int | None, last: int) -> int | None:
        """The deepest resume point a computation from ``start`` to ``last`` crosses."""
        crossed = [p for p in self.resume_points if (start is None or p > start) and p <= last]
        return crossed[-1] if crossed else None

    def forward(self, start: int | None, last: int, tapped: Sequence[int],
                keep: bool = False) -> Pass:
        """A pass from the pixels (``start=None``) or a resume point's activation to ``last``.

        It gives the average and the maximum of each boundary of ``tapped`` (indices after
        ``start``, up to ``last``), shallowest first, then, if ``keep``, the activation at
        :meth:`kept_point` (nothing when no resume point is crossed). Pooling every boundary
        crossed would cost a third more than the pass itself (each pooled map leaves the
        fused kernels' memory layout); the feature cache asks for its resume points and the
        cuts.

        From the pixels, the stages run inside one traced function, each stage a graph of
        its own (see :func:`make_forward`'s ``tensors``): calling them one by one from Python
        cost a plain transform of MobileNetV2 some 10% over one network, at the default
        batch of 8. Either way every stage is the same graph, so the features are the same.
        """
        key = (start, last, tuple(sorted(set(tapped))), keep)
        with self._lock:
            if key in self._chains:
                return self._chains[key]
        stops = [p for p in self.resume_points
                 if (start is None or p > start) and p < last] + [last]
        kept_at = self.kept_point(start, last)
        stages = []
        begin = start
        for stop in stops:
            activation = stop != last or (keep and stop == kept_at)
            inside = tuple(i for i in key[2] if (begin is None or i > begin) and i <= stop)
            stages.append((*self._pass(begin, stop, activation, inside), activation))
            begin = stop
        chain = StageChain([(run, activation) for run, _, activation in stages],
                           keep=keep and kept_at is not None)
        # Tracing a chain costs about 0.3 s (MobileNetV2), once: worth it from the pixels,
        # where a plain transform runs every stage of every image; not for the many small
        # resumed computations of a search, each a new chain of a few stages.
        forward = (make_forward(chain, stages[0][1]) if start is None and len(stages) > 1
                   else lambda batch: _to_numpy(chain(batch)))
        with self._lock:
            return self._chains.setdefault(key, forward)


class StageChain:
    """The stages of one :meth:`StagedBackbone.forward`, run one after the other.

    An object, not a closure, for the reason of :class:`transferkit.keras_setup.ForwardPass`.
    Gives the pooled outputs of every stage in order, then, if ``keep``, the last activation
    handed on.
    """

    def __init__(self, stages: Sequence[tuple[Callable[[Any], Any], bool]], keep: bool) -> None:
        self.stages, self.keep = list(stages), keep

    def __call__(self, x: Any) -> list[Any]:
        outputs: list[Any] = []
        for run, activation in self.stages:
            results = run(x)
            results = list(results) if isinstance(results, (list, tuple)) else [results]
            if activation:
                x = results.pop()
            outputs.extend(results)
        return [*outputs, x] if self.keep else outputs


def several_maps_error(cut: Any) -> ValueError:
    """The error of several cuts with ``pooling=None``: their maps differ in size."""
    return advised(
        ValueError,
        "{cuts_given} gives several feature maps, of different sizes, which {no_pooling} "
        "cannot flatten into one row; pass {pool_each_cut}, or a single cut.", cut=cut)


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
class LazyPass:
    """A forward pass made the first time it runs.

    A grid search builds a network for every candidate, and with the feature cache most of
    them never run: folding and tracing wait until a batch comes.
    """

    def __init__(self, make: Callable[[], Pass]) -> None:
        self._make = make
        self._pass: Pass | None = None
        self._lock = threading.Lock()

    def __call__(self, batch: np.ndarray) -> Any:
        if self._pass is None:
            with self._lock:
                if self._pass is None:
                    self._pass = self._make()
        return self._pass(batch)


def make_forward(network: Any, size: tuple[int, ...] | None = None, *,
                 runtime: str = "tensorflow", precision: str = "float32",
                 fold: bool = False, lazy: bool = False, tensors: bool = False) -> Pass:
    """The one way transferkit runs a network on batches: ``float32 batch -> ndarray``.

    Skips ``Model.predict``'s per-call overhead: the network is traced once by
    ``tf.function`` (with a fixed input signature when ``size`` is given).

    Parameters
    ----------
    network : keras.Model or callable
        A model, run with ``training=False``; or a callable of tensors (such as a pass
        that draws augmented views), traced as it is.
    size : (int, int) or (int, int, int), default=None
        (height, width) of the images, or the (height, width, channels) of activations;
        None for inputs of any shape.
    runtime : {"tensorflow", "openvino"}, default="tensorflow"
        OpenVINO compiles the model's current weights (``size`` needed, float32 only).
    precision : {"float32", "bfloat16"}, default="float32"
        The compute precision the network was built with, checked against ``runtime``.
    fold : bool, default=False
        Run an inference copy with every BatchNormalization folded into the convolution
        before it (see :mod:`transferkit.batchnorm_folding`): only for a model whose weights
        no one changes afterwards.
    lazy : bool, default=False
        Convert, fold and trace at the first call (:class:`LazyPass`), not now.
    tensors : bool, default=False
        Give the backend's tensors, not ndarrays: for a stage whose output goes on to the
        next stage (:class:`StagedBackbone`), never copied to the host in between. Such a
        stage stays a graph of its own when a traced function calls it (TensorFlow would
        otherwise inline it and optimise across stages): an activation is then computed the
        same way whether it is the graph's input (resumed from the cache) or made inside it.

    Returns
    -------
    callable
        Gives an ndarray, or a list of them for a network with several outputs.
    """
    check_runtime(runtime, precision)
    if lazy:
        return LazyPass(lambda: make_forward(network, size, runtime=runtime,
                                             precision=precision, fold=fold, tensors=tensors))
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
        return call if tensors else lambda batch: _to_numpy(call(batch))
    import tensorflow as tf

    shape = None if size is None else (*size, 3) if len(size) == 2 else tuple(size)
    signature = None if shape is None else [tf.TensorSpec((None, *shape), tf.float32)]
    compiled = tf.function(call, input_signature=signature, reduce_retracing=True,
                           experimental_attributes={"_noinline": True} if tensors else None)
    if tensors:
        return compiled

    def forward(batch: np.ndarray) -> Any:
        out = compiled(tf.convert_to_tensor(batch, tf.float32))
        return [t.numpy() for t in out] if isinstance(out, (list, tuple)) else out.numpy()

    forward.takes_tensors = True  # see run_batches
    return forward


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
        One per pass, one row per input; for a pass with several outputs, a list of them.
    """
    if isinstance(inputs, ImageCollection):
        batches = inputs.batches(size, batch_size, on_error=on_error)
    else:
        batches = ((start, inputs[start:start + batch_size])
                   for start in range(0, len(inputs), batch_size))
    parts: list[list[np.ndarray]] = [[] for _ in passes]
    shared = _shared_input(passes)
    for start, batch in batches:
        if shared is not None:
            batch = shared(batch)
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
    return [_joined(rows) for rows in parts]


def _shared_input(passes: Sequence[Pass]) -> Callable[[np.ndarray], Any] | None:
    """The conversion of a batch to a tensor, once for several TensorFlow passes.

    Each pass of :func:`make_forward` copies its batch into a tensor of its own: a batch
    of 32 images at 256 px (25 MB) took 5 ms to copy, and the fine-tuning's frozen pass
    reads each batch with five to eight passes (the central views and the augmented
    ones). None where a single pass reads it, or a pass takes ndarrays only.
    """
    if len(passes) < 2 or not all(getattr(p, "takes_tensors", False) for p in passes):
        return None
    import tensorflow as tf

    return lambda batch: tf.convert_to_tensor(batch, tf.float32)


def _to_numpy(out: Any) -> Any:
    import keras

    if isinstance(out, (list, tuple)):
        return [keras.ops.convert_to_numpy(t) for t in out]
    return keras.ops.convert_to_numpy(out)


def _joined(rows: list[Any]) -> Any:
    if not rows:
        return np.empty((0,), np.float32)
    if isinstance(rows[0], list):  # a network with several outputs
        return [np.concatenate(column) for column in zip(*rows, strict=True)]
    return np.concatenate(rows)
