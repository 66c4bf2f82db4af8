"""KerasFeatureExtractor(runtime="openvino"): the same features, computed by OpenVINO."""

from __future__ import annotations

import pickle
import threading

import numpy as np
import pytest

from transferkit import KerasFeatureExtractor, list_backbones
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


@pytest.fixture
def openvino_batches(monkeypatch):
    """Counts the batches OpenVINO runs, so a test can tell that it ran and not TensorFlow."""
    from transferkit.openvino_runtime import _OpenVINOForward

    counted = {"batches": 0}
    call = _OpenVINOForward.__call__

    def counting_call(self, batch):
        counted["batches"] += 1
        return call(self, batch)

    monkeypatch.setattr(_OpenVINOForward, "__call__", counting_call)
    return counted


@needs_openvino
@pytest.mark.parametrize("params", [{}, {"crop_fraction": 0.8, "cut": "block4_pool"},
                                    {"pooling": "max"}, {"pooling": None}])
def test_openvino_features_equal_tensorflows(images, params, openvino_batches):
    expected = KerasFeatureExtractor(**{**SMALL, **params}).fit_transform(images)
    assert openvino_batches["batches"] == 0
    got = KerasFeatureExtractor(**{**SMALL, **params}, runtime="openvino").fit_transform(images)
    assert openvino_batches["batches"] == 3  # 11 images in batches of 4
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

# One backbone of every family of keras.applications: the families differ in the operations
# OpenVINO has to convert (depthwise and separable convolutions, swish and hard-swish,
# squeeze-and-excitation, layer normalisation, concatenations).
ONE_PER_FAMILY = {
    "convnext": "ConvNeXtTiny", "densenet": "DenseNet121", "efficientnet": "EfficientNetB0",
    "efficientnet_v2": "EfficientNetV2B0", "inception_resnet_v2": "InceptionResNetV2",
    "inception_v3": "InceptionV3", "mobilenet": "MobileNet", "mobilenet_v2": "MobileNetV2",
    "mobilenet_v3": "MobileNetV3Small", "nasnet": "NASNetMobile", "resnet": "ResNet50",
    "resnet_v2": "ResNet50V2", "vgg16": "VGG16", "vgg19": "VGG19", "xception": "Xception",
}


def test_openvino_family_sweep_covers_every_family_of_the_registry():
    assert set(ONE_PER_FAMILY) == {entry["module"] for entry in list_backbones()}


@needs_openvino
@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(ONE_PER_FAMILY.values()))
def test_openvino_gives_tensorflows_features_for_every_backbone_family(name, images):
    params = {"backbone": name, "weights": None, "input_size": 96, "random_state": 0,
              "cache": None}
    expected = KerasFeatureExtractor(**params).fit_transform(images)
    got = KerasFeatureExtractor(**params, runtime="openvino").fit_transform(images)
    assert np.isfinite(got).all()
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
    import transferkit.openvino_runtime as openvino_runtime

    monkeypatch.setattr(openvino_runtime, "openvino_available", lambda: False)
    with pytest.raises(ImportError, match=r'pip install "transferkit\[openvino\]"'):
        KerasFeatureExtractor(**SMALL, runtime="openvino").fit()

@needs_openvino
def test_pickled_openvino_extractor_loaded_without_openvino_says_how_to_install_it(
        monkeypatch):
    import transferkit.openvino_runtime as openvino_runtime

    saved = pickle.dumps(KerasFeatureExtractor(**SMALL, runtime="openvino").fit())
    monkeypatch.setattr(openvino_runtime, "openvino_available", lambda: False)
    with pytest.raises(ImportError, match=r'pip install "transferkit\[openvino\]"'):
        pickle.loads(saved)


# ---------------------------------------------------------------- FineTunedClassifier
TUNED = {"backbone": "VGG16", "weights": None, "cut": "block3", "input_size": 32,
         "epochs": 2, "head_init": "adam", "head_epochs": 5, "augment": None,
         "batch_size": 8, "random_state": 0}


@pytest.fixture(scope="module")
def labelled():
    rng = np.random.default_rng(1)
    X = np.concatenate([rng.integers(0, 100, (8, 36, 36, 3)),
                        rng.integers(150, 256, (8, 36, 36, 3))]).astype(np.uint8)
    return X, np.array(["dark"] * 8 + ["bright"] * 8)


@needs_openvino
def test_fine_tuned_classifier_predicts_through_openvino_what_tensorflow_predicts(
        labelled, openvino_batches):
    from transferkit import FineTunedClassifier

    X, y = labelled
    expected = FineTunedClassifier(**TUNED).fit(X, y)
    tuned = FineTunedClassifier(**TUNED, runtime="openvino").fit(X, y)
    # Training runs on TensorFlow either way: the weights are the same.
    for a, b in zip(tuned.model_.get_weights(), expected.model_.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert openvino_batches["batches"] == 0
    np.testing.assert_allclose(tuned.predict_proba(X), expected.predict_proba(X), atol=1e-6)
    assert openvino_batches["batches"] == 2  # 16 images, batch_size 8
    np.testing.assert_array_equal(tuned.predict(X), expected.predict(X))


@needs_openvino
def test_pickled_openvino_fine_tuned_classifier_gives_identical_probabilities(
        labelled, openvino_batches):
    from transferkit import FineTunedClassifier

    X, y = labelled
    tuned = FineTunedClassifier(**TUNED, runtime="openvino").fit(X, y)
    expected = tuned.predict_proba(X)
    restored = pickle.loads(pickle.dumps(tuned))
    assert restored.runtime == "openvino"
    before = openvino_batches["batches"]
    np.testing.assert_array_equal(restored.predict_proba(X), expected)
    assert openvino_batches["batches"] == before + 2


@pytest.mark.parametrize(("runtime", "error", "match"), [
    ("onnx", ValueError, "runtime='onnx' is not supported"),
    ("openvino", ImportError, r'pip install "transferkit\[openvino\]"'),
])
def test_fine_tuned_classifier_checks_its_runtime_at_fit(runtime, error, match, labelled,
                                                         monkeypatch):
    import transferkit.openvino_runtime as openvino_runtime
    from transferkit import FineTunedClassifier

    monkeypatch.setattr(openvino_runtime, "openvino_available", lambda: False)
    with pytest.raises(error, match=match):
        FineTunedClassifier(**TUNED, runtime=runtime).fit(*labelled)
