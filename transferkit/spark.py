"""Spark column functions for feature extraction and prediction.

:func:`features_udf` and :func:`predict_udf` return column functions built on
``pyspark.ml.functions.predict_batch_udf`` (Spark >= 3.4): Spark cuts each partition into
batches, and each executor Python worker builds the model once and reuses it for every
batch and partition it runs. The input column holds image paths (strings, readable on
every executor) or the bytes of image files, as the ``binaryFile`` source reads them.

The estimator travels as in :mod:`transferkit.dask`: an extractor whose parameters fix
its weights is sent as its parameters and each worker loads the weights itself, from its
own Keras cache or the weights file; a fitted classifier, or a fitted extractor of a
keras-hub preset, travels fitted. PySpark is
imported only when a column function is made; ``import transferkit.spark`` needs no Spark.
"""

from __future__ import annotations

import io
import numbers
from collections.abc import Callable
from typing import Any

import numpy as np

from .workers import model_builds, pack, ready_estimator

__all__ = ["features_udf", "model_builds", "predict_udf"]


def _decode_bytes(data: Any, row: int) -> Any:
    """The bytes of an image file -> a fully decoded PIL image; errors name the row."""
    from PIL import Image

    try:
        image = Image.open(io.BytesIO(bytes(data)))
        # Decode now, so that a damaged file fails here, where its row is known.
        image.load()
    except (OSError, SyntaxError, ValueError) as exc:
        raise ValueError(
            f"row {row} of the batch holds {len(data)} bytes (starting {bytes(data[:8])!r}) "
            f"that do not decode as an image ({type(exc).__name__}: {exc}); keep only image "
            "files, e.g. spark.read.format('binaryFile').option('pathGlobFilter', '*.jpg')."
        ) from exc
    return image


def _as_images(values: np.ndarray) -> list[Any]:
    """A batch of one column, paths or image-file bytes -> what ``transform`` takes.

    Decoded bytes become PIL images, which the estimators convert (EXIF orientation, RGB)
    and resize exactly as they do an image read from a path.
    """
    images = []
    for row, value in enumerate(values):
        if isinstance(value, str):
            images.append(value)
        elif isinstance(value, (bytes, bytearray, memoryview)):
            images.append(_decode_bytes(value, row))
        elif value is None:
            raise ValueError(
                f"row {row} of the batch is null; drop rows without an image first, e.g. "
                "df.dropna(subset=[column])."
            )
        else:
            raise ValueError(
                f"row {row} of the batch is a {type(value).__name__} ({value!r:.60}); expected "
                "an image path (string) or the bytes of an image file (binary)."
            )
    return images


def _batch_size(batch_size: Any, estimator: Any) -> int:
    if batch_size is None:
        # The estimator's own forward-pass batch, so Spark's batches map onto whole passes.
        from .keras_setup import default_batch_size

        batch_size = estimator.get_params().get("batch_size") or default_batch_size()
    if not isinstance(batch_size, numbers.Integral) or isinstance(batch_size, bool) \
            or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be a positive integer or None.")
    return int(batch_size)


def features_udf(extractor: Any, *, batch_size: int | None = None) -> Callable[..., Any]:
    """A Spark column function computing one feature vector per image.

    Parameters
    ----------
    extractor : KerasFeatureExtractor or fitted transformer
        The extractor, fitted or not, or a fitted transformer starting with one (e.g.
        ``Pipeline([KerasFeatureExtractor(...), PCA(64)])``). An extractor travels as
        its parameters; each executor Python worker builds the network once, loading the
        weights from its own Keras cache or the weights file (which must exist on every
        executor). Random weights need an integer ``random_state`` (or a fitted
        extractor, whose weights then travel with it).
    batch_size : int, default=None
        Rows per call of the model; the extractor's ``batch_size`` when None.

    Returns
    -------
    callable
        Takes a column (name or ``Column``) of image paths (string) or image-file bytes
        (binary) and returns an ``array<float>`` column of features.

    See Also
    --------
    predict_udf : Labels and probabilities of a fitted classifier.
    transferkit.dask.extract_features : The same on Dask.

    Notes
    -----
    Features agree with those of the in-process extractor to float32 rounding, not bit
    for bit: the math library sums in an order that depends on how images are batched.

    Examples
    --------
    >>> from transferkit import KerasFeatureExtractor
    >>> from transferkit.spark import features_udf
    >>> extract = features_udf(KerasFeatureExtractor("ResNet50"))  # doctest: +SKIP
    >>> files = spark.read.format("binaryFile").option("pathGlobFilter", "*.jpg")  # doctest: +SKIP
    >>> df = files.load("photos/")  # doctest: +SKIP
    >>> df.select("path", extract("content").alias("features"))  # doctest: +SKIP
    """
    from pyspark.ml.functions import predict_batch_udf
    from pyspark.sql.types import ArrayType, FloatType

    from .workers import feature_names

    batch = _batch_size(batch_size, extractor)
    # Fails here, on the driver, for an estimator that has no features to give.
    feature_names(extractor)
    token, blob = pack(extractor)

    def make_predict_fn() -> Callable[[np.ndarray], np.ndarray]:
        # Runs on the executor, once per Python worker (predict_batch_udf caches the result).
        estimator = ready_estimator(token, blob)

        def predict(values: np.ndarray) -> np.ndarray:
            return np.asarray(estimator.transform(_as_images(values)), dtype=np.float32)

        return predict

    return predict_batch_udf(make_predict_fn, return_type=ArrayType(FloatType()),
                             batch_size=batch)


def _label_type(classes: np.ndarray) -> tuple[Any, Callable[[np.ndarray], np.ndarray]]:
    """The Spark type of the label column and the conversion of labels into it."""
    from pyspark.sql.types import BooleanType, DoubleType, LongType, StringType

    kind = classes.dtype.kind
    if kind == "b":
        return BooleanType(), lambda labels: labels.astype(bool)
    if kind in "iu":
        return LongType(), lambda labels: labels.astype(np.int64)
    if kind == "f":
        return DoubleType(), lambda labels: labels.astype(np.float64)
    return StringType(), lambda labels: np.asarray([str(label) for label in labels],
                                                   dtype=object)


def predict_udf(estimator: Any, *, batch_size: int | None = None) -> Callable[..., Any]:
    """A Spark column function giving the predicted label and class probabilities.

    Parameters
    ----------
    estimator : fitted classifier with predict_proba
        A fitted :class:`~transferkit.FineTunedClassifier`, or a fitted ``Pipeline`` of a
        :class:`~transferkit.KerasFeatureExtractor` and a classifier. Its extractor steps
        travel as parameters (see :func:`features_udf`); everything else travels fitted.
    batch_size : int, default=None
        Rows per call of the model; the estimator's ``batch_size`` when None (for a
        Pipeline, or an extractor with ``batch_size=None``: 8 on a CPU, 32 on a GPU).

    Returns
    -------
    callable
        Takes a column of image paths (string) or image-file bytes (binary) and returns a
        struct column with fields ``label`` (the class of highest probability, typed like
        ``classes_``: string, long, double or boolean) and ``probability``
        (``array<double>``, in the order of ``classes_``). Select them as columns with
        ``.select("prediction.*")``.

    See Also
    --------
    features_udf : Features instead of predictions.

    Examples
    --------
    >>> from transferkit import FineTunedClassifier
    >>> from transferkit.spark import predict_udf
    >>> clf = FineTunedClassifier("MobileNetV2").fit(paths, labels)  # doctest: +SKIP
    >>> df.withColumn("prediction", predict_udf(clf)("path")).select("path", "prediction.*")
    ... # doctest: +SKIP
    """
    from pyspark.ml.functions import predict_batch_udf
    from pyspark.sql.types import ArrayType, DoubleType, StructField, StructType

    if not hasattr(estimator, "predict_proba"):
        raise ValueError(
            f"estimator={estimator!r} has no predict_proba; pass a classifier that gives "
            "probabilities (e.g. LogisticRegression, or SVC(probability=True))."
        )
    classes = getattr(estimator, "classes_", None)
    if classes is None:
        raise ValueError(
            f"estimator={estimator!r} is not fitted (it has no classes_); fit it on the "
            "driver first: predict_udf predicts, it does not train."
        )
    classes = np.asarray(classes)
    label_type, to_label = _label_type(classes)
    return_type = StructType([
        StructField("label", label_type),
        StructField("probability", ArrayType(DoubleType())),
    ])
    batch = _batch_size(batch_size, estimator)
    token, blob = pack(estimator)

    def make_predict_fn() -> Callable[[np.ndarray], dict[str, np.ndarray]]:
        model = ready_estimator(token, blob)

        def predict(values: np.ndarray) -> dict[str, np.ndarray]:
            proba = np.asarray(model.predict_proba(_as_images(values)), dtype=np.float64)
            return {"label": to_label(classes[np.argmax(proba, axis=1)]),
                    "probability": proba}

        return predict

    return predict_batch_udf(make_predict_fn, return_type=return_type, batch_size=batch)
