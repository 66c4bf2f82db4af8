"""The examples run as a user runs them, with small settings."""

from __future__ import annotations

import os
import subprocess
import sys

from .conftest import REPO


def run_example(name: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, str(REPO / "examples" / name), *args],
        capture_output=True, text=True, env=env, timeout=900,
    )


def test_quickstart_trains_and_scores_on_bundled_digits():
    result = run_example("quickstart.py", "--n-images", "300", "--input-size", "64")
    assert result.returncode == 0, result.stderr[-3000:]
    last = result.stdout.strip().splitlines()[-1]
    assert "LogisticRegression on 300 digits: test accuracy" in last
    accuracy = float(last.split("test accuracy ")[1].split()[0])
    # Ten classes: chance is 0.1. Even random-weight features do far better once scaled.
    assert accuracy > 0.5
