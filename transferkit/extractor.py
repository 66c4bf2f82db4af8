"""KerasFeatureExtractor: a pretrained ConvNet, cut and pooled, as a scikit-learn transformer."""

from __future__ import annotations

import logging
import numbers
import os
import random
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils import check_random_state

from .cache import fingerprint, image_keys, model_memo, resolve_cache, weights_identity
from .image_input import as_image_collection
from .openvino_runtime import check_runtime, make_openvino_forward
from .persistence import SaveMixin

__all__ = ["KerasFeatureExtractor"]

logger = logging.getLogger(__name__)

_POOLINGS = ("avg", "max", None)
_SEEDED_BUILD_LOCK = threading.RLock()
_PRECISIONS = ("float32", "bfloat16")


@contextmanager
def seeded_keras_init(random_state: Any) -> Iterator[None]:
    """Make Keras' default initialisers deterministic without touching global RNG state.

    Keras draws the seed of every unseeded initializer from Python's ``random`` module.
    Seeding that shared module is not enough: any other thread that draws from it during
    the build (a Dask worker's event loop does) shifts the sequence and changes the
    weights. So, for the duration of the build, Keras' seed source is replaced by a
    private ``random.Random(seed)``; builds are serialised so that two cannot share it.
    """
    if random_state is None:
        yield
        return
    seed = (
        int(random_state)
        if isinstance(random_state, numbers.Integral)
        else int(check_random_state(random_state).randint(0, 2**31 - 1))
    )
    try:
        from keras.src.random import seed_generator
    except ImportError:  # a Keras without this module: seed the shared generator instead
        seed_generator = None
    with _SEEDED_BUILD_LOCK:
        if seed_generator is None or not hasattr(seed_generator, "python_random"):
            saved = random.getstate()
            random.seed(seed)
            try:
                yield
            finally:
                random.setstate(saved)
            return
        shared = seed_generator.python_random
        seed_generator.python_random = random.Random(seed)
        try:
            yield
        finally:
            seed_generator.python_random = shared


@contextmanager
def keras_precision(precision: str) -> Iterator[None]:
    """Build layers under a dtype policy, restoring the caller's policy afterwards."""
    if precision == "float32":
        yield
        return
    import keras

    saved = keras.config.dtype_policy()
    keras.config.set_dtype_policy(f"mixed_{precision}")
    try:
        yield
    finally:
        keras.config.set_dtype_policy(saved)


def _is_keras_model(obj: Any) -> bool:
    # Checked by duck-typing first so that importing transferkit never imports Keras.
    if not (hasattr(obj, "layers") and hasattr(obj, "inputs")):
        return False
    import keras

    return isinstance(obj, keras.Model)


class _ForwardPass:
    """``model(x, training=False)`` as a callable object.

    tf.function groups its retracing statistics by the wrapped function's code object; a
    lambda would make every extractor in a grid search count as "retracing the same
    function" and trigger TensorFlow's warning. An instance is its own key.
    """

    def __init__(self, model: Any) -> None:
        self.model = model

    def __call__(self, x: Any) -> Any:
        return self.model(x, training=False)


def default_batch_size() -> int:
    """Images per forward pass when ``batch_size=None``: 8 on CPUs, 32 with a GPU.

    On a CPU a small batch keeps the activations of each layer in cache: on the 2-core
    CI machine a forward pass at batch 8 ran MobileNetV2 1.4x and ResNet50 1.1x faster per
    image than at 32 (and batch 4 was no faster than 8). A GPU needs large batches to be busy.
    """
    import tensorflow as tf

    return 32 if tf.config.list_logical_devices("GPU") else 8


def _make_forward(model: Any, size: tuple[int, int], fold: bool = False):
    """A callable ``float32 batch -> ndarray`` that skips Model.predict's per-call overhead.

    ``fold=True`` runs an inference copy of ``model`` with its BatchNormalization layers
    folded into the convolutions before them (see :mod:`transferkit.batchnorm_folding`);
    only for a model whose weights will not change afterwards.
    """
    import keras

    if fold:
        from .batchnorm_folding import fold_batch_norms

        model, n_folded = fold_batch_norms(model)
        logger.debug("folded %d BatchNormalization layers for inference", n_folded)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        spec = tf.TensorSpec((None, size[0], size[1], 3), tf.float32)
        compiled = tf.function(_ForwardPass(model), input_signature=[spec],
                               reduce_retracing=True)
        return lambda batch: compiled(batch).numpy()
    return lambda batch: keras.ops.convert_to_numpy(model(batch, training=False))


class KerasFeatureExtractor(SaveMixin, TransformerMixin, BaseEstimator):
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
    weights : {"imagenet"}, None or path, default="imagenet"
        ``"imagenet"`` loads the pretrained weights through Keras' own download and
        cache (``$KERAS_HOME/models``), ``None`` initialises randomly, and a path loads a
        weights file (``.h5``, ``.weights.h5`` or ``.keras``; a file saved with the top
        works too).
    backbone_kwargs : dict, default=None
        Extra arguments for the Keras constructor, e.g. ``{"alpha": 0.25}`` for MobileNet.
    cut : None, str or int, default=None
        Where the backbone is truncated: ``None`` for its last convolutional output, a
        layer name, an index into ``model.layers`` (negative counts from the end), or a
        block name such as ``"block4"`` (VGG) or ``"conv4"`` (ResNet) that resolves to
        the last layer of that block; see :func:`transferkit.list_cut_points`.
    pooling : {"avg", "max"} or None, default="avg"
        Global pooling over the spatial axes of the cut output; ``None`` flattens it.
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
        ``1`` or more shows a progress bar during ``transform``.
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
        never cached (each build differs).
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
        Name of the layer whose output is pooled.
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
        cut: str | int | None = None,
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

    # ------------------------------------------------------------------ building
    def _validate_params(self) -> None:
        if self.pooling not in _POOLINGS:
            raise ValueError(
                f"pooling={self.pooling!r} is not supported; use 'avg', 'max' or None (flatten)."
            )
        if self.batch_size is not None and (
            not isinstance(self.batch_size, numbers.Integral)
            or isinstance(self.batch_size, bool)
            or self.batch_size < 1
        ):
            raise ValueError(
                f"batch_size={self.batch_size!r} must be a positive integer or None (automatic)."
            )
        if (not isinstance(self.crop_fraction, numbers.Real)
                or isinstance(self.crop_fraction, bool)
                or not 0 < self.crop_fraction <= 1):
            raise ValueError(
                f"crop_fraction={self.crop_fraction!r} must be a number in (0, 1]: 1.0 keeps the "
                "whole image, 0.875 its central 87.5% (ImageNet's evaluation framing)."
            )
        if not isinstance(self.verbose, numbers.Integral):
            raise ValueError(f"verbose={self.verbose!r} must be an integer (0 = silent).")
        if self.backbone_kwargs is not None and not isinstance(self.backbone_kwargs, dict):
            raise ValueError(
                "backbone_kwargs must be a dict or None, got "
                f"{type(self.backbone_kwargs).__name__}."
            )
        if self.precision not in _PRECISIONS:
            raise ValueError(
                f"precision={self.precision!r} is not supported; use one of {_PRECISIONS}."
            )
        check_runtime(self.runtime, self.precision)
        resolve_cache(self.cache)
        if self.on_error not in ("raise", "nan"):
            raise ValueError(f"on_error={self.on_error!r} is not supported; use 'raise' or 'nan'.")
        if not isinstance(self.backbone, str) and not _is_keras_model(self.backbone):
            raise ValueError(
                f"backbone={self.backbone!r} is neither a backbone name (see "
                "transferkit.list_backbones()) nor a keras.Model."
            )

    def _build_trunk(self, weights: Any) -> tuple[Any, Any, str, tuple[int, int], str, str]:
        """Return (truncated backbone, preprocess fn or None, backbone name, input size,
        preprocessing kind, name of the cut layer)."""
        from .backbones import build_backbone, get_backbone_spec, resolve_input_size
        from .cut_points import resolve_cut, truncate

        if isinstance(self.backbone, str):
            spec = get_backbone_spec(self.backbone)
            size = resolve_input_size(self.input_size, spec.default_size)
            with seeded_keras_init(self.random_state):
                full = build_backbone(
                    spec.name, weights=weights, input_size=size,
                    backbone_kwargs=self.backbone_kwargs,
                )
            layer = resolve_cut(full, self.cut, spec.module)
            return (truncate(full, layer), spec.preprocess_input, spec.name, size,
                    spec.preprocessing, layer.name)

        model = self.backbone
        if len(model.inputs) != 1 or len(model.inputs[0].shape) != 4:
            shapes = [tuple(t.shape) for t in model.inputs]
            raise ValueError(
                f"backbone model {model.name!r} has inputs {shapes}; expected a single image "
                "input of shape (batch, height, width, 3)."
            )
        if self.weights not in ("imagenet", None):
            raise ValueError(
                f"weights={self.weights!r} cannot be applied to a keras.Model backbone: load the "
                "weights into your model (model.load_weights) before passing it."
            )
        if self.backbone_kwargs:
            raise ValueError("backbone_kwargs only applies to a backbone given by name.")
        fixed = tuple(model.inputs[0].shape[1:3])
        if None not in fixed:
            size = (int(fixed[0]), int(fixed[1]))
            if self.input_size is not None and resolve_input_size(self.input_size, 0) != size:
                raise ValueError(
                    f"input_size={self.input_size!r} differs from the fixed input size {size} of "
                    f"backbone model {model.name!r}; leave input_size=None."
                )
        else:
            size = resolve_input_size(self.input_size, 224)
        layer = resolve_cut(model, self.cut, None)
        return truncate(model, layer), None, model.name, size, "user_model", layer.name

    def _fingerprint(self, weights: Any) -> bytes | None:
        """Digest of every parameter that determines the output; None if not reproducible."""
        from .backbones import get_backbone_spec, resolve_input_size

        if isinstance(self.backbone, str):
            identity = weights_identity(weights, self.random_state)
            spec = get_backbone_spec(self.backbone)
            backbone = spec.name
            size = resolve_input_size(self.input_size, spec.default_size)
        else:
            identity = weights_identity(weights, self.random_state, model=self.backbone)
            backbone, size = "user_model", self.input_size
        if identity is None:
            return None
        return fingerprint({
            "backbone": backbone, "weights": identity, "backbone_kwargs": self.backbone_kwargs,
            "cut": self.cut, "pooling": self.pooling, "input_size": size,
            "crop_fraction": float(self.crop_fraction), "precision": self.precision,
            # Another runtime rounds differently: its features are not bit-identical.
            "runtime": self.runtime,
        })

    def _features_fingerprint(self) -> bytes | None:
        """The cache key's network part for the weights that ``transform`` runs now.

        A ``keras.Model`` of the user's runs with its live weights (TensorFlow runtime), so
        its key covers the current weights of the built network, read at every call: after
        the user trains the model further, every image is computed anew, never a mix of old
        and new features. Every other network is fixed when it is built.
        """
        if (self._fingerprint_ is None or self.preprocessing_ != "user_model"
                or self.runtime != "tensorflow"):
            return self._fingerprint_
        current = weights_identity(None, None, model=self.model_)
        return fingerprint({"built": self._fingerprint_.hex(), "weights": current})

    def _assemble(self, weights: Any) -> None:
        self._fingerprint_ = self._fingerprint(weights)
        built = model_memo.get(self._fingerprint_) if self._fingerprint_ is not None else None
        if built is None:
            built = self._build_model(weights)
            if self._fingerprint_ is not None:
                model_memo.put(self._fingerprint_, built)
        (self.model_, self._forward, self.backbone_name_, self.cut_layer_, self.input_size_,
         self.source_size_, self.preprocessing_, self.n_features_out_) = built

    def _build_model(self, weights: Any, with_forward: bool = True) -> tuple:
        import keras

        from .augmentation import CentralCrop, source_size

        with keras_precision(self.precision):
            trunk, preprocess, name, size, preprocessing, cut_layer = self._build_trunk(weights)
            source = source_size(size, self.crop_fraction)
            pixels = keras.Input((source[0], source[1], 3), dtype="float32", name="pixels")
            x = pixels
            if source != size:
                # float32 whatever the policy: a bfloat16 crop would round the pixel values.
                x = CentralCrop(size[0], size[1], dtype="float32", name="central_crop")(x)
            x = preprocess(x) if preprocess is not None else x
            x = trunk(x)
            if len(x.shape) == 4 and self.pooling == "avg":
                x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
            elif len(x.shape) == 4 and self.pooling == "max":
                x = keras.layers.GlobalMaxPooling2D(name="max_pool")(x)
            elif len(x.shape) != 2:
                x = keras.layers.Flatten(name="flatten")(x)
            # Features leave the model as float32 whatever the compute precision.
            x = keras.layers.Activation("linear", dtype="float32", name="features")(x)
        model = keras.Model(pixels, x, name=f"{name}_features")
        n_features = int(x.shape[-1])
        logger.debug("built %s cut at %s: input %s, %d features", name, cut_layer, size,
                     n_features)
        forward = self._forward_for(model, source) if with_forward else None
        return (model, forward, name, cut_layer, size, source, preprocessing, n_features)

    def _forward_for(self, model: Any, source: tuple[int, int]) -> Any:
        if self.runtime == "openvino":
            return make_openvino_forward(model, source)
        # Backbones we built have weights nobody else changes: fold them. A model of the
        # user's own keeps using its live layers.
        return _make_forward(model, source, fold=isinstance(self.backbone, str))

    def _ensure_built(self) -> None:
        if not hasattr(self, "model_"):
            self._validate_params()
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
        self._validate_params()
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
        self._validate_params()
        images = as_image_collection(X)
        # NaN until computed: a row nothing wrote can never pass for features.
        out = np.full((len(images), self.n_features_out_), np.nan, dtype=np.float32)
        features_key = self._features_fingerprint()
        cache = resolve_cache(self.cache) if features_key is not None else None
        if cache is None:
            failures = self._compute(images, out)
        else:
            keys = image_keys(images, features_key)
            known = [i for i, key in enumerate(keys) if key is not None]
            missing = [i for i, key in enumerate(keys) if key is None]
            for i, vector in zip(known, cache.get_many([keys[i] for i in known]), strict=True):
                if vector is None or vector.shape != (self.n_features_out_,):
                    missing.append(i)
                else:
                    out[i] = vector
            missing.sort()
            failures = []
            if missing:
                logger.debug("feature cache: %d of %d images to compute", len(missing),
                             len(images))
                fresh = np.full((len(missing), self.n_features_out_), np.nan, dtype=np.float32)
                failures = self._compute(images.take(missing), fresh)
                out[missing] = fresh
                failed = {position for position, _ in failures}
                # Only what the network computed, and only finite values: a NaN or inf in the
                # cache would reach every later extractor of the same network.
                cache.put_many((keys[i], row) for i, row in zip(missing, fresh, strict=True)
                               if keys[i] is not None and i not in failed
                               and np.isfinite(row).all())
        if failures:
            listing = "; ".join(message for _, message in failures[:20])
            more = f" (and {len(failures) - 20} more)" if len(failures) > 20 else ""
            warnings.warn(
                f"{len(failures)} of {len(images)} images could not be loaded; their rows are "
                f"NaN: {listing}{more}", UserWarning, stacklevel=2,
            )
        return out

    def _compute(self, images: Any, out: np.ndarray) -> list[tuple[int, str]]:
        """Run the network over ``images`` into ``out``; return (position, reason) failures.

        Rows of images that failed to load (``on_error="nan"``) are set to NaN.
        """
        progbar = None
        if self.verbose:
            import keras

            progbar = keras.utils.Progbar(len(images), unit_name="image")
        batch_size = self.batch_size or default_batch_size()
        for start, batch in images.batches(self.source_size_, batch_size,
                                           on_error=self.on_error):
            out[start : start + len(batch)] = self._forward(batch)
            if progbar is not None:
                progbar.update(start + len(batch))
        if images.failures:
            row_of = {images.position(j): j for j in range(len(images))}
            out[[row_of[position] for position, _ in images.failures]] = np.nan
        return sorted(images.failures)

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        """Names of the output features: ``<backbone>_<cut layer>_<index>``.

        Parameters
        ----------
        input_features : ignored
            Images have no input feature names.

        Returns
        -------
        ndarray of str
        """
        self._ensure_built()
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

    # ------------------------------------------------------------------ pickling
    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state = dict(state)
        state.pop("_forward", None)
        model = state.pop("model_", None)
        if model is not None:
            # Weights travel with the pickle, so a loaded extractor needs no network and gives
            # the same features even when it was built from random weights.
            state["_fitted_weights"] = model.get_weights()
        return state

    def __setstate__(self, state: dict) -> None:
        from .persistence import fill_absent

        weights = state.pop("_fitted_weights", None)
        # An extractor pickled or saved before a parameter existed gets the value that
        # reproduces what it did then (crop_fraction=1.0: the whole image).
        fill_absent("KerasFeatureExtractor", state)
        super().__setstate__(state)
        if weights is not None:
            # Rebuild the architecture without fetching any weights, then restore the saved
            # ones. The memo is bypassed: this model's weights are the pickled ones. What the
            # build determines is taken from the build, not from the state, so that the
            # network and the attributes describing it cannot disagree.
            (self.model_, _, self.backbone_name_, self.cut_layer_, self.input_size_,
             self.source_size_, self.preprocessing_, self.n_features_out_) = self._build_model(
                None, with_forward=False)
            if callable(weights):
                # transferkit.load: the file's weights are read only once the network they
                # must fit is known, so that their declared shapes are checked first.
                weights = weights(self.model_)
            self.model_.set_weights(weights)
            # The folded (or converted) copy holds its own weights: make it from the restored
            # ones.
            self._forward = self._forward_for(self.model_, self.source_size_)
