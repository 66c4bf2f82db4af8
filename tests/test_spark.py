"""transferkit on Spark, in local mode: feature and prediction column functions.

One ``local[2]`` SparkSession serves the whole module; its JVM and the Python workers (each
imports TensorFlow on first use) are the expensive part.
"""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from transferkit import KerasFeatureExtractor

from .conftest import image_paths, needs_hymenoptera

pyspark = pytest.importorskip("pyspark")

pytestmark = [
    needs_hymenoptera,
    # PySpark's own caution about pandas 3, which these tests do not touch.
    pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning"),
    pytest.mark.skipif(shutil.which("java") is None,
                       reason="Spark needs a Java runtime and `java` is not on PATH"),
]

# Random VGG16 weights give features of a sane scale at 32 pixels, and the seed makes every
# Python worker build the same network.
SMALL = {"backbone": "VGG16", "weights": None, "input_size": 32, "random_state": 0,
         "cut": "block4"}


def _close(got: np.ndarray, want: np.ndarray) -> None:
    # Float32 rounding, relative to the scale of the features: the math library sums in an
    # order that depends on how images are batched, and Spark batches them differently.
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()))


@pytest.fixture(scope="module")
def spark():
    from pyspark.sql import SparkSession

    # Spark reports a missing or unusable Java only as a failure deep inside py4j.
    assert subprocess.run(["java", "-version"], capture_output=True).returncode == 0
    session = (
        SparkSession.builder.master("local[2]").appName("transferkit-tests")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.driver.memory", "1g")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture(scope="module")
def hymenoptera():
    """Five ants and five bees, their paths and labels."""
    paths, labels = image_paths("train")
    chosen = list(range(5)) + list(range(len(paths) - 5, len(paths)))
    return [paths[i] for i in chosen], [labels[i] for i in chosen]


def test_features_of_paths_and_of_binary_files_match_the_in_process_extractor(
    spark, hymenoptera
):
    from transferkit.spark import features_udf

    paths, _ = hymenoptera
    extractor = KerasFeatureExtractor(**SMALL)
    want = dict(zip(paths, extractor.transform(paths), strict=True))
    # Batches of 3 over partitions of 5: batch boundaries fall inside partitions.
    extract = features_udf(extractor, batch_size=3)

    by_path = spark.createDataFrame([(p,) for p in paths], ["path"]).repartition(2)
    rows = by_path.select("path", extract("path").alias("features")).collect()
    assert sorted(row.path for row in rows) == sorted(paths)
    for row in rows:
        _close(np.asarray(row.features, dtype=np.float32), want[row.path])

    # The binaryFile source: the bytes of each file, decoded on the executors.
    files = spark.read.format("binaryFile").load(paths)
    rows = files.select("path", extract("content").alias("features")).collect()
    assert len(rows) == len(paths)
    for row in rows:
        _close(np.asarray(row.features, dtype=np.float32),
               want[row.path.removeprefix("file:")])


def test_predictions_match_the_fitted_pipeline_in_process(spark, hymenoptera):
    from transferkit.spark import predict_udf

    paths, labels = hymenoptera
    pipe = Pipeline([("features", KerasFeatureExtractor(**SMALL)),
                     ("clf", LogisticRegression(max_iter=1000))]).fit(paths, labels)
    proba = dict(zip(paths, pipe.predict_proba(paths), strict=True))

    df = spark.createDataFrame([(p,) for p in paths], ["path"]).repartition(2)
    rows = df.select("path", predict_udf(pipe)("path").alias("prediction")) \
        .select("path", "prediction.*").collect()
    assert len(rows) == len(paths)
    for row in rows:
        np.testing.assert_allclose(row.probability, proba[row.path], atol=1e-5)
        assert row.label == pipe.classes_[np.argmax(proba[row.path])]
    assert {row.label for row in rows} == {"ants", "bees"}


def test_a_fitted_preset_extractor_gives_on_spark_the_features_of_its_own_transform(
    spark, hymenoptera, hub_presets, tmp_path
):
    from transferkit.spark import features_udf

    paths, _ = hymenoptera
    directory = shutil.copytree(hub_presets["dinov2"][0], tmp_path / "dinov2")
    extractor = KerasFeatureExtractor(str(directory), pooling="cls+avg").fit(paths)
    want = dict(zip(paths, extractor.transform(paths), strict=True))
    # As on a cluster whose executors cannot read the driver's disk: its architecture and
    # weights travel with it.
    shutil.rmtree(directory)
    extract = features_udf(extractor, batch_size=3)
    df = spark.createDataFrame([(p,) for p in paths], ["path"]).repartition(2)
    rows = df.select("path", extract("path").alias("features")).collect()
    assert sorted(row.path for row in rows) == sorted(paths)
    for row in rows:
        _close(np.asarray(row.features, dtype=np.float32), want[row.path])
