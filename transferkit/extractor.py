"""KerasFeatureExtractor: a truncated pretrained backbone as a scikit-learn transformer.

The estimator shell: parameters, the feature cache around the network, and scikit-learn's
conventions. Building and running the network is :mod:`transferkit.network`'s; caching
features, :mod:`transferkit.cache`'s; pickling, :mod:`transferkit.pickling`'s.
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

from .cache import (
    activation_fingerprint,
    fingerprint,
    keyed,
    model_memo,
    resolve_cache,
    resume_points,
    tap_fingerprint,
    weights_identity,
)
from .console import progress_bar
from .hub_backbones import HUB_MODULE
from .image_input import as_image_collection
from .keras_setup import PRECISIONS, default_batch_size, is_keras_model, keras_precision
from .network import (
    POOLINGS,
    StagedBackbone,
    build_feature_network,
    build_trunk,
    make_forward,
    run_batches,
    several_cuts,
    several_maps_error,
)
from .openvino_runtime import check_runtime
from .parameters import (
    Integer,
    Options,
    Real,
    Satisfies,
    check_parameters,
    cut_value,
    integer,
    optional_dict,
)
from .persistence import SaveMixin, register_estimator
from .pickling import KerasPicklingMixin, weights_for

__all__ = ["KerasFeatureExtractor"]

logger = logging.getLogger(__name__)


@register_estimator
class KerasFeatureExtractor(SaveMixin, KerasPicklingMixin, TransformerMixin, BaseEstimator):
    """Image features from a pretrained Keras Applications backbone.

    The backbone is loaded without its classifier top, truncated at ``cut`` and
    followed by a global pooling, so each image becomes one feature vector that
    any scikit-learn estimator can learn from.  The backbone's own
    ``preprocess_input`` is applied for you: pass raw pixel values in [0, 255].

    Parameters
    ----------
    backbone : str or keras.Model, default="ResNet50"
        A model of ``keras.applications`` by name, case-insensitive
        (``"resnet50"``, ``"MobileNetV2"``, ...; see :func:`transferkit.list_backbones`),
        or your own ``keras.Model`` with one image input. A model of your own gets no
        preprocessing: it must contain its own, and its own weights are used, as they are
        at each ``transform``: train it further and the next ``transform`` computes every
        image with the new weights (cached features are keyed by the weights that made them).
        A keras-hub preset (``pip install "transferkit[hub]"``): ``"hub:<preset name>"``
        (e.g. ``"hub:dinov2_small"``, downloaded once by keras-hub) or the path of a preset
        directory (what ``Backbone.save_to_preset`` and ``ImageConverter.save_to_preset``
        write: how weights come to a machine without internet), preprocessed by the
        preset's own image converter; ``weights="imagenet"`` then means the preset's own
        weights.
    weights : {"imagenet"}, None or path, default="imagenet"
        ``"imagenet"`` loads the pretrained weights through Keras' own download and
        cache (``$KERAS_HOME/models``), ``None`` initialises randomly, and a path loads a
        weights file (``.h5``, ``.weights.h5`` or ``.keras``; a file saved with the top
        works too).
    backbone_kwargs : dict, default=None
        Extra arguments for the Keras constructor, e.g. ``{"alpha": 0.25}`` for MobileNet.
    cut : None, str, int or list, default=None
        Where the backbone is truncated: ``None`` for its last convolutional output, a
        layer name, an index into ``model.layers`` (negative counts from the end), or a
        block name such as ``"block4"`` (VGG) or ``"conv4"`` (ResNet) that resolves to
        the last layer of that block; see :func:`transferkit.list_cut_points`. A list of
        them (``["conv3", "conv4"]``), or ``"blocks"`` for every block boundary, gives the
        pooled features of each, concatenated in the order given, from one forward pass
        of the backbone truncated at the deepest; it needs a pooling other than ``None``.
    pooling : {"avg", "max", "cls", "cls+avg"} or None, default="avg"
        Global pooling over the spatial axes of the cut output; ``None`` flattens it. For
        a vision transformer's tokens, "avg" and "max" pool the patch tokens (neither the
        class token nor registers), "cls" takes the class token and "cls+avg" concatenates
        both (the linear-probe features of DINOv2). Cut points of a transformer are its
        blocks: ``cut="block3"`` is the output of the third.
    input_size : int or (int, int), default=None
        ``(height, width)`` the network sees; the backbone's default when None.
    crop_fraction : float, default=1.0
        Part of each image the network sees, centred. ``1.0`` resizes the whole image to
        ``input_size`` (what ``keras.utils.load_img(path, target_size=...)`` does); ``0.875``
        resizes it to ``input_size / 0.875`` (256 x 256 for 224 x 224) and keeps the central
        ``input_size`` pixels, the framing ImageNet models are evaluated with. On the
        hymenoptera ants/bees set with MobileNet (alpha 0.25), 0.875 raised the linear
        probe's validation accuracy from 0.856 to 0.895. Must be in (0, 1].
    batch_size : int or None, default=None
        Images per forward pass. Memory grows with it, never with the number of images.
        ``None`` picks 8 on a CPU, where small batches stay in cache and run faster per
        image, and 32 when TensorFlow sees a GPU.
    verbose : int, default=0
        ``1`` or more shows a progress bar during ``transform`` on a terminal (or in a
        notebook); where the output is redirected, one plain line when it is done.
    random_state : int, RandomState instance or None, default=None
        Seeds the random initial weights when ``weights=None``, so repeated fits give
        identical features.
    cache : "memory", None, path or cache object, default="memory"
        Where computed features are kept for reuse, keyed per image and per network
        (see :mod:`transferkit.cache`): ``"memory"`` is a process-wide cache bounded by
        a byte budget (least recently used entries evicted), ``None`` disables
        caching, and a directory path keeps the features on disk, shared by every
        process and run that uses it. A cached feature is bit-identical to the one
        that was computed. Random weights without an integer ``random_state`` are
        never cached (each build differs). Entries are per layer and pooling: for a cut at
        a block boundary the memory cache also keeps the other pooling, both poolings of
        the stage ends an image passed through (one boundary in four) and the activation at
        the last of them, from which a deeper cut resumes; a ``GridSearchCV`` over ``cut``
        and ``pooling`` thus runs the network about once per image (activations count
        against the byte budget and go first).
    on_error : {"raise", "nan"}, default="raise"
        What an image that cannot be loaded (a missing, truncated or non-image file) does
        in ``transform``: ``"raise"`` stops at it with an error naming its index and path;
        ``"nan"`` keeps going, fills its row with NaN and warns once, listing every image
        that failed, so the work on the others is kept and rows never shift.
    precision : {"float32", "bfloat16"}, default="float32"
        Compute precision of the backbone. ``"bfloat16"`` runs it with Keras'
        ``mixed_bfloat16`` policy (weights stay float32, output is float32): faster
        only on CPUs with native bfloat16 (AVX512-BF16, AMX) and GPUs; features agree
        with float32 to a cosine similarity of about 0.99.
    runtime : {"tensorflow", "openvino"}, default="tensorflow"
        What runs the network in ``transform``. ``"openvino"`` converts the built Keras
        model once and runs it with OpenVINO's CPU plugin (``pip install
        "transferkit[openvino]"``): faster on CPUs where TensorFlow has no oneDNN
        kernels (on the 2-core AMD CI machine ResNet50 ran 1.1-1.3x faster, at 0.82-0.93
        of the matrix-multiply roof against 0.70-0.80, see :doc:`/benchmarks`); features equal
        TensorFlow's up to float32 rounding. CPU and float32 only. The
        model is converted when the extractor is built: later changes to the weights of
        a ``keras.Model`` passed as ``backbone`` are not seen.

    Attributes
    ----------
    model_ : keras.Model
        Pixels in [0, 255] of images resized to ``source_size_`` -> features: central crop
        (when ``crop_fraction < 1``), preprocessing, truncated backbone and pooling.
    backbone_name_ : str
        Canonical name of the backbone (``"ResNet50"``), or the user model's name.
    cut_layer_ : str
        Name of the layer whose output is pooled; with several cuts, the deepest.
    cut_layers_ : list of str
        Name of the layer of each cut, in the order their features are concatenated.
    input_size_ : tuple of int
        ``(height, width)`` the network sees.
    source_size_ : tuple of int
        ``(height, width)`` images are resized to before the central ``input_size_`` crop
        (``input_size_ / crop_fraction``); ``model_`` takes images of this size.
    n_features_out_ : int
        Length of each feature vector.

    See Also
    --------
    transferkit.list_backbones : Backbones known to the registry.
    transferkit.list_cut_points : Block boundaries to use as ``cut``.

    Notes
    -----
    The extractor learns nothing from the data, so ``transform`` also works without
    ``fit``: the model is then built on first use. ``fit`` only builds it.

    Examples
    --------
    >>> from sklearn.linear_model import LogisticRegression
    >>> from sklearn.pipeline import Pipeline
    >>> from transferkit import KerasFeatureExtractor
    >>> pipe = Pipeline([
    ...     ("features", KerasFeatureExtractor("MobileNetV2", cut="block_13")),
    ...     ("clf", LogisticRegression(max_iter=1000)),
    ... ])
    >>> pipe.fit(train_paths, train_labels).score(test_paths, test_labels)  # doctest: +SKIP
    """

    def __init__(
        self,
        backbone: Any = "ResNet50",
        *,
        weights: str | os.PathLike | None = "imagenet",
        backbone_kwargs: dict | None = None,
        cut: str | int | list | None = None,
        pooling: str | None = "avg",
        input_size: int | tuple[int, int] | None = None,
        crop_fraction: float = 1.0,
        batch_size: int | None = None,
        verbose: int = 0,
        random_state: Any = None,
        cache: Any = "memory",
        on_error: str = "raise",
        precision: str = "float32",
        runtime: str = "tensorflow",
    ) -> None:
        self.backbone = backbone
        self.weights = weights
        self.backbone_kwargs = backbone_kwargs
        self.cut = cut
        self.pooling = pooling
        self.input_size = input_size
        self.crop_fraction = crop_fraction
        self.batch_size = batch_size
        self.verbose = verbose
        self.random_state = random_state
        self.cache = cache
        self.on_error = on_error
        self.precision = precision
        self.runtime = runtime

    _parameter_checks = {
        "backbone": Satisfies(
            # A path: a keras-hub preset directory.
            lambda value: isinstance(value, (str, os.PathLike)) or is_keras_model(value),
            "backbone={value} is neither a backbone name (see transferkit.list_backbones()) "
            "nor a keras.Model."),
        "backbone_kwargs": Satisfies(optional_dict,
                                     "backbone_kwargs must be a dict or None, got {kind}."),
        "cut": Satisfies(cut_value, "cut={value} must be None, a block or layer name, an "
                                    "index, 'blocks', or a list of names and indices; see "
                                    "transferkit.list_cut_points()."),
        "pooling": Options(POOLINGS, "use 'avg', 'max', 'cls', 'cls+avg' or None (flatten)"),
        "batch_size": Integer(1, none_means="automatic"),
        "crop_fraction": Real(0, 1, "(]", "1.0 keeps the whole image, 0.875 its central 87.5% "
                                          "(ImageNet's evaluation framing)"),
        "verbose": Satisfies(integer, "verbose={value} must be an integer (0 = silent)."),
        "precision": Options(PRECISIONS),
        "on_error": Options(("raise", "nan"), "use 'raise' or 'nan'"),
    }
    _keras_attributes = ("model_", "_forward", "_staged")
    # Set again by every build from the network it builds; not written, so that a file or
    # pickle of an older transferkit loads the same way.
    _rebuilt_attributes = ("cut_layers_", "_cut_columns", "_boundaries",
                           "_network_fingerprint_")

    # ------------------------------------------------------------------ building
    def _check_parameters(self) -> None:
        check_parameters(self)
        if self.pooling is None and several_cuts(self.cut) and (
                isinstance(self.cut, str) or len(self.cut) > 1):
            raise several_maps_error(self.cut)
        check_runtime(self.runtime, self.precision)
        resolve_cache(self.cache)

    def _fingerprint(self, weights: Any, network_only: bool = False) -> bytes | None:
        """Digest of every parameter that determines the output; None if not reproducible.

        ``network_only``: of every parameter but ``cut`` and ``pooling``, the identity of the
        network the cuts are taken from (the feature cache's keys add layer and pooling).
        """
        from .backbones import get_backbone_spec, resolve_input_size
        from .hub_backbones import hub_identity, is_hub_backbone

        if is_hub_backbone(self.backbone):
            identity = hub_identity(self.backbone, weights, self.random_state)
            backbone, size = os.fspath(self.backbone), self.input_size
        elif isinstance(self.backbone, str):
            identity = weights_identity(weights, self.random_state)
            spec = get_backbone_spec(self.backbone)
            backbone = spec.name
            size = resolve_input_size(self.input_size, spec.default_size)
        else:
            identity = weights_identity(weights, self.random_state, model=self.backbone)
            backbone, size = "user_model", self.input_size
        if identity is None:
            return None
        network = {
            "backbone": backbone, "weights": identity, "backbone_kwargs": self.backbone_kwargs,
            "input_size": size, "crop_fraction": float(self.crop_fraction),
            "precision": self.precision,
            # Another runtime rounds differently: its features are not bit-identical.
            "runtime": self.runtime,
        }
        if network_only:
            return fingerprint({"network": network})
        return fingerprint({**network, "cut": self.cut, "pooling": self.pooling})

    def _features_fingerprint(self) -> bytes | None:
        """The cache key's network part for the weights that ``transform`` runs now.

        A ``keras.Model`` of the user's runs with its live weights (TensorFlow runtime), so
        its key covers the current weights of the built network, read at every call: after
        the user trains the model further, every image is computed anew, never a mix of old
        and new features. Every other network is fixed when it is built.
        """
        network = self._network_fingerprint_
        if network is None or self.preprocessing_ != "user_model" or self.runtime != "tensorflow":
            return network
        current = weights_identity(None, None, model=self.model_)
        return fingerprint({"built": network.hex(), "weights": current})

    def _build_trunk(self, weights: Any, hub_preset: dict | None = None) -> Any:
        with keras_precision(self.precision):
            return build_trunk(self.backbone, weights=weights, input_size=self.input_size,
                               cut=None, backbone_kwargs=self.backbone_kwargs,
                               random_state=self.random_state, hub_preset=hub_preset)

    def _build_network(self, weights: Any, trunk: Any = None) -> tuple[Any, Any]:
        """``(model, layout)`` of the feature network these parameters describe."""
        return build_feature_network(
            self.backbone, weights=weights, input_size=self.input_size, cut=self.cut,
            backbone_kwargs=self.backbone_kwargs, random_state=self.random_state,
            crop_fraction=self.crop_fraction, pooling=self.pooling, precision=self.precision,
            trunk=trunk,
        )

    def _make_forward(self, model: Any, source_size: tuple[int, ...]) -> Any:
        # Backbones we built have weights nobody else changes: fold them. A model of the
        # user's own keeps using its live layers. Folded and traced at the first batch: in a
        # grid search most clones find every feature in the cache and never run. Converted
        # for OpenVINO in fit, though: a network it cannot convert is said there.
        return make_forward(model, source_size, runtime=self.runtime, precision=self.precision,
                            fold=not is_keras_model(self.backbone),
                            lazy=self.runtime == "tensorflow")

    def _set_network(self, model: Any, forward: Any, layout: Any, staged: Any) -> None:
        self.model_, self._forward = model, forward
        # The backbone block by block, shared by every extractor of the same network: what
        # computes the features of cuts at block boundaries (see _uses_stages).
        self._staged = staged
        self._boundaries = tuple(layout.boundaries)
        self.backbone_name_ = layout.backbone_name
        self.cut_layer_ = layout.cut_layer
        self.cut_layers_ = list(layout.cut_layers)
        # What names the columns of several cuts: plain data, so it pickles and saves.
        self._cut_columns = (tuple(layout.cut_labels), tuple(layout.cut_widths))
        self.input_size_ = layout.input_size
        self.source_size_ = layout.source_size
        self.preprocessing_ = layout.preprocessing
        self.n_features_out_ = layout.n_features
        # A keras-hub backbone's architecture travels with the estimator, so that loading
        # it needs neither the preset directory nor a download.
        if layout.hub_preset is not None:
            self.hub_preset_ = layout.hub_preset
        else:
            vars(self).pop("hub_preset_", None)

    def _staged_backbone(self, model: Any, trunk: Any, layout: Any) -> Any:
        # keras.applications backbones only: a keras-hub transformer's blocks output
        # tokens, which the stages' spatial pooling does not take.
        if trunk.module in (None, HUB_MODULE) or not layout.boundaries:
            return None
        return StagedBackbone(model, trunk.full, layout.boundaries, layout.source_size,
                              fold=True)

    def _assemble(self, weights: Any) -> None:
        self._fingerprint_ = self._fingerprint(weights)
        self._network_fingerprint_ = network = self._fingerprint(weights, network_only=True)
        built = model_memo.get(self._fingerprint_) if self._fingerprint_ is not None else None
        if built is None:
            # Clones cut elsewhere or pooled otherwise share one backbone, built once, and
            # run it block by block through the same passes.
            shared = model_memo.get(network) if network is not None else None
            trunk, staged = shared if shared is not None else (self._build_trunk(weights), None)
            model, layout = self._build_network(weights, trunk)
            if staged is None:
                staged = self._staged_backbone(model, trunk, layout)
                if network is not None:
                    model_memo.put(network, (trunk, staged))
            built = (model, self._make_forward(model, layout.source_size), layout, staged)
            if self._fingerprint_ is not None:
                model_memo.put(self._fingerprint_, built, group=network)
        self._set_network(*built)

    def _rebuild_networks(self, weights: Any) -> None:
        # Unpickling: the architecture without fetching any weights, then the saved ones.
        # The memo is bypassed: this model's weights are the pickled ones. What the build
        # determines is taken from the build, not from the state, so that the network and
        # the attributes describing it cannot disagree.
        # A keras-hub backbone is rebuilt from the architecture saved with it: its preset
        # directory may be gone.
        trunk = self._build_trunk(None, getattr(self, "hub_preset_", None))
        model, layout = self._build_network(None, trunk)
        model.set_weights(weights_for(weights, model))
        # The folded (or converted) copy holds its own weights: made from the restored ones.
        self._set_network(model, self._make_forward(model, layout.source_size), layout,
                          self._staged_backbone(model, trunk, layout))
        # Features of these weights, pooled elsewhere, are not known to be those of a fresh
        # build with these parameters: shared with no other extractor.
        self._network_fingerprint_ = getattr(self, "_fingerprint_", None)

    def _ensure_built(self) -> None:
        if not hasattr(self, "model_"):
            self._check_parameters()
            self._assemble(self.weights)

    # ------------------------------------------------------------------ API
    def fit(self, X: Any = None, y: Any = None) -> KerasFeatureExtractor:
        """Build the truncated backbone. Nothing is learned from ``X`` or ``y``.

        Parameters
        ----------
        X : ignored
            Accepted for Pipeline compatibility.
        y : ignored
            Accepted for Pipeline compatibility.

        Returns
        -------
        self : KerasFeatureExtractor
        """
        self._check_parameters()
        self._assemble(self.weights)
        return self

    def transform(self, X: Any) -> np.ndarray:
        """Compute one feature vector per image.

        Parameters
        ----------
        X : array-like or sequence of images
            An array of shape (n, h, w, c) or (n, h, w) with pixel values in
            [0, 255], or a sequence (list, 1-D array, pandas Series, one-column
            DataFrame) of file paths, PIL images or single-image arrays. Images of
            any size are resized to ``source_size_`` (``input_size_`` unless
            ``crop_fraction < 1``).

        Returns
        -------
        ndarray of shape (n_images, n_features), dtype float32
            ``n_features`` is ``n_features_out_``. Row ``i`` always belongs to image ``i``.
        """
        self._ensure_built()
        # set_params may have changed what transform reads (batch_size, cache, on_error...)
        # since the network was built: check it before it is used.
        self._check_parameters()
        images = as_image_collection(X)
        # NaN until computed: a row nothing wrote can never pass for features.
        out = np.full((len(images), self.n_features_out_), np.nan, dtype=np.float32)
        network = self._features_fingerprint()
        cache = resolve_cache(self.cache) if network is not None else None
        if cache is not None:
            failures = self._transform_cached(images, out, cache, network)
        elif self._uses_stages():
            failures = self._compute_by_stages(images, out)
        else:
            failures = self._compute(images, out)
        if failures:
            listing = "; ".join(message for _, message in failures[:20])
            more = f" (and {len(failures) - 20} more)" if len(failures) > 20 else ""
            warnings.warn(
                f"{len(failures)} of {len(images)} images could not be loaded; their rows are "
                f"NaN: {listing}{more}", UserWarning, stacklevel=2,
            )
        return out

    def _columns(self) -> list[tuple[str, slice]]:
        """Each cut's layer and its columns in a row of features."""
        widths = self._cut_columns[1]
        starts = np.cumsum([0, *widths])
        return [(layer, slice(int(starts[k]), int(starts[k + 1])))
                for k, layer in enumerate(self.cut_layers_)]

    def _transform_cached(self, images: Any, out: np.ndarray, cache: Any,
                          network: bytes) -> list[tuple[int, str]]:
        """Fill ``out`` from the cache, computing what it lacks; return the failures.

        Entries are kept per layer and pooling (:func:`transferkit.cache.tap_fingerprint`),
        so a row of several cuts is put together from one entry per cut.
        """
        content = images.content_keys()
        columns = self._columns()
        keys = [keyed(content, tap_fingerprint(network, layer, self.pooling))
                for layer, _ in columns]
        complete = np.ones(len(images), dtype=bool)
        for tap_keys, (_, where) in zip(keys, columns, strict=True):
            known = [i for i, key in enumerate(tap_keys) if key is not None]
            complete[[i for i, key in enumerate(tap_keys) if key is None]] = False
            width = where.stop - where.start
            for i, vector in zip(known, cache.get_many([tap_keys[i] for i in known]),
                                 strict=True):
                if vector is None or vector.shape != (width,):
                    complete[i] = False
                else:
                    out[i, where] = vector
        missing = np.flatnonzero(~complete).tolist()
        if not missing:
            return []
        logger.debug("feature cache: %d of %d images to compute", len(missing), len(images))
        fresh = np.full((len(missing), self.n_features_out_), np.nan, dtype=np.float32)
        subset = images.take(missing)
        if self._uses_stages():
            failures = self._compute_by_stages(subset, fresh, cache, network,
                                               [content[i] for i in missing])
        else:
            failures = self._compute(subset, fresh)
            failed = {position for position, _ in failures}
            # Only what the network computed, and only finite values: a NaN or inf in the
            # cache would reach every later extractor of the same network.
            for tap_keys, (_, where) in zip(keys, columns, strict=True):
                cache.put_many((tap_keys[i], row[where])
                               for i, row in zip(missing, fresh, strict=True)
                               if tap_keys[i] is not None and i not in failed
                               and np.isfinite(row[where]).all())
        out[missing] = fresh
        return failures

    def _uses_stages(self) -> bool:
        """Whether features come from the backbone run block by block.

        For cuts at block boundaries of a named backbone, pooled by average or maximum,
        computed in float32 by TensorFlow: the memory cache can then keep both poolings and
        the activations of the resume points an image passes through, and resume from
        one, with features bit-identical to those computed from the pixels (see
        :class:`transferkit.network.StagedBackbone`).
        """
        return (self._staged is not None and self.pooling in ("avg", "max")
                and self.precision == "float32" and self.runtime == "tensorflow"
                and all(layer in self._boundaries for layer in self.cut_layers_))

    def _compute_by_stages(self, images: Any, out: np.ndarray, cache: Any = None,
                           network: bytes | None = None, content: list | None = None
                           ) -> list[tuple[int, str]]:
        """Compute ``images`` into ``out`` in the backbone's stages; return the failures.

        With a memory cache, each image goes from the deepest resume point whose
        activation the cache keeps (else from its pixels) to the deepest cut, and the cache
        gets the average and the maximum of the cuts and of every resume point on the way,
        and the activation at the last resume point crossed. A search over cuts thus runs the
        network about once per image, to its deepest cut. With a directory, only the
        features asked for are stored.
        """
        boundaries, staged = self._boundaries, self._staged
        depth = {layer: boundaries.index(layer) for layer in self.cut_layers_}
        deepest = max(depth.values())
        shares = cache is not None and cache.keeps_activations
        points: list[int | None] = [None] * len(images)
        activations: list[Any] = [None] * len(images)
        if shares:
            # Resume only below every cut this extractor reads: their features come from
            # the passes that are run.
            kept = [i for i in staged.resume_points if i < min(depth.values())]
            found, activations = resume_points(cache, content, network,
                                               [boundaries[i] for i in kept],
                                               [len(kept)] * len(images))
            points = [None if point is None else kept[point] for point in found]
        own = {(layer, self.pooling) for layer in self.cut_layers_}
        failures: list[tuple[int, str]] = []
        for start in sorted(set(points), key=lambda point: -1 if point is None else point):
            rows = [i for i, point in enumerate(points) if point == start]
            kept_at = staged.kept_point(start, deepest) if shares else None
            inputs = (images.take(rows) if start is None
                      else np.stack([activations[i] for i in rows]))
            progbar = (progress_bar(len(inputs), unit_name="image")
                       if self.verbose and start is None else None)
            first = 0 if start is None else start + 1
            # Both poolings of the cuts, and in memory of the resume points crossed: where
            # the next cuts of a search find them.
            tapped = sorted({index for index in depth.values() if index >= first}
                            | ({index for index in staged.resume_points
                                if first <= index <= deepest} if shares else set()))
            forward = staged.forward(start, deepest, tapped, keep=kept_at is not None)
            (outputs,) = run_batches([forward], inputs, self.source_size_,
                                     self.batch_size or default_batch_size(),
                                     on_error=self.on_error, progress=progbar)
            order = [(boundaries[index], pooling) for index in tapped
                     for pooling in ("avg", "max")]
            failed: set[int] = set()
            if start is None and inputs.failures:
                failures.extend(inputs.failures)
                row_of = {inputs.position(j): j for j in range(len(inputs))}
                failed = {row_of[position] for position, _ in inputs.failures}
            pooled = dict(zip(order, outputs, strict=False))
            if cache is not None:
                # A directory gets only what was asked for: some 40 files per image else.
                stored = order if shares else [tap for tap in order if tap in own]
                self._store(cache, network, [content[i] for i in rows], stored,
                            [pooled[tap] for tap in stored],
                            (boundaries[kept_at], outputs[len(order)])
                            if kept_at is not None else None, failed)
            for layer, where in self._columns():
                values = pooled[(layer, self.pooling)]
                values[sorted(failed)] = np.nan
                out[rows, where] = values
        return sorted(failures)

    @staticmethod
    def _store(cache: Any, network: bytes, content: list, taps: list, values: list,
               kept: tuple[str, np.ndarray] | None, failed: set[int]) -> None:
        """Give the cache what a pass computed: only finite values of images it read (a
        NaN in the cache would reach every later extractor of the same network)."""
        usable = [j for j, key in enumerate(content) if key is not None and j not in failed]
        for (layer, pooling), rows in zip(taps, values, strict=True):
            tap_keys = keyed(content, tap_fingerprint(network, layer, pooling))
            cache.put_many((tap_keys[j], rows[j]) for j in usable if np.isfinite(rows[j]).all())
        if kept is not None:
            layer, rows = kept
            activation_keys = keyed(content, activation_fingerprint(network, layer))
            cache.put_activations((activation_keys[j], rows[j]) for j in usable
                                  if np.isfinite(rows[j]).all())

    def _compute(self, images: Any, out: np.ndarray) -> list[tuple[int, str]]:
        """Run the network over ``images`` into ``out``; return (position, reason) failures.

        Rows of images that failed to load (``on_error="nan"``) are set to NaN.
        """
        progbar = progress_bar(len(images), unit_name="image") if self.verbose else None
        run_batches([self._forward], images, self.source_size_,
                    self.batch_size or default_batch_size(), on_error=self.on_error,
                    progress=progbar, into=[out])
        if images.failures:
            row_of = {images.position(j): j for j in range(len(images))}
            out[[row_of[position] for position, _ in images.failures]] = np.nan
        return sorted(images.failures)

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        """Names of the output features: ``<backbone>_<cut layer>_<index>``.

        With several cuts, ``<cut>_<pooling>_<index>`` (``conv4_avg_17``), where a cut is
        named as it was given (a block or layer name; the layer's name for an index).

        Parameters
        ----------
        input_features : ignored
            Images have no input feature names.

        Returns
        -------
        ndarray of str
        """
        self._ensure_built()
        if several_cuts(self.cut):
            labels, widths = self._cut_columns
            return np.asarray([f"{label}_{self.pooling}_{i}"
                               for label, width in zip(labels, widths, strict=True)
                               for i in range(width)], dtype=object)
        prefix = f"{self.backbone_name_.lower()}_{self.cut_layer_}"
        return np.asarray([f"{prefix}_{i}" for i in range(self.n_features_out_)], dtype=object)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = False
        tags.input_tags.two_d_array = False
        tags.input_tags.three_d_array = True
        tags.non_deterministic = self.weights is None and self.random_state is None
        tags.transformer_tags.preserves_dtype = ["float32"]
        return tags
