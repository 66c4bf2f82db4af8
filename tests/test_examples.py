"""The examples run as a user runs them, with small settings."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from .conftest import HYMENOPTERA, REPO, needs_hymenoptera


def run_example(name: str, *args: str, before: str | None = None) -> subprocess.CompletedProcess:
    """Run an example; ``before``: a folder put on PYTHONPATH ahead of the checkout."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [before, str(REPO)]))}
    return subprocess.run(
        [sys.executable, str(REPO / "examples" / name), *args],
        capture_output=True, text=True, env=env, timeout=900,
    )


def _is_png(path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_quickstart_trains_scores_and_draws_its_confusion_matrix(tmp_path):
    result = run_example("quickstart.py", "--n-images", "300", "--input-size", "64",
                         "--picture", str(tmp_path / "confusion_matrix.png"))
    assert result.returncode == 0, result.stderr[-3000:]
    last = result.stdout.strip().splitlines()[-1]
    assert "LogisticRegression on 300 digits: test accuracy" in last
    accuracy = float(last.split("test accuracy ")[1].split()[0])
    # Ten classes: chance is 0.1. Even random-weight features do far better once scaled.
    assert accuracy > 0.5
    # Redirected output: plain progress lines, and no Keras warning transferkit explains.
    assert "\r" not in result.stdout and "\x1b" not in result.stdout
    assert "input_shape" not in result.stderr
    assert _is_png(tmp_path / "confusion_matrix.png")


def test_quickstart_without_matplotlib_scores_and_says_why_there_is_no_picture(tmp_path):
    # matplotlib is optional for transferkit: a user without it still gets the accuracy.
    (tmp_path / "sitecustomize.py").write_text(
        "import sys\nsys.modules['matplotlib'] = None  # as if it were not installed\n")
    result = run_example("quickstart.py", "--n-images", "200", "--input-size", "32",
                         "--picture", str(tmp_path / "confusion_matrix.png"),
                         before=str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert "test accuracy" in lines[-2]
    assert lines[-1] == "no picture: matplotlib is not installed (pip install matplotlib)"
    assert not (tmp_path / "confusion_matrix.png").exists()


@needs_hymenoptera
def test_classify_folder_reports_validation_accuracy_on_hymenoptera():
    result = run_example("classify_folder.py", str(HYMENOPTERA / "train"),
                         "--val", str(HYMENOPTERA / "val"), "--n-per-class", "12",
                         "--input-size", "96")
    assert result.returncode == 0, result.stderr[-3000:]
    last = result.stdout.strip().splitlines()[-1]
    assert "on 24 images (24 training images)" in last
    assert float(last.split()[2]) > 0.5  # two classes: chance is 0.5


@needs_hymenoptera
def test_classify_folder_saves_a_confusion_matrix_when_asked(tmp_path):
    result = run_example("classify_folder.py", str(HYMENOPTERA / "train"), "--n-per-class", "8",
                         "--input-size", "96", "--confusion-matrix", str(tmp_path / "cm.png"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "cm.png").stat().st_size > 0


def test_grid_search_prints_a_ranked_table_and_draws_its_heat_map(tmp_path):
    result = run_example("grid_search_backbone_cut.py", "--backbones", "VGG16",
                         "--weights", "none", "--n-images", "90", "--input-size", "32",
                         "--cv", "2", "--picture", str(tmp_path / "grid.png"))
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert lines[0].split()[:3] == ["backbone", "cut", "accuracy"]
    assert {line.split()[1] for line in lines[1:4]} == {"block3", "block4", "(full)"}
    assert lines[-1].startswith("best: {")
    assert _is_png(tmp_path / "grid.png")


@pytest.mark.slow
@needs_hymenoptera
def test_finetune_vs_features_scores_both_ways_and_draws_them(tmp_path):
    result = run_example("finetune_vs_features.py", str(HYMENOPTERA), "--n-per-class", "10",
                         "--epochs", "2", "--input-size", "96", "--out-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "feature extraction + logistic regression: validation accuracy" in result.stdout
    assert "fine-tuning (FineTunedClassifier): validation accuracy" in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["accuracy.png",
                                                           "training_history.png"]


@pytest.mark.slow
@needs_hymenoptera
def test_rank_cuts_with_logme_ranks_searches_and_fine_tunes(tmp_path):
    picture = tmp_path / "logme.png"
    result = run_example("rank_cuts_with_logme.py", str(HYMENOPTERA), "--n-per-class", "10",
                         "--input-size", "96", "--top", "2", "--epochs", "1",
                         "--picture", str(picture))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "grid search over" in result.stdout
    assert "fine-tuned at conv_pw_" in result.stdout
    assert picture.stat().st_size > 0


def test_save_and_load_gives_identical_predictions_in_a_new_process_and_draws_both(tmp_path):
    result = run_example("save_and_load.py", "--n-images", "100", "--input-size", "32",
                         "--picture", str(tmp_path / "probabilities.png"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("identical: True")
    assert _is_png(tmp_path / "probabilities.png")


def test_plot_activations_writes_the_pictures(tmp_path):
    result = run_example("plot_activations.py", "--out-dir", str(tmp_path),
                         "--input-size", "96")
    assert result.returncode == 0, result.stderr[-3000:]
    assert {p.name for p in tmp_path.iterdir()} == {"activations.png"}


@pytest.mark.slow
@needs_hymenoptera
def test_plot_activations_explains_a_fine_tuned_classifier(tmp_path):
    result = run_example("plot_activations.py", "--out-dir", str(tmp_path),
                         "--folder", str(HYMENOPTERA / "train"), "--n-per-class", "8",
                         "--epochs", "1", "--input-size", "96")
    assert result.returncode == 0, result.stderr[-3000:]
    assert {"grad_cam.png", "training_curves.png"} <= {p.name for p in tmp_path.iterdir()}


def test_mixed_tabular_and_images_scores_three_column_sets_and_draws_them(tmp_path):
    result = run_example("mixed_tabular_images.py", "--n-images", "120", "--input-size", "32",
                         "--picture", str(tmp_path / "mixed.png"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert _is_png(tmp_path / "mixed.png")
    names = [line.split(":")[0].strip() for line in result.stdout.strip().splitlines()[-3:]]
    assert names == ["numbers only", "image only", "image and numbers"]
