"""Transferability scores: how well features suit a labelled task, before any training.

Owns LogME (You et al., "LogME: Practical Assessment of Pre-trained Models for Transfer
Learning", ICML 2021): the log marginal evidence of a Bayesian linear model on the features,
per class of one-hot targets, its prior and noise precisions (alpha, beta) maximised by the
paper's fixed-point iteration over one SVD of the features, averaged over classes and divided
by the number of images. Features come from the extractors' own ``fit_transform``, so the
feature cache makes scoring again free. Leaves the features to :mod:`transferkit.extractor`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.base import clone
from sklearn.model_selection import ParameterGrid

__all__ = ["logme", "logme_scorer", "rank_transferability"]

_MAX_ITER = 100
_TOL = 1e-6


def _check_features_targets(features: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2:
        raise ValueError(
            f"features must be a 2-D array (images x features), got shape {features.shape}; "
            "use pooling='avg' or 'max' for one row per image"
        )
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"y must be 1-D (one label per image), got shape {y.shape}")
    if len(y) != len(features):
        raise ValueError(
            f"features have {len(features)} rows but y has {len(y)} labels; "
            "pass one label per image"
        )
    bad = np.flatnonzero(~np.isfinite(features).all(axis=1))
    if bad.size:
        raise ValueError(
            f"features of rows {bad[:10].tolist()} are not finite (NaN or inf); LogME "
            "needs every row: drop the images that could not be read (on_error='nan' marks "
            "them) before scoring"
        )
    classes = np.unique(y)
    if len(classes) < 2:
        raise ValueError(
            f"LogME needs at least two classes in y, got only {classes.tolist()}"
        )
    return features, y


def _evidence(
    singular: np.ndarray, projected: np.ndarray, outside: np.ndarray, n: int, d: int
) -> np.ndarray:
    """Maximised log evidence over n, one value per column of targets.

    ``singular``: the k = min(n, d) singular values of the features; ``projected``: U^T Y
    (k x C); ``outside``: the squared norm of each target outside the span of U.
    """
    sigma = singular**2
    n_targets = projected.shape[1]
    alpha = np.ones(n_targets)
    beta = np.ones(n_targets)
    z2 = projected**2
    for _ in range(_MAX_ITER):
        # Each quantity depends on sigma and z only: no d x d matrix and no refit per step.
        denom = alpha[None, :] + beta[None, :] * sigma[:, None]
        gamma = (beta[None, :] * sigma[:, None] / denom).sum(axis=0)
        m2 = (beta[None, :] ** 2 * sigma[:, None] * z2 / denom**2).sum(axis=0)
        residual = (alpha[None, :] ** 2 * z2 / denom**2).sum(axis=0) + outside
        # Tiny floors keep a perfectly fitted or all-zero target finite.
        new_alpha = gamma / np.maximum(m2, 1e-300)
        new_beta = (n - gamma) / np.maximum(residual, 1e-300)
        ratio, new_ratio = alpha / beta, new_alpha / new_beta
        alpha, beta = new_alpha, new_beta
        if np.all(np.abs(new_ratio - ratio) <= _TOL * np.abs(ratio)):
            break
    denom = alpha[None, :] + beta[None, :] * sigma[:, None]
    m2 = (beta[None, :] ** 2 * sigma[:, None] * z2 / denom**2).sum(axis=0)
    residual = (alpha[None, :] ** 2 * z2 / denom**2).sum(axis=0) + outside
    # The d - k zero eigenvalues of F^T F each contribute log(alpha).
    log_det = np.log(denom).sum(axis=0) + (d - len(sigma)) * np.log(alpha)
    evidence = (
        n / 2 * np.log(beta)
        + d / 2 * np.log(alpha)
        - n / 2 * np.log(2 * np.pi)
        - beta / 2 * residual
        - alpha / 2 * m2
        - log_det / 2
    )
    return evidence / n


def logme(features: Any, y: Any) -> float:
    """LogME of features for class labels: higher means they should transfer better.

    Parameters
    ----------
    features : array-like of shape (n_images, n_features)
        Pooled features, one finite row per image.
    y : array-like of shape (n_images,)
        Class labels, at least two classes.

    Returns
    -------
    score : float
        The log marginal evidence per image of a Bayesian linear model from the features
        to each class's one-hot target, averaged over classes. Comparable between
        candidates scored on the same images and labels.
    """
    features, y = _check_features_targets(features, y)
    n, d = features.shape
    targets = (y[:, None] == np.unique(y)[None, :]).astype(np.float64)
    u, singular, _ = np.linalg.svd(features, full_matrices=False)
    projected = u.T @ targets
    outside = np.maximum((targets**2).sum(axis=0) - (projected**2).sum(axis=0), 0.0)
    return float(_evidence(singular, projected, outside, n, d).mean())


def logme_scorer(estimator: Any, X: Any, y: Any) -> float:
    """Scorer for ``scoring=`` in scikit-learn searches: LogME of ``estimator.transform(X)``.

    For ``GridSearchCV(extractor, grid, scoring=logme_scorer)``: fits where the searched
    estimator is a transformer (a ``KerasFeatureExtractor``, or a ``Pipeline`` whose last
    step transforms); a pipeline ending in a classifier has no features to score (use
    ``accuracy`` there). Each fold scores the features of its held-out images.
    """
    if not hasattr(estimator, "transform"):
        raise TypeError(
            f"logme_scorer scores features, but {type(estimator).__name__} has no transform; "
            "search a KerasFeatureExtractor or a Pipeline ending in a transformer"
        )
    return logme(estimator.transform(X), y)


def rank_transferability(
    extractors: Any,
    X: Any,
    y: Any,
    *,
    param_grid: Mapping[str, Sequence[Any]] | Sequence[Mapping[str, Sequence[Any]]] | None = None,
) -> Any:
    """Rank candidate feature extractors by LogME on labelled images, best first.

    Parameters
    ----------
    extractors : estimator or list of estimators
        ``KerasFeatureExtractor`` instances (or transformers with ``fit_transform``).
    X : images
        What the extractors' ``transform`` accepts.
    y : array-like of shape (n_images,)
        Class labels.
    param_grid : dict or list of dicts, default=None
        As in ``GridSearchCV``: each extractor is cloned with every combination (e.g.
        ``{"cut": list_cut_points("MobileNet"), "pooling": ["avg", "max"]}``).

    Returns
    -------
    ranking : pandas.DataFrame
        One row per candidate: ``backbone``, ``cut``, ``pooling``, ``params``,
        ``n_features``, ``logme``, ``features_seconds``, ``score_seconds``; sorted by
        ``logme``, highest first.
    """
    try:
        import pandas as pd
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "rank_transferability returns a pandas DataFrame: pip install pandas "
            "(or call transferkit.transferability.logme on features yourself)"
        ) from error
    if not isinstance(extractors, (list, tuple)):
        extractors = [extractors]
    if not extractors:
        raise ValueError("rank_transferability needs at least one extractor, got an empty list")
    grid = list(ParameterGrid(param_grid)) if param_grid is not None else [{}]
    rows = []
    for extractor in extractors:
        for params in grid:
            candidate = clone(extractor).set_params(**params) if params else extractor
            start = time.perf_counter()
            features = candidate.fit_transform(X)
            middle = time.perf_counter()
            score = logme(features, y)
            end = time.perf_counter()
            all_params = candidate.get_params(deep=False)
            rows.append({
                "backbone": all_params.get("backbone"),
                "cut": all_params.get("cut"),
                "pooling": all_params.get("pooling"),
                "params": dict(params),
                "n_features": np.asarray(features).shape[1],
                "logme": score,
                "features_seconds": middle - start,
                "score_seconds": end - middle,
            })
    frame = pd.DataFrame(rows)
    return frame.sort_values("logme", ascending=False, kind="stable").reset_index(drop=True)
