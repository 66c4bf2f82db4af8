"""Each benchmark's --quick mode runs and prints one JSON object with sane values.

These check that the measurements work, never how fast anything is: the numbers come from
full runs, reported in the README and docs.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from .conftest import REPO


def run_benchmark(name: str) -> dict:
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / name), "--quick"],
        capture_output=True, text=True, timeout=1200,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout[result.stdout.index("{"):])
    assert report["quick"] is True
    return report


def positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_extract_throughput_reports_both_sides_for_both_models():
    report = run_benchmark("extract_throughput.py")
    assert set(report["results"]) == {"MobileNetV2", "ResNet50"}
    for numbers in report["results"].values():
        for key in ("hand_array_images_per_s", "ours_array_images_per_s",
                    "hand_files_images_per_s", "ours_files_images_per_s",
                    "speedup_array", "speedup_files"):
            assert positive(numbers[key]), key


def test_grid_search_cache_computes_each_image_once_and_agrees():
    report = run_benchmark("grid_search_cache.py")
    assert report["cache_misses"] == report["images"]
    assert report["cache_hits"] > 0
    assert report["same_best_params"] is True
    assert positive(report["speedup_cached_vs_uncached"])
    assert positive(report["cached_search_over_plain_transform"])


def test_roofline_counts_resnet50_flops_and_measures_a_roof():
    report = run_benchmark("roofline.py")
    # ResNet50 without its top: ~7.7 GFLOPs at 224 px, scaling with the pixel count.
    expected = 7.72 * (report["input_size"] / 224) ** 2
    assert report["gflops_per_image"] == pytest.approx(expected, rel=0.05)
    for key in ("roof_float32_gflops", "float32_gflops", "bfloat16_gflops",
                "float32_fraction_of_roof"):
        assert positive(report[key]), key
    from transferkit.openvino_runtime import openvino_available

    if openvino_available():
        assert positive(report["openvino_float32_fraction_of_roof"])


def test_memory_reports_peak_resident_memory_for_both_sizes():
    report = run_benchmark("memory.py")
    assert report["large_images"] == 10 * report["small_images"]
    assert positive(report["peak_rss_small_mib"]) and positive(report["peak_rss_large_mib"])
    assert isinstance(report["grows_only_by_output"], bool)


def test_cache_keys_reports_content_and_stat_keys_against_decoding():
    report = run_benchmark("cache_keys.py")
    assert report["images"] == 20
    for key in ("stat_key_us", "content_key_first_us", "content_key_again_us", "decode_us",
                "first_key_over_decode"):
        assert positive(report[key]), key
