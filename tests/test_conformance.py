"""scikit-learn conformance: its API checks as they are, its data checks rewritten for images.

``sklearn.utils.estimator_checks.check_estimator`` feeds tabular 2-D arrays, which are not
images, so its data checks cannot run on these estimators unchanged. The checks that take
no data run here directly; the data checks that matter are rewritten below with image
batches, each saying which scikit-learn check it mirrors.
"""

from __future__ import annotations

import pickle

import joblib
import numpy as np
import pytest
from sklearn.exceptions import NotFittedError
from sklearn.utils import estimator_checks

from transferkit import FineTunedClassifier, KerasFeatureExtractor

from .conftest import noise_images

# Random VGG16 weights at 32 px (random MobileNet features are ~1e-18, useless to compare).
# cache=None: every output is computed, never replayed from the feature cache.
EXTRACTOR = {"backbone": "VGG16", "weights": None, "input_size": 32, "random_state": 0,
             "cache": None, "cut": "block3"}
CLASSIFIER = {"backbone": "VGG16", "weights": None, "cut": "block3", "input_size": 32,
              "epochs": 1, "head_epochs": 3, "batch_size": 8, "random_state": 0}
# Outputs of different batch compositions may differ in the last bits (oneDNN's summation
# order depends on the batch layout); anything larger is a real difference.
RTOL = 1e-5

API_CHECKS = [
    "check_estimator_cloneable",
    "check_estimator_repr",
    "check_no_attributes_set_in_init",
    "check_get_params_invariance",
    "check_set_params",
    "check_do_not_raise_errors_in_init_or_set_params",
    "check_parameters_default_constructible",
    "check_valid_tag_types",
    "check_estimator_tags_renamed",
    "check_mixin_order",
]
ESTIMATORS = [
    KerasFeatureExtractor(),
    KerasFeatureExtractor(**EXTRACTOR),
    FineTunedClassifier(),
    FineTunedClassifier(**CLASSIFIER, augment=("flip",), class_weight="balanced"),
]


@pytest.mark.parametrize("check", API_CHECKS)
@pytest.mark.parametrize("estimator", ESTIMATORS, ids=["extractor-default", "extractor-vgg16",
                                                      "classifier-default",
                                                      "classifier-vgg16"])
def test_sklearn_api_check(estimator, check):
    getattr(estimator_checks, check)(type(estimator).__name__, estimator)


# ------------------------------------------------------------------ shared data
@pytest.fixture(scope="module")
def data():
    return noise_images(8, seed=1)


@pytest.fixture(scope="module")
def read_only_data(data, tmp_path_factory):
    """The same images and labels, memory-mapped read-only from .npy files."""
    folder = tmp_path_factory.mktemp("read_only")
    X, y = data
    np.save(folder / "X.npy", X)
    np.save(folder / "y.npy", y)
    X_map = np.load(folder / "X.npy", mmap_mode="r")
    y_map = np.load(folder / "y.npy", mmap_mode="r")
    assert isinstance(X_map, np.memmap) and not X_map.flags.writeable
    return X_map, y_map


@pytest.fixture(scope="module")
def extractor():
    return KerasFeatureExtractor(**EXTRACTOR).fit()


@pytest.fixture(scope="module")
def classifier(data):
    return FineTunedClassifier(**CLASSIFIER).fit(*data)


def _public_attributes(estimator) -> set[str]:
    return {key for key in vars(estimator) if not key.startswith("_")}


# ------------------------------------------------------------------ KerasFeatureExtractor
def test_extractor_is_stateless_and_transforms_unfitted(extractor, data):
    # Replaces check_estimators_unfitted: the extractor learns nothing, says so in its tags,
    # and builds its network on first use.
    X, _ = data
    unfitted = KerasFeatureExtractor(**EXTRACTOR)
    assert unfitted.__sklearn_tags__().requires_fit is False
    features = unfitted.transform(X)
    assert features.shape == (len(X), extractor.n_features_out_)
    np.testing.assert_array_equal(features, extractor.transform(X))


def test_extractor_fit_returns_self_is_idempotent_and_changes_no_parameter(data):
    # check_fit_returns_self, check_fit_idempotent, check_dont_overwrite_parameters,
    # check_estimators_overwrite_params.
    X, y = data
    estimator = KerasFeatureExtractor(**EXTRACTOR)
    params = joblib.hash(estimator.get_params())
    public = _public_attributes(estimator)
    assert estimator.fit(X, y) is estimator
    first = estimator.transform(X)
    assert all(key.endswith("_") for key in _public_attributes(estimator) - public)
    # Fitting again, even on other images, changes nothing: there is nothing to learn.
    assert estimator.fit(X[::-1], y[::-1]) is estimator
    np.testing.assert_array_equal(estimator.transform(X), first)
    assert joblib.hash(estimator.get_params()) == params


def test_extractor_pickle_preserves_features(extractor, data):
    # check_estimators_pickle.
    X, _ = data
    restored = pickle.loads(pickle.dumps(extractor))
    np.testing.assert_array_equal(restored.transform(X), extractor.transform(X))


def test_extractor_subset_and_sample_order_invariance(extractor, data):
    # check_methods_subset_invariance, check_methods_sample_order_invariance.
    X, _ = data
    full = extractor.transform(X)
    scale = np.abs(full).max()
    assert scale > 1e-3  # real features, so the comparisons below mean something
    for subset in (slice(0, 5), slice(5, None), [3, 11, 7]):
        np.testing.assert_allclose(extractor.transform(X[subset]), full[subset], rtol=RTOL,
                                   atol=RTOL * scale)
    order = np.random.default_rng(0).permutation(len(X))
    np.testing.assert_allclose(extractor.transform(X[order]), full[order], rtol=RTOL,
                               atol=RTOL * scale)


def test_extractor_accepts_read_only_memory_mapped_images(extractor, data, read_only_data):
    # check_estimators_fit_returns_self(readonly_memmap=True) and its transform counterpart.
    X, _ = data
    X_map, y_map = read_only_data
    estimator = KerasFeatureExtractor(**EXTRACTOR)
    assert estimator.fit(X_map, y_map) is estimator
    np.testing.assert_array_equal(estimator.transform(X_map), extractor.transform(X))
    np.testing.assert_array_equal(np.asarray(X_map), X)  # the input was left untouched


# ------------------------------------------------------------------ FineTunedClassifier
def test_classifier_unfitted_raises_not_fitted(data):
    # check_estimators_unfitted.
    X, _ = data
    estimator = FineTunedClassifier(**CLASSIFIER)
    assert estimator.__sklearn_tags__().requires_fit is True
    for method in (estimator.predict, estimator.predict_proba):
        with pytest.raises(NotFittedError):
            method(X)


def test_classifier_fit_returns_self_is_idempotent_and_changes_no_parameter(classifier, data):
    # check_fit_returns_self, check_fit_idempotent, check_dont_overwrite_parameters,
    # check_estimators_overwrite_params.
    X, y = data
    estimator = FineTunedClassifier(**CLASSIFIER)
    params = joblib.hash(estimator.get_params())
    public = _public_attributes(estimator)
    assert estimator.fit(X, y) is estimator
    assert all(key.endswith("_") for key in _public_attributes(estimator) - public)
    first = estimator.predict_proba(X)
    # Same random_state, same data: the same model as an independent fit...
    np.testing.assert_array_equal(first, classifier.predict_proba(X))
    # ...and refitting the same instance gives it again.
    assert estimator.fit(X, y) is estimator
    np.testing.assert_array_equal(estimator.predict_proba(X), first)
    assert joblib.hash(estimator.get_params()) == params


def test_classifier_pickle_preserves_predictions(classifier, data):
    # check_estimators_pickle.
    X, _ = data
    restored = pickle.loads(pickle.dumps(classifier))
    np.testing.assert_array_equal(restored.predict_proba(X), classifier.predict_proba(X))
    np.testing.assert_array_equal(restored.predict(X), classifier.predict(X))


def test_classifier_subset_and_sample_order_invariance(classifier, data):
    # check_methods_subset_invariance, check_methods_sample_order_invariance.
    X, _ = data
    full = classifier.predict_proba(X)
    labels = classifier.predict(X)
    for subset in (slice(0, 5), slice(5, None), [3, 11, 7]):
        np.testing.assert_allclose(classifier.predict_proba(X[subset]), full[subset],
                                   rtol=RTOL, atol=1e-7)
        np.testing.assert_array_equal(classifier.predict(X[subset]), labels[subset])
    order = np.random.default_rng(0).permutation(len(X))
    np.testing.assert_allclose(classifier.predict_proba(X[order]), full[order], rtol=RTOL,
                               atol=1e-7)
    np.testing.assert_array_equal(classifier.predict(X[order]), labels[order])


def test_classifier_fits_and_predicts_read_only_memory_mapped_input(classifier, data,
                                                                    read_only_data):
    # check_estimators_fit_returns_self(readonly_memmap=True), check_classifiers_train
    # with read-only input.
    X, y = data
    X_map, y_map = read_only_data
    estimator = FineTunedClassifier(**CLASSIFIER)
    assert estimator.fit(X_map, y_map) is estimator
    np.testing.assert_array_equal(estimator.predict_proba(X_map), classifier.predict_proba(X))
    np.testing.assert_array_equal(estimator.classes_, classifier.classes_)
    np.testing.assert_array_equal(np.asarray(X_map), X)
