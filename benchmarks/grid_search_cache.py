"""GridSearchCV over the classifier behind KerasFeatureExtractor, feature cache on vs off.

``GridSearchCV(Pipeline([extractor, LogisticRegression()]), {"clf__C": [8 values]}, cv=5)``
runs the ConvNet over every image once per candidate and fold without a cache (~80 passes);
with the cache each image is computed once. Both searches, and one plain transform of the
data as the yardstick, run in the same process on the same in-memory images.

    python benchmarks/grid_search_cache.py [--quick] [--n-images 300] [--backbone MobileNetV2]

Targets: cached search >= 10x faster than uncached; cached search <= 1.5x one plain transform.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from harness import emit, machine


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small run for smoke tests")
    parser.add_argument("--n-images", type=int, default=300)
    parser.add_argument("--backbone", default="MobileNetV2")
    parser.add_argument("--input-size", type=int, default=224)
    args = parser.parse_args(argv)
    n, size, n_c, cv = (
        (40, 64, 3, 3) if args.quick else (args.n_images, args.input_size, 8, 5)
    )

    from sklearn.base import clone
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    from transferkit import KerasFeatureExtractor
    from transferkit.cache import MemoryFeatureCache

    rng = np.random.default_rng(0)
    # Two classes that differ in brightness, so the search has something to find.
    images = rng.integers(0, 200, (n, size, size, 3), dtype=np.uint8)
    labels = np.arange(n) % 2
    images[labels == 1] += 55

    def search(cache):
        extractor = KerasFeatureExtractor(args.backbone, weights=None, random_state=0,
                                          input_size=size, cache=cache)
        pipe = Pipeline([("features", extractor), ("scale", StandardScaler()),
                         ("clf", LogisticRegression(max_iter=300))])
        grid = {"clf__C": list(np.logspace(-3, 3, n_c))}
        return GridSearchCV(pipe, grid, cv=cv)

    # Build (and trace) the model once, so neither side pays for it: the memo hands it over.
    warm = KerasFeatureExtractor(args.backbone, weights=None, random_state=0, input_size=size,
                                 cache=None).fit()
    warm.transform(images[:8])

    start = time.perf_counter()
    clone(warm).fit().transform(images)
    plain = time.perf_counter() - start

    cache = MemoryFeatureCache()
    start = time.perf_counter()
    cached_search = search(cache).fit(images, labels)
    cached = time.perf_counter() - start

    start = time.perf_counter()
    uncached_search = search(None).fit(images, labels)
    uncached = time.perf_counter() - start

    report = {
        "benchmark": "grid_search_cache",
        "quick": args.quick,
        "backbone": args.backbone,
        "images": n,
        "input_size": size,
        "candidates": n_c,
        "folds": cv,
        "plain_transform_s": round(plain, 3),
        "search_cached_s": round(cached, 3),
        "search_uncached_s": round(uncached, 3),
        "speedup_cached_vs_uncached": round(uncached / cached, 2),
        "cached_search_over_plain_transform": round(cached / plain, 3),
        "cache_hits": cache.hits,
        "cache_misses": cache.misses,
        "same_best_params": cached_search.best_params_ == uncached_search.best_params_,
        "targets": {"speedup_cached_vs_uncached": 10.0,
                    "cached_search_over_plain_transform": 1.5},
        "machine": machine(),
    }
    emit(report)
    return report


if __name__ == "__main__":
    main()
