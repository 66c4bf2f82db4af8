"""Feature extraction in-process, on Dask (LocalCluster) and on Spark (local mode), side by side.

The same image paths go through ``KerasFeatureExtractor.transform`` in this process, through
``transferkit.dask.extract_features`` on a ``distributed.LocalCluster`` and through
``transferkit.spark.features_udf`` on a ``local[N]`` SparkSession. Reported: wall times (the
engines' start-up separately), how many times each worker built the model, and how far the
three feature matrices are apart.

    python benchmarks/distributed.py [--quick] [--n-images 2000] [--workers 2]

With ``../shared`` present the paths are the hymenoptera photographs (cycled to the count) and
the backbone is MobileNet (alpha 0.25) with its ImageNet weights at 224 pixels; without it,
synthetic photographs and a seeded random VGG16 at 64 pixels. The feature cache is off, so
every image is computed by every engine. Expected: features equal to float32 rounding (not
bit for bit: batches are grouped differently), one model build per worker.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
# This file's name shadows the `distributed` package wherever its folder is on sys.path, and
# Dask's worker processes inherit sys.path and re-run this file: the folder is on it only
# while the harness is imported.
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != HERE]
sys.path.insert(0, str(HERE))
from harness import emit, machine, write_photos  # noqa: E402

sys.path.remove(str(HERE))

REPO = HERE.parent
SHARED = REPO.parent / "shared"
SHARED_MODELS = SHARED / "keras_home" / "models"
HYMENOPTERA = SHARED / "datasets" / "hymenoptera_data"
WEIGHTS_FILE = "mobilenet_2_5_224_tf_no_top.h5"


def _inputs(n: int, scratch: Path) -> tuple[list[str], dict[str, Any]]:
    """``n`` image paths and the extractor parameters to run over them."""
    if (SHARED_MODELS / WEIGHTS_FILE).is_file() and (HYMENOPTERA / "train").is_dir():
        # Keras ignores a read-only $KERAS_HOME: link the weights into a writable one. Set
        # before Keras is imported here, and inherited by the workers the engines start.
        home = scratch / "keras_home"
        (home / "models").mkdir(parents=True)
        for weights_file in SHARED_MODELS.iterdir():
            (home / "models" / weights_file.name).symlink_to(weights_file)
        os.environ["KERAS_HOME"] = str(home)
        photos = sorted(str(p) for p in HYMENOPTERA.glob("*/*/*")
                        if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        params = {"backbone": "MobileNet", "backbone_kwargs": {"alpha": 0.25},
                  "weights": "imagenet", "input_size": 224}
    else:
        photos = write_photos(scratch / "photos", min(n, 200))
        params = {"backbone": "VGG16", "weights": None, "random_state": 0, "input_size": 64}
    paths = [photos[i % len(photos)] for i in range(n)]
    return paths, {**params, "cache": None, "batch_size": 32}


def _run_dask(paths: list[str], params: dict, workers: int) -> tuple[np.ndarray, dict]:
    import dask.bag as db
    from distributed import Client, LocalCluster

    from transferkit import KerasFeatureExtractor
    from transferkit.dask import extract_features, model_builds

    started = time.perf_counter()
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                           dashboard_address=None)
    with cluster, Client(cluster) as client:
        startup = time.perf_counter() - started
        bag = db.from_sequence(paths, npartitions=4 * workers)
        started = time.perf_counter()
        features = extract_features(bag, KerasFeatureExtractor(**params)).compute()
        wall = time.perf_counter() - started
        builds = client.run(model_builds)
    return features, {"startup_s": startup, "wall_s": wall,
                      "images_per_s": len(paths) / wall, "partitions": bag.npartitions,
                      "model_builds_per_worker": builds}


def _run_spark(paths: list[str], params: dict, workers: int) -> tuple[np.ndarray, dict]:
    from pyspark.sql import SparkSession

    from transferkit import KerasFeatureExtractor
    from transferkit.spark import features_udf, model_builds

    started = time.perf_counter()
    spark = (SparkSession.builder.master(f"local[{workers}]").appName("transferkit-benchmark")
             .config("spark.ui.enabled", "false")
             .config("spark.ui.showConsoleProgress", "false").getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    try:
        startup = time.perf_counter() - started
        df = spark.createDataFrame(list(enumerate(paths)), ["row", "path"]) \
            .repartition(4 * workers)
        extract = features_udf(KerasFeatureExtractor(**params))
        started = time.perf_counter()
        rows = df.select("row", extract("path").alias("features")).collect()
        wall = time.perf_counter() - started
        features = np.empty((len(paths), len(rows[0].features)), dtype=np.float32)
        for row in rows:
            features[row.row] = row.features
        # Spark cannot address a given Python worker: run many small pandas tasks (the kind
        # of worker predict_batch_udf runs in), which the idle, reused workers pick up, and
        # keep one answer per process.
        def probe(batches):
            import pandas as pd

            for _ in batches:
                yield pd.DataFrame({"pid": [os.getpid()], "builds": [model_builds()]})

        tasks = spark.range(8 * workers, numPartitions=8 * workers)
        builds = {row.pid: row.builds
                  for row in tasks.mapInPandas(probe, "pid long, builds long").collect()}
    finally:
        spark.stop()
    return features, {"startup_s": startup, "wall_s": wall,
                      "images_per_s": len(paths) / wall, "partitions": 4 * workers,
                      "model_builds_per_worker": {str(pid): n for pid, n in builds.items()}}


def _agreement(got: np.ndarray, want: np.ndarray) -> dict[str, Any]:
    scale = float(np.abs(want).max())
    worst = float(np.abs(got - want).max())
    return {"bitwise_identical": bool(np.array_equal(got, want)),
            "max_abs_diff": worst, "max_abs_diff_over_scale": worst / scale,
            # Float32 rounding relative to the features' scale (see the module docstring).
            "equal_to_float32_rounding": bool(np.allclose(got, want, rtol=1e-5,
                                                          atol=1e-5 * scale))}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="400 images, for smoke tests")
    parser.add_argument("--n-images", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    n = 400 if args.quick else args.n_images

    scratch = Path(tempfile.mkdtemp(prefix="transferkit-distributed-"))
    try:
        paths, params = _inputs(n, scratch)
        from transferkit import KerasFeatureExtractor

        started = time.perf_counter()
        local = KerasFeatureExtractor(**params).transform(paths)
        local_wall = time.perf_counter() - started
        dask_features, dask_report = _run_dask(paths, params, args.workers)
        spark_features, spark_report = _run_spark(paths, params, args.workers)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    result = {
        "benchmark": "distributed", "quick": args.quick, "n_images": n,
        "distinct_files": len(set(paths)), "extractor": {k: v for k, v in params.items()},
        "workers": args.workers, "n_features": int(local.shape[1]),
        "in_process": {"wall_s": local_wall, "images_per_s": n / local_wall,
                       "model_builds": 1},
        "dask": {**dask_report, "features": _agreement(dask_features, local)},
        "spark": {**spark_report, "features": _agreement(spark_features, local)},
        "machine": machine(),
    }
    emit(result)
    return result


if __name__ == "__main__":
    main()
