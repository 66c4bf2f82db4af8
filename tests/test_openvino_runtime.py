"""KerasFeatureExtractor(runtime="openvino"): the same features, computed by OpenVINO."""

from __future__ import annotations

import pickle
import threading

import numpy as np
import pytest

from transferkit import KerasFeatureExtractor
from transferkit.openvino_runtime import openvino_available

needs_openvino = pytest.mark.skipif(
    not openvino_available(),
    reason='openvino is not installed (pip install "transferkit[openvino]")',
)

SMALL = {"backbone": "VGG16", "weights": None, "input_size": 32, "random_state": 0,
         "cache": None, "batch_size": 4}


def assert_same_features(actual, expected):
    """Equal up to float32 rounding, relative to the features' own scale."""
    scale = float(np.abs(expected).max())
    assert scale > 0
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5 * scale)


@pytest.fixture(scope="module")
def images():
    # 11 images: batches of 4, 4 and a partial 3.
    return np.random.default_rng(0).integers(0, 256, (11, 40, 48, 3), dtype=np.uint8)


@needs_openvino
@pytest.mark.parametrize("params", [{}, {"crop_fraction": 0.8, "cut": "block4_pool"},
                                    {"pooling": "max"}, {"pooling": None}])
def test_openvino_features_equal_tensorflows(images, params):
    expected = KerasFeatureExtractor(**{**SMALL, **params}).fit_transform(images)
    got = KerasFeatureExtractor(**{**SMALL, **params}, runtime="openvino").fit_transform(images)
    assert got.dtype == np.float32 and got.shape == expected.shape
    assert_same_features(got, expected)


@needs_openvino
def test_openvino_runs_a_users_own_keras_model(images):
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(8, 3, activation="relu", name="conv_a")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.Conv2D(16, 3, activation="relu", name="conv_b")(x)
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))
    params = {"backbone": model, "cut": "conv_b", "input_size": 32, "cache": None}
    expected = KerasFeatureExtractor(**params).fit_transform(images)
    got = KerasFeatureExtractor(**params, runtime="openvino").fit_transform(images)
    assert_same_features(got, expected)



@needs_openvino
def test_openvino_returns_efficientnets_features(images):
    # TensorFlow's frontend made every swish activation (tf.nn.silu) an extra output of the
    # converted network, and EfficientNet's features stopped being its first output.
    params = {"backbone": "EfficientNetB0", "weights": None, "input_size": 32,
              "random_state": 0, "cache": None}
    expected = KerasFeatureExtractor(**params).fit_transform(images)
    got = KerasFeatureExtractor(**params, runtime="openvino").fit_transform(images)
    assert got.shape == expected.shape == (len(images), 1280)
    assert_same_features(got, expected)

@needs_openvino
def test_openvino_features_do_not_depend_on_the_batch_size(images):
    one_batch = KerasFeatureExtractor(**{**SMALL, "batch_size": 11},
                                      runtime="openvino").fit_transform(images)
    batches = KerasFeatureExtractor(**SMALL, runtime="openvino").fit_transform(images)
    np.testing.assert_allclose(batches, one_batch, rtol=1e-6, atol=1e-7)


@needs_openvino
def test_pickled_openvino_extractor_gives_identical_features(images):
    extractor = KerasFeatureExtractor(**SMALL, runtime="openvino").fit()
    restored = pickle.loads(pickle.dumps(extractor))
    assert restored.runtime == "openvino"
    np.testing.assert_array_equal(restored.transform(images), extractor.transform(images))


@needs_openvino
def test_threads_sharing_an_openvino_extractor_get_the_same_features(images):
    extractor = KerasFeatureExtractor(**SMALL, runtime="openvino").fit()
    expected = extractor.transform(images)
    results: list = [None] * 4

    def work(i: int) -> None:
        results[i] = extractor.transform(images)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for result in results:
        np.testing.assert_array_equal(result, expected)


def test_runtime_is_part_of_the_feature_cache_key():
    # A cached feature must be bit-identical to a fresh one: OpenVINO rounds differently.
    tensorflow = KerasFeatureExtractor(**SMALL)._fingerprint(None)
    openvino = KerasFeatureExtractor(**SMALL, runtime="openvino")._fingerprint(None)
    assert tensorflow != openvino


@pytest.mark.parametrize(("params", "error", "match"), [
    ({"runtime": "onnx"}, ValueError, "runtime='onnx' is not supported"),
    ({"runtime": "openvino", "precision": "bfloat16"}, ValueError, "float32 only"),
])
def test_invalid_runtime_settings_raise_at_fit(params, error, match):
    with pytest.raises(error, match=match):
        KerasFeatureExtractor(**{**SMALL, **params}).fit()


def test_openvino_runtime_without_openvino_says_how_to_install_it(monkeypatch):
    import transferkit.extractor as extractor_module

    monkeypatch.setattr(extractor_module, "openvino_available", lambda: False)
    with pytest.raises(ImportError, match=r'pip install "transferkit\[openvino\]"'):
        KerasFeatureExtractor(**SMALL, runtime="openvino").fit()
