"""KerasFeatureExtractor inside scikit-learn's model selection and persistence."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import joblib
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import Pipeline

from transferkit import KerasFeatureExtractor

from .conftest import REPO, noise_images


def _two_class_images(n_per_class: int = 12):
    X, names = noise_images(n_per_class)
    return X, (names == "bright").astype(int)


def _pipeline(**features) -> Pipeline:
    params = {"backbone": "VGG16", "weights": None, "input_size": 32, "random_state": 0,
              **features}
    return Pipeline([
        ("features", KerasFeatureExtractor(**params)),
        ("clf", LogisticRegression(max_iter=500)),
    ])


def test_cross_val_score_runs_on_a_pipeline():
    X, y = _two_class_images()
    scores = cross_val_score(_pipeline(), X, y, cv=3)
    assert scores.shape == (3,)
    assert scores.mean() > 0.8


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_grid_search_over_backbone_and_cut_reports_best_params(n_jobs):
    X, y = _two_class_images()
    grid = {"features__backbone": ["VGG16", "VGG19"], "features__cut": ["block4", "block5"]}
    search = GridSearchCV(_pipeline(), grid, cv=2, n_jobs=n_jobs).fit(X, y)
    assert set(search.best_params_) == set(grid)
    assert search.best_params_["features__backbone"] in grid["features__backbone"]
    assert len(search.cv_results_["params"]) == 4
    assert np.all(np.isfinite(search.cv_results_["mean_test_score"]))


def test_grid_search_over_every_form_of_cut():
    X, y = _two_class_images()
    search = GridSearchCV(_pipeline(), {"features__cut": [-4, "block3", "block5_conv3"]}, cv=2)
    search.fit(X, y)
    assert search.best_params_["features__cut"] in (-4, "block3", "block5_conv3")


def test_grid_search_over_single_cuts_and_a_list_of_cuts():
    X, y = _two_class_images()
    cuts = ["block3", ["block3", "block5"]]
    search = GridSearchCV(_pipeline(), {"features__cut": cuts}, cv=2).fit(X, y)
    assert search.best_params_["features__cut"] in cuts
    assert np.all(np.isfinite(search.cv_results_["mean_test_score"]))


def test_joblib_round_trip_of_an_extractor_with_several_cuts(tmp_path):
    X, _ = _two_class_images(2)
    extractor = _pipeline(cache=None, cut=["block2", "block3"]).named_steps["features"].fit()
    joblib.dump(extractor, tmp_path / "extractor.joblib")
    restored = joblib.load(tmp_path / "extractor.joblib")
    np.testing.assert_array_equal(restored.transform(X), extractor.transform(X))
    assert list(restored.get_feature_names_out()) == list(extractor.get_feature_names_out())


def test_pickled_extractor_gives_identical_features_in_this_process(tmp_path):
    X, _ = _two_class_images(2)
    extractor = _pipeline(cache=None).named_steps["features"].fit()
    path = tmp_path / "extractor.joblib"
    joblib.dump(extractor, path)
    restored = joblib.load(path)
    np.testing.assert_array_equal(restored.transform(X), extractor.transform(X))


def test_joblib_round_trip_of_a_fitted_pipeline_in_a_fresh_process(tmp_path):
    X, y = _two_class_images()
    # Without a feature cache both processes compute every feature in the same batches, so
    # identical weights must give identical bits (cached features from other batches would
    # differ in the last bit: oneDNN's summation order depends on the batch layout).
    pipe = _pipeline(cache=None).fit(X, y)
    model_path, data_path = tmp_path / "pipe.joblib", tmp_path / "data.npz"
    joblib.dump(pipe, model_path)
    np.savez(data_path, X=X, features=pipe.named_steps["features"].transform(X),
             proba=pipe.predict_proba(X))
    script = textwrap.dedent(f"""
        import joblib, numpy as np
        pipe = joblib.load({str(model_path)!r})
        data = np.load({str(data_path)!r})
        assert np.array_equal(pipe.named_steps["features"].transform(data["X"]), data["features"])
        assert np.array_equal(pipe.predict_proba(data["X"]), data["proba"])
        print("identical")
    """)
    # No network and an empty Keras home: the loaded model must not need to fetch anything.
    env = {**os.environ, "KERAS_HOME": str(tmp_path / "empty_keras_home"),
           "PYTHONPATH": str(REPO), "HTTPS_PROXY": "http://127.0.0.1:9",
           "HTTP_PROXY": "http://127.0.0.1:9"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "identical" in result.stdout


# Slow: 55 s of the CI's 25 minutes; test_dask's grid search fits the classifier in
# other processes too.
@pytest.mark.slow
def test_grid_search_with_two_processes_over_a_fine_tuned_classifier():
    from transferkit import FineTunedClassifier

    X, y = _two_class_images(8)
    # Default augmentation (random crops and flips) with one head view: the two processes
    # must draw the same random boxes as the serial search.
    base = FineTunedClassifier("VGG16", weights=None, cut="block3", input_size=32, epochs=1,
                               head_epochs=3, batch_size=8, head_views=1, random_state=0)
    grid = {"learning_rate": [1e-4, 1e-3], "freeze_until": ["block2", "block3"]}
    parallel = GridSearchCV(base, grid, cv=2, n_jobs=2).fit(X, y)
    serial = GridSearchCV(base, grid, cv=2, n_jobs=1).fit(X, y)
    assert parallel.best_params_ == serial.best_params_
    np.testing.assert_allclose(parallel.cv_results_["mean_test_score"],
                               serial.cv_results_["mean_test_score"])
