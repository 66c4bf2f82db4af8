"""BatchNormalization folded into the convolution before it: same outputs, fewer passes."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from transferkit.batchnorm_folding import fold_batch_norms

layers = keras.layers


def _randomise_statistics(model: keras.Model, seed: int = 0) -> None:
    """Moving statistics, scales and offsets far from their identity initial values."""
    rng = np.random.default_rng(seed)
    for layer in model._flatten_layers():
        if isinstance(layer, layers.BatchNormalization):
            for variable in layer.weights:
                positive = "variance" in variable.path or "gamma" in variable.path
                value = rng.uniform(0.5, 2.0, variable.shape) if positive \
                    else rng.normal(0, 0.5, variable.shape)
                variable.assign(value.astype("float32"))


def _model() -> keras.Model:
    keras.utils.set_random_seed(0)
    inputs = keras.Input((12, 12, 3))
    x = layers.Conv2D(8, 3, padding="same", use_bias=False)(inputs)
    x = layers.BatchNormalization()(x)                       # folded
    x = layers.ReLU()(x)
    x = layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same")(x)
    x = layers.BatchNormalization(scale=False)(x)           # folded, no gamma
    branch = layers.SeparableConv2D(6, 3, padding="same")(x)
    branch = layers.BatchNormalization(center=False)(branch)  # folded, no beta
    used_twice = layers.Conv2D(6, 1)(x)
    normalised = layers.BatchNormalization()(used_twice)     # conv also feeds the add: kept
    activated = layers.Conv2D(6, 1, activation="relu")(x)
    after_relu = layers.BatchNormalization()(activated)      # conv has an activation: kept
    x = layers.Add()([branch, normalised, used_twice, after_relu])
    inner = keras.Model(inputs, x, name="inner")
    outer_inputs = keras.Input((12, 12, 3))
    y = inner(outer_inputs)
    y = layers.Conv2D(4, 1, use_bias=False)(y)
    y = layers.BatchNormalization()(y)                       # folded, in the outer model
    outputs = layers.GlobalAveragePooling2D()(y)
    return keras.Model(outer_inputs, outputs)


@pytest.fixture(scope="module")
def model():
    model = _model()
    _randomise_statistics(model)
    return model


def test_folded_model_gives_the_same_output(model):
    folded, n_folded = fold_batch_norms(model)
    x = np.random.default_rng(1).uniform(-1, 1, (5, 12, 12, 3)).astype("float32")
    expected = model(x, training=False).numpy()
    np.testing.assert_allclose(folded(x, training=False).numpy(), expected,
                               rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    assert n_folded == 4


def test_only_batchnorms_after_a_linear_convolution_used_once_are_removed(model):
    folded, _ = fold_batch_norms(model)
    inner = folded.get_layer("inner")
    remaining = [layer for layer in inner.layers if isinstance(layer, layers.BatchNormalization)]
    assert len(remaining) == 2
    assert not any(isinstance(layer, layers.BatchNormalization) for layer in folded.layers)


def test_the_original_model_is_left_untouched(model):
    before = [w.copy() for w in model.get_weights()]
    x = np.random.default_rng(2).uniform(-1, 1, (2, 12, 12, 3)).astype("float32")
    output = model(x, training=False).numpy()
    fold_batch_norms(model)
    for old, new in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(old, new)
    np.testing.assert_array_equal(model(x, training=False).numpy(), output)


def test_a_memo_folds_a_network_nested_in_several_models_once(model):
    inner = model.get_layer("inner")
    other_inputs = keras.Input((12, 12, 3))
    other = keras.Model(other_inputs, layers.Flatten()(inner(other_inputs)))
    memo = {}
    folded, _ = fold_batch_norms(model, memo)
    folded_other, n_folded = fold_batch_norms(other, memo)
    assert folded_other.get_layer("inner") is folded.get_layer("inner")
    assert n_folded == 3  # the folds of the shared network count in each model that nests it
    assert fold_batch_norms(inner, memo)[0] is folded.get_layer("inner")


def test_a_model_without_batchnorm_comes_back_as_it_is():
    inputs = keras.Input((8, 8, 3))
    plain = keras.Model(inputs, layers.Conv2D(2, 3)(inputs))
    folded, n_folded = fold_batch_norms(plain)
    assert folded is plain and n_folded == 0


@pytest.mark.parametrize("name", ["MobileNetV2", "ResNet50", "Xception"])
def test_keras_applications_fold_completely_and_agree(name):
    size = 71 if name == "Xception" else 64
    backbone = getattr(keras.applications, name)(include_top=False, weights=None,
                                                 input_shape=(size, size, 3), pooling="avg")
    _randomise_statistics(backbone, seed=3)
    folded, n_folded = fold_batch_norms(backbone)
    n_batchnorms = sum(isinstance(layer, layers.BatchNormalization) for layer in backbone.layers)
    assert n_folded == n_batchnorms
    x = np.random.default_rng(4).uniform(-1, 1, (2, size, size, 3)).astype("float32")
    expected = backbone(x, training=False).numpy()
    np.testing.assert_allclose(folded(x, training=False).numpy(), expected,
                               rtol=1e-4, atol=1e-5 * np.abs(expected).max())
