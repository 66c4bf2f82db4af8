"""Peak resident memory of KerasFeatureExtractor.transform over 2,000 image paths vs 200.

Each size runs in a fresh subprocess (peak RSS is per process). Paths are streamed batch by
batch, so the peak may grow with the number of images only by the output array itself
(n x n_features x 4 bytes).

    python benchmarks/memory.py [--quick] [--small 200] [--large 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from harness import emit, machine, write_photos

REPO = Path(__file__).resolve().parents[1]

CHILD = textwrap.dedent("""
    import json, resource, sys
    from transferkit import KerasFeatureExtractor
    paths = open(sys.argv[1]).read().split("\\n")
    extractor = KerasFeatureExtractor("MobileNetV2", weights=None, random_state=0,
                                      input_size=96, cache=None, batch_size=32).fit()
    extractor.transform(paths[:32])  # trace before measuring the baseline
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    features = extractor.transform(paths)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_kib": after, "before_kib": before, "output_bytes": features.nbytes,
                      "rows": len(features)}))
""")


def measure(paths: list[str]) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as handle:
        handle.write("\n".join(paths))
    result = subprocess.run(
        [sys.executable, "-c", CHILD, handle.name], capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}, check=True,
    )
    os.unlink(handle.name)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small run for smoke tests")
    parser.add_argument("--small", type=int, default=200)
    parser.add_argument("--large", type=int, default=2000)
    args = parser.parse_args(argv)
    small, large = (40, 400) if args.quick else (args.small, args.large)

    folder = Path(tempfile.mkdtemp(prefix="tk-memory-"))
    # Few distinct files, listed many times: the loader opens every path anyway, and
    # writing thousands of JPEGs would dominate the benchmark's run time.
    distinct = write_photos(folder, 50)
    paths = [distinct[i % len(distinct)] for i in range(large)]
    few, many = measure(paths[:small]), measure(paths)
    growth = (many["peak_kib"] - few["peak_kib"]) * 1024
    output_growth = many["output_bytes"] - few["output_bytes"]
    report = {
        "benchmark": "memory",
        "quick": args.quick,
        "small_images": small,
        "large_images": large,
        "peak_rss_small_mib": round(few["peak_kib"] / 1024, 1),
        "peak_rss_large_mib": round(many["peak_kib"] / 1024, 1),
        "peak_growth_mib": round(growth / 2**20, 2),
        "output_growth_mib": round(output_growth / 2**20, 2),
        # Allowance: the output array plus 32 MiB of allocator noise.
        "grows_only_by_output": growth <= output_growth + 32 * 2**20,
        "machine": machine(),
    }
    emit(report)
    return report


if __name__ == "__main__":
    main()
