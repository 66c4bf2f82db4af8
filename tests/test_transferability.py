"""LogME and the ranking of extractors by it (transferkit.transferability)."""

import math

import numpy as np
import pytest
from sklearn.datasets import make_classification
from sklearn.model_selection import GridSearchCV

import transferkit
from transferkit.transferability import logme, logme_scorer, rank_transferability


def plain_logme(features, y, iterations=100):
    """The paper's fixed-point iteration, written out directly: explicit d x d matrices,
    one class at a time, no SVD."""
    features = np.asarray(features, dtype=np.float64)
    n, d = features.shape
    gram = features.T @ features
    eigenvalues = np.linalg.eigvalsh(gram)
    scores = []
    for label in np.unique(y):
        target = (np.asarray(y) == label).astype(np.float64)
        alpha, beta = 1.0, 1.0
        for _ in range(iterations):
            a_matrix = alpha * np.eye(d) + beta * gram
            m = beta * np.linalg.solve(a_matrix, features.T @ target)
            gamma = sum(beta * lam / (alpha + beta * lam) for lam in eigenvalues)
            alpha = gamma / (m @ m)
            beta = (n - gamma) / np.sum((target - features @ m) ** 2)
        a_matrix = alpha * np.eye(d) + beta * gram
        m = beta * np.linalg.solve(a_matrix, features.T @ target)
        evidence = (
            n / 2 * math.log(beta) + d / 2 * math.log(alpha) - n / 2 * math.log(2 * math.pi)
            - beta / 2 * np.sum((target - features @ m) ** 2) - alpha / 2 * (m @ m)
            - np.linalg.slogdet(a_matrix)[1] / 2
        )
        scores.append(evidence / n)
    return float(np.mean(scores))


@pytest.mark.parametrize("n, d", [(15, 40), (120, 12)], ids=["n<d", "n>d"])
def test_logme_equals_a_direct_fixed_point_iteration(n, d):
    rng = np.random.default_rng(n + d)
    features = rng.normal(size=(n, d))
    y = rng.integers(0, 3, size=n)
    assert logme(features, y) == pytest.approx(plain_logme(features, y), rel=1e-6)


def test_logme_ranks_informative_features_above_noise():
    features, y = make_classification(n_samples=200, n_features=20, n_informative=10,
                                      n_classes=3, random_state=0)
    noise = np.random.default_rng(0).normal(size=features.shape)
    assert logme(features, y) > logme(noise, y)


def test_logme_does_not_depend_on_the_order_of_images_or_features():
    rng = np.random.default_rng(1)
    features, y = rng.normal(size=(60, 25)), rng.integers(0, 4, size=60)
    rows, columns = rng.permutation(60), rng.permutation(25)
    assert logme(features[rows][:, columns], y[rows]) == pytest.approx(logme(features, y))


def test_logme_does_not_depend_on_how_classes_are_named():
    rng = np.random.default_rng(2)
    features, y = rng.normal(size=(50, 10)), rng.integers(0, 3, size=50)
    names = np.array(["bee", "ant", "wasp"])[y]
    assert logme(features, names) == pytest.approx(logme(features, y))


def test_logme_does_not_change_under_a_rotation_of_the_features():
    rng = np.random.default_rng(3)
    features, y = rng.normal(size=(40, 8)), rng.integers(0, 2, size=40)
    rotation, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    assert logme(features @ rotation, y) == pytest.approx(logme(features, y))


def test_logme_refuses_a_single_class():
    with pytest.raises(ValueError, match="at least two classes.*'bee'"):
        logme(np.ones((5, 3)), ["bee"] * 5)


def test_logme_refuses_labels_of_another_length():
    with pytest.raises(ValueError, match="10 rows but y has 9 labels"):
        logme(np.ones((10, 3)), [0, 1] * 4 + [0])


def test_logme_names_the_rows_with_nan_features():
    features = np.random.default_rng(4).normal(size=(10, 3))
    features[[2, 7], 1] = np.nan
    with pytest.raises(ValueError, match=r"rows \[2, 7\] are not finite.*on_error='nan'"):
        logme(features, [0, 1] * 5)


@pytest.fixture(scope="module")
def tiny_images():
    rng = np.random.default_rng(5)
    images = rng.uniform(0, 255, size=(12, 32, 32, 3)).astype(np.float32)
    return images, np.array([0, 1] * 6)


def test_rank_transferability_gives_one_row_per_candidate_best_first(tiny_images):
    pytest.importorskip("pandas")
    images, y = tiny_images
    extractor = transferkit.KerasFeatureExtractor("MobileNet", weights=None, input_size=32,
                                                  backbone_kwargs={"alpha": 0.25})
    cuts = transferkit.list_cut_points("MobileNet")[:2]
    ranking = rank_transferability(extractor, images, y,
                                   param_grid={"cut": cuts, "pooling": ["avg", "max"]})
    assert len(ranking) == 4
    assert set(zip(ranking["cut"], ranking["pooling"], strict=True)) == {
        (cut, pooling) for cut in cuts for pooling in ["avg", "max"]}
    assert list(ranking["logme"]) == sorted(ranking["logme"], reverse=True)
    assert (ranking["features_seconds"] >= 0).all() and (ranking["score_seconds"] >= 0).all()
    assert set(ranking["backbone"]) == {"MobileNet"}


def test_logme_scorer_chooses_a_cut_in_a_grid_search(tiny_images):
    images, y = tiny_images
    extractor = transferkit.KerasFeatureExtractor("MobileNet", weights=None, input_size=32,
                                                  backbone_kwargs={"alpha": 0.25})
    cuts = transferkit.list_cut_points("MobileNet")[:2]
    search = GridSearchCV(extractor, {"cut": cuts}, scoring=logme_scorer, cv=2).fit(images, y)
    assert search.best_params_["cut"] in cuts
    assert np.isfinite(search.cv_results_["mean_test_score"]).all()


def test_logme_scorer_refuses_an_estimator_without_transform():
    from sklearn.linear_model import LogisticRegression

    with pytest.raises(TypeError, match="LogisticRegression has no transform"):
        logme_scorer(LogisticRegression(), np.ones((4, 2)), [0, 1, 0, 1])


def hymenoptera_cut_table():
    """LogME of each MobileNet 0.25 cut on the hymenoptera train images, beside a linear
    probe's accuracy on val (LogisticRegression on train features)."""
    from scipy.stats import spearmanr
    from sklearn.linear_model import LogisticRegression

    from .conftest import SHARED_MODELS, image_paths

    train, train_labels = image_paths("train")
    val, val_labels = image_paths("val")
    extractor = transferkit.KerasFeatureExtractor(
        "MobileNet", backbone_kwargs={"alpha": 0.25}, input_size=128,
        weights=SHARED_MODELS / "mobilenet_2_5_224_tf_no_top.h5")
    ranking = rank_transferability(extractor, train, train_labels,
                                   param_grid={"cut": transferkit.list_cut_points("MobileNet")})
    accuracies = []
    for cut in ranking["cut"]:
        fitted = transferkit.KerasFeatureExtractor(**{**extractor.get_params(), "cut": cut})
        probe = LogisticRegression(max_iter=5000).fit(fitted.fit_transform(train), train_labels)
        accuracies.append(probe.score(fitted.transform(val), val_labels))
    ranking["probe_accuracy"] = accuracies
    return ranking, spearmanr(ranking["logme"], ranking["probe_accuracy"]).statistic


@pytest.mark.slow
def test_logme_ranks_mobilenet_cuts_as_linear_probes_do_on_hymenoptera():
    pytest.importorskip("pandas")
    from .conftest import needs_hymenoptera, needs_shared_weights

    for mark in (needs_hymenoptera, needs_shared_weights):
        if mark.args[0]:
            pytest.skip(mark.kwargs["reason"])
    ranking, rho = hymenoptera_cut_table()
    print(ranking[["cut", "n_features", "logme", "probe_accuracy", "features_seconds",
                   "score_seconds"]].to_string(), f"\nSpearman {rho:.3f}")
    assert rho > 0
