"""FineTunedClassifier: two-phase fine-tuning as a scikit-learn classifier."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap

import joblib
import numpy as np
import pytest
from PIL import Image
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV

from transferkit.finetune import FineTunedClassifier

from .conftest import (
    HYMENOPTERA,
    KERAS_HOME,
    REPO,
    needs_hymenoptera,
    needs_shared_weights,
    noise_images,
)

# VGG16 cut after block3 at 32 px: small and, unlike randomly initialised MobileNets (whose
# features shrink to ~1e-18 through the BatchNormalization layers at their initial
# statistics), its random features still separate simple images. Block 3 is trainable.
# No augmentation, so that the frozen-prefix cache is on; the default augmented training
# has tests of its own. The head reads the cut alone: on block 1 too it scores these noise
# images' held-out ones with a loss of zero, and no fine-tuning epoch could then be kept
# (the head on several blocks has tests of its own, HEAD_ON_BLOCKS).
TINY = {
    "backbone": "VGG16", "weights": None, "cut": "block3", "input_size": 32,
    "head_learning_rate": 0.01, "head_epochs": 15, "learning_rate": 1e-3, "epochs": 3,
    "batch_size": 8, "random_state": 0, "head_init": "adam", "augment": None,
    "head_blocks": 1,
}
HEAD_ON_BLOCKS = {"head_blocks": 3}  # block 1 and the cut, block 3: VGG16 has no more


def tiny(**params) -> FineTunedClassifier:
    return FineTunedClassifier(**{**TINY, **params})


def _images(n_per_class: int = 12, n_classes: int = 2):
    return noise_images(n_per_class, classes=("dark", "bright", "grey")[:n_classes])


@pytest.fixture(scope="module")
def data():
    return _images()


@pytest.fixture(scope="module")
def fitted(data):
    return tiny().fit(*data)


# ------------------------------------------------------------------ basic behaviour
def test_string_labels_binary_fit_predict_and_probabilities(fitted, data):
    X, y = data
    assert list(fitted.classes_) == ["bright", "dark"]
    proba = fitted.predict_proba(X)
    assert proba.shape == (len(X), 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-12)
    assert set(fitted.predict(X)) <= {"bright", "dark"}
    assert fitted.score(X, y) >= 0.9
    assert fitted.cut_layer_ == "block3_pool"
    assert fitted.freeze_layer_ == "block2_pool"
    assert fitted.cached_


def test_history_covers_every_phase_per_epoch(fitted):
    for phase, max_epochs in (("head", TINY["head_epochs"]), ("finetune", TINY["epochs"])):
        history = fitted.history_[phase]
        n = len(history["loss"])
        assert 1 <= n <= max_epochs
        for key in ("accuracy", "val_loss", "val_accuracy", "seconds"):
            assert len(history[key]) == n
    head = fitted.history_["head"]
    # The head keeps its best epoch; an epoch must beat the kept one by more than noise.
    kept = head["initial_val_loss"] if head["best_epoch"] == -1 \
        else head["val_loss"][head["best_epoch"]]
    assert kept <= head["initial_val_loss"]
    assert head["loss"][-1] < head["loss"][0]
    # Fine-tuning on the training part runs its whole schedule; the held-out images check it.
    assert len(fitted.history_["finetune"]["loss"]) == TINY["epochs"]


def test_the_final_network_is_refit_on_every_image_with_the_chosen_schedule(fitted, data):
    history = fitted.history_
    kept = history["kept_epochs"]
    assert kept in (0, TINY["epochs"])
    assert "val_loss" not in history["refit_head"]  # nothing is held out any more
    if kept:
        refit = history["refit_finetune"]
        assert len(refit["loss"]) == kept
        # The same learning rates at the same epochs as the run the held-out images judged.
        np.testing.assert_allclose(refit["learning_rate"],
                                   history["finetune"]["learning_rate"][:kept], rtol=1e-6)
    start = (f"kept all {kept} fine-tuning epochs, trained again on all" if kept
             else "kept the head alone, fitted on all")
    assert history["summary"].startswith(f"{start} {len(data[0])} images")


def test_the_summary_gives_the_held_out_accuracy_before_and_after_fine_tuning(fitted):
    tuning = fitted.history_["finetune"]
    judged = tuning["judged_val_accuracy"]
    assert judged["head"] == pytest.approx(tuning["initial_val_accuracy"])
    # An Adam head is not refit after the epochs: the last epoch is what was judged.
    assert judged["fine_tuned"] == pytest.approx(tuning["val_accuracy"][-1])
    assert (f"accuracy {judged['fine_tuned']:.3f} against "
            f"{judged['head']:.3f})") in fitted.history_["summary"]


def test_fine_tuning_that_clearly_hurts_the_held_out_images_keeps_the_head(data):
    X, y = data
    # A learning rate a thousand times too high wrecks the trainable block.
    wrecked = tiny(learning_rate=1.0, epochs=2).fit(X, y)
    assert wrecked.history_["finetune"]["worse_than_start"]
    assert wrecked.history_["kept_epochs"] == 0 and "refit_finetune" not in wrecked.history_
    assert wrecked.history_["summary"].startswith("kept the head alone, fitted on all 24 images")
    assert wrecked.temperature_ == wrecked.history_["finetune"]["temperature"]["head"]
    untouched = tiny(epochs=0).fit(X, y)  # same seed: the same initial backbone weights
    block = "block3_conv1"
    np.testing.assert_array_equal(wrecked.model_.get_layer("tuned").get_layer("pooled")
                                  .get_layer("trainable").get_layer(block).get_weights()[0],
                                  untouched.model_.get_layer("tuned").get_layer("pooled")
                                  .get_layer("trainable").get_layer(block).get_weights()[0])
    assert wrecked.score(X, y) >= 0.9


def test_without_early_stopping_every_epoch_trains_on_every_image(data):
    X, y = data
    clf = tiny(early_stopping=False).fit(X, y)
    assert len(clf.history_["finetune"]["loss"]) == clf.history_["kept_epochs"] == 3
    assert "refit_head" not in clf.history_ and "val_loss" not in clf.history_["finetune"]
    assert "early_stopping=False" in clf.history_["summary"]


def test_view_bank_shows_every_view_of_an_image_once_per_cycle():
    from transferkit.training import ViewBank

    n_views, n_images = 3, 5
    # views[k, i] holds 10 * i + k: which image, which view.
    views = (10 * np.arange(n_images)[None, :] + np.arange(n_views)[:, None]).astype(float)
    bank = ViewBank(views, offsets=np.array([0, 1, 2, 0, 1]))
    seen = np.stack([bank.epoch(e, np.arange(n_images)) for e in range(n_views)])
    assert (seen // 10 == np.arange(n_images)).all()  # each row is its own image
    for i in range(n_images):
        assert sorted(seen[:, i] % 10) == list(range(n_views))
    assert seen[0].tolist() == [0, 11, 22, 30, 41]  # images start at different views
    part = bank.take(np.array([4, 1]))
    np.testing.assert_array_equal(part.epoch(0, np.arange(2)), [41, 11])
    np.testing.assert_array_equal(part.view(2), [42, 12])


def test_multiclass_with_integer_labels():
    X, y = _images(n_per_class=8, n_classes=3)
    codes = np.searchsorted(["bright", "dark", "grey"], y) * 10
    # At TINY's 1e-3 the refit on all 24 images overshoots this random VGG (training
    # accuracy 0.67, where 3 held-out images could not tell); the default is 1e-4.
    clf = tiny(head_epochs=25, learning_rate=1e-4).fit(X, codes)
    np.testing.assert_array_equal(clf.classes_, [0, 10, 20])
    proba = clf.predict_proba(X)
    assert proba.shape == (24, 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-12)
    assert clf.score(X, codes) >= 0.8


def test_paths_and_pil_images_give_the_same_predictions(tmp_path, data):
    X, y = data
    paths = []
    for i, image in enumerate(X):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(image).save(paths[-1])
    clf = tiny(epochs=1).fit(paths, list(y))
    from_paths = clf.predict_proba(paths)
    np.testing.assert_allclose(clf.predict_proba([Image.open(p) for p in paths]), from_paths,
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(clf.predict_proba(X), from_paths, rtol=1e-5, atol=1e-6)


def test_repeated_fits_leave_tensorflows_function_library_as_it_was(data):
    # A grid search fits hundreds of times in one process: nothing a fit traces may stay
    # registered in TensorFlow's process-wide function library (Adam's moments created
    # inside the traced step left 32 functions, with their zero tensors, per fit).
    import gc

    from tensorflow.python.eager import context

    X, y = data
    tiny().fit(X, y)
    gc.collect()  # functions of earlier tests, freed now rather than during the fits below
    registered = len(context.context().list_function_names())
    for _ in range(2):
        tiny().fit(X, y)
    gc.collect()
    assert len(context.context().list_function_names()) <= registered


def test_repeated_fits_do_not_log_tensorflows_retracing_warning(data, tensorflow_log):
    # Traced closures made the third fit in a process log "triggered tf.function
    # retracing": TensorFlow counts the traces of all fits' closures as one function's.
    X, y = data
    for params in ({}, {"head_init": "logistic"}, {"augment": ("crop", "flip")}, {}):
        tiny(**params).fit(X, y).predict(X)
    assert not [m for m in tensorflow_log if "retracing" in m]


def test_training_step_updates_weights_as_keras_adam_apply_gradients_does():
    # The traced step calls Adam's update_step itself (apply_gradients, traced, left the
    # weights allocated after the fit); the arithmetic must stay Keras' own.
    import keras
    import tensorflow as tf

    from transferkit.training import TrainingStep

    def model_and_adam():
        keras.utils.set_random_seed(0)
        inputs = keras.Input((6, 6, 3))
        # No bias before the BatchNormalization: its gradient is rounding noise, which
        # Adam scales up to full steps in arbitrary directions.
        max_norm = keras.constraints.MaxNorm(0.5, axis=(0, 1, 2))  # binds: norms start ~0.9
        x = keras.layers.Conv2D(4, 3, use_bias=False, kernel_constraint=max_norm)(inputs)
        x = keras.layers.GlobalAveragePooling2D()(keras.layers.BatchNormalization()(x))
        model = keras.Model(inputs, keras.layers.Dense(
            3, kernel_regularizer=keras.regularizers.L2(1e-2))(x))
        schedule = keras.optimizers.schedules.CosineDecay(0.05, 4)
        return model, keras.optimizers.Adam(schedule)

    rng = np.random.default_rng(0)
    batches = [(rng.normal(size=(5, 6, 6, 3)).astype("float32"), rng.integers(0, 3, 5),
                rng.uniform(0.5, 2, 5).astype("float32")) for _ in range(3)]
    ours, adam = model_and_adam()
    adam.build(ours.trainable_variables)
    step = tf.function(TrainingStep(ours, ours.trainable_variables, adam))
    keras_model, keras_adam = model_and_adam()
    for x, target, weight in batches:
        step(x, tf.constant(target, tf.int32), weight)
        with tf.GradientTape() as tape:
            logits = keras_model(x, training=True)
            nll = tf.nn.sparse_softmax_cross_entropy_with_logits(target, logits)
            total = tf.reduce_mean(weight * nll) + tf.add_n(keras_model.losses)
        variables = keras_model.trainable_variables
        keras_adam.apply_gradients(zip(tape.gradient(total, variables), variables,
                                       strict=True))
    assert int(adam.iterations) == int(keras_adam.iterations) == 3
    for mine, theirs in zip(ours.weights, keras_model.weights, strict=True):
        np.testing.assert_allclose(mine.numpy(), theirs.numpy(), rtol=1e-5, atol=1e-6,
                                   err_msg=mine.path)
    assert not np.allclose(ours.weights[0].numpy(), model_and_adam()[0].weights[0].numpy())


def test_training_step_smooths_labels_as_keras_crossentropy_does():
    import keras
    import tensorflow as tf

    from transferkit.training import TrainingStep

    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(3)(inputs))
    adam = keras.optimizers.Adam(0.0)  # the loss only
    adam.build(model.trainable_variables)
    step = tf.function(TrainingStep(model, model.trainable_variables, adam,
                                    label_smoothing=0.2))
    x = np.random.default_rng(0).normal(size=(5, 4)).astype("float32")
    target = np.array([0, 1, 2, 1, 0])
    loss, _ = step(x, tf.constant(target, tf.int32), tf.ones(5))
    keras_loss = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.2)(
        keras.ops.one_hot(target, 3), model(x))
    np.testing.assert_allclose(float(loss), float(keras_loss), rtol=1e-5)


def test_layer_decay_scales_the_learning_rate_of_each_lower_block(data):
    X, y = data
    # VGG16 to block3, blocks 2 and 3 trained: block 2 learns at layer_decay times the rate.
    two_blocks = {"freeze_until": "block1", "epochs": 1, "head_epochs": 2}
    decayed = tiny(**two_blocks, layer_decay=0.5).fit(X, y)

    def kernel(clf, layer):
        return next(w.numpy() for w in clf.model_.weights if w.path == f"{layer}/kernel")

    # A vanishing rate leaves block 2 as it started, as freezing it does; 0.5 moves it.
    still = tiny(**two_blocks, layer_decay=1e-12).fit(X, y)
    frozen = tiny(**{**two_blocks, "freeze_until": "block2"}).fit(X, y)
    np.testing.assert_allclose(kernel(still, "block2_conv2"), kernel(frozen, "block2_conv2"),
                               atol=1e-6)
    assert not np.allclose(kernel(decayed, "block2_conv2"), kernel(frozen, "block2_conv2"))


def test_the_head_reads_every_second_block_end_below_the_cut():
    import keras

    from transferkit.finetune_network import head_block_layers

    mobilenet = keras.applications.MobileNet(include_top=False, weights=None, alpha=0.25,
                                             input_shape=(64, 64, 3))
    below = head_block_layers(mobilenet, mobilenet.layers[-1], 3, module="mobilenet",
                              name="MobileNet", backbone_kwargs={"alpha": 0.25})
    assert [layer.name for layer in below] == ["conv_pw_9_relu", "conv_pw_11_relu"]
    vgg = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    # Fewer blocks below the cut than asked for: as many as there are.
    below = head_block_layers(vgg, vgg.get_layer("block3_pool"), 5, module="vgg16",
                              name="VGG16", backbone_kwargs=None)
    assert [layer.name for layer in below] == ["block1_pool"]
    assert head_block_layers(vgg, vgg.get_layer("block3_pool"), 1, module="vgg16",
                             name="VGG16", backbone_kwargs=None) == []


@pytest.mark.parametrize("freeze_until", ["block2", None], ids=["frozen", "trained"])
def test_the_head_reads_the_average_of_each_head_layer_concatenated(data, freeze_until):
    import keras

    X, y = data
    clf = tiny(**HEAD_ON_BLOCKS, freeze_until=freeze_until, epochs=1, head_epochs=2).fit(X, y)
    assert clf.head_layers_ == ["block1_pool", "block3_pool"]
    # The same layers, with the fitted weights, in keras.applications' own VGG16.
    vgg = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    fitted = {w.path.split("/")[-2] + "/" + w.name: w.numpy() for w in clf.model_.weights}
    for layer in vgg.layers:
        if layer.weights and f"{layer.name}/kernel" in fitted:  # up to the cut
            layer.set_weights([fitted[f"{layer.name}/{w.name}"] for w in layer.weights])
    maps = keras.Model(vgg.inputs, [vgg.get_layer(name).output for name in clf.head_layers_])
    pixels = keras.applications.vgg16.preprocess_input(X.astype("float32"))
    expected = np.concatenate([m.mean(axis=(1, 2)) for m in maps.predict(pixels, verbose=0)],
                              axis=1)
    network = clf._network
    features = network.pooled_net.predict(network.prefix.predict(X, verbose=0), verbose=0)
    np.testing.assert_allclose(features, expected, rtol=1e-4, atol=1e-4)


def test_head_blocks_1_reads_the_cut_alone(data):
    clf = tiny(head_blocks=1, epochs=0).fit(*data)
    assert clf.head_layers_ == ["block3_pool"]
    head = clf.model_.get_layer("tuned").get_layer("head").get_layer("head_logits")
    assert head.kernel.shape[0] == 256  # block3's channels


def test_block_depths_count_the_blocks_between_a_layer_and_the_cut():
    import keras

    from transferkit.finetune_network import block_depths

    vgg = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    depths = block_depths(vgg, vgg.get_layer("block4_pool"), vgg.layers, module="vgg16",
                          name="VGG16", backbone_kwargs=None)
    assert depths["block4_conv1"] == depths["block4_pool"] == 0
    assert depths["block3_conv1"] == depths["block3_pool"] == 1
    assert depths["block1_conv1"] == 3


def test_unfitted_use_raises_not_fitted(data):
    with pytest.raises(NotFittedError):
        tiny().predict(data[0])


# ------------------------------------------------------------------ reproducibility and caching
def test_same_random_state_gives_the_same_predictions(fitted, data):
    X, y = data
    again = tiny().fit(X, y)
    np.testing.assert_array_equal(again.predict_proba(X), fitted.predict_proba(X))
    other = tiny(random_state=1).fit(X, y)
    # Log-probabilities: confident predictions of both models round to 0 and 1 (floored at
    # the smallest float, where a probability underflows to 0).
    def log_proba(model):
        return np.log(np.maximum(model.predict_proba(X), np.finfo(np.float64).tiny))

    assert not np.allclose(log_proba(other), log_proba(fitted), atol=1e-3)


def test_cached_and_uncached_training_give_the_same_predictions(fitted, data):
    X, y = data
    uncached = tiny(cache=False).fit(X, y)
    assert not uncached.cached_
    for phase in ("head", "finetune"):
        np.testing.assert_allclose(uncached.history_[phase]["loss"],
                                   fitted.history_[phase]["loss"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(uncached.predict_proba(X), fitted.predict_proba(X),
                               rtol=1e-4, atol=1e-5)


def test_only_layers_after_freeze_until_change(data):
    X, y = data
    initial = tiny(epochs=0, head_epochs=0).fit(X, y).model_
    tuned = tiny(early_stopping=False).fit(X, y).model_

    def weights_of(model, layer_name):
        for weight in model.weights:
            if weight.path.split("/")[-2] == layer_name:
                return np.asarray(weight)
        raise AssertionError(f"no weights of {layer_name}")

    np.testing.assert_array_equal(weights_of(initial, "block2_conv2"),
                                  weights_of(tuned, "block2_conv2"))
    assert not np.allclose(weights_of(initial, "block3_conv3"), weights_of(tuned, "block3_conv3"))


@pytest.mark.parametrize("freeze_until", ["block1", "block1_pool", 3])
def test_freeze_until_takes_the_forms_of_cut(data, freeze_until):
    clf = tiny(epochs=1, head_epochs=2).fit(*data)
    default_trainable = clf.n_trainable_weights_
    deeper = tiny(epochs=1, head_epochs=2, freeze_until=freeze_until).fit(*data)
    assert deeper.freeze_layer_ == "block1_pool"
    assert deeper.n_trainable_weights_ > default_trainable


def test_freeze_until_none_trains_everything_and_the_cut_trains_the_head_only(data):
    everything = tiny(epochs=1, head_epochs=2, freeze_until=None).fit(*data)
    assert everything.freeze_layer_ is None and not everything.cached_
    head_only = tiny(epochs=1, head_epochs=2, freeze_until="block3").fit(*data)
    assert head_only.n_trainable_weights_ == 256 * 2 + 2


@pytest.mark.slow
def test_residual_backbone_splits_at_a_block_and_keeps_batchnorm_statistics(data):
    X, y = data
    params = {"backbone": "ResNet50", "cut": "conv3", "epochs": 2, "head_epochs": 3,
              "learning_rate": 1e-3}
    # ImageNet's statistics kept: inference-mode layers do not update them while training.
    clf = tiny(**params, batchnorm_statistics="pretrained").fit(X, y)
    assert clf.freeze_layer_ == "conv2_block3_out"
    assert clf.cached_

    def moving_means(model):
        return [np.asarray(w) for w in model.weights
                if "conv3_block" in w.path and w.path.endswith("moving_mean")]

    assert all(np.all(m == 0) for m in moving_means(clf.model_))  # ResNet's initial statistics
    trained_bn = tiny(**params, train_batchnorm=True).fit(X, y)
    assert any(np.any(m != 0) for m in moving_means(trained_bn.model_))
    with pytest.raises(ValueError, match="residual connection"):
        tiny(**params, freeze_until="conv3_block1_1_relu").fit(X, y)


# ------------------------------------------------------------------ options
def test_augmented_training_caches_the_frozen_activations_of_its_views(data):
    X, y = data
    clf = tiny(augment="all", head_views=2).fit(X, y)
    assert clf.cached_  # epochs train on the views the head phase computed
    assert clf.score(X, y) >= 0.9
    streamed = tiny(augment="all", head_views=2, cache=False).fit(X, y)
    assert not streamed.cached_ and streamed.score(X, y) >= 0.9
    with pytest.raises(ValueError, match="head_views=0 asks for none"):
        tiny(augment="flip", cache=True, head_views=0).fit(X, y)
    with pytest.raises(ValueError, match="augment="):
        tiny(augment="shear").fit(X, y)


def test_views_beyond_the_memory_budget_stream_the_images(data, monkeypatch):
    from transferkit import finetune

    monkeypatch.setattr(finetune, "_FROZEN_ACTIVATIONS_MAX_BYTES", 1)
    assert not tiny(augment="flip", head_views=2, epochs=1).fit(*data).cached_


def test_default_training_crops_flips_and_gives_the_head_augmented_views(data, monkeypatch):
    from transferkit import finetune

    X, y = data
    # Whether the views help is the cross-validation's call (tested below): here they do.
    monkeypatch.setattr(finetune, "fit_logistic_head", _head_that_finds_the_views(True))
    clf = tiny(augment=FineTunedClassifier().augment, head_init="logistic", head_views=3)
    clf.fit(X, y)
    assert clf.augment == ("crop", "flip") and clf.cached_
    assert clf._network.train_net.get_layer("augment_crop") is not None
    assert clf.history_["head"]["views"] == 4  # the central crop + 3 random views
    assert clf.score(X, y) >= 0.9
    without_views = tiny(augment=("crop", "flip"), head_init="logistic", head_views=0).fit(X, y)
    assert without_views.history_["head"]["views"] == 1


def _png_paths(folder, images) -> list[str]:
    paths = []
    for i, image in enumerate(images):
        paths.append(str(folder / f"{i}.png"))
        Image.fromarray(image).save(paths[-1])
    return paths


def _head_that_finds_the_views(helpful: bool):
    """The logistic head, with its verdict on the views forced to ``helpful``."""
    from transferkit import finetune

    real = finetune.fit_logistic_head

    def head(*args, **kwargs):
        history = real(*args, **kwargs)
        features, groups = args[1], args[4]
        history["views"] = len(features) // len(np.unique(groups)) if helpful else 1
        return history

    return head


@pytest.mark.parametrize("helpful", [False, True], ids=["views_hurt", "views_help"])
def test_the_head_decides_on_two_views_before_the_others_are_drawn_from_one_decoding(
        tmp_path, data, monkeypatch, helpful):
    from collections import Counter

    from transferkit import finetune, image_input

    X, y = data
    paths = _png_paths(tmp_path, X)
    loads, drawn_later = Counter(), []
    load_image = image_input.load_image
    monkeypatch.setattr(image_input, "load_image",
                        lambda path, size=None: loads.update([path]) or load_image(path, size))
    monkeypatch.setattr(finetune, "fit_logistic_head", _head_that_finds_the_views(helpful))
    more_views = finetune.more_views
    monkeypatch.setattr(finetune, "more_views",
                        lambda *a, **k: drawn_later.append(a[3]) or more_views(*a, **k))
    clf = tiny(augment=("crop", "flip"), head_init="logistic", head_views=5, epochs=0,
               early_stopping=False).fit(paths, y)
    head = clf.history_["head"]
    if helpful:  # the other 3 views drawn, and the head fitted again on all 5
        assert drawn_later == [3] and head["views"] == 6 and "views_tried" not in head
    else:
        assert drawn_later == [] and head["views"] == 1 and head["views_tried"] == 2
    # Either way each image was decoded once: the second pass reads the decoded pixels.
    assert sorted(loads) == sorted(paths) and set(loads.values()) == {1}


def test_views_drawn_later_are_new_draws_in_the_bank_one_pass_would_make(data):
    from transferkit.image_input import as_image_collection
    from transferkit.training import PhaseSettings, frozen_pass, more_views

    X, y = data
    images = as_image_collection(X)
    seeds = {"init": 0, "dropout": 1, "augment": 2, "split": 3, "shuffle": 4}

    def network():
        clf = tiny(augment=("crop", "flip"), head_init="logistic", head_views=4)
        clf._build(None, 2, seeds)
        return clf._network, PhaseSettings(8, clf.source_size_, 3, lambda message: None)

    staged, settings = network()
    first = frozen_pass(staged, images, 2, True, settings, seed=5)
    traced = dict(first.traced)
    grown = more_views(first, staged, images, 2, settings, seed=5)
    assert len(grown.view_features) == 4 and grown.bank.views.shape[0] == 4
    np.testing.assert_array_equal(grown.bank.views[:2], first.bank.views)
    assert grown.traced == traced  # drawn and pooled by the first pass's traces, not new ones
    for later in grown.view_features[2:]:  # the augmentation went on, it did not restart
        assert not any(np.allclose(later, earlier) for earlier in grown.view_features[:2])
    at_once, settings = network()
    one_pass = frozen_pass(at_once, images, 4, True, settings, seed=5)
    np.testing.assert_array_equal(grown.bank.offsets, one_pass.bank.offsets)


def test_fine_tuning_epochs_decode_each_image_once_and_learn_the_same(tmp_path, data,
                                                                      monkeypatch):
    from collections import Counter

    from transferkit import finetune, image_input

    X, y = data
    paths = _png_paths(tmp_path, X)
    loads = Counter()
    load_image = image_input.load_image
    monkeypatch.setattr(image_input, "load_image",
                        lambda path, size=None: loads.update([path]) or load_image(path, size))
    # Augmented, so the epochs run on images (not on cached activations), with validation.
    params = {"augment": ("crop", "flip"), "head_views": 1, "epochs": 3,
              "early_stopping": True, "validation_fraction": 0.25, "cache": False}
    held = tiny(**params).fit(paths, y)
    assert sorted(loads) == sorted(paths) and set(loads.values()) == {1}
    assert len(held.history_["finetune"]["loss"]) >= 1
    monkeypatch.setattr(finetune, "_DECODED_PIXELS_MAX_BYTES", 0)  # stream every epoch
    loads.clear()
    streamed = tiny(**params).fit(paths, y)
    assert min(loads.values()) > 1
    np.testing.assert_array_equal(held.predict_proba(paths), streamed.predict_proba(paths))


def test_pixels_outside_the_central_crop_do_not_change_predictions(data):
    X, y = data
    clf = tiny(crop_fraction=0.5, epochs=1).fit(X, y)
    assert clf.input_size_ == (32, 32) and clf.source_size_ == (64, 64)
    assert tuple(clf.model_.input_shape[1:3]) == (64, 64)
    images = np.random.default_rng(1).integers(0, 256, (4, 64, 64, 3)).astype(np.uint8)
    framed = images.copy()
    framed[:, :16], framed[:, 48:], framed[:, :, :16], framed[:, :, 48:] = 255, 0, 255, 0
    np.testing.assert_array_equal(clf.predict_proba(framed), clf.predict_proba(images))
    whole = tiny(crop_fraction=1.0, epochs=1).fit(X, y)
    assert whole.source_size_ == whole.input_size_ == (32, 32)
    # Relative: these confident probabilities differ in their small ones.
    assert not np.allclose(whole.predict_proba(framed), whole.predict_proba(images),
                           rtol=1e-3, atol=0)


def _bordered_images(n_per_class: int = 12, size: int = 40):
    """Two classes that differ only in a 3-pixel frame, bright or dark, around the same
    kind of noise: visible to the whole image, cropped away by ImageNet's framing."""
    rng = np.random.default_rng(0)
    X = rng.integers(60, 200, (2 * n_per_class, size, size, 3)).astype(np.uint8)
    y = np.repeat(np.array(["bright frame", "dark frame"]), n_per_class)
    frame = np.ones((size, size), bool)
    frame[3:-3, 3:-3] = False
    X[:n_per_class, frame], X[n_per_class:, frame] = 255, 0
    return X, y


@pytest.fixture(scope="module")
def framed_fit():
    X, y = _bordered_images()
    return tiny(epochs=1, head_init="logistic").fit(X, y), X, y


def test_auto_framing_sees_the_whole_image_where_the_border_holds_the_classes(framed_fit):
    clf, X, y = framed_fit
    losses = clf.history_["framing"]["cv_log_loss"]
    assert clf.crop_fraction == "auto" and clf.crop_fraction_ == 1.0
    assert losses[1.0] < losses[0.875]
    # Images are loaded for ImageNet's framing, and predict sees all of them.
    assert clf.source_size_ == (37, 37)
    assert clf.score(X, y) == 1.0


def test_openvino_predicts_a_whole_image_framing_as_tensorflow_does(framed_fit):
    pytest.importorskip("openvino")
    clf, X, _ = framed_fit
    # The whole image, loaded larger than the input, is resized with antialiasing: an
    # operation OpenVINO's converter cannot take, so the view stays with TensorFlow.
    compiled = pickle.loads(pickle.dumps(clf.set_params(runtime="openvino")))
    clf.set_params(runtime="tensorflow")
    assert compiled.crop_fraction_ == 1.0
    assert type(compiled._forward.rest).__name__ == "_OpenVINOForward"
    np.testing.assert_allclose(compiled.predict_proba(X), clf.predict_proba(X), atol=1e-5)


def test_a_chosen_framing_survives_pickling(framed_fit):
    clf, X, _ = framed_fit
    restored = pickle.loads(pickle.dumps(clf))
    assert restored.crop_fraction_ == 1.0
    np.testing.assert_array_equal(restored.predict_proba(X), clf.predict_proba(X))


def test_choose_framing_takes_the_framing_a_linear_probe_separates_best():
    from transferkit.training import choose_framing

    rng = np.random.RandomState(0)
    y = np.repeat([0, 1], 30)
    separable = rng.normal(size=(60, 4)) + np.where(y[:, None] == 1, 1.5, -1.5)
    noise = rng.normal(size=(60, 4))
    chosen, losses = choose_framing({0.875: noise, 1.0: separable}, y, np.ones(60), 2, 0,
                                    lambda message: None)
    assert chosen == 1.0 and losses[1.0] < losses[0.875]


def test_choose_framing_keeps_the_first_framing_when_there_is_nothing_to_compare():
    from transferkit.training import choose_framing

    y = np.array([0, 0, 0, 1])  # one image of a class: too few to cross-validate
    features = np.eye(4)
    assert choose_framing({0.875: features, 1.0: features}, y, np.ones(4), 2, 0,
                          print) == (0.875, None)
    assert choose_framing({0.9: features}, y, np.ones(4), 2, 0, print) == (0.9, None)


def test_early_stopping_counts_only_decreases_beyond_one_standard_error():
    from transferkit.training import clearly_lower

    reference = np.linspace(0.2, 1.0, 25)
    # Every image a little better: a decrease far beyond its noise.
    assert clearly_lower(reference - 0.01, reference)
    # The same mean decrease (0.01) from one image, the others a little worse: noise.
    lucky = reference + 0.01
    lucky[0] -= 0.5
    assert np.isclose((reference - lucky).mean(), 0.01)
    assert not clearly_lower(lucky, reference)
    assert not clearly_lower(reference, reference)
    assert not clearly_lower(reference + 0.01, reference)


def test_the_check_holds_out_every_image_once_in_stratified_folds():
    from transferkit.training import check_folds

    y = np.repeat([0, 1, 2], [10, 6, 4])
    folds = check_folds(y, 5, 0.1, seed=0)
    assert len(folds) == 4  # capped at the 4 images of the smallest class
    held_out = np.concatenate([val for _, val in folds])
    np.testing.assert_array_equal(np.sort(held_out), np.arange(len(y)))
    for train, val in folds:
        assert set(y[val]) == {0, 1, 2} and not set(train) & set(val)
    (train, val), = check_folds(y, None, 0.25, seed=0)  # one split of validation_fraction
    assert len(val) == 5 and set(y[val]) == {0, 1, 2}


def test_a_class_of_one_image_cannot_be_held_out():
    from transferkit.training import check_folds

    with pytest.raises(ValueError, match="smallest class of y has 1 image; add images or set "
                                         "early_stopping=False"):
        check_folds(np.array([0, 0, 0, 1]), 5, 0.1, seed=0)


def test_temperature_scaling_finds_the_temperature_that_made_the_logits():
    from transferkit.training import cross_entropies, fit_temperature

    rng = np.random.default_rng(0)
    logits = rng.normal(scale=2.0, size=(4000, 5))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y = np.array([rng.choice(5, p=p) for p in probs])
    # Logits twice as confident as the labels were drawn with: T = 2 undoes it.
    assert fit_temperature(2.0 * logits, y) == pytest.approx(2.0, rel=0.1)
    assert cross_entropies(2.0 * logits, y, 2.0).mean() < cross_entropies(2.0 * logits, y).mean()
    # Every image right: certainty would be best, and is not believed.
    right = np.eye(5)[y] * 3.0
    assert fit_temperature(right, y) == pytest.approx(0.5, rel=1e-3)


def test_the_check_judges_calibrated_losses_pooled_over_every_held_out_image():
    from transferkit.training import cross_entropies, pool_folds

    rng = np.random.default_rng(0)

    def run(n: int, sharpen: float) -> dict:
        y = rng.integers(0, 3, n)
        start = rng.normal(size=(n, 3)) + 1.5 * np.eye(3)[y]
        return {"held_out": (y, start, sharpen * start), "loss": [0.5], "accuracy": [0.8],
                "seconds": [1.0], "learning_rate": [1e-4],
                "val_loss": [float(cross_entropies(sharpen * start, y).mean())],
                "val_accuracy": [float((start.argmax(1) == y).mean())],
                "initial_val_loss": float(cross_entropies(start, y).mean()),
                "initial_val_accuracy": float((start.argmax(1) == y).mean())}

    # Fine-tuning that only made the network three times as confident, the same classes
    # right: its raw held-out loss is far higher, its calibrated loss the head's.
    runs = [run(60, 3.0), run(61, 3.0)]
    raw = np.array([r["val_loss"][0] for r in runs]) @ [60, 61] / 121
    pooled = pool_folds(runs)
    assert pooled["val_loss"][0] == pytest.approx(raw)
    assert pooled["val_loss"][0] > pooled["initial_val_loss"] + 0.1
    assert pooled["temperature"]["fine_tuned"] == pytest.approx(
        3.0 * pooled["temperature"]["head"], rel=1e-3)
    assert pooled["calibrated_val_loss"] == pytest.approx(
        pooled["calibrated_initial_val_loss"], abs=1e-6)
    assert not pooled["worse_than_start"]
    assert pooled["folds"] == 2 and pooled["n_held_out"] == 121
    assert pooled["seconds"] == [2.0] and "held_out" not in runs[0]


def _refit_run(rng: np.random.Generator, n: int, refit_noise: float,
               own_noise: float) -> dict:
    """A check's run whose refit head and own (Adam's) head differ from the start's."""
    from transferkit.training import cross_entropies

    y = rng.integers(0, 3, n)
    start = rng.normal(size=(n, 3)) + 1.5 * np.eye(3)[y]
    refit = start + rng.normal(scale=refit_noise, size=start.shape)
    own = start + rng.normal(scale=own_noise, size=start.shape)
    return {"held_out": (y, start, refit), "held_out_last_epoch": own, "loss": [0.5],
            "accuracy": [0.8], "seconds": [1.0], "learning_rate": [1e-4],
            "val_loss": [float(cross_entropies(own, y).mean())],
            "val_accuracy": [float((own.argmax(1) == y).mean())],
            "initial_val_loss": float(cross_entropies(start, y).mean()),
            "initial_val_accuracy": float((start.argmax(1) == y).mean())}


def test_the_check_falls_back_on_adams_head_where_only_the_refit_is_clearly_worse():
    from transferkit.training import fit_temperature, pool_folds

    rng = np.random.default_rng(0)
    # The refit's logits scrambled by noise, Adam's head the start's: the tuned layers
    # did no harm, the refit did.
    runs = [_refit_run(rng, 200, 2.0, 0.0), _refit_run(rng, 200, 2.0, 0.0)]
    own = np.concatenate([r["held_out_last_epoch"] for r in runs])
    y = np.concatenate([r["held_out"][0] for r in runs])
    pooled = pool_folds(runs)
    assert not pooled["worse_than_start"] and not pooled["head_refit"]
    assert pooled["calibrated_val_loss_refit"] > pooled["calibrated_initial_val_loss"] + 0.1
    assert pooled["calibrated_val_loss"] == pytest.approx(
        pooled["calibrated_val_loss_own_head"])
    assert pooled["temperature"]["fine_tuned"] == pytest.approx(fit_temperature(own, y))
    assert "held_out_last_epoch" not in runs[0]


def test_the_check_drops_fine_tuning_where_both_heads_are_clearly_worse():
    from transferkit.training import pool_folds

    rng = np.random.default_rng(1)
    pooled = pool_folds([_refit_run(rng, 200, 2.0, 2.0), _refit_run(rng, 200, 2.0, 2.0)])
    assert pooled["worse_than_start"] and pooled["head_refit"]
    assert pooled["calibrated_val_loss"] == pytest.approx(pooled["calibrated_val_loss_refit"])
    assert pooled["calibrated_val_loss_own_head"] > pooled["calibrated_initial_val_loss"]


def test_the_check_keeps_the_refit_head_where_it_is_not_clearly_worse():
    from transferkit.training import pool_folds

    rng = np.random.default_rng(2)
    # Adam's head scrambled, the refit the start's: the refit is judged, nothing else.
    pooled = pool_folds([_refit_run(rng, 200, 0.0, 2.0), _refit_run(rng, 200, 0.0, 2.0)])
    assert not pooled["worse_than_start"] and pooled["head_refit"]
    assert "calibrated_val_loss_own_head" not in pooled


def test_a_fit_whose_check_blamed_the_refit_keeps_adams_head_and_says_so(data, monkeypatch):
    import transferkit.finetune as finetune_module
    from transferkit.training import pool_folds

    def refit_blamed(runs):
        pooled = pool_folds(runs)
        pooled.update(worse_than_start=False, head_refit=False,
                      calibrated_val_loss_refit=9.0, calibrated_val_loss_own_head=0.5)
        return pooled

    monkeypatch.setattr(finetune_module, "pool_folds", refit_blamed)
    clf = tiny(head_init="logistic").fit(*data)
    assert clf.history_["kept_epochs"] == TINY["epochs"]
    assert not clf.history_["head_refit_on_tuned"]
    assert ("with the head trained along with them (refit on the features they tuned, it "
            "had scored clearly worse than the head alone: calibrated loss 9.0000)"
            in clf.history_["summary"])


def test_the_check_folds_every_image_and_the_final_network_predicts_calibrated(data):
    X, y = data
    clf = tiny().fit(X, y)
    tuning = clf.history_["finetune"]
    assert tuning["folds"] == 3 and tuning["n_held_out"] == len(X)
    assert "(3-fold check)" in clf.history_["summary"]
    kept = "fine_tuned" if clf.history_["kept_epochs"] else "head"
    assert clf.temperature_ == tuning["temperature"][kept]
    single = tiny(validation_folds=None, validation_fraction=0.25).fit(X, y)
    assert single.history_["finetune"]["folds"] == 1
    assert single.history_["finetune"]["n_held_out"] == 6
    assert "6 held-out images" in single.history_["summary"]


def test_the_temperature_divides_the_final_logits(data):
    X, y = data
    params = {"head_init": "logistic", "epochs": 0, "early_stopping": False}
    plain = tiny(**params).fit(X, y)
    assert plain.temperature_ == 1.0
    logits = np.log(plain.predict_proba(X))
    from transferkit.training import set_temperature

    set_temperature(plain._network.head, 2.0)
    plain._use_runtime()
    expected = np.exp(logits / 2.0)
    np.testing.assert_allclose(plain.predict_proba(X), expected / expected.sum(1, keepdims=True),
                               rtol=1e-4, atol=1e-6)


def test_fine_tuning_learning_rate_decays_along_a_cosine(data):
    clf = tiny(epochs=4, early_stopping=False).fit(*data)
    rates = clf.history_["finetune"]["learning_rate"]
    assert rates[0] == pytest.approx(TINY["learning_rate"])
    expected = [TINY["learning_rate"] * 0.5 * (1 + np.cos(np.pi * e / 4)) for e in range(4)]
    np.testing.assert_allclose(rates, expected, rtol=1e-5, atol=1e-12)
    head_rates = clf.history_["head"]["learning_rate"]
    assert head_rates == [pytest.approx(TINY["head_learning_rate"])] * len(head_rates)


def test_logistic_head_is_a_cross_validated_logistic_regression(data):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = data
    clf = tiny(**HEAD_ON_BLOCKS, head_init="logistic", epochs=0).fit(X, y)
    head = clf.history_["head"]
    assert head["loss"] == [] and head["best_epoch"] == -1 and len(head["seconds"]) == 1
    assert head["C"] in set(np.logspace(-3, 2, 11))
    assert clf.score(X, y) >= 0.9
    # It predicts as a logistic regression with that C on the pooled frozen features it
    # reads does: every block standardised, or the cut's as they are.
    features = clf._network.pooled_net.predict(clf._network.prefix.predict(X, verbose=0),
                                              verbose=0)
    assert set(clf.history_["head_blocks"]["cv_log_loss"]) == {"every_block", "cut_alone"}
    if clf.history_["head_blocks"]["every_block"]:
        reference = make_pipeline(StandardScaler(),
                                  LogisticRegression(C=head["C"], max_iter=2000))
    else:
        assert clf.head_layers_ == ["block3_pool"]
        features = features[:, -256:]  # block 3's channels
        reference = LogisticRegression(C=head["C"], max_iter=2000)
    reference.fit(features, y)
    assert (clf.predict(X) == reference.predict(features)).mean() >= 0.9
    # The default, and with fine-tuning after it, still a working classifier.
    assert FineTunedClassifier().head_init == "logistic"
    tuned = tiny(head_init="logistic").fit(X, y)
    assert tuned.score(X, y) >= 0.9 and len(tuned.history_["finetune"]["loss"]) >= 1


def test_a_logistic_head_is_refit_on_the_features_fine_tuning_tuned(data):
    from sklearn.linear_model import LogisticRegression

    X, y = data
    clf = tiny(head_init="logistic", early_stopping=False).fit(X, y)
    assert clf.history_["head_refit_on_tuned"]
    assert "the head refit on the features they tuned" in clf.history_["summary"]
    # It predicts as a logistic regression with the head's penalty on the features the
    # fine-tuned block computes, not as the head Adam trained along with the block.
    network = clf._network
    features = network.pooled_net.predict(network.prefix.predict(X, verbose=0), verbose=0)
    reference = LogisticRegression(C=clf.history_["head"]["C"], max_iter=2000)
    reference.fit(features, y)
    # Log-odds, not probabilities, which saturate on these easy images. They agree to 5%
    # (the solver's tolerance on near-separable features); Adam's head was 30% off.
    proba = clf.predict_proba(X).astype(np.float64)
    np.testing.assert_allclose(np.log(proba[:, 1] / proba[:, 0]),
                               reference.decision_function(features), rtol=0.15)


def test_the_check_judges_the_tuned_network_with_its_head_refit(data):
    X, y = data
    clf = tiny(head_init="logistic").fit(X, y)
    tuning = clf.history_["finetune"]
    judged = tuning["judged_val_accuracy"]["fine_tuned"]
    assert f"accuracy {judged:.3f} against" in clf.history_["summary"]
    assert clf.history_["head_refit_on_tuned"] == bool(clf.history_["kept_epochs"])


def test_a_run_scores_its_held_out_images_again_after_its_last_epoch_hook():
    import keras

    from transferkit.training import PhaseSettings, cross_entropies, train_phase

    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    settings = PhaseSettings(8, (1, 1), 5, lambda line: None)

    def forget() -> None:  # what a head refit does to the weights, in the extreme
        model.set_weights([np.zeros_like(w) for w in model.get_weights()])

    history = train_phase("finetune", model, x[:30], y[:30], np.ones(30), x[30:], y[30:],
                          2, 0.1, np.random.RandomState(0), settings, select_best=False,
                          after_epochs=forget)
    labels, _, last = history["held_out"]
    np.testing.assert_array_equal(last, 0.0)  # the logits after the hook are judged
    assert history["val_loss_after"] == pytest.approx(np.log(2.0))
    assert cross_entropies(last, labels).mean() == pytest.approx(np.log(2.0))
    # The epochs' own scores are those of the trained weights, before the hook, and
    # their logits are kept for the check to fall back on.
    assert len(history["val_loss"]) == 2 and history["val_loss"][-1] != pytest.approx(np.log(2))
    assert cross_entropies(history["held_out_last_epoch"], labels).mean() == pytest.approx(
        history["val_loss"][-1], rel=1e-5)


def test_logistic_head_with_a_hidden_layer_falls_back_to_adam(data):
    clf = tiny(head_init="logistic", hidden_units=8, epochs=0, head_epochs=3).fit(*data)
    assert len(clf.history_["head"]["loss"]) >= 1 and "C" not in clf.history_["head"]


def test_hidden_units_add_a_hidden_layer(data):
    clf = tiny(hidden_units=16, epochs=1, learning_rate=1e-4).fit(*data)  # see multiclass
    assert clf.model_.get_layer("tuned").get_layer("head").get_layer("head_hidden").units == 16
    assert clf.score(*data) >= 0.9


def test_class_and_sample_weights_shift_the_decision(data):
    X, y = data
    # 12 bright against 3 dark images: weighting the classes equally must raise the
    # probability given to the minority class.
    keep = np.r_[np.arange(12, 24), np.arange(3)]
    params = {"early_stopping": False, "epochs": 0, "head_epochs": 5, "head_learning_rate": 1e-3}
    plain = tiny(**params).fit(X[keep], y[keep])
    balanced = tiny(**params, class_weight="balanced").fit(X[keep], y[keep])
    weighted = tiny(**params).fit(X[keep], y[keep], sample_weight=np.where(y[keep] == "bright",
                                                                           1.0, 4.0))
    minority = list(plain.classes_).index("dark")
    p_plain = plain.predict_proba(X)[:, minority].mean()
    assert balanced.predict_proba(X)[:, minority].mean() > p_plain
    np.testing.assert_allclose(weighted.predict_proba(X), balanced.predict_proba(X), atol=1e-5)
    ones = tiny(**params).fit(X[keep], y[keep], sample_weight=np.ones(len(keep)))
    np.testing.assert_array_equal(ones.predict_proba(X), plain.predict_proba(X))


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    ("labels", "match"),
    [
        (["a"] * 24, "single class"),
        (["a", "b"] * 11, "22 labels but X has 24 images"),
        ([0.0, 1.0] * 11 + [np.nan, 1.0], "missing label"),
        (["a", "b"] * 11 + [None, "a"], "missing label"),
    ],
)
def test_invalid_labels_raise_clear_errors(data, labels, match):
    with pytest.raises(ValueError, match=match):
        tiny().fit(data[0], np.array(labels, dtype=object if None in labels else None))


@pytest.mark.parametrize(
    ("weights", "match"),
    [
        (np.r_[np.ones(23), -1.0], r"1 negative value\(s\), the first -1.0 at index 23"),
        (np.zeros(24), "zero for every image, which leaves nothing to train on"),
        (np.r_[np.ones(5), np.nan, np.ones(18)], r"1 non-finite value\(s\), the first nan at "
                                                 r"index 5"),
        (np.ones(20), r"shape \(20,\), X has 24 images"),
        (np.array(["1"] * 24), "must hold numbers"),
    ],
    ids=["negative", "zero-sum", "nan", "wrong-length", "strings"],
)
def test_invalid_sample_weights_say_what_is_wrong(data, weights, match):
    with pytest.raises(ValueError, match=match):
        tiny().fit(*data, sample_weight=weights)


def test_class_weights_zeroing_every_image_say_so(data):
    with pytest.raises(ValueError, match="sample_weight \\* class_weight is zero for every "
                                         "image"):
        tiny(class_weight={"dark": 0, "bright": 0}).fit(*data)


def test_freeze_until_after_cut_raises(data):
    with pytest.raises(ValueError, match="comes after cut"):
        tiny(freeze_until="block4").fit(*data)


@pytest.mark.parametrize(
    ("params", "match"),
    [({"learning_rate": 0}, "learning_rate"), ({"dropout": 1.0}, "dropout"),
     ({"validation_fraction": 1.5}, "validation_fraction"), ({"pooling": "sum"}, "pooling"),
     ({"cache": "yes"}, "cache"), ({"class_weight": "even"}, "class_weight"),
     ({"head_init": "sgd"}, "head_init"), ({"crop_fraction": 0}, "crop_fraction"),
     ({"crop_fraction": 1.2}, "crop_fraction"), ({"head_views": -1}, "head_views"),
     ({"crop_fraction": "whole"}, "crop_fraction='whole' must be 'auto' or a number in"),
     ({"batchnorm_statistics": "auto"}, "use 'pretrained' or 'target'")],
)
def test_invalid_parameters_name_the_value(data, params, match):
    with pytest.raises(ValueError, match=match):
        tiny(**params).fit(*data)


# ------------------------------------------------------------------ BatchNormalization statistics
# A MobileNet (VGG16 has no BatchNormalization) whose trainable part, the block of the cut
# conv_pw_2, has two BatchNormalization layers; epochs=0 keeps the layers before them as
# the statistics were estimated on.
BATCHNORM_NET = {
    "backbone": "MobileNet", "backbone_kwargs": {"alpha": 0.25}, "weights": None,
    "input_size": 32, "cut": "conv_pw_2", "crop_fraction": 1.0, "augment": None,
    "epochs": 0, "batch_size": 8, "random_state": 0,
}


def _batchnorm_statistics(clf: FineTunedClassifier) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(np.asarray(layer.moving_mean), np.asarray(layer.moving_variance))
            for layer in clf._network.batchnorm_layers]


def test_target_batchnorm_statistics_are_those_of_the_training_images(data):
    X, y = data
    clf = FineTunedClassifier(**BATCHNORM_NET, batchnorm_statistics="target").fit(X, y)
    assert clf.batchnorm_statistics_ == "target"
    network = clf._network
    assert [layer.name for layer in network.batchnorm_layers] == ["conv_dw_2_bn", "conv_pw_2_bn"]
    activations = network.frozen_net.predict(X.astype(np.float32), verbose=0)
    inputs = network.batchnorm_inputs(activations)
    for (mean, variance), x in zip(_batchnorm_statistics(clf), inputs, strict=True):
        x = np.asarray(x, dtype=np.float64).reshape(-1, x.shape[-1])
        np.testing.assert_allclose(mean, x.mean(axis=0), rtol=1e-3, atol=1e-6 * np.abs(x).max())
        np.testing.assert_allclose(variance, x.var(axis=0), rtol=1e-3, atol=1e-6 * x.var().max())


def test_pretrained_batchnorm_statistics_are_left_as_the_backbone_has_them(data):
    clf = FineTunedClassifier(**BATCHNORM_NET).fit(*data)  # the default
    assert clf.batchnorm_statistics_ == "pretrained"
    for mean, variance in _batchnorm_statistics(clf):  # a random MobileNet's, as built
        np.testing.assert_array_equal(mean, 0.0)
        np.testing.assert_array_equal(variance, 1.0)


def test_target_batchnorm_statistics_are_refused_where_the_fit_streams_its_images(data):
    with pytest.raises(ValueError, match=r"batchnorm_statistics='target' re-estimates .* "
                                         r"\(cache=False\); use batchnorm_statistics="
                                         r"'pretrained'"):
        FineTunedClassifier(**BATCHNORM_NET, batchnorm_statistics="target",
                            cache=False).fit(*data)


def test_a_trainable_part_without_batchnorm_has_no_statistics_to_re_estimate(data, capsys):
    clf = tiny(batchnorm_statistics="target", epochs=0, verbose=1).fit(*data)
    assert clf.batchnorm_statistics_ == "pretrained"  # VGG16 has no BatchNormalization
    assert ("batchnorm statistics: ImageNet's; the trainable part has no BatchNormalization "
            "layer to re-estimate") in capsys.readouterr().out


# ------------------------------------------------------------------ scikit-learn integration
@pytest.mark.slow
def test_clone_and_grid_search_over_freeze_until_and_learning_rate(data):
    X, y = data
    base = tiny(epochs=1, head_epochs=5, early_stopping=False)
    assert clone(base).get_params() == base.get_params()
    grid = {"freeze_until": ["auto", "block1"], "learning_rate": [1e-4, 1e-3]}
    search = GridSearchCV(base, grid, cv=2).fit(X, y)
    assert len(search.cv_results_["params"]) == 4
    assert np.all(np.isfinite(search.cv_results_["mean_test_score"]))
    assert search.best_estimator_.score(X, y) >= 0.9


def test_joblib_round_trip_in_a_fresh_process_and_fresh_fit_repeatability(
    fitted, data, tmp_path
):
    X, y = data
    model_path, data_path = tmp_path / "clf.joblib", tmp_path / "data.npz"
    joblib.dump(fitted, model_path)
    np.savez(data_path, X=X, y=y)
    script = textwrap.dedent(
        f"""
        import joblib, numpy as np
        from transferkit.finetune import FineTunedClassifier
        data = np.load({str(data_path)!r})
        loaded = joblib.load({str(model_path)!r})
        refit = FineTunedClassifier(**{TINY!r}).fit(data["X"], data["y"])
        np.savez({str(tmp_path / "out.npz")!r}, loaded=loaded.predict_proba(data["X"]),
                 refit=refit.predict_proba(data["X"]), classes=loaded.classes_)
        """
    )
    env = {**os.environ, "KERAS_HOME": str(KERAS_HOME), "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-c", script], check=True, env=env, cwd=REPO)
    out = np.load(tmp_path / "out.npz")
    expected = fitted.predict_proba(X)
    np.testing.assert_array_equal(out["loaded"], expected)
    np.testing.assert_array_equal(out["classes"], fitted.classes_)
    np.testing.assert_allclose(out["refit"], expected, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ real weights
@needs_shared_weights
@needs_hymenoptera
def test_fine_tuning_mobilenet_on_hymenoptera_reaches_080_val_accuracy():
    def split(name):
        paths, labels = [], []
        for label in ("ants", "bees"):
            for path in sorted((HYMENOPTERA / name / label).iterdir()):
                paths.append(str(path))
                labels.append(label)
        return paths, labels

    clf = FineTunedClassifier("MobileNet", backbone_kwargs={"alpha": 0.25}, epochs=3,
                              random_state=0)
    clf.fit(*split("train"))
    accuracy = clf.score(*split("val"))
    print(f"hymenoptera val accuracy after fine-tuning: {accuracy:.3f}")
    assert accuracy >= 0.80


def _fit_head_on_views(view_shift: float) -> dict:
    """A logistic head on 2 x 30 images with 3 views each; the views' class signal is
    ``view_shift`` times that of the central crops (negative: the views lie)."""
    import keras

    from transferkit.training import fit_logistic_head

    rng = np.random.RandomState(0)
    n, n_views, n_features = 60, 3, 8
    y = np.repeat([0, 1], n // 2)
    signal = rng.normal(size=(n, n_features)) * 0.3 + np.where(y[:, None] == 1, 0.5, -0.5)
    central = signal + rng.normal(size=signal.shape)
    views = [view_shift * signal + rng.normal(size=signal.shape) for _ in range(n_views)]
    features = np.concatenate([central, *views]).astype(np.float32)
    inputs = keras.Input((n_features,))
    head = keras.Model(inputs, keras.layers.Dense(2, name="head_logits")(inputs))
    rows = len(features)
    return fit_logistic_head(head, features, np.tile(y, 1 + n_views), np.ones(rows),
                             np.tile(np.arange(n), 1 + n_views), None, None, 2, 0,
                             lambda message: None)


def test_logistic_head_learns_from_the_views_where_cross_validation_says_they_help():
    history = _fit_head_on_views(1.0)  # views: other noisy looks at the same images
    assert history["views"] == 4
    assert history["cv_log_loss"]["with_views"] < history["cv_log_loss"]["central_crops_only"]


def test_logistic_head_leaves_out_views_that_hurt_it():
    history = _fit_head_on_views(-1.0)  # views whose classes look swapped
    assert history["views"] == 1
    assert history["cv_log_loss"]["central_crops_only"] < history["cv_log_loss"]["with_views"]


def test_a_head_on_several_blocks_standardises_them_with_the_training_features(
        data, monkeypatch):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    # Whatever its cross-validation would say about these noise images' block 1.
    _reading(0, monkeypatch)
    X, y = data
    # The whole image as the network sees it: the head learns from what prefix gives X.
    clf = tiny(**HEAD_ON_BLOCKS, head_init="logistic", epochs=0, early_stopping=False,
               crop_fraction=1.0).fit(X, y)
    network = clf._network
    features = network.pooled_net.predict(network.prefix.predict(X, verbose=0), verbose=0)
    mean, scale, keep = network.head.get_layer("head_standardize").get_weights()
    assert keep.all() and clf.head_layers_ == ["block1_pool", "block3_pool"]
    np.testing.assert_allclose(mean, features.mean(axis=0), rtol=1e-4, atol=1e-5)
    spread = features.std(axis=0)
    # A column that never changes (a channel no image activates) is left unscaled.
    np.testing.assert_allclose(scale, np.where(spread == 0, 1.0, spread), rtol=1e-3)
    # It decides as a scaled logistic regression with the C it chose (fitted to a looser
    # tolerance, so its logits agree to a few per cent only).
    reference = make_pipeline(StandardScaler(),
                              LogisticRegression(C=clf.history_["head"]["C"], max_iter=2000))
    reference.fit(features, y)
    logits = network.head.predict(features, verbose=0)
    np.testing.assert_allclose(logits[:, 1] - logits[:, 0],
                               reference.decision_function(features), rtol=0.2)


def _blocks_and_cut(block_signal: float, n_block_columns: int) -> dict:
    """Pooled features of a middle block (``block_signal`` times the class signal, plus
    noise, at 50 times the scale) and of the cut (a weak class signal), concatenated as a
    head on both reads them; fitted by the logistic head, choosing its columns."""
    import keras

    from transferkit.head_layers import Standardization
    from transferkit.training import fit_logistic_head, head_columns

    rng = np.random.RandomState(0)
    y = np.repeat([0, 1], 45)
    sign = np.where(y[:, None] == 1, 1.0, -1.0)
    block = 50 * (block_signal * sign + rng.normal(size=(90, n_block_columns)))
    cut = 0.4 * sign + rng.normal(size=(90, 4))
    features = np.hstack([block, cut]).astype(np.float32)
    widths = (n_block_columns, 4)
    inputs = keras.Input((features.shape[1],))
    logits = keras.layers.Dense(2, name="head_logits")(
        Standardization(name="head_standardize")(inputs))
    head = keras.Model(inputs, logits)
    keeps = [head_columns(widths, blocks=True), head_columns(widths, blocks=False)]
    history = fit_logistic_head(head, features, y, np.ones(90), np.arange(90), None, None, 2,
                                0, lambda message: None, keeps=keeps)
    return {"history": history, "head": head, "features": features}


def test_the_head_reads_a_middle_block_where_its_cross_validation_finds_it_helps():
    fit = _blocks_and_cut(block_signal=1.0, n_block_columns=4)
    every_block, cut_alone = fit["history"]["blocks_cv_log_loss"]
    assert fit["history"]["blocks"] == 0 and every_block < cut_alone
    mean, scale, keep = fit["head"].get_layer("head_standardize").get_weights()
    assert keep.all()
    np.testing.assert_allclose(scale, fit["features"].std(axis=0), rtol=1e-4)


def test_the_head_reads_the_cut_alone_where_the_other_blocks_are_noise():
    fit = _blocks_and_cut(block_signal=0.0, n_block_columns=40)
    every_block, cut_alone = fit["history"]["blocks_cv_log_loss"]
    assert fit["history"]["blocks"] == 1 and cut_alone < every_block
    mean, scale, keep = fit["head"].get_layer("head_standardize").get_weights()
    # The cut's columns as they are, the noise block's as zeros: a head on the cut alone.
    np.testing.assert_array_equal(keep, [0.0] * 40 + [1.0] * 4)
    np.testing.assert_array_equal(mean, 0.0)
    np.testing.assert_array_equal(scale, 1.0)
    kernel, _ = fit["head"].get_layer("head_logits").get_weights()
    np.testing.assert_array_equal(kernel[:40], 0.0)


def test_a_head_on_the_cut_alone_is_the_logistic_regression_of_the_cut_columns():
    from sklearn.linear_model import LogisticRegression

    fit = _blocks_and_cut(block_signal=0.0, n_block_columns=40)
    y = np.repeat([0, 1], 45)
    cut_alone = LogisticRegression(C=fit["history"]["C"], tol=1e-6, max_iter=5000).fit(
        fit["features"][:, -4:], y)
    logits = fit["head"].predict(fit["features"], verbose=0)
    np.testing.assert_allclose(logits[:, 1] - logits[:, 0],
                               cut_alone.decision_function(fit["features"][:, -4:]),
                               rtol=0.05, atol=0.02)


def _reading(index: int, monkeypatch) -> None:
    """Make the classifier's head read every block (0) or the cut alone (1)."""
    import transferkit.finetune as finetune

    original = finetune.fit_logistic_head

    def forced(*args, keeps, **kwargs):
        return original(*args, keeps=[keeps[index]] if len(keeps) > 1 else keeps, **kwargs)

    monkeypatch.setattr(finetune, "fit_logistic_head", forced)


def test_a_head_that_reads_the_cut_alone_leaves_the_other_blocks_weights_at_zero(
        data, monkeypatch, tmp_path):
    from transferkit.persistence import load, save

    _reading(1, monkeypatch)
    X, y = data
    # Without early stopping both fine-tuning epochs train, on every image.
    clf = tiny(**HEAD_ON_BLOCKS, head_init="logistic", epochs=2, early_stopping=False)
    clf.fit(X, y)
    assert clf.head_layers_ == ["block3_pool"]
    assert len(clf.history_["finetune"]["loss"]) == 2
    kernel = clf.model_.get_layer("tuned").get_layer("head").get_layer("head_logits").kernel
    block1_rows = kernel.numpy()[:64]  # block 1's 64 channels come first
    np.testing.assert_array_equal(block1_rows, 0.0)
    loaded = load(save(clf, tmp_path / "cut_alone.tkz"))
    assert loaded.head_layers_ == ["block3_pool"]
    np.testing.assert_allclose(loaded.predict_proba(X), clf.predict_proba(X), atol=1e-6)
