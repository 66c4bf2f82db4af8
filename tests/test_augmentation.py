"""Framing layers: RandomResizedCrop (random boxes while training, the exact central crop
otherwise) and CentralCrop."""

from __future__ import annotations

import numpy as np
import pytest

from transferkit.augmentation import CentralCrop, RandomResizedCrop, source_size


def _ramp(n: int = 6, size: int = 40) -> np.ndarray:
    """Images whose pixel values encode their row, column and index."""
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float32)
    return np.stack([np.stack([rows, cols, np.full_like(rows, i)], -1) for i in range(n)])


@pytest.mark.parametrize(("size", "fraction", "expected"),
                         [((224, 224), 0.875, (256, 256)), ((32, 48), 0.5, (64, 96)),
                          ((224, 224), 1.0, (224, 224))])
def test_source_size_makes_the_central_fraction_the_input_size(size, fraction, expected):
    assert source_size(size, fraction) == expected


def test_inference_keeps_the_central_pixels_without_resampling():
    images = _ramp()
    out = np.asarray(RandomResizedCrop(32, 24, seed=0)(images, training=False))
    np.testing.assert_array_equal(out, images[:, 4:36, 8:32])


def test_training_crops_a_different_box_of_each_image_inside_it():
    images = _ramp()
    layer = RandomResizedCrop(20, 20, seed=0)
    out = np.asarray(layer(images, training=True))
    assert out.shape == (6, 20, 20, 3)
    # Bilinear resampling of a box never leaves the image: values stay within its ramp.
    assert out[..., :2].min() >= 0 and out[..., :2].max() <= 39
    np.testing.assert_allclose(out[..., 2], np.arange(6)[:, None, None] * np.ones((20, 20)))
    boxes = {(round(float(o[0, 0, 0]), 3), round(float(o[-1, -1, 1]), 3)) for o in out}
    assert len(boxes) == 6
    # First and last output pixels sample the box's corners: its sides, in image fractions.
    sides = (out[:, -1, -1, :2] - out[:, 0, 0, :2]) / 39
    area = sides[:, 0] * sides[:, 1]
    assert np.all(area >= 0.35 - 1e-5) and np.all(area <= 1.0 + 1e-5)


def test_the_same_seed_draws_the_same_boxes_and_calls_draw_new_ones():
    images = _ramp()
    first, second = RandomResizedCrop(20, 20, seed=3), RandomResizedCrop(20, 20, seed=3)
    a = np.asarray(first(images, training=True))
    np.testing.assert_array_equal(a, np.asarray(second(images, training=True)))
    assert not np.array_equal(a, np.asarray(first(images, training=True)))


def test_flip_mirrors_some_crops_by_reading_the_same_box_right_to_left():
    images = _ramp(n=16)
    plain = np.asarray(RandomResizedCrop(20, 20, seed=3)(images, training=True))
    flipped = np.asarray(RandomResizedCrop(20, 20, seed=3, flip=True)(images, training=True))
    mirrored = [not np.allclose(f, p, atol=1e-4) for f, p in zip(flipped, plain, strict=True)]
    assert 0 < sum(mirrored) < 16
    for f, p, m in zip(flipped, plain, mirrored, strict=True):
        np.testing.assert_allclose(f, p[:, ::-1] if m else p, atol=1e-4)


def test_flip_is_kept_in_the_layer_config():
    layer = RandomResizedCrop(20, 20, seed=3, flip=True)
    assert RandomResizedCrop.from_config(layer.get_config()).flip


def test_output_shape_is_declared_for_functional_models():
    import keras

    inputs = keras.Input((40, 40, 3))
    assert RandomResizedCrop(24, 32)(inputs).shape == (None, 24, 32, 3)


@pytest.mark.parametrize(("source", "size"), [((40, 40), (32, 32)), ((37, 41), (32, 32)),
                                              ((33, 32), (32, 32))])
def test_central_crop_takes_the_pixels_keras_center_crop_takes(source, size):
    import keras

    images = _ramp(2, max(source))[:, : source[0], : source[1]]
    expected = np.asarray(keras.layers.CenterCrop(*size)(images))
    np.testing.assert_array_equal(np.asarray(CentralCrop(*size)(images)), expected)


def test_central_crop_leaves_the_layers_after_it_in_inference_mode():
    import keras

    # keras.layers.CenterCrop declares training=True, which Keras hands on to the layers
    # after it when a model is called without training=: BatchNormalization would then use
    # batch statistics and overwrite its moving averages.
    inputs = keras.Input((40, 40, 3))
    model = keras.Model(inputs, keras.layers.BatchNormalization()(CentralCrop(32, 32)(inputs)))
    images = _ramp(4)
    expected = np.asarray(model(images, training=False))
    before = [w.copy() for w in model.get_weights()]
    np.testing.assert_array_equal(np.asarray(model(images)), expected)
    for old, new in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(old, new)
