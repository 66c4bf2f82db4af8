"""Measurement harness shared by the benchmarks: timing, synthetic photos, JSON output.

Benchmarks compare ratios measured side by side in one process, never absolute times
against a fixed budget: the machines they run on are shared and noisy.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def best_time(fn: Callable[[], Any], repeats: int) -> float:
    """Fastest of ``repeats`` runs of ``fn``, in seconds (the least disturbed by neighbours)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def interleaved_best(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Fastest time of each function over ``repeats`` rounds that run them in turn.

    Interleaving exposes every side to the same background load, so their ratio holds even
    when a neighbour slows the machine down for a while.
    """
    best = {name: float("inf") for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def write_photos(directory: Path, n: int, size: tuple[int, int] = (500, 375),
                 seed: int = 0) -> list[str]:
    """``n`` JPEG files that decode like photographs (smooth content plus sensor noise).

    Pure noise would compress badly and decode unlike real pictures; the default size is
    that of a typical hymenoptera image.
    """
    from PIL import Image

    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    width, height = size
    yy, xx = np.mgrid[0:height, 0:width] / max(size)
    paths = []
    for i in range(n):
        phase = rng.uniform(0, 2 * np.pi, 3)
        freq = rng.uniform(2, 9, 3)
        channels = [np.sin(freq[c] * (xx + yy * (c + 1)) + phase[c]) for c in range(3)]
        pixels = (np.stack(channels, -1) * 90 + 128 + rng.normal(0, 12, (height, width, 3)))
        path = directory / f"photo_{i:05d}.jpg"
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(str(path))
    return paths


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    import keras
    import tensorflow as tf

    return {"cpu_count": os.cpu_count(), "machine": platform.machine(),
            "tensorflow": tf.__version__, "keras": keras.__version__,
            "python": platform.python_version()}


def emit(result: dict[str, Any]) -> None:
    """Print the benchmark's single JSON object on stdout."""
    print(json.dumps(result, indent=2, sort_keys=False))
