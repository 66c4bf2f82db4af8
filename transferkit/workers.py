"""Estimators made ready once per worker process, for Dask and Spark alike.

Distributed engines send work to long-lived worker processes, task after task. This module
packs an estimator small (an extractor whose parameters determine its weights travels as
its parameters: each worker loads the weights itself, from its Keras cache or a path) and
keeps, in every worker process, the few estimators it was recently asked for, built once.
:func:`model_builds` counts those builds, to prove the reuse.
"""

from __future__ import annotations

import copy
import hashlib
import pickle
import threading
from collections import OrderedDict
from typing import Any

__all__ = ["feature_names", "model_builds", "pack", "ready_estimator"]

# A worker process keeps the few estimators it was most recently asked for, ready to use.
# Four, like the model memo of the extractor: enough for the candidates of a small search
# without holding every network a long-running worker has ever seen.
_MAX_READY = 4
_ready: OrderedDict[str, Any] = OrderedDict()
_ready_lock = threading.Lock()
_builds = 0


def model_builds() -> int:
    """How many estimators this process has built for distributed work.

    Counts every time :func:`extract_features`, :func:`transferkit.spark.features_udf` or
    :func:`transferkit.spark.predict_udf` had to make an estimator ready in this process:
    unpickle it and build its network (or load its weights). Reuse across partitions and
    tasks does not count. Run it on the workers to see how often each built its model,
    e.g. ``client.run(transferkit.dask.model_builds)`` on a ``distributed`` cluster.

    Returns
    -------
    int
    """
    return _builds


def _portable(estimator: Any) -> Any:
    """The smallest equivalent of ``estimator`` to send to other processes.

    An extractor learns nothing from data, so when its parameters determine its weights
    (a named backbone with ImageNet weights, a weights file or a seeded random
    initialisation; or a ``keras.Model`` backbone, which is itself a parameter) an unfitted
    copy gives the same features: it travels as parameters and each worker loads the
    weights itself. A fitted extractor of a keras-hub preset travels fitted, with its
    architecture and weights: the preset need not be on the workers. Steps of a
    ``Pipeline`` are treated one by one; everything else (a fitted classifier, a
    :class:`~transferkit.FineTunedClassifier`) travels as it is.
    """
    from sklearn.pipeline import Pipeline

    from .extractor import KerasFeatureExtractor

    if isinstance(estimator, KerasFeatureExtractor):
        if getattr(estimator, "hub_preset_", None) is not None:
            # A preset directory may be on no worker's disk, a preset name not in a worker's
            # keras-hub cache with no internet to fetch it: the fitted extractor carries the
            # preset's architecture and weights, so a worker needs neither.
            return estimator
        unseeded_random = (
            isinstance(estimator.backbone, str)
            and estimator.weights is None
            and estimator.random_state is None
        )
        if not unseeded_random:
            # Not sklearn.base.clone: it would deep-copy a keras.Model backbone.
            return type(estimator)(**estimator.get_params(deep=False))
        if hasattr(estimator, "model_"):
            return estimator  # its random weights travel with it (see __getstate__)
        raise ValueError(
            f"{estimator!r} has random weights (weights=None) without a random_state, so "
            "every worker would draw different weights and the features of different "
            "partitions would not be comparable. Set random_state to an integer, or fit the "
            "extractor first so that its weights travel with it."
        )
    if isinstance(estimator, Pipeline):
        portable = copy.copy(estimator)
        portable.steps = [(name, _portable(step)) for name, step in estimator.steps]
        return portable
    return estimator


def pack(estimator: Any) -> tuple[str, bytes]:
    """``(token, pickled portable estimator)``; the token names it in every process."""
    import cloudpickle  # a dependency of both Dask and PySpark

    blob = cloudpickle.dumps(_portable(estimator), protocol=pickle.HIGHEST_PROTOCOL)
    return hashlib.sha256(blob).hexdigest()[:32], blob


def _make_ready(estimator: Any) -> Any:
    """Build the network of every unfitted extractor in ``estimator``, in place."""
    from sklearn.pipeline import Pipeline

    from .extractor import KerasFeatureExtractor

    if isinstance(estimator, KerasFeatureExtractor) and not hasattr(estimator, "model_"):
        estimator.fit()
    elif isinstance(estimator, Pipeline):
        for _, step in estimator.steps:
            _make_ready(step)
    return estimator


def ready_estimator(token: str, blob: bytes) -> Any:
    """This process's ready-to-use copy of the packed estimator, built on first request."""
    global _builds
    # One lock around the build too: two threads of a worker asking for the same model at
    # once must not both build it.
    with _ready_lock:
        estimator = _ready.get(token)
        if estimator is not None:
            _ready.move_to_end(token)
            return estimator
        estimator = _make_ready(pickle.loads(blob))
        _builds += 1
        _ready[token] = estimator
        while len(_ready) > _MAX_READY:
            _ready.popitem(last=False)
        return estimator


def feature_names(extractor: Any) -> list[str]:
    """Output column names, without loading any weights in this (the client) process."""
    from sklearn.base import is_classifier

    from .extractor import KerasFeatureExtractor

    if isinstance(extractor, KerasFeatureExtractor) and not hasattr(extractor, "model_"):
        # The architecture alone fixes the output width: build it with random weights, so
        # the client needs neither the weights file nor the network to download them.
        params = extractor.get_params(deep=False)
        params.update(weights=None, random_state=0, cache=None)
        extractor = KerasFeatureExtractor(**params)
    if is_classifier(extractor) or not hasattr(extractor, "transform"):
        raise ValueError(
            f"extractor={extractor!r} has no transform method; pass a KerasFeatureExtractor or "
            "a fitted transformer such as Pipeline([KerasFeatureExtractor(...), PCA(...)])."
        )
    try:
        names = extractor.get_feature_names_out()
    except Exception as exc:  # not fitted, or a step without feature names
        raise ValueError(
            f"Cannot tell the output columns of extractor={extractor!r} "
            f"({type(exc).__name__}: {exc}). Pass a KerasFeatureExtractor, or fit the "
            "transformer first so that get_feature_names_out() works."
        ) from exc
    return [str(name) for name in names]
