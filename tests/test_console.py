"""What a user sees in the console: nothing from TensorFlow's start-up, nothing logged."""

from __future__ import annotations

import os
import subprocess
import sys

from .conftest import REPO

SCRIPT = (
    "import numpy as np, transferkit\n"
    "features = transferkit.KerasFeatureExtractor('VGG16', weights=None, input_size=32,\n"
    "    cache=None).fit_transform(np.zeros((1, 32, 32, 3)))\n"
    "print('shape', features.shape)\n"
)


def _run(extra_env: dict[str, str]) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env.update(PYTHONPATH=str(REPO), **extra_env)
    return subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          env=env, timeout=600)


def test_tensorflow_start_up_noise_is_kept_out_of_the_console():
    result = _run({})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "shape (1, 512)"
    assert result.stderr.strip() == ""


def test_a_user_who_sets_the_tensorflow_log_level_keeps_it():
    result = _run({"TF_CPP_MIN_LOG_LEVEL": "0"})
    assert result.returncode == 0
    assert result.stdout.strip() == "shape (1, 512)"
    assert result.stderr.strip() != ""  # TensorFlow's own start-up lines, as asked for


def test_a_worker_process_inherits_the_quiet_start_up():
    # joblib's workers (GridSearchCV(n_jobs=2)) are fresh interpreters with this process's
    # environment, which now holds the level transferkit set: still not the user's choice.
    worker = "import transferkit, tensorflow; print('worker ready')"
    script = ("import subprocess, sys, transferkit\n"
              f"subprocess.run([sys.executable, '-c', {worker!r}], check=True)\n")
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env={**env, "PYTHONPATH": str(REPO)}, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "worker ready"
    assert result.stderr.strip() == ""
