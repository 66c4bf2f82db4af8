"""What keying image files by their content costs, against what a cache miss costs anyway.

The feature cache keys a file by a digest of its bytes, so that a file rewritten with its old
size and modification time (``cp -p``, ``rsync -t``, ``tar x``) is never served the old
features. This measures, per image of a folder (recursively: JPEG, PNG, ...):

* ``stat_key``: the identity key the cache used before (``os.stat`` of the resolved path);
* ``content_key_first``: the digest of the file's bytes, first sight in the process;
* ``content_key_again``: the same after that (each file version is read once per process);
* ``decode``: decoding and resizing the file to 224 x 224, what every cache miss pays
  before the network runs.

    python benchmarks/cache_keys.py [FOLDER] [--quick]

Without FOLDER, the hymenoptera images of ../shared (or synthetic photos with --quick).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from harness import emit, write_photos

SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "hymenoptera_data"


def per_image(fn, items, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for item in items:
            fn(item)
        best = min(best, time.perf_counter() - start)
    return best / len(items) * 1e6


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", default=None)
    parser.add_argument("--quick", action="store_true", help="small run for smoke tests")
    args = parser.parse_args(argv)

    from transferkit.image_input import FileDigests, load_image

    with tempfile.TemporaryDirectory() as scratch:
        if args.folder is not None:
            root = Path(args.folder)
        elif args.quick or not SHARED.is_dir():
            root = Path(scratch)
            write_photos(root, 20 if args.quick else 200)
        else:
            root = SHARED
        paths = sorted(str(p) for p in root.rglob("*") if p.suffix.lower() in SUFFIXES)
        repeats = 1 if args.quick else 3

        def stat_key(path: str) -> tuple[int, int]:
            info = Path(path).resolve().stat()
            return info.st_size, info.st_mtime_ns

        fresh_memos = [FileDigests() for _ in range(repeats)]
        rounds = iter(fresh_memos)
        first_memo: list[FileDigests] = []

        def first_round() -> None:
            memo = next(rounds)
            first_memo[:] = [memo]
            for path in paths:
                memo.get(path)

        # The page cache holds the files in every column: a first read from a cold disk costs
        # the same read that decoding the file would have made anyway.
        for path in paths:
            Path(path).read_bytes()
        results = {
            "stat_key_us": per_image(stat_key, paths, repeats),
            "content_key_first_us": 0.0,
            "content_key_again_us": 0.0,
            "decode_us": per_image(lambda p: load_image(p, (224, 224)), paths, repeats),
        }
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            first_round()
            best = min(best, time.perf_counter() - start)
        results["content_key_first_us"] = best / len(paths) * 1e6
        results["content_key_again_us"] = per_image(first_memo[0].get, paths, repeats)
        mean_bytes = sum(os.path.getsize(p) for p in paths) / len(paths)

    emit({
        "benchmark": "cache_keys",
        "quick": args.quick,
        "folder": str(root) if args.folder or root == SHARED else "synthetic photos",
        "images": len(paths),
        "mean_file_kib": round(mean_bytes / 1024, 1),
        **{key: round(value, 1) for key, value in results.items()},
        "first_key_over_decode": round(results["content_key_first_us"] / results["decode_us"],
                                       4),
        "again_key_over_stat_key": round(results["content_key_again_us"]
                                         / results["stat_key_us"], 2),
    })
    return results


if __name__ == "__main__":
    main()
