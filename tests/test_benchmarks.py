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

import numpy as np
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


# Slow: 30 s of the CI's 25 minutes on the 2-core machine.
@pytest.mark.slow
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


# Slow: 24 s of the CI's 25 minutes on the 2-core machine.
@pytest.mark.slow
def test_cut_search_reports_both_searches_and_their_yardstick():
    report = run_benchmark("cut_search.py")
    assert len(report["cuts"]) >= 2 and report["poolings"] == ["avg", "max"]
    # Every cut misses once per image, but only the shared cache has the other pooling.
    assert report["shared_cache_misses"] * 2 == report["per_cut_cache_misses"]
    # Bit-identical features, whichever way they were reached: the same scores.
    assert report["same_scores"] is True and report["same_best_params"] is True
    for key in ("plain_transform_one_pass_s", "plain_transform_s", "classifier_fits_s",
                "search_per_cut_s", "search_shared_s", "speedup_shared_vs_per_cut",
                "shared_search_over_plain_transform_plus_fits"):
        assert positive(report[key]), key
    assert set(report["targets_met"]) == set(report["targets"])
    assert report["search_runs"] == 1  # the full run times each search twice, the best counts


# Slow: 20 s of the CI's 25 minutes on the 2-core machine.
@pytest.mark.slow
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


# Slow: 34 s of the CI's 25 minutes on the 2-core machine.
@pytest.mark.slow
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


# Slow: 19 s of the CI's 25 minutes on the 2-core machine.
@pytest.mark.slow
def test_cli_startup_times_each_command_and_counts_what_it_imports():
    report = run_benchmark("cli_startup.py")
    assert set(report["commands"]) == {"--help", "train --help", "backbones",
                                       "cut-points ResNet50"}
    from transferkit.backbone_table import describes_installed_keras

    for name, numbers in report["commands"].items():
        assert positive(numbers["seconds"]) and numbers["modules"] > 0
        if "--help" in name or describes_installed_keras():  # else listings read Keras
            assert not (numbers["imports_tensorflow"] or numbers["imports_keras"]), name
    assert set(report["targets_met"]) == set(report["commands"])
    assert positive(report["python_startup_seconds"])


def _class_folders(folder, darkest: dict[str, int], n_per_class: int, seed: int) -> None:
    """``folder/<class>/<i>.png``: noise images whose brightness starts at the class's."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for label, low in darkest.items():
        (folder / label).mkdir()
        for i in range(n_per_class):
            pixels = rng.integers(low, low + 100, size=(40, 48, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / label / f"{i}.png")


def test_transfer_suite_runs_the_four_methods_on_a_folder_of_classes(tmp_path):
    _class_folders(tmp_path, {"dark": 0, "bright": 150, "mid": 70}, 8, seed=0)
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "transfer_suite.py"), str(tmp_path),
         "--quick"],
        capture_output=True, text=True, timeout=1200,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout[result.stdout.index("{"):])
    assert report["quick"] is True
    assert report["data"]["images_per_class"] == {"bright": 8, "dark": 8, "mid": 8}
    (run,) = report["runs"]
    # 8 per class drawn, 20% of 24 held out, stratified.
    assert (run["train_images"], run["test_images"]) == (19, 5)
    for method in ("hand_probe", "transferkit_probe", "fine_tuned"):
        assert 0 <= run[method]["accuracy"] <= 1 and positive(run[method]["fit_seconds"])
        assert math.isfinite(run[method]["log_loss"]) and run[method]["log_loss"] >= 0
    assert 0 <= run["hand_recipe"]["best_accuracy"] <= 1
    assert set(report["summary"]["mean_log_loss"]) == {"hand_probe", "transferkit_probe",
                                                       "fine_tuned"}
    assert run["fine_tuned"]["temperature"] > 0
    (by_seed,) = report["summary"]["time_over_transferkit_probe_by_seed"]  # one seed run
    assert by_seed == round(run["fine_tuned"]["fit_seconds"]
                            / run["transferkit_probe"]["fit_seconds"], 2)
    assert set(report["summary"]["targets_met"]) == {
        "hand_probe_plus_0.02", "hand_recipe_plus_0.05", "time_at_most_15x_probe",
        "finetune_epoch_kept_every_seed"}


def test_transfer_suite_runs_the_methods_asked_with_the_variant_asked(tmp_path):
    _class_folders(tmp_path, {"dark": 0, "bright": 150}, 6, seed=1)
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "transfer_suite.py"), str(tmp_path),
         "--quick", "--methods", "fine_tuned", "hand_probe",
         "--finetune-params", '{"head_views": 0}'],
        capture_output=True, text=True, timeout=1200,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout[result.stdout.index("{"):])
    # In the suite's order, whatever order they were asked in.
    assert report["methods"] == ["hand_probe", "fine_tuned"]
    assert report["finetune_params"] == {"head_views": 0}
    (run,) = report["runs"]
    assert "hand_recipe" not in run and "transferkit_probe" not in run
    # head_views=0: the head learned from the central crops alone.
    assert run["fine_tuned"]["head_rows_per_image"] == 1
    summary = report["summary"]
    assert set(summary["mean_accuracy"]) == {"hand_probe", "fine_tuned"}
    # Only the targets the methods run allow are judged.
    assert set(summary["targets_met"]) == {"hand_probe_plus_0.02",
                                           "finetune_epoch_kept_every_seed"}


def _suite_report(seeds_methods: dict[int, dict[str, float]], folder: str = "/data/x") -> dict:
    """A transfer_suite report as a run prints it: for each seed, each method's accuracy
    (the fine-tuned fit taking 10 s and the probe 1 s, the fine-tuning epochs kept)."""
    def result(method: str, accuracy: float) -> dict:
        if method == "hand_recipe":
            return {"best_accuracy": accuracy, "fit_seconds": 50.0}
        scores = {"accuracy": accuracy, "log_loss": 0.3,
                  "fit_seconds": {"fine_tuned": 10.0, "transferkit_probe": 1.0}.get(method, 3.0)}
        return {**scores, "kept_epochs": 10} if method == "fine_tuned" else scores

    methods = [m for m in ("hand_probe", "hand_recipe", "transferkit_probe", "fine_tuned")
               if any(m in chosen for chosen in seeds_methods.values())]
    return {"benchmark": "transfer_suite", "quick": False,
            "data": {"folder": folder, "images_per_class": {"a": 150, "b": 150},
                     "per_class_drawn": 150, "test_fraction": 0.2},
            "backbone": {"backbone": "MobileNet", "backbone_kwargs": {"alpha": 0.25},
                         "weights": "imagenet", "input_size": 224},
            "methods": methods, "finetune_params": {},
            "runs": [{"seed": seed, "train_images": 240, "test_images": 60,
                      **{m: result(m, a) for m, a in chosen.items()}}
                     for seed, chosen in seeds_methods.items()],
            "machine": {"cpu_count": 2}}


def _combine(tmp_path, *reports: dict) -> subprocess.CompletedProcess:
    paths = []
    for k, report in enumerate(reports):
        paths.append(tmp_path / f"run{k}.json")
        paths[-1].write_text(json.dumps(report))
    return subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "transfer_suite.py"), "--combine",
         *map(str, paths)], capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)})


def test_transfer_suite_combines_other_seeds_and_a_recipe_run_on_its_own(tmp_path):
    tuned = {"hand_probe": 0.8, "transferkit_probe": 0.8, "fine_tuned": 0.9}
    result = _combine(tmp_path,
                      _suite_report({0: tuned, 1: {**tuned, "fine_tuned": 0.84}}),
                      _suite_report({0: {"hand_recipe": 0.8}, 1: {"hand_recipe": 0.9}}),
                      _suite_report({2: {**tuned, "hand_recipe": 0.7}}))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert [run["seed"] for run in report["runs"]] == [0, 1, 2]
    assert report["runs"][0]["sources"]["hand_recipe"].endswith("run1.json")
    assert report["runs"][0]["sources"]["fine_tuned"].endswith("run0.json")
    summary = report["summary"]
    assert summary["mean_accuracy"]["fine_tuned"] == pytest.approx((0.9 + 0.84 + 0.9) / 3,
                                                                   abs=1e-4)
    # Over the three seeds the recipe's mean is 0.8: the tuned classifier is 0.08 above.
    assert summary["margin_over_hand_recipe"] == pytest.approx(0.08, abs=1e-4)
    assert summary["time_over_transferkit_probe_by_seed"] == [10.0, 10.0, 10.0]
    assert set(summary["targets_met"]) == {"hand_probe_plus_0.02", "hand_recipe_plus_0.05",
                                           "time_at_most_15x_probe",
                                           "finetune_epoch_kept_every_seed"}


def test_transfer_suite_judges_only_the_methods_every_combined_seed_has(tmp_path):
    result = _combine(tmp_path,
                      _suite_report({0: {"hand_probe": 0.8, "hand_recipe": 0.7,
                                         "fine_tuned": 0.9}}),
                      _suite_report({1: {"hand_probe": 0.8, "fine_tuned": 0.9}}))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["methods"] == ["hand_probe", "fine_tuned"]
    assert "margin_over_hand_recipe" not in report["summary"]


def test_transfer_suite_will_not_compare_fit_times_from_two_runs(tmp_path):
    result = _combine(tmp_path,
                      _suite_report({3: {"hand_probe": 0.8, "transferkit_probe": 0.8}}),
                      _suite_report({3: {"fine_tuned": 0.9}}))
    assert result.returncode != 0
    assert "seed 3 has fine_tuned from" in result.stderr
    assert "run1.json" in result.stderr and "run0.json" in result.stderr


def test_transfer_suite_will_not_combine_runs_on_other_images(tmp_path):
    result = _combine(tmp_path, _suite_report({0: {"fine_tuned": 0.9}}),
                      _suite_report({1: {"fine_tuned": 0.9}}, folder="/data/y"))
    assert result.returncode != 0
    assert "differ in their data" in result.stderr and "/data/y" in result.stderr


def test_transfer_suite_will_not_combine_two_variants_of_the_fine_tuned_classifier(tmp_path):
    variant = {**_suite_report({1: {"fine_tuned": 0.9}}), "finetune_params": {"epochs": 5}}
    result = _combine(tmp_path, _suite_report({0: {"fine_tuned": 0.9}}), variant)
    assert result.returncode != 0
    assert "different --finetune-params" in result.stderr and '"epochs": 5' in result.stderr


def test_transfer_suite_will_not_take_one_seeds_method_twice(tmp_path):
    result = _combine(tmp_path, _suite_report({0: {"fine_tuned": 0.9}}),
                      _suite_report({0: {"fine_tuned": 0.8}}))
    assert result.returncode != 0
    assert "seed 0 has fine_tuned in both" in result.stderr


def test_head_blocks_compares_the_last_block_with_several_on_a_folder_of_classes(tmp_path):
    _class_folders(tmp_path, {"dark": 0, "bright": 150}, 8, seed=2)
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "head_blocks.py"), str(tmp_path), "--quick"],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout[result.stdout.index("{"):])
    assert report["quick"] is True and report["seeds"] == [0]
    results = report["results"]
    assert results["hand_probe"]["blocks"] == ["conv_pw_13"]
    assert results["every second, three, std"]["blocks"] == ["conv_pw_9", "conv_pw_11",
                                                              "conv_pw_13"]
    for row in results.values():
        assert len(row["accuracy"]) == 1 and 0 <= row["mean_accuracy"] <= 1
