"""FineTunedClassifier: a pretrained ConvNet fine-tuned end to end, as a scikit-learn classifier.

Training runs in two phases ("LP-FT"). The head is first trained alone on pooled features of
the frozen backbone, computed once: a linear probe. Only then is the unfrozen part of the
backbone trained together with that head, at a low learning rate. Fine-tuning from a random
head sends large, noisy gradients into the pretrained layers and destroys the features it was
meant to adapt; starting from a good head avoids that. With early stopping, a cross-validated
check (each image held out once) decides whether fine-tuning is kept, and the final network
learns from every image: on a few hundred images a held-out tenth is worth more as training
data than as a judge, and its verdict alone is mostly the luck of its draw.

This module is the estimator shell: parameters and their checks, labels and weights, the
order of the phases, prediction. The networks are :mod:`transferkit.finetune_network`'s,
training them :mod:`transferkit.training`'s, running them :mod:`transferkit.network`'s.
"""

from __future__ import annotations

import logging
import math
import os
import time
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.preprocessing import LabelEncoder
from sklearn.utils import check_random_state
from sklearn.utils.class_weight import compute_sample_weight
from sklearn.utils.multiclass import check_classification_targets, type_of_target
from sklearn.utils.validation import check_is_fitted

from .advice import advised
from .batchnorm_statistics import reestimate_statistics
from .finetune_network import (
    build_finetune_network,
    head_keep,
    head_layers_read,
    reframed,
    view_and_rest,
)
from .image_input import as_image_collection
from .network import POOLINGS, make_forward, run_batches
from .openvino_runtime import check_runtime
from .parameters import Integer, Options, Real, Satisfies, check_parameters, integer, optional_dict
from .persistence import SaveMixin, register_estimator
from .pickling import KerasPicklingMixin, weights_for
from .training import (
    FrozenPass,
    PhaseSettings,
    PhaseTrainer,
    check_folds,
    choose_framing,
    fit_logistic_head,
    frozen_pass,
    head_columns,
    head_standardization,
    more_views,
    pool_folds,
    repooled,
    set_head_standardization,
    set_temperature,
    standardizes,
    train_phase,
    tuned_features,
)

__all__ = ["FineTunedClassifier"]

logger = logging.getLogger(__name__)

_HEAD_INITS = ("logistic", "adam")
_BATCHNORM_STATISTICS = ("pretrained", "target")
# Decoded training images kept in memory for the epochs of one fit: 1 GiB holds 5,400
# images at 256 x 256, the source size of a 224-px network.
_DECODED_PIXELS_MAX_BYTES = 2**30
# Frozen activations of the augmented views kept for the fine-tuning epochs (float32): 2 GiB
# holds 9 views of 4,700 images at MobileNet's 7 x 7 x 256 (alpha 0.25, its last block
# trained), of 300 at ResNet50's 14 x 14 x 1024. Beyond it, epochs stream the images.
_FROZEN_ACTIVATIONS_MAX_BYTES = 2**31
# Augmented views a logistic head's cross-validation tries before the rest are drawn.
_VIEWS_TO_DECIDE = 2


class _ViewThenRest:
    """``predict``'s forward pass in two parts: the central view, then the rest."""

    def __init__(self, view: Any, rest: Any) -> None:
        self.view, self.rest = view, rest

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.rest(self.view(batch))


def _unit_mean(weight: np.ndarray) -> np.ndarray:
    # Mean weight 1 keeps the effective learning rate independent of the weights' scale.
    return (weight / weight.mean()).astype(np.float32)


def _what_was_kept(history: dict, epochs: int, n_images: int) -> str:
    """One line: which weights the fit ended with, and why."""
    kept = history["kept_epochs"]
    if epochs == 0:
        return "kept the head alone: epochs=0 skips fine-tuning."
    tuning = history["finetune"]
    refit = (", the head refit on the features they tuned"
             if history.get("head_refit_on_tuned") else "")
    if "n_held_out" not in tuning:
        return (f"kept all {kept} fine-tuning epochs, trained on all {n_images} "
                f"images{refit} (early_stopping=False: nothing held out to check them on).")
    folds = tuning["folds"]
    held_out = (f"{tuning['n_held_out']} held-out images" if folds == 1 else
                f"{tuning['n_held_out']} images, each held out once ({folds}-fold check),")
    start, last = tuning["calibrated_initial_val_loss"], tuning["calibrated_val_loss"]
    # Accuracy too: a loss can rise with confidence while as many images are right. The
    # judged one: a head refit after the epochs is not the last epoch's.
    judged = tuning.get("judged_val_accuracy",
                        {"fine_tuned": tuning["val_accuracy"][-1],
                         "head": tuning["initial_val_accuracy"]})
    accuracies = f"; accuracy {judged['fine_tuned']:.3f} against {judged['head']:.3f}"
    own_head = (f"; with the head trained along with them instead of refit, "
                f"{tuning['calibrated_val_loss_own_head']:.4f}"
                if "calibrated_val_loss_own_head" in tuning else "")
    if kept == 0:
        return (f"kept the head alone, fitted on all {n_images} images, the backbone as "
                f"pretrained: after {epochs} fine-tuning epoch{'s' if epochs != 1 else ''} the "
                f"{held_out} scored clearly worse than with the head alone (calibrated loss "
                f"{last:.4f} against {start:.4f}{accuracies}{own_head}).")
    if "calibrated_val_loss_refit" in tuning and not tuning["head_refit"]:
        refit = (f", with the head trained along with them (refit on the features they "
                 f"tuned, it had scored clearly worse than the head alone: calibrated loss "
                 f"{tuning['calibrated_val_loss_refit']:.4f})")
    verdict = "lower than" if last < start else "not clearly worse than"
    return (f"kept all {kept} fine-tuning epochs, trained again on all {n_images} "
            f"images{refit}: on the {held_out} their calibrated loss was {verdict} the "
            f"head's ({last:.4f} against {start:.4f}{accuracies}).")


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


@register_estimator
class FineTunedClassifier(SaveMixin, KerasPicklingMixin, ClassifierMixin, BaseEstimator):
    """Fine-tune a pretrained Keras Applications backbone on your images.

    The backbone is truncated at ``cut``, pooled and topped with a new softmax
    head. Layers up to ``freeze_until`` stay frozen; the rest is fine-tuned.
    Training runs in two phases: the head alone on pooled features of the
    frozen network (a linear probe, ``head_epochs`` at ``head_learning_rate``),
    then the unfrozen layers together with that head (``epochs`` at the low
    ``learning_rate``). With ``early_stopping``, both phases first train on all
    but a held-out part of the images, which checks them; then the head and the
    fine-tuning epochs are trained again on every image.

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
        Number of epochs of the fine-tuning phase (the length of its learning-rate
        schedule); ``0`` skips it.
    head_epochs : int, default=100
        Maximum number of epochs of the head phase when it runs Adam (see
        ``head_init``). They run on cached pooled features and cost almost nothing.
    batch_size : int, default=32
        Images per training step and per forward pass.
    pooling : {"avg", "max", "cls", "cls+avg"} or None, default="avg"
        Global pooling of the cut output; ``None`` flattens it. "cls" and "cls+avg" take a
        vision transformer's class token, as in :class:`KerasFeatureExtractor`.
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
        of fine-tuning. Where the fine-tuning epochs ran on cached frozen activations
        (``cached_``), the head is then fitted again, the same way with the same
        penalty, on the features the tuned layers compute: the network keeps what
        fine-tuning learned in its layers, and its head is the logistic regression the
        cross-validation chose, not one Adam moved along with them (the check compares
        like with like: two such heads, on the pretrained and on the tuned features).
        Where the check finds the tuned network with its head refit clearly worse than
        the head alone but with the head Adam moved not clearly worse, fine-tuning is
        kept with Adam's head (``history_["finetune"]["head_refit"]`` is False): the
        refit, fitted on the features of the images the layers were just tuned on, was
        to blame, not the layers. ``"adam"`` trains it by gradient descent instead
        (``head_epochs`` at ``head_learning_rate``, with ``head_l2`` and
        ``dropout``), as does any head with a hidden layer.
    augment : None, str or sequence of str, default=("crop", "flip")
        Random augmentation of the training images: any of ``"crop"`` (a random
        resized crop: a random part of the image, 35% to 100% of its area, aspect ratio
        3:4 to 4:3, resized to the input size), ``"flip"`` (horizontal), ``"rotation"``
        and ``"zoom"`` (those two as in the Keras transfer-learning guide), e.g.
        ``("flip", "rotation")`` or ``"flip"``; ``"all"`` for the four; ``None`` for none.
        It applies to the fine-tuning phase and to the ``head_views``.
    crop_fraction : "auto" or float, default="auto"
        The part of each side of the image the network sees, in ``predict`` as in the
        head's central views and validation (``"crop"`` draws its random boxes from the
        whole image instead). A float ``f``: images are resized to ``input_size / f``
        (256 x 256 for a 224 x 224 input at 0.875) and their central ``input_size``
        pixels are kept; ``1.0`` resizes the whole image to ``input_size``. 0.875 is the
        framing the ImageNet weights of ``keras.applications`` were evaluated with, and
        suits photographs of objects; scans, textures and documents that fill their
        frame lose information to it. ``"auto"`` chooses between 0.875 and 1.0 by the
        log-loss of a 3-fold cross-validation of the logistic head on the central views
        of the training images (one more frozen pass over them, in the same loading):
        images are loaded at ``input_size / 0.875``, and the whole image is that,
        resized to ``input_size`` (antialiased). ``crop_fraction_`` holds the choice.
    head_views : int, default=8
        With ``augment``, the head phase also learns from this many augmented views
        (random crops, flips, ...) of every training image, whose frozen features are
        computed once, so that the head starts the fine-tuning phase fitted to the
        images the fine-tuning phase shows it, not to central crops alone. Costs
        ``head_views`` forward passes of the frozen part over the training images.
        ``0`` learns from the central crops only. A logistic head (``head_init=
        "logistic"``) learns from the views only where its cross-validation says they
        help; it decides on 2 views first, and the others are drawn only if those 2
        helped.
    train_batchnorm : bool, default=False
        By default every BatchNormalization layer stays in inference mode: it
        normalises with the statistics learned on ImageNet, never with those of the
        current batch, and does not update them. Small batches of a small data set give
        noisy statistics that no longer match what the following pretrained layers
        expect, which erases much of what pretraining bought. ``True`` lets the
        BatchNormalization layers of the trainable part use and update batch statistics.
    batchnorm_statistics : {"pretrained", "target"}, default="pretrained"
        What the BatchNormalization layers of the trainable part normalise with (in
        inference mode, see ``train_batchnorm``). ``"pretrained"``: ImageNet's
        statistics. ``"target"``: each layer's mean and variance re-estimated on the
        central views of the training images, one layer after the other, before the
        head is fitted; nothing is learned ("AdaBN", Li et al. 2016). Images unlike
        ImageNet's reach the trainable part with other statistics than ImageNet's, and
        its pretrained layers then read channels shifted and scaled away from what they
        learned on. On the brain MRI scans of ``docs/benchmarks.rst``, ``"target"``
        lowered the test log-loss on four seeds of five and kept fine-tuning on all
        five; on the textures and hymenoptera it cost test images, on the digits it
        dropped fine-tuning on one seed of five, and a cross-validated choice between
        the two did not pick the better one reliably: the default stays ImageNet's.
        Estimated from the cached frozen activations: a fit that streams its images
        (``cache=False``, or too many images) rejects ``"target"``.
    label_smoothing : float, default=0.0
        Label smoothing ``e`` of the loss the fine-tuning phase (and an Adam head)
        trains on: the target puts ``1 - e`` on the label and ``e / n_classes`` on every
        class, which keeps the network from growing ever more confident on a few hundred
        images. The held-out check of ``early_stopping`` still scores the plain
        cross-entropy.
    layer_decay : float, default=1.0
        Discriminative learning rates: where ``freeze_until`` leaves more than one block
        of the backbone trainable (a block name from ``list_cut_points``), each block
        learns at ``layer_decay`` times the rate of the block after it; the last block and
        the head at ``learning_rate``. Lower layers hold more general features, which
        a few hundred images should move less.
    head_blocks : int, default=3
        How many block outputs the head reads: the cut's, and ``head_blocks - 1`` block
        ends below it, every second one counting down (MobileNet cut at its last block:
        blocks 13, 11 and 9), each pooled, concatenated, and standardised by a fixed
        layer of the head set from the training images. The last block of an ImageNet
        network is specialised to ImageNet's objects; the middle ones keep the texture
        and local pattern other images share. A logistic head reads them only where
        its cross-validation on the training images scores them better than the cut
        alone (``history_["head_blocks"]``; ``head_layers_`` says what it reads):
        measured on textures, digits and brain scans they raised accuracy by 0.02 to
        0.05, and on hymenoptera, whose ants and bees are ImageNet classes, they did not
        help (docs/benchmarks.rst, "A head on several blocks"). ``1`` reads the cut
        alone; with ``pooling=None`` the head reads the cut alone whatever
        ``head_blocks``. Blocks below ``freeze_until`` cost nothing during fine-tuning:
        their pooled outputs are computed with the frozen activations.
    cache : "auto" or bool, default="auto"
        Whether the frozen part's activations are computed once and the fine-tuning
        epochs run the trainable part alone on them, rather than running every image
        through the whole network each epoch. With ``augment``, what is cached are the
        activations of the ``head_views`` augmented views the head phase computes
        anyway, and epoch ``e`` trains each image on one of them (every view once per
        ``head_views`` epochs); without, those of the central crops. ``"auto"`` caches
        when they take at most 2 GiB of memory (float32), else the images are streamed
        through the whole network with new random views every epoch, as ``False``
        does. ``True`` caches whatever the size and needs ``head_views >= 1`` with
        ``augment``.
    early_stopping : bool, default=True
        Check the fine-tuning phase on held-out images before keeping it. On each of
        ``validation_folds`` folds, the head and the whole fine-tuning schedule learn
        from the other folds and the held-out fold scores both; fine-tuning is kept
        unless, over every held-out image, its last epoch is clearly worse than the head
        alone: the mean per-image loss, each network's calibrated by the temperature that
        suits it best, higher by more than one standard error of the paired
        differences. The final network is then the head, fitted on every image,
        fine-tuned on every image for all ``epochs``, or not at all, on the pretrained
        backbone. A head trained by Adam (``head_init="adam"`` or ``hidden_units``)
        stops when the first fold's held-out loss has not improved for
        ``n_iter_no_change`` epochs, an epoch counting as an improvement only if it
        lowers that loss by more than one standard error, and learns from every image
        for as many epochs as that kept. Choosing a number of fine-tuning epochs on a few dozen
        held-out images did worse on unseen images than the whole schedule, and one
        held-out tenth's verdict on fine-tuning was mostly the luck of its draw, on the
        data sets of ``docs/benchmarks.rst``. ``False`` trains once, on every image, with
        no check.
    validation_folds : int or None, default=3
        Number of folds of the check (stratified; at most the number of images of the
        smallest class). Each costs one more fit of the head and run of the fine-tuning
        schedule, on the cached frozen activations where ``cache`` allows. Three, not
        five: the verdict pools every held-out image whatever the number of folds, and
        on the brain MRI scans of ``docs/benchmarks.rst`` five folds made a fit 17 times
        as long as a linear probe's, three 15 times. ``None``: one split holding out
        ``validation_fraction`` of the images.
    validation_fraction : float, default=0.1
        Fraction of the images held out (stratified) with ``validation_folds=None``.
    n_iter_no_change : int, default=5
        Patience of the Adam head's early stopping, in epochs.
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
    head_layers_ : list of str
        The layers whose pooled outputs the head reads (see ``head_blocks``), shallowest
        first; the last is ``cut_layer_``. With a logistic head, the cut alone where its
        cross-validation scored the other blocks worse (``history_["head_blocks"]``).
    n_trainable_weights_ : int
        Number of trainable scalars in the fine-tuning phase (backbone part and head).
    input_size_ : tuple of int
        ``(height, width)`` of the network's input.
    source_size_ : tuple of int
        ``(height, width)`` images are resized to before their central view
        (``input_size_ / crop_fraction``, ``input_size_ / 0.875`` for ``"auto"``);
        ``model_`` takes images of this size.
    crop_fraction_ : float
        The part of each side of the image ``model_`` sees: ``crop_fraction``, or the
        framing ``"auto"`` chose.
    cached_ : bool
        Whether the fine-tuning epochs ran on cached frozen activations.
    batchnorm_statistics_ : {"pretrained", "target"}
        The statistics the trainable part's BatchNormalization layers normalise with:
        ``batchnorm_statistics``, or ``"pretrained"`` where the trainable part has no
        BatchNormalization layer to re-estimate.
    temperature_ : float
        What the logits of ``model_`` were divided by: the temperature that made the
        kept network's probabilities best on the check's held-out images
        (``history_["finetune"]["temperature"]``); 1 without early stopping.
    history_ : dict
        ``"head"``: the head, fitted on every image (a head trained by Adam: on the
        first fold's training rows, and ``"refit_head"`` on every image).
        ``"finetune"``: with early stopping, the check, pooled over its folds (see
        ``early_stopping``): per epoch, the folds' mean training ``"loss"`` and
        ``"accuracy"``, the ``"val_loss"`` and ``"val_accuracy"`` of every held-out
        image, ``"initial_val_loss"`` and ``"initial_val_accuracy"`` the head's,
        ``"folds"`` and ``"n_held_out"`` how many, and ``"worse_than_start"`` the
        verdict: whether the held-out images scored the last epoch clearly worse than
        the head (with the head refit after the epochs, see ``head_init``: their
        ``"val_loss_after"`` and ``"val_accuracy_after"``, ``"judged_val_accuracy"``
        both sides' accuracy, and ``"head_refit"`` whether the refit was what was judged
        and kept, see ``head_init``); then ``"refit_finetune"`` (absent when the head was
        kept), fine-tuning on every image, which gave the final weights. Without early stopping,
        ``"finetune"`` is that run on every image. Each phase also maps ``"seconds"``
        and ``"learning_rate"`` (at the epoch's start) to one value per epoch run, and
        ``"best_epoch"`` to the index of the epoch whose weights the phase ended with
        (-1: the starting weights). With ``head_init="logistic"``, a head entry has
        no epochs: its ``"seconds"`` holds the time of the fit, ``"views"`` the number of
        rows per training image it learned from (1 + ``head_views``, or 1 without the
        views), ``"views_tried"`` (present when the views were dropped before all were
        drawn) the number of views its cross-validation tried, ``"C"`` the inverse
        penalty chosen by cross-validation (the check's heads reuse it). With
        ``crop_fraction="auto"``, ``"framing"``: the ``"crop_fraction"`` chosen and the
        ``"cv_log_loss"`` of each framing (absent when a class was too small to
        cross-validate, and the central crop was kept). Then
        ``"kept_epochs"``: the fine-tuning epochs the final weights went through (0:
        the head alone), ``"head_refit_on_tuned"``: whether the final head was fitted
        again on the tuned features, and ``"summary"``: one line saying which weights
        were kept and why, which ``verbose`` fits also log.

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
        crop_fraction: float | str = "auto",
        head_views: int = 8,
        train_batchnorm: bool = False,
        batchnorm_statistics: str = "pretrained",
        label_smoothing: float = 0.0,
        layer_decay: float = 1.0,
        head_blocks: int = 3,
        cache: str | bool = "auto",
        early_stopping: bool = True,
        validation_folds: int | None = 3,
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
        self.batchnorm_statistics = batchnorm_statistics
        self.label_smoothing = label_smoothing
        self.layer_decay = layer_decay
        self.head_blocks = head_blocks
        self.cache = cache
        self.early_stopping = early_stopping
        self.validation_folds = validation_folds
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.class_weight = class_weight
        self.input_size = input_size
        self.runtime = runtime
        self.verbose = verbose
        self.random_state = random_state

    _parameter_checks = {
        "backbone": Satisfies(
            # A path: a keras-hub preset directory.
            lambda value: isinstance(value, (str, os.PathLike)),
            "backbone={value} must be a backbone name (see transferkit.list_backbones()). To "
            "fine-tune a keras.Model of your own, compile and fit it with Keras; "
            "KerasFeatureExtractor accepts models for frozen features."),
        "backbone_kwargs": Satisfies(optional_dict,
                                     "backbone_kwargs must be a dict or None, got {kind}."),
        "batch_size": Integer(1),
        "epochs": Integer(0),
        "head_epochs": Integer(0),
        "head_views": Integer(0),
        "n_iter_no_change": Integer(1),
        "learning_rate": Real(0),
        "head_learning_rate": Real(0),
        "head_l2": Real(0, brackets="[)"),
        "pooling": Options(POOLINGS, "use 'avg', 'max', 'cls', 'cls+avg' or None (flatten)"),
        "crop_fraction": Real(0, 1, "(]", "1 keeps the whole image", also=("auto",)),
        "dropout": Real(0, 1, "[)"),
        "label_smoothing": Real(0, 1, "[)"),
        "layer_decay": Real(0, 1, "(]", "1 trains every block at learning_rate"),
        "head_blocks": Integer(1),
        "hidden_units": Integer(1, none_means="no hidden layer"),
        "validation_folds": Integer(2, none_means="one split of validation_fraction"),
        "validation_fraction": Real(0, 1, "()"),
        "head_init": Options(_HEAD_INITS, "use 'logistic' or 'adam'"),
        "batchnorm_statistics": Options(_BATCHNORM_STATISTICS,
                                        "use 'pretrained' or 'target'"),
        "cache": Options(("auto", True, False), "use 'auto', True or False"),
        "verbose": Satisfies(integer, "verbose={value} must be an integer (0 = silent)."),
        "class_weight": Satisfies(
            lambda value: value is None or isinstance(value, dict)
            or (isinstance(value, str) and value == "balanced"),
            "class_weight={value} must be None, 'balanced' or a dict {{label: weight}}."),
    }
    _keras_attributes = ("model_", "_network", "_forward")
    # Set again by every build (see _build): not written, so that older files load alike.
    _rebuilt_attributes = ("head_layers_",)

    # ------------------------------------------------------------------ validation
    def _augmentations(self) -> tuple[str, ...]:
        # Imported here: augmentation defines Keras layers, and importing transferkit must
        # not import Keras.
        from .augmentation import augmentation_names

        return augmentation_names(self.augment)

    def _check_parameters(self) -> None:
        check_parameters(self)
        check_runtime(self.runtime)
        augmentations = self._augmentations()  # raises for an unknown augmentation
        if self.cache is True and augmentations and self.head_views == 0:
            raise ValueError(
                f"cache=True with augment={self.augment!r} trains on the cached frozen "
                "activations of the head_views augmented views of each image, and "
                "head_views=0 asks for none; set head_views >= 1, or cache=False to draw new "
                "views every epoch."
            )

    # ------------------------------------------------------------------ building
    def _build(self, weights: Any, n_classes: int, seeds: dict[str, int],
               framing: float | None = None, hub_preset: dict | None = None) -> None:
        """Build every network of the estimator; deterministic given ``seeds``.

        ``framing``: the crop fraction of the central view (default: the first that
        ``crop_fraction`` allows); ``hub_preset``: a keras-hub backbone's architecture
        from an earlier build."""
        network = build_finetune_network(
            self.backbone, weights=weights, input_size=self.input_size, cut=self.cut,
            backbone_kwargs=self.backbone_kwargs, freeze_until=self.freeze_until,
            train_batchnorm=self.train_batchnorm, pooling=self.pooling, dropout=self.dropout,
            hidden_units=self.hidden_units, head_l2=self.head_l2,
            crop_fraction=self.crop_fraction, augmentations=self._augmentations(),
            n_classes=n_classes, seeds=seeds, framing=framing, hub_preset=hub_preset,
            layer_decay=self.layer_decay, head_blocks=self.head_blocks,
        )
        self._network, self.model_ = network, network.model
        self.head_layers_ = list(network.head_layers)
        # The live network: training changes the weights after this.
        self._forward = make_forward(self.model_, network.layout.source_size)
        self.backbone_name_ = network.layout.backbone_name
        self.cut_layer_ = network.layout.cut_layer
        self.freeze_layer_ = network.freeze_layer
        self.input_size_ = network.layout.input_size
        self.source_size_ = network.layout.source_size
        self.crop_fraction_ = network.framing
        # A keras-hub backbone's architecture travels with the estimator, so that loading
        # it needs neither the preset directory nor a download.
        if network.layout.hub_preset is not None:
            self.hub_preset_ = network.layout.hub_preset
        else:
            vars(self).pop("hub_preset_", None)

    def _use_runtime(self) -> None:
        """Run ``predict`` with ``runtime``, on the final weights of ``model_``."""
        if self.runtime != "tensorflow":
            # The central view stays with TensorFlow: the antialiased resize of a whole
            # image loaded larger than the input (crop_fraction_=1.0) is an operation
            # OpenVINO's converter has no rule for (ScaleAndTranslate).
            view, rest = view_and_rest(self.model_)
            self._forward = _ViewThenRest(
                make_forward(view, self.source_size_),
                make_forward(rest, self.input_size_, runtime=self.runtime))

    def _use_framing(self, framing: float) -> None:
        """Predict with the central view of ``framing``, on the same weights."""
        if framing != self._network.framing:
            self._network = reframed(self._network, framing)
            self.model_ = self._network.model
            self._forward = make_forward(self.model_, self.source_size_)
            self.crop_fraction_ = framing

    def _rebuild_networks(self, weights: Any) -> None:
        self._build(None, len(self.classes_), self._seeds, framing=self.crop_fraction_,
                    hub_preset=getattr(self, "hub_preset_", None))
        self.model_.set_weights(weights_for(weights, self.model_))
        self.head_layers_ = head_layers_read(self._network)
        self._use_runtime()

    # ------------------------------------------------------------------ training
    def _caches_frozen_activations(self, n_views: int, n_images: int) -> bool:
        if self.freeze_layer_ is None or self.cache is False:
            return False
        if self.cache is True:
            return True
        per_view = 4 * int(np.prod(self._network.prefix.output.shape[1:]))
        from .augmentation import framings

        # The views, and the central view at each framing.
        held = n_views + len(framings(self.crop_fraction))
        return held * n_images * per_view <= _FROZEN_ACTIVATIONS_MAX_BYTES

    def _decides_views(self) -> bool:
        """Whether the head's cross-validation decides if the views are learned from."""
        return self.head_init == "logistic" and self.hidden_units is None

    def _fit_head(self, frozen: FrozenPass, rows: np.ndarray, val_rows: np.ndarray | None,
                  y_code: np.ndarray, weight: np.ndarray, epochs: int,
                  rng: np.random.RandomState, settings: PhaseSettings,
                  C: float | None = None, views: bool = True,
                  keep: np.ndarray | None = None) -> dict:
        """Train the head on the frozen features of the images at ``rows``.

        ``C`` and ``views``: the inverse penalty of a logistic head an earlier fit chose,
        and whether it learned from the augmented views (a logistic head's
        cross-validation decides that; an Adam head always does). ``keep``: the columns
        it reads, chosen before (default: a logistic head's cross-validation chooses
        between every block and the cut alone; an Adam head reads every block)."""
        features, groups = frozen.head_rows(rows, views)
        n_rows = len(features) // len(rows)
        y_head = np.tile(y_code[rows], n_rows)
        w_head = np.tile(_unit_mean(weight[rows]), n_rows)
        val_features = None if val_rows is None else frozen.features[val_rows]
        y_val = None if val_rows is None else y_code[val_rows]
        head, widths = self._network.head, self._network.head_widths
        if self._decides_views():
            keeps = ([keep] if keep is not None else
                     [head_columns(widths, blocks=True), head_columns(widths, blocks=False)])
            return fit_logistic_head(head, features, y_head, w_head, groups, val_features,
                                     y_val, len(self.classes_), self._seeds["split"],
                                     self._log, C=C, keeps=keeps)
        if standardizes(head):  # from the rows it learns from; Adam trains through it
            keep = head_columns(widths, blocks=True) if keep is None else keep
            set_head_standardization(head, head_standardization(features, keep))
        return train_phase("head", self._network.head, features, y_head, w_head,
                           val_features, y_val, epochs, self.head_learning_rate, rng,
                           settings, label_smoothing=self.label_smoothing)

    def _set_batchnorm_statistics(self, frozen: FrozenPass, settings: PhaseSettings,
                                  ) -> FrozenPass:
        """Re-estimate the trainable part's BatchNormalization statistics on the central
        views where ``batchnorm_statistics="target"``; the pass with its features pooled
        through the statistics kept."""
        network = self._network
        self.batchnorm_statistics_ = "pretrained"
        if self.batchnorm_statistics == "pretrained":
            return frozen
        if not network.batchnorm_layers:
            self._log("batchnorm statistics: ImageNet's; the trainable part has no "
                      "BatchNormalization layer to re-estimate")
            return frozen
        started = time.perf_counter()
        reestimate_statistics(network.batchnorm_inputs, network.batchnorm_layers,
                              frozen.central, batch_size=8 * self.batch_size)
        self.batchnorm_statistics_ = "target"
        self._log(f"batchnorm statistics: {len(network.batchnorm_layers)} layers re-estimated "
                  f"on the {len(frozen.features)} training images "
                  f"({time.perf_counter() - started:.1f} s)")
        return repooled(frozen, network, settings)

    def _log(self, message: str) -> None:
        logger.info(message)
        if self.verbose:
            print(message, flush=True)

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
        from .augmentation import framings  # defines Keras layers: see _augmentations

        self._check_parameters()
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
        n_images = len(y)
        all_idx = np.arange(n_images)
        # The runs that check the fine-tuning phase, each holding out one fold (raises
        # before anything is built where a class is too small to hold out).
        folds = (check_folds(y_code, self.validation_folds, self.validation_fraction,
                             seeds["split"]) if self.early_stopping else [])

        self.classes_ = classes
        self._seeds = seeds
        self._build(self.weights, len(classes), seeds)
        network = self._network
        n_views = self.head_views if self._augmentations() else 0
        self.cached_ = self._caches_frozen_activations(n_views, n_images)
        if self.batchnorm_statistics == "target" and not self.cached_ \
                and network.batchnorm_layers:
            reason = ("freeze_until=None freezes nothing to cache" if self.freeze_layer_ is None
                      else "cache=False" if self.cache is False else
                      f"the activations of {n_images} images x {1 + n_views} views exceed the "
                      f"cache's {_FROZEN_ACTIVATIONS_MAX_BYTES / 2**30:g} GiB")
            raise advised(
                ValueError, "{statistics_target} re-estimates the statistics from the cached "
                "frozen activations, and this fit would stream its images ({reason}); use "
                "{statistics_pretrained}, or {fewer_views}.", reason=reason)
        settings = PhaseSettings(self.batch_size, self.source_size_, self.n_iter_no_change,
                                 self._log)
        # A logistic head's cross-validation decides whether the views help: decide on a
        # few before paying for all (on the brain MRI and digits sets, where they never
        # helped, drawing the other views was most of the fit's time).
        first_views = min(n_views, _VIEWS_TO_DECIDE) if self._decides_views() else n_views
        if not self.cached_ or first_views < n_views:
            # Every fine-tuning epoch, or the pass that draws the other views, reads the
            # images again: decode and resize them once (the pixels are the same, bit for
            # bit) while they fit in memory.
            images = images.held_in_memory(self.source_size_, self.batch_size,
                                           _DECODED_PIXELS_MAX_BYTES)
        candidates = framings(self.crop_fraction)
        frozen = frozen_pass(network, images, first_views, self.cached_, settings,
                             seeds["shuffle"],
                             {f: reframed(network, f).frozen_net for f in candidates[1:]})
        view_network = network  # its augmentation drew the views: more_views goes on with it
        # 0. Which framing predict sees (crop_fraction="auto"): the one a linear probe on
        #    the central views separates best, by its own cross-validation.
        framing, framing_losses = choose_framing(
            {f: frozen.features_at(f) for f in candidates}, y_code, _unit_mean(weight),
            len(classes), seeds["split"], self._log)
        frozen = frozen.framed(framing)
        self._use_framing(framing)
        network = self._network
        # 0b. What the trainable part's BatchNormalization layers normalise with: ImageNet's
        #     statistics, or the training images' own.
        frozen = self._set_batchnorm_statistics(frozen, settings)
        shuffle_rng = np.random.RandomState(seeds["shuffle"])
        # The pretrained trainable part, which every run of the fine-tuning phase starts
        # from.
        pretrained = network.trainable_net.get_weights()
        self.n_trainable_weights_ = int(sum(
            int(np.prod(v.shape)) for v in network.trainable_net.trainable_variables
        ))

        # 1. The head, on every image. A logistic head's cross-validation chooses its
        #    penalty, views and blocks; a head trained by Adam stops early on the first
        #    fold's held-out images, then learns from every image for as many epochs.
        head_rows, head_val = ((folds[0][0], folds[0][1]) if folds and not self._decides_views()
                               else (all_idx, None))
        head_history = self._fit_head(frozen, head_rows, head_val, y_code, weight,
                                      self.head_epochs, shuffle_rng, settings)
        if first_views < n_views:
            if head_history["views"] > 1:
                self._log(f"views: the {first_views} augmented views tried helped the head; "
                          f"drawing the other {n_views - first_views}")
                frozen = more_views(frozen, view_network, images, n_views - first_views,
                                    settings, seeds["shuffle"])
                # The blocks it reads were decided with the views tried (the scores are
                # kept): comparing them again on four times the rows would double the
                # most expensive cross-validation of the fit.
                decided = head_history
                head_history = self._fit_head(frozen, head_rows, head_val, y_code, weight,
                                              self.head_epochs, shuffle_rng, settings,
                                              keep=head_keep(network))
                if "blocks_cv_log_loss" in decided:
                    head_history["blocks_cv_log_loss"] = decided["blocks_cv_log_loss"]
                    head_history["blocks"] = decided["blocks"]
            else:
                head_history["views_tried"] = first_views
                self._log(f"views: the head did better without the {first_views} augmented "
                          f"views it tried, so the other {n_views - first_views} were not "
                          "drawn")
        self.history_ = {"head": head_history}
        if framing_losses is not None:
            self.history_["framing"] = {"crop_fraction": framing, "cv_log_loss": framing_losses}
        # The columns the head reads from now on, in every run of the fine-tuning phase.
        keep = head_keep(network)
        if "blocks_cv_log_loss" in head_history:
            every, cut = head_history["blocks_cv_log_loss"]
            self.history_["head_blocks"] = {
                "every_block": head_history["blocks"] == 0,
                "cv_log_loss": {"every_block": every, "cut_alone": cut}}
        # Fine-tuning learns from the views where the head did (see _fit_head).
        views = "C" not in head_history or head_history["views"] > 1
        C = head_history.get("C")
        head_epochs = self.head_epochs if C is not None \
            else max(1, head_history["best_epoch"] + 1)
        if head_val is not None:
            self.history_["refit_head"] = self._fit_head(
                frozen, all_idx, None, y_code, weight, head_epochs, shuffle_rng, settings,
                views=views, keep=keep)
        fitted_head = network.trainable_net.get_weights()
        if self.cached_:
            tune_model = network.trainable_net
        else:
            tune_model = network.train_net if views else network.central_net

        # A logistic head is fitted again on what the tuned layers compute, with the
        # penalty, views and blocks chosen for the head alone: Adam moved it with them at
        # a fixed L2 penalty, and on the digits and brain MRI scans of
        # docs/benchmarks.rst the tuned network with its head refit had the lower
        # held-out loss on five seeds of six (the textures: all three).
        refits_head = self.cached_ and self._decides_views()

        def refit_head(rows: np.ndarray) -> None:
            self._fit_head(tuned_features(frozen, network, settings, rows, views),
                           np.arange(len(rows)), None, y_code[rows], weight[rows],
                           head_epochs, shuffle_rng, settings, C=C, views=views, keep=keep)

        # One Adam and one traced step for the check's runs and the final one.
        trainer = PhaseTrainer(tune_model, self.label_smoothing, network.learning_rate_scales,
                               network.trainable_net if self.cached_ else None)

        def fine_tune(phase: str, rows: np.ndarray, val_rows: np.ndarray | None,
                      epochs: int) -> dict:
            return train_phase(
                phase, tune_model, frozen.tuning_inputs(images, rows, views), y_code[rows],
                _unit_mean(weight[rows]),
                None if val_rows is None else frozen.validation_inputs(images, val_rows),
                None if val_rows is None else y_code[val_rows], epochs, self.learning_rate,
                shuffle_rng, settings, cosine_decay=True, schedule_epochs=self.epochs,
                select_best=False,
                after_epochs=(lambda: refit_head(rows)) if refits_head else None,
                trainer=trainer)  # holds the label smoothing, rate scales and val model

        # 2. The check: on each fold, the head and the whole fine-tuning schedule learn
        #    from the other folds, and the held-out fold scores both. Fine-tuning is kept
        #    unless, over every held-out image, it is clearly worse than the head alone;
        #    choosing a number of epochs on held-out images did worse on unseen images than
        #    the whole schedule (docs/benchmarks.rst, "Transfer to data sets unlike
        #    ImageNet").
        kept_epochs = self.epochs
        if folds and self.epochs:
            runs = []
            for k, (rows, val_rows) in enumerate(folds):
                network.trainable_net.set_weights(pretrained)
                self._fit_head(frozen, rows, None, y_code, weight, head_epochs, shuffle_rng,
                               settings, C=C, views=views, keep=keep)
                name = "finetune" if len(folds) == 1 else f"finetune (fold {k + 1}/{len(folds)})"
                runs.append(fine_tune(name, rows, val_rows, self.epochs))
            self.history_["finetune"] = pool_folds(runs)
            if self.history_["finetune"]["worse_than_start"]:
                kept_epochs = 0
            # Where the refit head was judged clearly worse and the head Adam trained
            # with the block was not, the final network keeps Adam's head too.
            refits_head = refits_head and self.history_["finetune"]["head_refit"]
        # 3. The final network: the head on every image, fine-tuned on every image where
        #    the check kept fine-tuning.
        network.trainable_net.set_weights(fitted_head)
        if kept_epochs:
            self.history_["refit_finetune" if folds else "finetune"] = fine_tune(
                "refit" if folds else "finetune", all_idx, None, kept_epochs)
        # Probabilities as confident as the check's held-out images said the kept network
        # should be (1 where nothing was held out).
        self.temperature_ = (self.history_["finetune"]["temperature"][
            "fine_tuned" if kept_epochs else "head"] if "temperature" in
            self.history_.get("finetune", {}) else 1.0)
        set_temperature(network.head, self.temperature_)
        self.history_["kept_epochs"] = kept_epochs
        self.history_["head_refit_on_tuned"] = bool(kept_epochs and refits_head)
        self.history_["summary"] = _what_was_kept(self.history_, self.epochs, n_images)
        self._log(self.history_["summary"])
        self.head_layers_ = head_layers_read(network)
        self._use_runtime()
        return self

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
        probs = run_batches([self._forward], images, self.source_size_,
                            self.batch_size)[0].astype(np.float64)
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
