"""FineTunedClassifier: a pretrained ConvNet fine-tuned end to end, as a scikit-learn classifier.

Training runs in two phases ("LP-FT"). The head is first trained alone on pooled features of
the frozen backbone, computed once: a linear probe. Only then is the unfrozen part of the
backbone trained together with that head, at a low learning rate. Fine-tuning from a random
head sends large, noisy gradients into the pretrained layers and destroys the features it was
meant to adapt; starting from a good head avoids that.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
import time
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import LabelEncoder
from sklearn.utils import check_random_state
from sklearn.utils.class_weight import compute_sample_weight
from sklearn.utils.multiclass import check_classification_targets, type_of_target
from sklearn.utils.validation import check_is_fitted

from .extractor import _ForwardPass, _is_keras_model, _make_forward, seeded_keras_init
from .image_input import ImageCollection, as_image_collection
from .openvino_runtime import check_runtime, make_openvino_forward
from .persistence import SaveMixin, fill_absent

__all__ = ["FineTunedClassifier"]

logger = logging.getLogger(__name__)

_POOLINGS = ("avg", "max", None)
_AUGMENTATIONS = ("crop", "flip", "rotation", "zoom")
# Strength of rotation (fraction of a full turn) and zoom: the values of the Keras
# transfer-learning guide, mild enough to keep an object recognisable.
_ROTATION_FACTOR = 0.1
_ZOOM_FACTOR = 0.1
_HEAD_INITS = ("logistic", "adam")
# Inverse L2 strengths tried by the internal cross-validation of head_init="logistic".
_HEAD_CS = np.logspace(-3, 2, 11)


# The passes below are traced as callable objects, not closures, for the reason given on
# extractor._ForwardPass: tf.function counts retracings per code object, so a closure
# traced anew by every fit made the third fit of a process (any grid search) log
# TensorFlow's "triggered tf.function retracing" warning. Each instance is its own key.
class _TrainingStep:
    """One Adam step on a weighted minibatch; returns its mean loss and number correct.

    The update calls the optimizer's own ``update_step`` per variable, as
    ``apply_gradients`` does for an Adam without clipping, weight decay or EMA (all that
    ``_train_phase`` creates), but not through ``apply_gradients`` itself: traced, that
    goes through tf.distribute's ``extended.update``, after which TensorFlow's runtime kept
    every trainable weight and both Adam moments allocated when the fit was over (8 MB per
    fit of a 590k-weight layer, measured; the same loop of ``update_step`` kept nothing).
    Applying the update eagerly avoided that too, but cost 1.3 s per step on ResNet50's 212
    variables against 0.11 s traced, half a 224-px batch's forward and backward pass.
    """

    def __init__(self, model: Any, variables: list, optimizer: Any) -> None:
        self.model = model
        self.variables = variables
        self.optimizer = optimizer

    def __call__(self, x: Any, target: Any, weight: Any) -> tuple:
        import tensorflow as tf

        with tf.GradientTape() as tape:
            logits = self.model(x, training=True)
            nll = tf.nn.sparse_softmax_cross_entropy_with_logits(target, logits)
            loss = tf.reduce_mean(weight * nll)
            penalty = tf.add_n(self.model.losses) if self.model.losses else 0.0
            total = loss + penalty
        gradients = tape.gradient(total, self.variables)
        learning_rate = self.optimizer.learning_rate  # the schedule's value at this step
        for gradient, variable in zip(gradients, self.variables, strict=True):
            if gradient is None:  # a weight the loss does not reach
                continue
            self.optimizer.update_step(gradient, variable, learning_rate)
            if variable.constraint is not None:
                variable.assign(variable.constraint(variable))
        self.optimizer.iterations.assign_add(1)
        correct = tf.cast(tf.argmax(logits, axis=1, output_type=tf.int32) == target,
                          tf.float32)
        return loss, tf.reduce_sum(correct)


class _AugmentedViewPass:
    """Pooled frozen features of one random augmented view of each image."""

    def __init__(self, augment: Any, prefix: Any, pooled: Any) -> None:
        self.augment, self.prefix, self.pooled = augment, prefix, pooled

    def __call__(self, x: Any) -> Any:
        views = self.augment(x, training=True)
        return self.pooled(self.prefix(views, training=False), training=False)


def _clearly_lower(losses: np.ndarray, reference: np.ndarray) -> bool:
    """Whether per-image ``losses`` are lower than ``reference`` by more than their noise.

    The mean paired decrease must exceed one standard error of it. On a validation split
    of a few dozen images a smaller decrease is noise: on hymenoptera (25 validation
    images, seeds 0-4) the fine-tuning epochs that early stopping kept for any lower mean
    loss scored, on the 153 held-out images, never above the head they replaced and up to
    three images below it; with this rule two of those five fits keep their head.
    """
    decrease = reference - losses
    if len(decrease) < 2:
        return bool(decrease.mean() > 0)
    standard_error = decrease.std(ddof=1) / math.sqrt(len(decrease))
    return bool(decrease.mean() > standard_error)


def _check_labels(y: Any, n_images: int) -> np.ndarray:
    if y is None:
        raise ValueError("y is None; FineTunedClassifier needs one class label per image.")
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y.ravel()
    if y.ndim != 1:
        raise ValueError(
            f"y has shape {y.shape}; expected a 1-D array with one class label per image."
        )
    if len(y) != n_images:
        raise ValueError(
            f"y has {len(y)} labels but X has {n_images} images; pass exactly one label per "
            "image, in the same order."
        )
    if y.dtype.kind == "f":
        missing = np.isnan(y)
    elif y.dtype == object:
        missing = np.array([v is None or (isinstance(v, float) and math.isnan(v)) for v in y])
    else:
        missing = np.zeros(len(y), dtype=bool)
    if missing.any():
        raise ValueError(
            f"y contains {int(missing.sum())} missing label(s) (NaN or None), the first at "
            f"index {int(np.argmax(missing))}; drop those images or label them."
        )
    check_classification_targets(y)
    if type_of_target(y) not in ("binary", "multiclass"):
        raise ValueError(
            f"y is of type {type_of_target(y)!r}; FineTunedClassifier needs one class label per "
            "image (binary or multiclass)."
        )
    return y


def _check_sample_weight_values(sample_weight: Any, n_images: int) -> np.ndarray:
    """Per-image weights as float64, every problem named with its index and value.

    scikit-learn's own check reports a negative weight as "infinity or a value too large";
    a user needs to hear which weight is wrong and why.
    """
    if sample_weight is None:
        return np.ones(n_images)
    if np.isscalar(sample_weight):
        weight = np.full(n_images, sample_weight)
    else:
        weight = np.asarray(sample_weight)
    if weight.dtype.kind not in "biuf":
        raise ValueError(
            f"sample_weight must hold numbers, not {weight.dtype} values; pass one "
            f"non-negative number per image."
        )
    weight = weight.astype(np.float64)
    if weight.ndim == 2 and weight.shape[1] == 1:
        weight = weight.ravel()
    if weight.shape != (n_images,):
        raise ValueError(
            f"sample_weight has shape {weight.shape}, X has {n_images} images; pass exactly "
            f"one weight per image, in the same order."
        )
    for bad, problem in ((~np.isfinite(weight), "non-finite"), (weight < 0, "negative")):
        if bad.any():
            first = int(np.argmax(bad))
            raise ValueError(
                f"sample_weight has {int(bad.sum())} {problem} value(s), the first "
                f"{float(weight[first])!r} at index {first}; weights must be finite and >= 0 (0 "
                f"leaves an image out)."
            )
    if not np.any(weight > 0):
        raise ValueError(
            "sample_weight is zero for every image, which leaves nothing to train on; give "
            "the images that count a positive weight."
        )
    return weight


class FineTunedClassifier(SaveMixin, ClassifierMixin, BaseEstimator):
    """Fine-tune a pretrained Keras Applications backbone on your images.

    The backbone is truncated at ``cut``, pooled and topped with a new softmax
    head. Layers up to ``freeze_until`` stay frozen; the rest is fine-tuned.
    Training runs in two phases: the head alone on pooled features of the
    frozen network (a linear probe, ``head_epochs`` at ``head_learning_rate``),
    then the unfrozen layers together with that head (``epochs`` at the low
    ``learning_rate``). Both phases stop early on a held-out validation split
    and keep the weights of their best epoch.

    Parameters
    ----------
    backbone : str, default="ResNet50"
        A ``keras.applications`` model by name, case-insensitive; see
        :func:`transferkit.list_backbones`. Its own ``preprocess_input`` is applied:
        pass raw pixel values in [0, 255].
    weights : {"imagenet"}, None or path, default="imagenet"
        Initial backbone weights: ``"imagenet"`` through Keras' own download and
        cache, ``None`` for random ones (seeded by ``random_state``), or a weights file.
    backbone_kwargs : dict, default=None
        Extra constructor arguments, e.g. ``{"alpha": 0.25}`` for MobileNet.
    cut : None, str or int, default=None
        Where the backbone is truncated, as in :class:`KerasFeatureExtractor`: ``None``
        for its last convolutional output, a layer name, a layer index or a block name
        from :func:`transferkit.list_cut_points`.
    freeze_until : "auto", None, str or int, default="auto"
        Layers up to and including this one are frozen; same forms as ``cut``.
        ``"auto"`` freezes every block except the last one before the cut; ``None``
        freezes nothing. In residual backbones it must be a block boundary (a name
        from ``list_cut_points``), because the trainable part must depend on the frozen
        part through that single output. Passing the cut layer itself trains the head only.
    learning_rate : float, default=1e-4
        Initial Adam learning rate of the fine-tuning phase. Low, so that the pretrained
        layers are adapted rather than overwritten; it decays to zero over ``epochs``
        along half a cosine, so that the last epochs settle rather than jump.
    head_learning_rate : float, default=1e-3
        Adam learning rate of the head phase.
    epochs : int, default=10
        Maximum number of epochs of the fine-tuning phase; ``0`` skips it.
    head_epochs : int, default=100
        Maximum number of epochs of the head phase when it runs Adam (see
        ``head_init``). They run on cached pooled features and cost almost nothing.
    batch_size : int, default=32
        Images per training step and per forward pass.
    pooling : {"avg", "max"} or None, default="avg"
        Global pooling of the cut output; ``None`` flattens it.
    dropout : float, default=0.2
        Dropout rate in front of each dense layer of the head.
    hidden_units : int or None, default=None
        Width of an optional ReLU hidden layer in the head; ``None`` for a linear head.
    head_l2 : float, default=1e-3
        L2 penalty on the kernels of the head, which has few examples to learn from.
    head_init : {"logistic", "adam"}, default="logistic"
        How the head phase trains a linear head (``hidden_units=None``).
        ``"logistic"`` fits it exactly, as an L2-regularised multinomial logistic
        regression on the pooled frozen features (of the ``head_views`` too), its
        penalty chosen by the log-loss of a stratified 3-fold cross-validation on the
        training images, the views of an image kept in one fold (``sklearn``'s
        ``LogisticRegressionCV``): no learning rate, epoch count or early stopping to
        get right, and the best linear probe the features allow as the starting point
        of fine-tuning. ``"adam"`` trains it by gradient descent instead
        (``head_epochs`` at ``head_learning_rate``, with ``head_l2`` and
        ``dropout``), as does any head with a hidden layer.
    augment : None, str or sequence of str, default=("crop", "flip")
        Random augmentation of the training images: any of ``"crop"`` (a random
        resized crop: a random part of the image, 35% to 100% of its area, aspect ratio
        3:4 to 4:3, resized to the input size), ``"flip"`` (horizontal), ``"rotation"``
        and ``"zoom"`` (those two as in the Keras transfer-learning guide), e.g.
        ``("flip", "rotation")`` or ``"flip"``; ``"all"`` for the four; ``None`` for none.
        It applies to the fine-tuning phase and to the ``head_views``.
    crop_fraction : float, default=0.875
        Images are resized to ``input_size / crop_fraction`` (256 x 256 for a 224 x 224
        input) and the central ``input_size`` pixels are what the network sees, in
        ``predict`` as in training (where ``"crop"`` draws its random boxes from the
        whole resized image instead). This is the framing the ImageNet weights of
        ``keras.applications`` were evaluated with; fine-tuned on random crops, a network
        sees objects larger than in the whole image, and the central crop at prediction
        matches that scale. ``1.0`` resizes the whole image to ``input_size``.
    head_views : int, default=8
        With ``augment``, the head phase also learns from this many augmented views
        (random crops, flips, ...) of every training image, whose frozen features are
        computed once, so that the head starts the fine-tuning phase fitted to the
        images the fine-tuning phase shows it, not to central crops alone. Costs
        ``head_views`` forward passes of the frozen part over the training images.
        ``0`` learns from the central crops only.
    train_batchnorm : bool, default=False
        By default every BatchNormalization layer stays in inference mode: it
        normalises with the statistics learned on ImageNet, never with those of the
        current batch, and does not update them. Small batches of a small data set give
        noisy statistics that no longer match what the following pretrained layers
        expect, which erases much of what pretraining bought. ``True`` lets the
        BatchNormalization layers of the trainable part use and update batch statistics.
    cache : "auto" or bool, default="auto"
        Whether the frozen part's activations are computed once and the trainable
        part trained on them, rather than running every image through the whole
        network each epoch. Same result, much faster epochs. ``"auto"`` caches when
        ``augment`` is None (augmented images change every epoch and cannot be
        cached). The cache holds the frozen output of every training image in memory.
    early_stopping : bool, default=True
        Hold out ``validation_fraction`` of the training images, stop each phase when
        the validation loss has not improved for ``n_iter_no_change`` epochs and keep
        the weights of the best epoch. An epoch counts as an improvement only if it
        lowers the loss of the validation images by more than one standard error of the
        per-image decrease (the weights the phase started from compete too): a small
        validation split cannot tell smaller differences from noise, and a fine-tuning
        phase then keeps the head it started from rather than an epoch that only looked
        better.
    validation_fraction : float, default=0.1
        Fraction of the images held out (stratified) for early stopping.
    n_iter_no_change : int, default=5
        Patience of early stopping, in epochs.
    class_weight : dict, "balanced" or None, default=None
        Weights of the classes in the loss, as in scikit-learn's classifiers;
        multiplied with ``sample_weight``.
    input_size : int or (int, int), default=None
        ``(height, width)`` the images are resized to; the backbone's default when None.
    runtime : {"tensorflow", "openvino"}, default="tensorflow"
        What runs the fitted network in ``predict`` and ``predict_proba``, as in
        :class:`KerasFeatureExtractor`: ``"openvino"`` converts it once, when ``fit`` ends
        (or when a saved classifier is loaded), and runs it with OpenVINO's CPU plugin
        (``pip install "transferkit[openvino]"``), faster on CPUs without oneDNN for long
        prediction jobs; probabilities equal TensorFlow's up to float32 rounding. Training
        always runs on TensorFlow.
    verbose : int, default=0
        ``1`` or more logs one line per epoch (at INFO level, and prints it).
    random_state : int, RandomState instance or None, default=None
        Seeds the validation split, shuffling, dropout, augmentation and (with
        ``weights=None``) the initial weights: two fits with the same integer give the
        same predictions.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        The class labels.
    model_ : keras.Model
        Pixels in [0, 255] of images resized to ``source_size_`` -> class probabilities
        (the central crop is its first layer).
    backbone_name_ : str
        Canonical name of the backbone.
    cut_layer_ : str
        Name of the last backbone layer (output of the cut).
    freeze_layer_ : str or None
        Name of the last frozen layer; None when nothing is frozen.
    n_trainable_weights_ : int
        Number of trainable scalars in the fine-tuning phase (backbone part and head).
    input_size_ : tuple of int
        ``(height, width)`` of the network's input.
    source_size_ : tuple of int
        ``(height, width)`` images are resized to before the central crop
        (``input_size_ / crop_fraction``); ``model_`` takes images of this size.
    cached_ : bool
        Whether the fine-tuning phase ran on cached frozen activations.
    history_ : dict
        ``{"head": {...}, "finetune": {...}}``; each maps ``"loss"``,
        ``"accuracy"``, ``"seconds"``, ``"learning_rate"`` (at the epoch's start)
        and, with early stopping, ``"val_loss"`` and ``"val_accuracy"`` to one value
        per epoch run, ``"initial_val_loss"`` to the
        validation loss before the phase's first epoch, and ``"best_epoch"`` to the
        index of the epoch whose weights were kept (-1: no epoch improved on the
        starting weights, which were kept). With ``head_init="logistic"``, the head
        entry has no epochs: its ``"seconds"`` holds the time of the fit, ``"views"`` the
        number of rows per training image it learned from (1 + ``head_views``), ``"C"`` the
        inverse penalty chosen by cross-validation, and ``"initial_val_loss"`` the
        validation loss of the fitted head.

    See Also
    --------
    KerasFeatureExtractor : Frozen features for any scikit-learn estimator.

    Examples
    --------
    >>> from transferkit import FineTunedClassifier
    >>> clf = FineTunedClassifier("MobileNet", backbone_kwargs={"alpha": 0.25},
    ...                           random_state=0)
    >>> clf.fit(train_paths, train_labels).score(test_paths, test_labels)  # doctest: +SKIP
    >>> clf.predict_proba(test_paths[:2])  # doctest: +SKIP
    """

    def __init__(
        self,
        backbone: str = "ResNet50",
        *,
        weights: str | os.PathLike | None = "imagenet",
        backbone_kwargs: dict | None = None,
        cut: str | int | None = None,
        freeze_until: str | int | None = "auto",
        learning_rate: float = 1e-4,
        head_learning_rate: float = 1e-3,
        epochs: int = 10,
        head_epochs: int = 100,
        batch_size: int = 32,
        pooling: str | None = "avg",
        dropout: float = 0.2,
        hidden_units: int | None = None,
        head_l2: float = 1e-3,
        head_init: str = "logistic",
        augment: str | tuple[str, ...] | None = ("crop", "flip"),
        crop_fraction: float = 0.875,
        head_views: int = 8,
        train_batchnorm: bool = False,
        cache: str | bool = "auto",
        early_stopping: bool = True,
        validation_fraction: float = 0.1,
        n_iter_no_change: int = 5,
        class_weight: dict | str | None = None,
        input_size: int | tuple[int, int] | None = None,
        runtime: str = "tensorflow",
        verbose: int = 0,
        random_state: Any = None,
    ) -> None:
        self.backbone = backbone
        self.weights = weights
        self.backbone_kwargs = backbone_kwargs
        self.cut = cut
        self.freeze_until = freeze_until
        self.learning_rate = learning_rate
        self.head_learning_rate = head_learning_rate
        self.epochs = epochs
        self.head_epochs = head_epochs
        self.batch_size = batch_size
        self.pooling = pooling
        self.dropout = dropout
        self.hidden_units = hidden_units
        self.head_l2 = head_l2
        self.head_init = head_init
        self.augment = augment
        self.crop_fraction = crop_fraction
        self.head_views = head_views
        self.train_batchnorm = train_batchnorm
        self.cache = cache
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.class_weight = class_weight
        self.input_size = input_size
        self.runtime = runtime
        self.verbose = verbose
        self.random_state = random_state

    # ------------------------------------------------------------------ validation
    def _augmentations(self) -> tuple[str, ...]:
        augment = self.augment
        if augment is None:
            return ()
        if augment == "all":
            return _AUGMENTATIONS
        names = (augment,) if isinstance(augment, str) else tuple(augment)
        unknown = [name for name in names if name not in _AUGMENTATIONS]
        if unknown or not names:
            raise ValueError(
                f"augment={augment!r} is not supported; use None, 'all', or any of "
                f"{_AUGMENTATIONS} (a name or a tuple of names)."
            )
        return tuple(name for name in _AUGMENTATIONS if name in names)

    def _validate_params(self) -> None:
        def positive_int(name: str, minimum: int = 1) -> None:
            value = getattr(self, name)
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) \
                    or value < minimum:
                raise ValueError(f"{name}={value!r} must be an integer >= {minimum}.")

        def positive_float(name: str, allow_zero: bool = False) -> None:
            value = getattr(self, name)
            ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and (
                value >= 0 if allow_zero else value > 0
            )
            if not ok or not math.isfinite(value):
                bound = ">= 0" if allow_zero else "> 0"
                raise ValueError(f"{name}={value!r} must be a finite number {bound}.")

        if not isinstance(self.backbone, str):
            hint = (
                " To fine-tune a keras.Model of your own, compile and fit it with Keras; "
                "KerasFeatureExtractor accepts models for frozen features."
                if _is_keras_model(self.backbone) else ""
            )
            raise ValueError(
                f"backbone={self.backbone!r} must be a backbone name (see "
                f"transferkit.list_backbones()).{hint}"
            )
        if self.backbone_kwargs is not None and not isinstance(self.backbone_kwargs, dict):
            raise ValueError(
                "backbone_kwargs must be a dict or None, got "
                f"{type(self.backbone_kwargs).__name__}."
            )
        positive_int("batch_size")
        positive_int("epochs", 0)
        positive_int("head_epochs", 0)
        positive_int("head_views", 0)
        positive_int("n_iter_no_change")
        positive_float("learning_rate")
        positive_float("head_learning_rate")
        positive_float("head_l2", allow_zero=True)
        if self.pooling not in _POOLINGS:
            raise ValueError(
                f"pooling={self.pooling!r} is not supported; use 'avg', 'max' or None (flatten)."
            )
        crop = self.crop_fraction
        if not isinstance(crop, numbers.Real) or isinstance(crop, bool) or not 0 < crop <= 1:
            raise ValueError(
                f"crop_fraction={self.crop_fraction!r} must be a number in (0, 1]; 1 keeps the "
                "whole image."
            )
        if not isinstance(self.dropout, numbers.Real) or not 0 <= self.dropout < 1:
            raise ValueError(f"dropout={self.dropout!r} must be a number in [0, 1).")
        if self.hidden_units is not None:
            positive_int("hidden_units")
        if not isinstance(self.validation_fraction, numbers.Real) \
                or not 0 < self.validation_fraction < 1:
            raise ValueError(
                f"validation_fraction={self.validation_fraction!r} must be in (0, 1)."
            )
        if self.head_init not in _HEAD_INITS:
            raise ValueError(
                f"head_init={self.head_init!r} is not supported; use 'logistic' or 'adam'."
            )
        check_runtime(self.runtime)
        if self.cache not in ("auto", True, False):
            raise ValueError(f"cache={self.cache!r} must be 'auto', True or False.")
        if self.cache is True and self._augmentations():
            raise ValueError(
                f"cache=True cannot be combined with augment={self.augment!r}: augmented images "
                "change every epoch, so their activations cannot be cached. Use cache='auto'."
            )
        if not isinstance(self.verbose, numbers.Integral):
            raise ValueError(f"verbose={self.verbose!r} must be an integer (0 = silent).")
        if self.class_weight is not None and self.class_weight != "balanced" \
                and not isinstance(self.class_weight, dict):
            raise ValueError(
                f"class_weight={self.class_weight!r} must be None, 'balanced' or a dict "
                "{label: weight}."
            )

    # ------------------------------------------------------------------ building
    def _resolve_freeze(self, full: Any, cut_layer: Any, module: str, name: str) -> Any:
        """The last frozen layer (None: nothing frozen), checked to come before the cut."""
        from .cut_points import list_cut_points, resolve_cut

        order = {id(op): i for i, op in enumerate(full.operations)}
        cut_position = order[id(cut_layer)]
        if self.freeze_until is None:
            return None
        if isinstance(self.freeze_until, str) and self.freeze_until == "auto":
            ends = [resolve_cut(full, block, module)
                    for block in list_cut_points(name, self.backbone_kwargs)]
            before = [op for op in ends if order[id(op)] < cut_position]
            return before[-1] if before else None
        layer = resolve_cut(full, self.freeze_until, module)
        if order[id(layer)] > cut_position:
            raise ValueError(
                f"freeze_until={self.freeze_until!r} (layer {layer.name!r}) comes after "
                f"cut={self.cut!r} (layer {cut_layer.name!r}), so it is not part of the "
                "truncated network; choose a layer at or before the cut (see "
                "transferkit.list_cut_points())."
            )
        return layer

    def _build(self, weights: Any, n_classes: int, seeds: dict[str, int]) -> None:
        """Build every network of the estimator; deterministic given ``seeds``."""
        import keras

        from .augmentation import CentralCrop, RandomResizedCrop, source_size
        from .backbones import build_backbone, get_backbone_spec, resolve_input_size
        from .cut_points import resolve_cut

        layers = keras.layers
        spec = get_backbone_spec(self.backbone)
        size = resolve_input_size(self.input_size, spec.default_size)
        with seeded_keras_init(seeds["init"]):
            full = build_backbone(
                spec.name, weights=weights, input_size=size, backbone_kwargs=self.backbone_kwargs
            )
        cut_layer = resolve_cut(full, self.cut, spec.module)
        freeze_layer = self._resolve_freeze(full, cut_layer, spec.module, spec.name)

        pixels = keras.Input((size[0], size[1], 3), dtype="float32", name="pixels")
        preprocessed = spec.preprocess_input(pixels)
        if freeze_layer is None:
            prefix = keras.Model(pixels, preprocessed, name="frozen")
            suffix = keras.Model(full.inputs, cut_layer.output, name="trainable")
        else:
            head_of_trunk = keras.Model(full.inputs, freeze_layer.output)
            prefix = keras.Model(pixels, head_of_trunk(preprocessed), name="frozen")
        if freeze_layer is cut_layer:
            suffix = None  # everything is frozen: only the head is trained
        elif freeze_layer is not None:
            try:
                suffix = keras.Model(freeze_layer.output, cut_layer.output, name="trainable")
            except ValueError as exc:
                raise ValueError(
                    f"freeze_until={self.freeze_until!r} (layer {freeze_layer.name!r}) does not "
                    f"split {spec.name} in two: layers after it also read earlier outputs (a "
                    "residual connection). Use a block boundary from "
                    f"transferkit.list_cut_points({spec.name!r})."
                ) from exc
        prefix.trainable = False
        if suffix is not None and not self.train_batchnorm:
            # Frozen statistics and no update; see the train_batchnorm docstring for why.
            for layer in suffix.layers:
                if isinstance(layer, layers.BatchNormalization):
                    layer.trainable = False

        with seeded_keras_init(seeds["init"] + 1):
            activations = keras.Input(tuple(prefix.output.shape[1:]), name="frozen_output")
            x = activations
            if suffix is not None:
                x = suffix(activations, training=None if self.train_batchnorm else False)
            if len(x.shape) == 4 and self.pooling == "avg":
                x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
            elif len(x.shape) == 4 and self.pooling == "max":
                x = layers.GlobalMaxPooling2D(name="max_pool")(x)
            elif len(x.shape) != 2:
                x = layers.Flatten(name="flatten")(x)
            pooled_net = keras.Model(activations, x, name="pooled")

            regularizer = keras.regularizers.L2(self.head_l2) if self.head_l2 else None
            features = keras.Input((int(x.shape[-1]),), name="features")
            h = layers.Dropout(self.dropout, seed=seeds["dropout"], name="head_dropout")(features)
            if self.hidden_units is not None:
                h = layers.Dense(self.hidden_units, activation="relu", name="head_hidden",
                                 kernel_regularizer=regularizer)(h)
                h = layers.Dropout(self.dropout, seed=seeds["dropout"] + 1,
                                   name="head_hidden_dropout")(h)
            # Training works on logits (a saturated softmax has no gradient left to follow).
            logits = layers.Dense(n_classes, name="head_logits",
                                  kernel_regularizer=regularizer)(h)
            head = keras.Model(features, logits, name="head")

        trainable_net = keras.Model(activations, head(pooled_net(activations)), name="tuned")
        # Every network below takes images loaded at the source size: the central
        # input-size crop of them is what the backbone sees, unless training crops at random.
        source = source_size(size, self.crop_fraction)
        loaded = keras.Input((source[0], source[1], 3), dtype="float32", name="loaded_pixels")
        central = CentralCrop(size[0], size[1], name="central_crop")(loaded)
        pixel_logits = trainable_net(prefix(central, training=False))
        self.model_ = keras.Model(
            loaded, layers.Softmax(name="probabilities")(pixel_logits),
            name=f"{spec.name}_finetuned",
        )
        x = loaded
        augmentations = self._augmentations()
        if "crop" in augmentations:
            # Inference mode keeps the central crop, so validation sees what predict sees.
            x = RandomResizedCrop(size[0], size[1], seed=seeds["augment"], name="augment_crop")(x)
        else:
            x = central
        for k, name in enumerate(augmentations):
            seed = seeds["augment"] + 1 + k
            if name == "flip":
                x = layers.RandomFlip("horizontal", seed=seed, name="augment_flip")(x)
            elif name == "rotation":
                x = layers.RandomRotation(_ROTATION_FACTOR, seed=seed, name="augment_rotation")(x)
            elif name == "zoom":
                x = layers.RandomZoom(_ZOOM_FACTOR, seed=seed, name="augment_zoom")(x)
        # Loaded pixels -> augmented pixels at the input size (identity but for the crop
        # when there is no augmentation): also makes the augmented views of the head phase.
        self._augment_net = keras.Model(loaded, x, name="augment")
        self._train_net = keras.Model(
            loaded, trainable_net(prefix(x, training=False)) if augmentations else pixel_logits,
            name="pixels_to_logits",
        )
        self._frozen_net = keras.Model(loaded, prefix(central, training=False),
                                       name="frozen_central")
        self._prefix, self._pooled_net, self._head, self._trainable_net = (
            prefix, pooled_net, head, trainable_net
        )
        self._forward = _make_forward(self.model_, source)
        self.backbone_name_ = spec.name
        self.cut_layer_ = cut_layer.name
        self.freeze_layer_ = None if freeze_layer is None else freeze_layer.name
        self.input_size_ = size
        self.source_size_ = source

    # ------------------------------------------------------------------ training
    def _log(self, message: str) -> None:
        logger.info(message)
        if self.verbose:
            print(message, flush=True)

    def _run(self, fn: Any, inputs: Any) -> np.ndarray:
        """Apply ``fn`` (batch -> ndarray) to cached arrays or streamed images, in batches."""
        return self._run_many([fn], inputs)[0]

    def _run_many(self, fns: list, inputs: Any) -> list[np.ndarray]:
        """Apply every one of ``fns`` to each batch of ``inputs``, loading each batch once.

        Decoding a large photograph can cost more than a small network's forward pass, so
        passes over the same images share one decoding.
        """
        if isinstance(inputs, ImageCollection):
            batches = (batch for _, batch in inputs.batches(self.source_size_, self.batch_size))
        else:
            batches = (inputs[i:i + self.batch_size]
                       for i in range(0, len(inputs), self.batch_size))
        parts: list[list[np.ndarray]] = [[] for _ in fns]
        for batch in batches:
            for fn, outputs in zip(fns, parts, strict=True):
                outputs.append(fn(batch))
        return [np.concatenate(outputs) for outputs in parts]

    def _train_phase(
        self,
        phase: str,
        model: Any,
        train: Any,
        y: np.ndarray,
        w: np.ndarray,
        val: Any,
        y_val: np.ndarray | None,
        epochs: int,
        learning_rate: float,
        rng: np.random.RandomState,
        cosine_decay: bool = False,
    ) -> dict[str, list]:
        """Adam on ``model`` with early stopping on ``val``; the best weights are kept.

        With ``cosine_decay`` the learning rate falls from ``learning_rate`` to zero over
        the ``epochs`` along half a cosine: late epochs make small steps, so the weights
        settle instead of jumping between minibatch noises.
        """
        import keras
        import tensorflow as tf

        if cosine_decay and epochs:
            learning_rate = keras.optimizers.schedules.CosineDecay(
                learning_rate, epochs * int(math.ceil(len(y) / self.batch_size))
            )
        optimizer = keras.optimizers.Adam(learning_rate)
        variables = model.trainable_variables
        # Create Adam's moments now: created inside the traced step, each would register
        # conditional functions, holding zero tensors of the variable's shape, in
        # TensorFlow's process-wide function library, never freed (~30 MB per fit).
        optimizer.build(variables)
        streamed = isinstance(train, ImageCollection)

        step = tf.function(_TrainingStep(model, variables, optimizer), reduce_retracing=True)
        inference = self._tensor_forward(model)
        history: dict[str, list] = {"loss": [], "accuracy": [], "seconds": [],
                                    "learning_rate": []}
        if val is not None:
            history.update(val_loss=[], val_accuracy=[])
        def validate() -> tuple[np.ndarray, float]:
            """Per-image validation loss and the accuracy."""
            logits = self._run(inference, val)
            logits = logits.astype(np.float64)
            shifted = logits - logits.max(axis=1, keepdims=True)
            log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
            return (-log_probs[np.arange(len(y_val)), y_val],
                    float((logits.argmax(1) == y_val).mean()))

        best_losses, best_epoch, best_weights = None, -1, None
        if val is not None and epochs:
            # The starting point competes too: an epoch is kept only if it beats the weights
            # the phase started from, so fine-tuning can never end worse than the head alone.
            best_losses, _ = validate()
            best_weights = model.get_weights()
            history["initial_val_loss"] = float(best_losses.mean())
        n = len(y)
        for epoch in range(epochs):
            started = time.perf_counter()
            history["learning_rate"].append(float(optimizer.learning_rate.numpy()))
            order = rng.permutation(n)
            total_loss, total_correct = 0.0, 0.0
            if streamed:
                batches = ((start, batch) for start, batch in train.take(order).batches(
                    self.source_size_, self.batch_size))
            else:
                batches = ((start, train[order[start:start + self.batch_size]])
                           for start in range(0, n, self.batch_size))
            for start, batch in batches:
                idx = order[start:start + len(batch)]
                loss, correct = step(
                    tf.convert_to_tensor(batch, tf.float32),
                    tf.convert_to_tensor(y[idx], tf.int32),
                    tf.convert_to_tensor(w[idx], tf.float32),
                )
                total_loss += float(loss) * len(idx)
                total_correct += float(correct)
            history["loss"].append(total_loss / n)
            history["accuracy"].append(total_correct / n)
            line = f"{phase} epoch {epoch + 1}/{epochs}: loss {total_loss / n:.4f}"
            if val is not None:
                val_losses, val_accuracy = validate()
                val_loss = float(val_losses.mean())
                history["val_loss"].append(val_loss)
                history["val_accuracy"].append(val_accuracy)
                line += (f", val_loss {val_loss:.4f}, "
                         f"val_accuracy {history['val_accuracy'][-1]:.3f}")
                if best_losses is None or _clearly_lower(val_losses, best_losses):
                    best_losses, best_epoch, best_weights = val_losses, epoch, model.get_weights()
            history["seconds"].append(time.perf_counter() - started)
            self._log(line)
            if val is not None and epoch - best_epoch >= self.n_iter_no_change:
                break
        if best_weights is not None:
            model.set_weights(best_weights)
        history["best_epoch"] = best_epoch if val is not None else len(history["loss"]) - 1
        return history

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> FineTunedClassifier:
        """Train the head, then fine-tune the unfrozen layers with it.

        Parameters
        ----------
        X : array-like or sequence of images
            An array of shape (n, h, w, c) or (n, h, w) with pixel values in
            [0, 255], or a sequence (list, 1-D array, pandas Series) of file paths,
            PIL images or single-image arrays, as :class:`KerasFeatureExtractor` takes.
        y : array-like of shape (n_images,)
            Class labels of any type (ints, strings, ...); at least two classes.
        sample_weight : array-like of shape (n_images,), default=None
            Weight of each image in the loss.

        Returns
        -------
        self : FineTunedClassifier
        """
        self._validate_params()
        images = as_image_collection(X)
        y = _check_labels(y, len(images))
        encoder = LabelEncoder().fit(y)
        if len(encoder.classes_) < 2:
            raise ValueError(
                f"y has a single class {encoder.classes_[0]!r}; a classifier needs images of at "
                "least two classes."
            )
        classes = encoder.classes_
        y_code = encoder.transform(y).astype(np.int32)
        weight = _check_sample_weight_values(sample_weight, len(y))
        if self.class_weight is not None:
            weight = weight * compute_sample_weight(self.class_weight, y)
        if not np.any(weight > 0):
            raise ValueError(
                "sample_weight * class_weight is zero for every image, which leaves nothing "
                "to train on; give the classes that count a positive class_weight."
            )

        rng = check_random_state(self.random_state)
        seeds = dict(zip(("init", "dropout", "augment", "split", "shuffle"),
                         (int(s) for s in rng.randint(0, 2**31 - 2, size=5)), strict=True))
        train_idx = np.arange(len(y))
        val_idx = None
        if self.early_stopping:
            n_val = max(len(classes), int(math.ceil(self.validation_fraction * len(y))))
            counts = np.bincount(y_code)
            if n_val >= len(y) or counts.min() < 2:
                raise ValueError(
                    f"early_stopping needs a validation split with every class in it, but y has "
                    f"{len(y)} images and {int(counts.min())} of its smallest class; add images "
                    "or set early_stopping=False."
                )
            train_idx, val_idx = train_test_split(
                train_idx, test_size=n_val, stratify=y_code, random_state=seeds["split"]
            )
        # Mean weight 1 keeps the effective learning rate independent of the weights' scale.
        w_train = (weight[train_idx] / weight[train_idx].mean()).astype(np.float32)

        self.classes_ = classes
        self._seeds = seeds
        self._build(self.weights, len(classes), seeds)
        self.cached_ = self.freeze_layer_ is not None and (
            self.cache is True or (self.cache == "auto" and not self._augmentations())
        )

        prefix_forward = _make_forward(self._frozen_net, self.source_size_)
        train_images = images.take(train_idx)
        val_images = None if val_idx is None else images.take(val_idx)
        y_train = y_code[train_idx]
        y_val = None if val_idx is None else y_code[val_idx]
        # Frozen activations, computed once: the head phase needs them whether or not the
        # fine-tuning phase is cached, because in the head phase the whole backbone is frozen.
        # The head also learns from augmented views, so that it does not start the
        # fine-tuning phase fitted to the central crops alone; they come from the same
        # loading of the training images as the frozen activations.
        n_augmented = self.head_views if self._augmentations() else 0
        view_fns = [self._view_forward()] * n_augmented if n_augmented else []
        train_act, *views = self._run_many([prefix_forward, *view_fns], train_images)
        val_act = None if val_images is None else self._run(prefix_forward, val_images)
        pooled_forward = self._tensor_forward(self._pooled_net)
        train_feat = self._run(pooled_forward, train_act)
        val_feat = None if val_act is None else self._run(pooled_forward, val_act)
        groups = np.arange(len(y_train))
        if views:
            train_feat = np.concatenate([train_feat, *views])
            groups = np.tile(groups, 1 + len(views))
        n_views = len(train_feat) // len(y_train)
        y_head, w_head = np.tile(y_train, n_views), np.tile(w_train, n_views)

        shuffle_rng = np.random.RandomState(seeds["shuffle"])
        if self.head_init == "logistic" and self.hidden_units is None:
            head_history = self._fit_logistic_head(
                train_feat, y_head, w_head, groups, val_feat, y_val, len(classes), seeds["split"]
            )
        else:
            head_history = self._train_phase(
                "head", self._head, train_feat, y_head, w_head, val_feat, y_val,
                self.head_epochs, self.head_learning_rate, shuffle_rng,
            )
        self.history_ = {"head": head_history}
        self.n_trainable_weights_ = int(sum(
            int(np.prod(v.shape)) for v in self._trainable_net.trainable_variables
        ))
        if self.cached_:
            tune_model, tune_train, tune_val = self._trainable_net, train_act, val_act
        else:
            del train_act, val_act
            tune_model, tune_train, tune_val = self._train_net, train_images, val_images
        self.history_["finetune"] = self._train_phase(
            "finetune", tune_model, tune_train, y_train, w_train, tune_val, y_val,
            self.epochs, self.learning_rate, shuffle_rng, cosine_decay=True,
        )
        self._use_runtime()
        return self

    def _use_runtime(self) -> None:
        """Run ``predict`` with ``runtime``, on the final weights of ``model_``."""
        if self.runtime == "openvino":
            self._forward = make_openvino_forward(self.model_, self.source_size_)

    def _fit_logistic_head(
        self,
        features: np.ndarray,
        y: np.ndarray,
        w: np.ndarray,
        groups: np.ndarray,
        val_features: np.ndarray | None,
        y_val: np.ndarray | None,
        n_classes: int,
        seed: int,
    ) -> dict[str, Any]:
        """Set the linear head to a cross-validated L2 logistic regression on ``features``."""
        from sklearn.linear_model import LogisticRegressionCV
        from sklearn.model_selection import StratifiedGroupKFold

        started = time.perf_counter()
        # Views of one image share a group: they must not be split between the folds, or
        # the cross-validation would score images the head has already seen.
        per_image = y[: len(np.unique(groups))]  # views repeat the images in order
        n_splits = int(min(3, np.bincount(per_image, minlength=n_classes).min()))
        if n_splits >= 2:
            # Scored on the central crops of the held-out images only: those are what
            # predict sees, and augmented views are harder, which would favour a head
            # regularised for images it is never asked about.
            n_images = len(per_image)
            cv = [(train, test[test < n_images]) for train, test in
                  StratifiedGroupKFold(n_splits, shuffle=True, random_state=seed)
                  .split(features, y, groups)]
            model = LogisticRegressionCV(Cs=_HEAD_CS, l1_ratios=(0.0,), cv=cv,
                                         scoring="neg_log_loss", max_iter=2000,
                                         use_legacy_attributes=False)
            model.fit(features, y, sample_weight=w)
            C = float(np.ravel(model.C_)[0])
        else:  # a class too small to cross-validate: the usual default penalty
            from sklearn.linear_model import LogisticRegression

            C = 1.0
            model = LogisticRegression(C=C, max_iter=2000).fit(features, y, sample_weight=w)
        coef, intercept = model.coef_, model.intercept_
        if coef.shape[0] == 1:  # binary: one logit difference, split between two logits
            coef = np.concatenate([-coef / 2, coef / 2])
            intercept = np.concatenate([-intercept / 2, intercept / 2])
        self._head.get_layer("head_logits").set_weights(
            [coef.T.astype(np.float32), intercept.astype(np.float32)]
        )
        history: dict[str, Any] = {
            "loss": [], "accuracy": [], "seconds": [time.perf_counter() - started],
            "learning_rate": [], "C": C, "best_epoch": -1, "views": int(len(y) // len(per_image)),
        }
        if val_features is not None:
            log_probs = model.predict_log_proba(val_features)
            history["initial_val_loss"] = float(-log_probs[np.arange(len(y_val)), y_val].mean())
            history.update(val_loss=[], val_accuracy=[])
        self._log(f"head: logistic regression, C={C:g} (3-fold CV)")
        return history

    def _view_forward(self):
        """Loaded images -> pooled frozen features of one random augmented view of each."""
        return self._numpy_pass(
            _AugmentedViewPass(self._augment_net, self._prefix, self._pooled_net))

    @classmethod
    def _tensor_forward(cls, model: Any):
        return cls._numpy_pass(_ForwardPass(model))

    @staticmethod
    def _numpy_pass(fn: Any):
        """``fn`` traced, as a ``float32 batch -> ndarray`` callable."""
        import tensorflow as tf

        compiled = tf.function(fn, reduce_retracing=True)
        return lambda batch: compiled(tf.convert_to_tensor(batch, tf.float32)).numpy()

    # ------------------------------------------------------------------ prediction
    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities of each image.

        Parameters
        ----------
        X : array-like or sequence of images
            Same forms as in :meth:`fit`.

        Returns
        -------
        ndarray of shape (n_images, n_classes)
            Columns follow ``classes_``; each row sums to 1.
        """
        check_is_fitted(self, "model_")
        images = as_image_collection(X)
        probs = self._run(self._forward, images).astype(np.float64)
        return probs / probs.sum(axis=1, keepdims=True)

    def predict(self, X: Any) -> np.ndarray:
        """Most probable class of each image.

        Parameters
        ----------
        X : array-like or sequence of images
            Same forms as in :meth:`fit`.

        Returns
        -------
        ndarray of shape (n_images,)
            Labels from ``classes_``.
        """
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.three_d_array = True
        tags.non_deterministic = self.random_state is None
        return tags

    # ------------------------------------------------------------------ pickling
    _KERAS_ATTRIBUTES = (
        "model_", "_train_net", "_prefix", "_pooled_net", "_head", "_trainable_net", "_forward",
        "_augment_net", "_frozen_net",
    )

    def __getstate__(self) -> dict:
        state = dict(super().__getstate__())
        model = state.get("model_")
        for key in self._KERAS_ATTRIBUTES:
            state.pop(key, None)
        if model is not None:
            # Weights travel as arrays; the architecture is rebuilt on load without fetching
            # any weights, so loading needs no network.
            state["_fitted_weights"] = model.get_weights()
        return state

    def __setstate__(self, state: dict) -> None:
        weights = state.pop("_fitted_weights", None)
        # A classifier pickled or saved before a parameter existed gets the value that
        # reproduces what it did then (crop_fraction=1.0: the whole image).
        fill_absent("FineTunedClassifier", state)
        super().__setstate__(state)
        if weights is not None:
            self._build(None, len(self.classes_), self._seeds)
            if callable(weights):
                # transferkit.load: the file's weights are read only once the network they
                # must fit is known, so that their declared shapes are checked first.
                weights = weights(self.model_)
            self.model_.set_weights(weights)
            self._use_runtime()
