"""Images per second of KerasFeatureExtractor against the hand-written Keras loop.

The hand-written side is what the Keras documentation shows a user:
``keras.applications.X(include_top=False, pooling="avg")`` + ``preprocess_input`` +
``model.predict(batch_size=32)``, with files loaded by a PIL loop first. Both sides use
``weights=None`` (speed does not depend on the weights) and are timed in the same process,
in interleaved rounds, best of ``--repeats``. transferkit's feature cache is off: this measures the
computation, not the cache (see grid_search_cache.py for that).

    python benchmarks/extract_throughput.py [--quick] [--n-images 256] [--repeats 3]

Targets: >= 1.0x on arrays, >= 1.5x on JPEG files.
"""

from __future__ import annotations

import argparse
import importlib
import tempfile
from pathlib import Path

import numpy as np
from harness import emit, interleaved_best, machine, write_photos

MODELS = {"MobileNetV2": "mobilenet_v2", "ResNet50": "resnet"}


def hand_written(name: str):
    import keras

    model = getattr(keras.applications, name)(
        include_top=False, pooling="avg", weights=None, input_shape=(224, 224, 3)
    )
    preprocess = importlib.import_module(f"keras.applications.{MODELS[name]}").preprocess_input

    def from_array(images: np.ndarray) -> np.ndarray:
        return model.predict(preprocess(images.astype("float32")), batch_size=32, verbose=0)

    def from_files(paths: list[str]) -> np.ndarray:
        from PIL import Image

        images = np.stack([
            np.asarray(Image.open(p).convert("RGB").resize((224, 224), Image.BILINEAR))
            for p in paths
        ])
        return from_array(images)

    return from_array, from_files


def measure(name: str, images: np.ndarray, paths: list[str], repeats: int) -> dict:
    from transferkit import KerasFeatureExtractor

    n = len(images)
    hand_array, hand_files = hand_written(name)
    ours = KerasFeatureExtractor(name, weights=None, cache=None, random_state=0).fit()
    hand_array(images[:32]), ours.transform(images[:32])  # trace and warm up both sides
    timings = interleaved_best({
        "hand_array_s": lambda: hand_array(images),
        "ours_array_s": lambda: ours.transform(images),
        "hand_files_s": lambda: hand_files(paths),
        "ours_files_s": lambda: ours.transform(paths),
    }, repeats)
    return {
        "images": n,
        **{k: round(v, 4) for k, v in timings.items()},
        "hand_array_images_per_s": round(n / timings["hand_array_s"], 2),
        "ours_array_images_per_s": round(n / timings["ours_array_s"], 2),
        "hand_files_images_per_s": round(n / timings["hand_files_s"], 2),
        "ours_files_images_per_s": round(n / timings["ours_files_s"], 2),
        "speedup_array": round(timings["hand_array_s"] / timings["ours_array_s"], 3),
        "speedup_files": round(timings["hand_files_s"] / timings["ours_files_s"], 3),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small run for smoke tests")
    parser.add_argument("--n-images", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    args = parser.parse_args(argv)
    n, repeats = (16, 1) if args.quick else (args.n_images, args.repeats)

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 224, 224, 3), dtype=np.uint8)
    paths = write_photos(Path(tempfile.mkdtemp(prefix="tk-throughput-")), n)

    results = {name: measure(name, images, paths, repeats) for name in args.models}
    report = {
        "benchmark": "extract_throughput",
        "quick": args.quick,
        "targets": {"speedup_array": 1.0, "speedup_files": 1.5},
        "results": results,
        "machine": machine(),
    }
    emit(report)
    return report


if __name__ == "__main__":
    main()
