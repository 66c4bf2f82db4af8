"""Feature extraction over Dask collections of images, the backbone built once per worker.

``extract_features(bag_of_paths, extractor)`` gives a Dask array of features and
``extract_features(ddf["path"], extractor)`` a Dask DataFrame, computed partition by
partition on whatever scheduler Dask uses (threads, processes or a ``distributed``
cluster). Each worker process builds the network once and reuses it for every
partition it is given.

The estimator travels to the workers small: a :class:`~transferkit.KerasFeatureExtractor`
whose parameters determine its weights (ImageNet weights, a weights file, or random
weights with an integer ``random_state``) is sent as its parameters alone, and each
worker loads the weights itself, from its own Keras cache or from the path. Only an
extractor whose random weights cannot be rebuilt from a seed, or a fitted one of a keras-hub
preset (which may be on no worker), travels with its weights.

The per-process registry (:mod:`transferkit.workers`) also serves :mod:`transferkit.spark`.
Dask itself is imported only when :func:`extract_features` is called: ``import
transferkit.dask`` needs no Dask.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .workers import feature_names, model_builds, pack, ready_estimator

__all__ = ["extract_features", "model_builds"]

def _transform(estimator: Any, images: list[Any], n_features: int) -> np.ndarray:
    if not images:  # an empty partition, e.g. after a filter: no rows, not an error
        return np.empty((0, n_features), dtype=np.float32)
    return np.asarray(estimator.transform(images), dtype=np.float32)


def _bag_partition(images: Any, token: str, blob: bytes, n_features: int) -> np.ndarray:
    return _transform(ready_estimator(token, blob), list(images), n_features)


def _frame_partition(images: Any, token: str, blob: bytes, names: list[str]) -> Any:
    import pandas as pd

    features = _transform(ready_estimator(token, blob), images.tolist(), len(names))
    # The partition's own index: rows stay attached to their images whatever the partitions.
    return pd.DataFrame(features, index=images.index, columns=names)


def extract_features(images: Any, extractor: Any) -> Any:
    """Features of a Dask collection of images, computed where the partitions live.

    Parameters
    ----------
    images : dask.bag.Bag, dask.dataframe.Series or one-column dask.dataframe.DataFrame
        One image per element or row: a file path (readable by every worker, e.g. on a
        shared file system), a PIL image or a pixel array, as
        :meth:`KerasFeatureExtractor.transform <transferkit.KerasFeatureExtractor.transform>`
        takes them.
    extractor : KerasFeatureExtractor or fitted transformer
        The extractor, fitted or not; or a fitted transformer that starts with one, e.g.
        ``Pipeline([("features", KerasFeatureExtractor(...)), ("pca", PCA(64))])``.
        An extractor travels to the workers as its parameters and each worker builds the
        network once, loading the weights from its own Keras cache or the weights file
        (which must exist on every worker). Random weights need an integer
        ``random_state`` (or a fitted extractor, whose weights then travel with it), so
        that every worker has the same ones. A keras-hub preset directory must be readable
        from every worker, unless the extractor is fitted: a fitted extractor of a preset
        travels with its architecture and weights.

    Returns
    -------
    dask.array.Array or dask.dataframe.DataFrame
        For a bag, a float32 array of shape ``(n_images, n_features)``, one chunk per
        partition; the number of rows of each chunk is known only once computed (call
        ``.compute_chunk_sizes()`` where Dask needs it). For a Series or DataFrame, a
        DataFrame with the input's index and partitions and one float32 column per
        feature, named by ``get_feature_names_out()``. Row ``i`` always belongs to image
        ``i``: partitions are transformed in place, never reordered.

    See Also
    --------
    model_builds : How often a worker built its model.
    transferkit.spark.features_udf : The same on Spark.

    Notes
    -----
    Features of an image agree with those of the in-process extractor to float32
    rounding, not bit for bit: the math library sums in an order that depends on how
    images are grouped into batches, and partitions group them differently.

    Examples
    --------
    >>> import dask.bag as db
    >>> from distributed import Client, LocalCluster
    >>> from transferkit import KerasFeatureExtractor
    >>> from transferkit.dask import extract_features
    >>> client = Client(LocalCluster(n_workers=2, threads_per_worker=1))  # doctest: +SKIP
    >>> bag = db.from_sequence(paths, npartitions=8)  # doctest: +SKIP
    >>> features = extract_features(bag, KerasFeatureExtractor("ResNet50"))  # doctest: +SKIP
    >>> features.compute()  # doctest: +SKIP
    """
    import dask
    import dask.array as da
    import dask.bag as db
    import dask.dataframe as dd

    if isinstance(images, dd.DataFrame):
        if len(images.columns) != 1:
            raise ValueError(
                f"images is a Dask DataFrame with {len(images.columns)} columns "
                f"{list(images.columns)!r}; pass the column of images, e.g. ddf['path']."
            )
        images = images[images.columns[0]]
    if not isinstance(images, (db.Bag, dd.Series)):
        raise ValueError(
            f"images of type {type(images).__name__} is not supported; pass a dask.bag.Bag "
            "or a Dask DataFrame column of images. A dask.array of paths converts with "
            "dask.dataframe.from_dask_array(array)."
        )
    names = feature_names(extractor)
    token, blob = pack(extractor)
    # One graph key for the packed estimator: every task depends on it, so a worker
    # receives it once, however many partitions it transforms.
    packed = dask.delayed(blob, name=f"transferkit-estimator-{token}")
    if isinstance(images, db.Bag):
        chunks = [
            da.from_delayed(
                dask.delayed(_bag_partition, pure=True)(part, token, packed, len(names)),
                shape=(np.nan, len(names)), dtype=np.float32,
            )
            for part in images.to_delayed()
        ]
        return da.concatenate(chunks, axis=0)

    import pandas as pd

    meta = pd.DataFrame(np.empty((0, len(names)), dtype=np.float32), columns=names,
                        index=images._meta.index)
    return images.map_partitions(_frame_partition, token, packed, names, meta=meta,
                                 enforce_metadata=False)
