"""Training the fine-tuning network: the step, the phases, early stopping, the head.

Owns how weights are learned once :mod:`transferkit.finetune_network` has built the
networks: one Adam step on a weighted minibatch (:class:`TrainingStep`), a phase of epochs
over cached activations or streamed images with early stopping that restores the best
weights (:func:`train_phase`, :func:`clearly_lower`), the cross-validated logistic head
(:func:`fit_logistic_head`), the pass that draws the augmented views the head also learns
from (:class:`AugmentedViewPass`), and the check of the fine-tuning phase: its folds
(:func:`check_folds`), their runs pooled and judged on calibrated losses
(:func:`pool_folds`, :func:`fit_temperature`), the temperature set on the head
(:func:`set_temperature`), and the features a fine-tuned network computes from the cached
frozen activations, which its logistic head is refit on (:func:`tuned_features`).

Does not own: which layers are frozen and what the networks are
(:mod:`transferkit.finetune_network`), the estimator's parameters, labels, weights and the
order of the phases (:class:`transferkit.FineTunedClassifier`), or how batches are run
(:mod:`transferkit.network`).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from .image_input import ImageCollection
from .network import make_forward, run_batches

__all__ = ["HEAD_CS", "AugmentedViewPass", "FrozenPass", "PhaseSettings", "PhaseTrainer",
           "TrainingStep", "ViewBank", "check_folds", "choose_framing", "clearly_lower",
           "cross_entropies", "fit_logistic_head", "fit_temperature", "frozen_pass",
           "head_columns", "head_standardization", "more_views", "paired_standard_error",
           "pool_folds", "set_head_standardization", "set_temperature", "standardized",
           "standardizes", "train_phase", "tuned_features"]

# Inverse L2 strengths tried by the internal cross-validation of head_init="logistic".
HEAD_CS = np.logspace(-3, 2, 11)


@dataclass(frozen=True)
class PhaseSettings:
    """What every training phase of one fit shares."""

    batch_size: int
    source_size: tuple[int, int]
    n_iter_no_change: int
    log: Callable[[str], None]


# The passes below are traced as callable objects, not closures, for the reason given on
# keras_setup.ForwardPass: tf.function counts retracings per code object, so a closure
# traced anew by every fit made the third fit of a process (any grid search) log
# TensorFlow's "triggered tf.function retracing" warning. Each instance is its own key.
class TrainingStep:
    """One Adam step on a weighted minibatch; returns its mean loss and number correct.

    ``label_smoothing`` ``e`` trains towards ``(1 - e)`` on the label and ``e / n_classes``
    on every class; the returned loss is that smoothed cross-entropy. ``scales``: per
    variable, the factor of the learning rate it takes (discriminative learning rates).

    The update calls the optimizer's own ``update_step`` per variable, as
    ``apply_gradients`` does for an Adam without clipping, weight decay or EMA (all that
    ``_train_phase`` creates), but not through ``apply_gradients`` itself: traced, that
    goes through tf.distribute's ``extended.update``, after which TensorFlow's runtime kept
    every trainable weight and both Adam moments allocated when the fit was over (8 MB per
    fit of a 590k-weight layer, measured; the same loop of ``update_step`` kept nothing).
    Applying the update eagerly avoided that too, but cost 1.3 s per step on ResNet50's 212
    variables against 0.11 s traced, half a 224-px batch's forward and backward pass.
    """

    def __init__(self, model: Any, variables: list, optimizer: Any,
                 label_smoothing: float = 0.0, scales: list[float] | None = None) -> None:
        self.model = model
        self.variables = variables
        self.optimizer = optimizer
        self.label_smoothing = label_smoothing
        self.scales = [1.0] * len(variables) if scales is None else scales

    def __call__(self, x: Any, target: Any, weight: Any) -> tuple:
        import tensorflow as tf

        with tf.GradientTape() as tape:
            logits = self.model(x, training=True)
            nll = tf.nn.sparse_softmax_cross_entropy_with_logits(target, logits)
            if self.label_smoothing:
                # The cross-entropy with targets (1 - e) * one-hot + e / n_classes, as
                # Keras' label_smoothing: e of the target is the uniform distribution.
                uniform = -tf.reduce_mean(tf.nn.log_softmax(logits), axis=1)
                nll = (1.0 - self.label_smoothing) * nll + self.label_smoothing * uniform
            loss = tf.reduce_mean(weight * nll)
            penalty = tf.add_n(self.model.losses) if self.model.losses else 0.0
            total = loss + penalty
        gradients = tape.gradient(total, self.variables)
        learning_rate = self.optimizer.learning_rate  # the schedule's value at this step
        for gradient, variable, scale in zip(gradients, self.variables, self.scales,
                                             strict=True):
            if gradient is None:  # a weight the loss does not reach
                continue
            self.optimizer.update_step(gradient, variable,
                                       learning_rate if scale == 1.0 else learning_rate * scale)
            if variable.constraint is not None:
                variable.assign(variable.constraint(variable))
        self.optimizer.iterations.assign_add(1)
        correct = tf.cast(tf.argmax(logits, axis=1, output_type=tf.int32) == target,
                          tf.float32)
        return loss, tf.reduce_sum(correct)


class PhaseTrainer:
    """One Adam, its traced :class:`TrainingStep` and the traced scoring pass of a model.

    Every run of :func:`train_phase` given the same trainer reuses them, its Adam reset
    to a fresh one's state: the check's runs and the final one train the same layers, and
    tracing the step anew cost each run 0.3-0.4 s (MobileNet 0.25's last block, a third
    of a brain MRI run's ten epochs). The learning rate is a variable of the optimizer,
    set before each step (see :func:`train_phase`), so that one trace serves every
    schedule.

    Parameters
    ----------
    model : keras.Model
        What is trained.
    label_smoothing : float
        As for :class:`TrainingStep`.
    learning_rate_scales : dict, default=None
        Maps a variable's ``path`` to the factor of the learning rate it takes.
    val_model : keras.Model, default=None
        What scores held-out inputs (default ``model``).
    """

    def __init__(self, model: Any, label_smoothing: float = 0.0,
                 learning_rate_scales: dict[str, float] | None = None,
                 val_model: Any = None) -> None:
        import keras
        import tensorflow as tf

        self.optimizer = keras.optimizers.Adam(0.0)
        variables = model.trainable_variables
        # Create Adam's moments now: created inside the traced step, each would register
        # conditional functions, holding zero tensors of the variable's shape, in
        # TensorFlow's process-wide function library, never freed (~30 MB per fit).
        self.optimizer.build(variables)
        scales = [(learning_rate_scales or {}).get(variable.path, 1.0)
                  for variable in variables]
        self.step = tf.function(TrainingStep(model, variables, self.optimizer,
                                             label_smoothing, scales),
                                reduce_retracing=True)
        self.inference = make_forward(model if val_model is None else val_model)

    def reset(self) -> None:
        """Adam's state as a new optimizer's: no steps taken, no moments."""
        rate = self.optimizer.learning_rate.path
        for variable in self.optimizer.variables:
            if variable.path != rate:
                variable.assign(np.zeros(variable.shape, variable.dtype))


class AugmentedViewPass:
    """Frozen activations of one random augmented view of each image (pooled on request)."""

    def __init__(self, augment: Any, prefix: Any, pooled: Any = None) -> None:
        self.augment, self.prefix, self.pooled = augment, prefix, pooled

    def __call__(self, x: Any) -> Any:
        views = self.prefix(self.augment(x, training=True), training=False)
        return views if self.pooled is None else self.pooled(views, training=False)


class ViewBank:
    """Frozen activations of a fixed set of augmented views of every training image.

    The frozen part of the network does not change during fine-tuning, so the frozen
    activations of augmented views can be computed once, with the views the head phase
    learns from, and every fine-tuning epoch then runs only the trainable part. Epoch
    ``e`` shows image ``i`` its view ``(offset[i] + e) % n_views``: every view of an image
    once per ``n_views`` epochs, the images of a batch at different views.

    Parameters
    ----------
    views : ndarray of shape (n_views, n_all_images, ...)
        The frozen activations.
    offsets : ndarray of shape (n_images,)
        Each image's first view.
    rows : ndarray of shape (n_images,), default=None
        Which images of ``views`` the bank holds (default: all): a bank of some images
        (:meth:`take`) reads the same array rather than a copy of their part (a brain MRI
        fit's nine views of 480 images are 220 MB).
    """

    def __init__(self, views: np.ndarray, offsets: np.ndarray,
                 rows: np.ndarray | None = None) -> None:
        self.views, self.offsets = views, offsets
        self.rows = np.arange(views.shape[1]) if rows is None else rows

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def n_views(self) -> int:
        """How many views of each image the bank holds."""
        return self.views.shape[0]

    def take(self, indices: np.ndarray) -> ViewBank:
        """The bank of the images at ``indices``, each with its own views and offset."""
        return ViewBank(self.views, self.offsets[indices], self.rows[indices])

    def view(self, k: int) -> np.ndarray:
        """View ``k`` of every image of the bank, in order."""
        return self.views[k, self.rows]

    def epoch(self, epoch: int, indices: np.ndarray) -> np.ndarray:
        """The activations epoch ``epoch`` trains the images at ``indices`` on."""
        which = (self.offsets[indices] + epoch) % self.n_views
        return self.views[which, self.rows[indices]]


@dataclass
class FrozenPass:
    """What one pass of the frozen part over the training images gives every phase.

    Attributes
    ----------
    central : ndarray or None
        Frozen activations of each image's central crop, when ``cached``: validation
        inputs, and the training inputs when nothing is augmented.
    features : ndarray of shape (n_images, n_features)
        Their pooled features, through the pretrained trainable part.
    view_features : list of ndarray
        Pooled features of each augmented view of every image, one array per view.
    bank : ViewBank or None
        Frozen activations of those views, when the fine-tuning epochs train on them.
    cached : bool
        Whether fine-tuning trains on frozen activations (``bank`` or ``central``)
        rather than on images streamed through the whole network.
    framing : float
        The part of each side of the loaded image that ``central`` keeps.
    other_framings : dict
        For each other framing computed in the same pass, its ``(central, features)``.
    folds : dict
        The memo of :func:`~transferkit.batchnorm_folding.fold_batch_norms` the pass
        folded its networks with: :func:`more_views` folds the frozen part no more.
    traced : dict
        The passes it traced that later ones run again (the augmented views', the pooling
        trainable part's): each trace of MobileNet 0.25's cost 0.05-0.3 s.
    """

    central: np.ndarray | None
    features: np.ndarray
    view_features: list
    bank: ViewBank | None
    cached: bool
    framing: float
    other_framings: dict = field(default_factory=dict)
    folds: dict = field(default_factory=dict)
    traced: dict = field(default_factory=dict)

    def features_at(self, framing: float) -> np.ndarray:
        """Pooled features of the central views at ``framing`` (one the pass computed)."""
        return self.features if framing == self.framing else self.other_framings[framing][1]

    def framed(self, framing: float) -> FrozenPass:
        """The pass with the central views of ``framing`` only: the others are let go."""
        central, features = ((self.central, self.features) if framing == self.framing
                             else self.other_framings[framing])
        return replace(self, central=central, features=features, framing=framing,
                       other_framings={})

    def head_rows(self, rows: np.ndarray, views: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Head features of the images at ``rows`` (central crops, then each view unless
        ``views`` is False), and the position of their image in ``rows`` as group."""
        view_features = self.view_features if views else []
        features = np.concatenate([self.features[rows], *(v[rows] for v in view_features)])
        return features, np.tile(np.arange(len(rows)), 1 + len(view_features))

    def tuning_inputs(self, images: ImageCollection, rows: np.ndarray,
                      views: bool = True) -> Any:
        """What the fine-tuning epochs of the images at ``rows`` train on: their
        augmented views, or (``views=False``) their central crops."""
        if not self.cached:
            return images.take(rows)
        if self.bank is None or not views:
            return self.central[rows]
        return self.bank.take(rows)

    def validation_inputs(self, images: ImageCollection, rows: np.ndarray) -> Any:
        """What scores the images at ``rows``: their frozen activations, when cached."""
        return images.take(rows) if self.central is None else self.central[rows]


def _folded(model: Any, folds: dict) -> Any:
    from .batchnorm_folding import fold_batch_norms

    # The frozen part's weights do not change during a fit: fold them (see frozen_pass),
    # once for every network that runs it (0.18 s a fold of MobileNet 0.25's).
    return fold_batch_norms(model, folds)[0]


def _traced(traced: dict, key: str, model: Any, make: Callable[[], Any]) -> Any:
    """The pass ``traced`` holds for ``model`` under ``key``, made (and held) if none."""
    held = traced.get(key)
    if held is None or held[0] is not model:
        held = traced[key] = (model, make())
    return held[1]


def _view_pass(network: Any, keep_views: bool, folds: dict, traced: dict) -> Any:
    # Keyed by the augmentation, whose random generators go on from call to call.
    return _traced(traced, f"views{'' if keep_views else ', pooled'}", network.augment_net,
                   lambda: make_forward(AugmentedViewPass(
                       network.augment_net, _folded(network.prefix, folds),
                       None if keep_views else network.pooled_net)))


# Cached activations that a pass of the trainable part reads (no gradients) go in
# batches of up to four training batches, as long as they hold no more than this:
# MobileNet 0.25's last block pooled the 4320 views of a brain MRI fit in 0.38 s in
# batches of 128 and 0.53 s in batches of 32. The activations of a network frozen early
# are large, and their batches stay as given.
_ACTIVATION_BATCH_BYTES = 2**24


def _activation_batch(activations: np.ndarray, batch_size: int) -> int:
    """Rows of ``activations`` a pass without gradients reads at a time."""
    row_bytes = max(1, activations[:1].nbytes)
    return max(batch_size, min(4 * batch_size, _ACTIVATION_BATCH_BYTES // row_bytes))


def _pooled(network: Any, settings: PhaseSettings,
            traced: dict) -> Callable[[np.ndarray], np.ndarray]:
    # The trainable part's weights change between calls; a traced pass reads them anew.
    pooled = _traced(traced, "pooled", network.pooled_net,
                     lambda: make_forward(network.pooled_net))
    return lambda activations: run_batches(
        [pooled], activations, settings.source_size,
        _activation_batch(activations, settings.batch_size))[0]


def _view_bank(views: np.ndarray, seed: int) -> ViewBank:
    # Offsets depend on the seed and the number of views only: a bank grown by more_views
    # is the bank one pass drawing every view at once would have made.
    offsets = np.random.RandomState(seed).randint(0, views.shape[0], size=views.shape[1])
    return ViewBank(views, offsets)


def frozen_pass(network: Any, images: ImageCollection, n_views: int, cached: bool,
                settings: PhaseSettings, seed: int,
                other_frozen_nets: dict[float, Any] | None = None) -> FrozenPass:
    """Run the frozen part once over ``images``: central views and ``n_views`` views.

    ``network`` is a :class:`transferkit.finetune_network.FineTuneNetwork`. The views are
    drawn by its augmentation, one per image per view, in the same loading of the images
    as the central views. ``other_frozen_nets`` maps other framings to the frozen network
    of their central view, run in that same loading too (see :meth:`FrozenPass.framed`).
    :func:`more_views` draws more views later.
    """
    size, batch = settings.source_size, settings.batch_size
    keep_views = cached and n_views > 0
    # BatchNormalization folded into the convolutions: the frozen part is not trained, and
    # folded it ran a third faster (MobileNet 0.25's frozen passes, batch 32); its outputs
    # differ from the unfolded network's by float rounding only.
    folds: dict = {}
    traced: dict = {}
    others = dict(other_frozen_nets or {})
    central, *rest = run_batches(
        [make_forward(_folded(network.frozen_net, folds), size),
         *[make_forward(_folded(net, folds), size) for net in others.values()],
         *[_view_pass(network, keep_views, folds, traced)] * n_views],
        images, size, batch)
    other_centrals, views = rest[:len(others)], rest[len(others):]
    pool = _pooled(network, settings, traced)
    bank = None
    if keep_views:
        view_features = [pool(view) for view in views]
        bank = _view_bank(np.stack(views), seed)
    else:
        view_features = views
    del views
    features = pool(central)
    # Streamed epochs do not read them: only the central views' pooled features are kept.
    other_framings = {framing: (other if cached else None, pool(other))
                      for framing, other in zip(others, other_centrals, strict=True)}
    return FrozenPass(central if cached else None, features, view_features, bank, cached,
                      network.framing, other_framings, folds, traced)


def more_views(frozen: FrozenPass, network: Any, images: ImageCollection, n_more: int,
               settings: PhaseSettings, seed: int) -> FrozenPass:
    """``frozen`` with ``n_more`` more augmented views of every image.

    ``network`` must be the one whose augmentation drew ``frozen``'s views (not a
    :func:`~transferkit.finetune_network.reframed` copy): its random generators go on
    from where they stopped, so the new views are new draws, not repeats of the first.
    ``seed`` is the one ``frozen_pass`` was given.
    """
    if n_more <= 0:
        return frozen
    keep_views = frozen.bank is not None
    views = run_batches([_view_pass(network, keep_views, frozen.folds, frozen.traced)] * n_more,
                        images, settings.source_size, settings.batch_size)
    if not keep_views:
        return replace(frozen, view_features=[*frozen.view_features, *views])
    pool = _pooled(network, settings, frozen.traced)
    view_features = [*frozen.view_features, *(pool(view) for view in views)]
    bank = _view_bank(np.concatenate([frozen.bank.views, np.stack(views)]), seed)
    return replace(frozen, view_features=view_features, bank=bank)


def repooled(frozen: FrozenPass, network: Any, settings: PhaseSettings) -> FrozenPass:
    """``frozen`` with its features pooled again by the trainable part as it is now.

    The cached activations (central views and the views' bank) are the same arrays, not
    copies; the pooled features of the central views and of every view are new. For
    a trainable part whose weights or BatchNormalization statistics changed
    (:func:`tuned_features`, :mod:`transferkit.batchnorm_statistics`).
    """
    if frozen.central is None:
        raise ValueError("repooled needs the cached frozen activations of a pass with "
                         "cached=True; this pass streamed its images.")
    pool = _pooled(network, settings, frozen.traced)
    bank = frozen.bank
    view_features = [] if bank is None else [pool(bank.view(k)) for k in range(bank.n_views)]
    return replace(frozen, features=pool(frozen.central), view_features=view_features)


def tuned_features(frozen: FrozenPass, network: Any, settings: PhaseSettings,
                   rows: np.ndarray, views: bool = True) -> FrozenPass:
    """The pass of the images at ``rows``, pooled by the trainable part as it is now.

    The frozen activations (the central crops, and the views of the bank unless
    ``views`` is False) are the same; what the fine-tuned layers make of them is not: a
    head refit on these features reads what fine-tuning learned. Only a pass that cached
    its activations (``frozen.cached``) has them. Row ``i`` of the result is image
    ``rows[i]``.
    """
    if frozen.central is None:
        raise ValueError("tuned_features needs the cached frozen activations of a pass "
                         "with cached=True; this pass streamed its images.")
    bank = frozen.bank.take(rows) if views and frozen.bank is not None else None
    return repooled(replace(frozen, central=frozen.central[rows], bank=bank), network,
                    settings)


def cross_entropies(logits: np.ndarray, y: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Per-row cross-entropy of ``softmax(logits / temperature)`` at the labels ``y``."""
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    shifted = scaled - scaled.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return -log_probs[np.arange(len(y)), y]


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The temperature ``T`` that minimises the mean cross-entropy of ``softmax(logits / T)``.

    One number fitted on held-out logits ("temperature scaling", Guo et al. 2017): it
    changes how confident the probabilities are, never which class is most probable.
    Bounded to [1/2, 4]: where every held-out image is classified right the best
    temperature is 0 (certainty), which a few hundred images cannot vouch for, so
    probabilities are made at most twice as sharp; softening has more room, for networks
    that fine-tuning made overconfident (on the data sets of ``docs/benchmarks.rst`` the
    temperatures found were 0.77 to 1.42).
    """
    from scipy.optimize import minimize_scalar

    # Over log T, where the mean loss is smooth with one minimum.
    found = minimize_scalar(lambda log_t: cross_entropies(logits, y, math.exp(log_t)).mean(),
                            bounds=(-math.log(2.0), math.log(4.0)), method="bounded")
    return float(math.exp(found.x))


def set_temperature(head: Any, temperature: float) -> None:
    """Divide the logits of ``head`` by ``temperature`` (its last Dense layer's weights)."""
    logits = head.get_layer("head_logits")
    logits.set_weights([w / np.float32(temperature) for w in logits.get_weights()])


def paired_standard_error(losses: np.ndarray, reference: np.ndarray) -> float:
    """Standard error of the mean of ``reference - losses``, image by image."""
    if len(losses) < 2:
        return 0.0
    return float((reference - losses).std(ddof=1) / math.sqrt(len(losses)))


def clearly_lower(losses: np.ndarray, reference: np.ndarray) -> bool:
    """Whether per-image ``losses`` are lower than ``reference`` by more than their noise.

    The mean paired decrease must exceed one standard error of it. On a validation split
    of a few dozen images a smaller decrease is noise: on hymenoptera (25 validation
    images, seeds 0-4) the fine-tuning epochs that early stopping kept for any lower mean
    loss scored, on the 153 held-out images, never above the head they replaced and up to
    three images below it; with this rule two of those five fits keep their head.
    """
    decrease = float((reference - losses).mean())
    return decrease > paired_standard_error(losses, reference)



def train_phase(
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
    settings: PhaseSettings,
    cosine_decay: bool = False,
    schedule_epochs: int | None = None,
    val_model: Any = None,
    select_best: bool = True,
    label_smoothing: float = 0.0,
    learning_rate_scales: dict[str, float] | None = None,
    after_epochs: Callable[[], None] | None = None,
    trainer: PhaseTrainer | None = None,
) -> dict[str, list]:
    """Adam on ``model`` with early stopping on ``val``; the best weights are kept.

    ``train`` is an array of inputs, an :class:`ImageCollection` streamed through
    ``model`` or a :class:`ViewBank`. With ``cosine_decay`` the learning rate falls from
    ``learning_rate`` to zero over ``schedule_epochs`` (default: ``epochs``) along half a
    cosine: late epochs make small steps, so the weights settle instead of jumping between
    minibatch noises. A refit that stops after the number of epochs a validation run
    chose passes that run's ``epochs`` as ``schedule_epochs``, so that its epochs take
    the learning rates the chosen ones had. ``val_model`` (default ``model``) scores
    ``val``: frozen activations of the validation images, computed once, are scored by the
    trainable part alone rather than passed through the frozen part every epoch.

    ``select_best=False`` runs every epoch and keeps the last weights; with ``val`` it
    records in ``"held_out"`` the labels and the logits of the validation images before
    the first epoch and after the last, which :func:`pool_folds` judges.

    ``label_smoothing`` smooths the training loss (:class:`TrainingStep`); the validation
    loss is always the plain cross-entropy, the loss the head is judged by too.
    ``learning_rate_scales`` maps a variable's ``path`` to the factor of the learning rate
    it takes (default 1).

    ``after_epochs`` (with ``select_best=False``) is called after the last epoch: it may
    change the weights (the fine-tuned network's logistic head refit on the features the
    tuned layers compute). The held-out images are then scored again, and their logits
    are the last ones ``"held_out"`` records (their mean loss and accuracy in
    ``"val_loss_after"`` and ``"val_accuracy_after"``); the epochs' own scores stay as
    they were, and the last epoch's own logits, before the hook, are kept in
    ``"held_out_last_epoch"`` for :func:`pool_folds` to fall back on.

    ``trainer``: a :class:`PhaseTrainer` of ``model`` (made with the same
    ``label_smoothing``, ``learning_rate_scales`` and ``val_model``, which are then not
    read) that several runs share; by default the run makes its own.
    """
    import tensorflow as tf

    if trainer is None:
        trainer = PhaseTrainer(model, label_smoothing, learning_rate_scales, val_model)
    else:
        trainer.reset()
    optimizer, step, inference = trainer.optimizer, trainer.step, trainer.inference
    steps_per_epoch = int(math.ceil(len(y) / settings.batch_size))
    decay_steps = (schedule_epochs or epochs) * steps_per_epoch

    def rate(step_index: int) -> float:
        """The learning rate of a step: constant, or along half a cosine to zero."""
        if not cosine_decay:
            return learning_rate
        return learning_rate * 0.5 * (1.0 + math.cos(math.pi * min(step_index, decay_steps)
                                                     / max(decay_steps, 1)))

    streamed = isinstance(train, ImageCollection)
    banked = isinstance(train, ViewBank)
    history: dict[str, list] = {"loss": [], "accuracy": [], "seconds": [],
                                "learning_rate": []}
    if val is not None:
        history.update(val_loss=[], val_accuracy=[])
    last_logits = None
    val_batch = (settings.batch_size if val is None or isinstance(val, ImageCollection)
                 else _activation_batch(val, settings.batch_size))

    def validate() -> tuple[np.ndarray, float]:
        """Per-image validation loss and the accuracy."""
        nonlocal last_logits
        logits = run_batches([inference], val, settings.source_size, val_batch)[0]
        last_logits = logits.astype(np.float64)
        return (cross_entropies(last_logits, y_val),
                float((last_logits.argmax(1) == y_val).mean()))

    best_losses, best_epoch, best_weights = None, -1, None
    if val is not None and epochs:
        # The starting point competes too: an epoch is kept only if it beats the weights
        # the phase started from, so fine-tuning can never end worse than the head alone.
        best_losses, initial_accuracy = validate()
        start_logits = last_logits
        best_weights = model.get_weights()
        history["initial_val_loss"] = float(best_losses.mean())
        history["initial_val_accuracy"] = initial_accuracy
    n = len(y)
    for epoch in range(epochs):
        started = time.perf_counter()
        history["learning_rate"].append(float(np.float32(rate(epoch * steps_per_epoch))))
        order = rng.permutation(n)
        total_loss, total_correct = 0.0, 0.0
        if streamed:
            batches = ((start, batch) for start, batch in train.take(order).batches(
                settings.source_size, settings.batch_size))
        elif banked:
            batches = ((start, train.epoch(epoch, order[start:start + settings.batch_size]))
                       for start in range(0, n, settings.batch_size))
        else:
            batches = ((start, train[order[start:start + settings.batch_size]])
                       for start in range(0, n, settings.batch_size))
        for k, (start, batch) in enumerate(batches):
            idx = order[start:start + len(batch)]
            optimizer.learning_rate.assign(rate(epoch * steps_per_epoch + k))
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
            if select_best and (best_losses is None or clearly_lower(val_losses, best_losses)):
                best_losses, best_epoch, best_weights = val_losses, epoch, model.get_weights()
        history["seconds"].append(time.perf_counter() - started)
        settings.log(line)
        if select_best and val is not None and epoch - best_epoch >= settings.n_iter_no_change:
            break
    if not select_best:
        if after_epochs is not None:
            last_epoch_logits = last_logits
            after_epochs()
            if val is not None and epochs:
                val_losses, val_accuracy = validate()
                history["val_loss_after"] = float(val_losses.mean())
                history["val_accuracy_after"] = val_accuracy
        if val is not None and epochs:
            history["held_out"] = (y_val, start_logits, last_logits)
            if after_epochs is not None:
                history["held_out_last_epoch"] = last_epoch_logits
        history["best_epoch"] = len(history["loss"]) - 1
        return history
    if best_weights is not None:
        model.set_weights(best_weights)
    history["best_epoch"] = best_epoch if val is not None else len(history["loss"]) - 1
    return history


def check_folds(y: np.ndarray, n_folds: int | None, fraction: float,
                seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(training rows, held-out rows) of each run that checks the fine-tuning phase.

    ``n_folds`` stratified folds of every image, each held out once, capped at the
    number of images of the smallest class; ``None``: one stratified split holding out
    ``fraction`` of them. Raises ``ValueError`` where a class is too small to be held
    out and trained on.
    """
    from sklearn.model_selection import StratifiedKFold, train_test_split

    counts = np.bincount(y)
    counts = counts[counts > 0]
    n_images, n_classes = len(y), len(counts)
    if n_folds is None:
        n_val = max(n_classes, int(math.ceil(fraction * n_images)))
        if n_val >= n_images or counts.min() < 2:
            raise ValueError(
                f"early_stopping needs a validation split with every class in it, but y has "
                f"{n_images} images and {int(counts.min())} of its smallest class; add "
                "images or set early_stopping=False."
            )
        train, val = train_test_split(np.arange(n_images), test_size=n_val, stratify=y,
                                      random_state=seed)
        return [(train, val)]
    n_splits = int(min(n_folds, counts.min()))
    if n_splits < 2:
        raise ValueError(
            f"early_stopping checks fine-tuning on held-out images of every class, but the "
            f"smallest class of y has {int(counts.min())} image; add images or set "
            "early_stopping=False."
        )
    splitter = StratifiedKFold(n_splits, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(n_images), y))


def pool_folds(histories: Sequence[dict]) -> dict[str, Any]:
    """One history of the fine-tuning phase from its runs on the folds of a check.

    Each run trained on its fold's training rows and scored its held-out rows before
    its first epoch and after each (:func:`train_phase` with ``select_best=False``).
    Held-out losses and accuracies are pooled over every held-out image; training
    losses and accuracies are the folds' means, weighted by their held-out images (the
    folds differ by an image or so); ``"seconds"`` are the folds' sums.

    The verdict, ``"worse_than_start"``, is :func:`clearly_lower` on the paired per-image
    losses of all held-out images, the head's and the last epoch's, each calibrated by
    the temperature fitted on them (``"temperature"``: ``"head"`` and ``"fine_tuned"``;
    the calibrated mean losses ``"calibrated_initial_val_loss"`` and
    ``"calibrated_val_loss"``, and the ``"standard_error"`` of their difference): worse
    by more than one standard error.

    Where the runs refit their heads after the epochs and the refit network is clearly
    worse, the network as the epochs left it, with the head trained alongside the block,
    is judged in its place (``"held_out_last_epoch"`` of :func:`train_phase`); kept if it
    is not clearly worse, ``"head_refit"`` is then False (True where the refit was
    judged) and ``"calibrated_val_loss_refit"`` and ``"calibrated_val_loss_own_head"``
    say what each scored. A refit fitted with the head's penalty on the features of the
    very images the block was just tuned on can trust them more than unseen images
    warrant: on one of the aerial scenes of ``docs/benchmarks.rst`` (AID, seed 2) the
    epochs lowered the held-out loss from 0.316 to 0.310 and the refit raised it to
    0.338, a verdict against the head, not the tuned block. The refit stays the first
    choice: asked instead which of the two scored lower, the check chose the last
    epoch's head on seeds where the refit had been right, and lost test images on
    hymenoptera and AID.

    ``"judged_val_accuracy"`` gives both sides' accuracy
    on those images (``"head"``, ``"fine_tuned"``): where a run refit its head after its
    epochs (``after_epochs`` of :func:`train_phase`), the last epoch's own
    ``"val_accuracy"`` is not what was judged. The classifier predicts
    with the kept one's temperature, so the check compares what it would predict;
    uncalibrated, fine-tuning that made the network more confident without changing more
    classes than noise does looked worse: on the textures of ``docs/benchmarks.rst``
    (seed 2), a held-out loss from 0.603 to 0.617 while the accuracy rose from 0.794 to
    0.799, and 0.595 to 0.594 calibrated. Pooled, the verdict is not the luck of one
    fold's draw: there, five folds' mean changes of the loss ranged from -0.019 to
    +0.034, each with a standard error of 0.010 to 0.018, and the five together had 0.006.
    """
    held_out = [h.pop("held_out") for h in histories]
    sizes = np.array([len(y) for y, _, _ in held_out], dtype=float)
    share = sizes / sizes.sum()

    def pooled(key: str) -> list[float]:
        return [float(v) for v in np.tensordot(share, [h[key] for h in histories], axes=1)]

    pooled_history: dict[str, Any] = {key: pooled(key) for key in
                                      ("loss", "accuracy", "val_loss", "val_accuracy")}
    pooled_history["seconds"] = [float(v) for v in np.sum([h["seconds"] for h in histories],
                                                          axis=0)]
    pooled_history["learning_rate"] = list(histories[0]["learning_rate"])
    pooled_history["initial_val_loss"] = float(share @ [h["initial_val_loss"]
                                                        for h in histories])
    pooled_history["initial_val_accuracy"] = float(share @ [h["initial_val_accuracy"]
                                                            for h in histories])
    for key in ("val_loss_after", "val_accuracy_after"):  # a head refit after the epochs
        if all(key in h for h in histories):
            pooled_history[key] = float(share @ [h[key] for h in histories])
    y = np.concatenate([labels for labels, _, _ in held_out])
    start = np.concatenate([logits for _, logits, _ in held_out])
    last = np.concatenate([logits for _, _, logits in held_out])
    temperatures = {"head": fit_temperature(start, y), "fine_tuned": fit_temperature(last, y)}
    start_losses = cross_entropies(start, y, temperatures["head"])
    last_losses = cross_entropies(last, y, temperatures["fine_tuned"])
    own_heads = [h.pop("held_out_last_epoch", None) for h in histories]
    refit = all(logits is not None for logits in own_heads)
    pooled_history["head_refit"] = refit
    if refit and clearly_lower(start_losses, last_losses):
        own = np.concatenate(own_heads)
        own_temperature = fit_temperature(own, y)
        own_losses = cross_entropies(own, y, own_temperature)
        pooled_history["calibrated_val_loss_refit"] = float(last_losses.mean())
        pooled_history["calibrated_val_loss_own_head"] = float(own_losses.mean())
        if not clearly_lower(start_losses, own_losses):
            pooled_history["head_refit"] = False
            last, last_losses = own, own_losses
            temperatures["fine_tuned"] = own_temperature
    pooled_history["temperature"] = temperatures
    pooled_history["judged_val_accuracy"] = {
        "head": float((start.argmax(axis=1) == y).mean()),
        "fine_tuned": float((last.argmax(axis=1) == y).mean())}
    pooled_history["calibrated_initial_val_loss"] = float(start_losses.mean())
    pooled_history["calibrated_val_loss"] = float(last_losses.mean())
    pooled_history["standard_error"] = paired_standard_error(last_losses, start_losses)
    pooled_history["worse_than_start"] = clearly_lower(start_losses, last_losses)
    pooled_history["best_epoch"] = len(pooled_history["loss"]) - 1
    pooled_history["folds"] = len(histories)
    pooled_history["n_held_out"] = int(sizes.sum())
    return pooled_history


def _one_blas_thread(function: Callable) -> Callable:
    """Run ``function`` with a single BLAS thread.

    The logistic heads' problems are small (a few thousand rows of a few hundred features):
    a second BLAS thread costs more in synchronisation than it gains, and where another
    process holds a core, OpenBLAS's waiting threads spin. One cross-validation of the
    head on the ten digit classes (1944 rows of 256 features) took 5.1 s with OpenBLAS's
    two threads and 0.3 s with one, on the 2-core machine while another process ran.
    """

    @functools.wraps(function)
    def with_one_thread(*args: Any, **kwargs: Any) -> Any:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1, user_api="blas"):
            return function(*args, **kwargs)

    return with_one_thread


@_one_blas_thread
def choose_framing(features: dict[float, np.ndarray], y: np.ndarray, w: np.ndarray,
                   n_classes: int, seed: int,
                   log: Callable[[str], None]) -> tuple[float, dict[float, float] | None]:
    """The framing whose central views a linear probe separates best, and every score.

    ``features`` maps each framing to the pooled features of the images' central views
    at it. Each is scored by the log-loss of the same stratified 3-fold cross-validation
    of the logistic head (:data:`HEAD_CS`), on the same folds; the lowest wins, the first
    on a tie. With one framing, or a class too small to cross-validate, the first framing
    and no scores.
    """
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold

    candidates = list(features)
    n_splits = int(min(3, np.bincount(y, minlength=n_classes).min()))
    if len(candidates) == 1 or n_splits < 2:
        return candidates[0], None
    started = time.perf_counter()
    folds = list(StratifiedKFold(n_splits, shuffle=True, random_state=seed).split(
        features[candidates[0]], y))
    losses = {}
    for framing in candidates:
        fitted = LogisticRegressionCV(
            Cs=HEAD_CS, l1_ratios=(0.0,), scoring="neg_log_loss", max_iter=2000, tol=1e-3,
            use_legacy_attributes=False, cv=folds,
        ).fit(features[framing], y, sample_weight=w)
        losses[framing] = float(-np.asarray(fitted.scores_).mean(axis=0).max())
    chosen = min(candidates, key=lambda framing: losses[framing])  # first on a tie
    scores = ", ".join(f"{framing:g}: {loss:.4f}" for framing, loss in losses.items())
    log(f"framing: crop_fraction={chosen:g}, by {n_splits}-fold CV log-loss ({scores}; "
        f"{time.perf_counter() - started:.1f} s)")
    return chosen, losses


def head_columns(widths: Sequence[int], blocks: bool) -> np.ndarray:
    """Which columns of a head's features it reads: every block's (``blocks``), or the
    cut's alone (the last ``widths[-1]``)."""
    keep = np.ones(int(sum(widths)), dtype=bool)
    if not blocks:
        keep[:-widths[-1]] = False
    return keep


def head_standardization(features: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, ...]:
    """``(mean, scale, keep)`` of a head's standardisation for ``features``.

    Every column standardised (its mean and standard deviation over ``features``) when
    ``keep`` keeps them all; otherwise the kept columns pass as they are and the others
    become zeros, which is what a head on the cut alone learns from.
    """
    mean, scale = np.zeros(features.shape[1]), np.ones(features.shape[1])
    if keep.all():
        mean, scale = features.mean(axis=0), features.std(axis=0)
        scale[scale == 0] = 1.0  # a constant column: nothing to learn from it either way
    return mean, scale, keep.astype(np.float64)


def standardized(features: np.ndarray, standardization: tuple[np.ndarray, ...]) -> np.ndarray:
    """``features`` through a head's standardisation (:func:`head_standardization`)."""
    mean, scale, keep = standardization
    return ((features - mean) / scale * keep).astype(np.float32)


def set_head_standardization(head: Any, standardization: tuple[np.ndarray, ...]) -> None:
    """Give a head's ``head_standardize`` layer (a
    :class:`transferkit.head_layers.Standardization`) these ``(mean, scale, keep)``."""
    head.get_layer("head_standardize").set_weights(
        [np.asarray(part, dtype=np.float32) for part in standardization])


def standardizes(head: Any) -> bool:
    """Whether a head standardises its features (it can read several blocks)."""
    return any(layer.name == "head_standardize" for layer in head.layers)


@_one_blas_thread
def fit_logistic_head(
    head: Any,
    features: np.ndarray,
    y: np.ndarray,
    w: np.ndarray,
    groups: np.ndarray,
    val_features: np.ndarray | None,
    y_val: np.ndarray | None,
    n_classes: int,
    seed: int,
    log: Callable[[str], None],
    C: float | None = None,
    keeps: Sequence[np.ndarray] | None = None,
) -> dict[str, Any]:
    """Set the linear head to a cross-validated L2 logistic regression on ``features``.

    ``features`` holds the central crops of the images, then their augmented views, in
    the same order (``groups`` says which image a row is of). The cross-validation also
    decides whether the views are learned from at all: ``history["views"]`` is 1 when the
    head learned from the central crops alone. With ``C`` given (a refit of a head whose
    penalty and views an earlier fit chose), one logistic regression with that inverse
    penalty, no cross-validation.

    A head that standardises (:func:`standardizes`: it can read several blocks) takes
    ``keeps``, the column sets it may read (:func:`head_columns`; the first, every block,
    by default): the same cross-validation scores each, standardised as
    :func:`head_standardization` says, with and without the views, and the lowest
    log-loss wins (on a tie, the earlier set, and the views). ``history["blocks"]`` is
    the index of the set read. Middle blocks help where the images differ from
    ImageNet's objects (textures, scans, digits) and may only add noise where they do
    not (hymenoptera's ants and bees are ImageNet classes): the data decides, together
    with the views, whose worth depends on which blocks are read.
    """
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import StratifiedGroupKFold

    started = time.perf_counter()
    scaled = standardizes(head)
    keeps = list(keeps) if keeps else [np.ones(features.shape[1], dtype=bool)]
    if not scaled:
        keeps = keeps[:1]
    # Views of one image share a group: they must not be split between the folds, or
    # the cross-validation would score images the head has already seen.
    per_image = y[: len(np.unique(groups))]  # views repeat the images in order
    n_images = len(per_image)
    history_cv, blocks_cv, chosen = None, None, 0

    def read_by_head(X: np.ndarray, standardization: tuple[np.ndarray, ...]) -> np.ndarray:
        # The columns a head does not read are zeros after its standardisation, and an L2
        # logistic regression gives them zero weights: it is fitted on the others alone,
        # and those zeros put back after (on a brain MRI fit's 480 images x 3 rows, the
        # cut's 256 columns of 512 cross-validated in 1.42 s with the zeros, 0.76 s
        # without, to the same penalty and log-loss within 1e-4).
        X, read = standardized(X, standardization), standardization[2].astype(bool)
        return X if read.all() else X[:, read]

    def prepared(keep: np.ndarray, rows: int) -> tuple[np.ndarray, Any]:
        if not scaled:
            return features[:rows], None
        standardization = head_standardization(features[:rows], keep)
        return read_by_head(features[:rows], standardization), standardization

    n_splits = int(min(3, np.bincount(per_image, minlength=n_classes).min()))
    if C is not None:
        from sklearn.linear_model import LogisticRegression

        X, standardization = prepared(keeps[0], len(features))
        model = LogisticRegression(C=C, max_iter=2000).fit(X, y, sample_weight=w)
        how = "refit with the C chosen before"
    elif n_splits >= 2:
        # Scored on the central crops of the held-out images only: those are what
        # predict sees, and augmented views are harder, which would favour a head
        # regularised for images it is never asked about.
        cv = [(train, test[test < n_images]) for train, test in
              StratifiedGroupKFold(n_splits, shuffle=True, random_state=seed)
              .split(features, y, groups)]
        # tol 1e-3 rather than 1e-4: on 240 digit images x 9 views, 10 classes, the 33
        # fits took 8.6 s instead of 23 s and chose the same C; the penalty, not the last
        # digits of the optimum, is what the cross-validation decides.
        def cross_validated(keep: np.ndarray, rows: int) -> tuple[Any, float, Any]:
            X, standardization = prepared(keep, rows)
            fitted = LogisticRegressionCV(
                Cs=HEAD_CS, l1_ratios=(0.0,), scoring="neg_log_loss", max_iter=2000,
                tol=1e-3, use_legacy_attributes=False,
                cv=[(train[train < rows], test) for train, test in cv],
            ).fit(X, y[:rows], sample_weight=w[:rows])
            loss = float(-np.asarray(fitted.scores_).mean(axis=0).max())
            return fitted, loss, standardization

        # Whether the views help is measured, not assumed: random crops and flips teach
        # invariances some images do not have (a cropped or mirrored digit is another
        # digit). The same folds, scored on the same central crops.
        row_counts = [len(features)] + ([n_images] if len(features) > n_images else [])
        results = {(k, rows): cross_validated(keep, rows)
                   for k, keep in enumerate(keeps) for rows in row_counts}
        best = min(results, key=lambda key: results[key][1])  # the first on a tie
        chosen, rows = best
        model, _, standardization = results[best]
        if len(row_counts) > 1:
            history_cv = {"with_views": results[(chosen, len(features))][1],
                          "central_crops_only": results[(chosen, n_images)][1]}
        if len(keeps) > 1:
            blocks_cv = [min(results[(k, r)][1] for r in row_counts)
                         for k in range(len(keeps))]
        how = f"{n_splits}-fold CV"
        if rows < len(features):
            y, w = y[:rows], w[:rows]
            how += (f"; without the views, which raised its log-loss from "
                    f"{history_cv['central_crops_only']:.4f} to {history_cv['with_views']:.4f}")
        if blocks_cv is not None:
            how += ("; " + ", ".join(f"{'every block' if k == 0 else 'the cut alone'} "
                                     f"{loss:.4f}" for k, loss in enumerate(blocks_cv))
                    + f": {'every block' if chosen == 0 else 'the cut alone'}")
        C = float(np.ravel(model.C_)[0])
    else:  # a class too small to cross-validate: the usual default penalty
        from sklearn.linear_model import LogisticRegression

        C = 1.0
        X, standardization = prepared(keeps[0], len(features))
        model = LogisticRegression(C=C, max_iter=2000).fit(X, y, sample_weight=w)
        how = "the default penalty: a class has too few images to cross-validate"
    coef, intercept = model.coef_, model.intercept_
    if scaled:
        set_head_standardization(head, standardization)
        read = standardization[2].astype(bool)
        coef = np.zeros((coef.shape[0], len(read)), coef.dtype)
        coef[:, read] = model.coef_
    if coef.shape[0] == 1:  # binary: one logit difference, split between two logits
        coef = np.concatenate([-coef / 2, coef / 2])
        intercept = np.concatenate([-intercept / 2, intercept / 2])
    head.get_layer("head_logits").set_weights(
        [coef.T.astype(np.float32), intercept.astype(np.float32)]
    )
    history: dict[str, Any] = {
        "loss": [], "accuracy": [], "seconds": [time.perf_counter() - started],
        "learning_rate": [], "C": C, "best_epoch": -1, "views": int(len(y) // len(per_image)),
        "blocks": chosen,
    }
    if history_cv is not None:
        history["cv_log_loss"] = history_cv
    if blocks_cv is not None:
        history["blocks_cv_log_loss"] = blocks_cv
    if val_features is not None:
        X_val = val_features if not scaled else read_by_head(val_features, standardization)
        log_probs = model.predict_log_proba(X_val)
        history["initial_val_loss"] = float(-log_probs[np.arange(len(y_val)), y_val].mean())
        history.update(val_loss=[], val_accuracy=[])
    log(f"head: logistic regression on {len(per_image)} images x {history['views']} "
        f"views, C={C:g} ({how})")
    return history

