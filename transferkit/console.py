"""Keeping TensorFlow's start-up noise out of a scikit-learn user's console.

Importing TensorFlow writes C++ log lines straight to file descriptor 2 (CUDA probing on
machines without a GPU, oneDNN notices, absl's "All log messages before
absl::InitializeLog()" banner), whatever Python's logging or warnings settings say, and some
of them ignore ``TF_CPP_MIN_LOG_LEVEL``. transferkit imports Keras lazily, so it can silence
that one import: a one-shot import hook runs TensorFlow's module code with descriptor 2
pointed at ``/dev/null``. Python exceptions still propagate (and print) once it is restored.

A user who sets ``TF_CPP_MIN_LOG_LEVEL`` themselves has asked for TensorFlow's own output and
gets it untouched; ``TF_CPP_MIN_LOG_LEVEL=0`` shows everything. The level transferkit sets
itself is marked as its own, so that worker processes (joblib's, for ``GridSearchCV(n_jobs=2)``),
which inherit it, stay quiet too instead of taking it for the user's.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["install_quiet_tensorflow_import", "quiet_tensorflow_unless_asked"]

_LOCK = threading.Lock()
LOG_LEVEL = "TF_CPP_MIN_LOG_LEVEL"
# Holds the level transferkit set; a process that inherits both knows the level is not the
# user's. A user who changes the level afterwards makes the two differ.
SET_BY_TRANSFERKIT = "TRANSFERKIT_SET_TF_CPP_MIN_LOG_LEVEL"
# 3 also hides the "failed call to cuInit" error that CPU-only machines log at the first
# model build; real failures still raise Python exceptions.
QUIET_LEVEL = "3"


@contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """Point file descriptor 2 at /dev/null for the duration (C++ writes included)."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class _QuietTensorFlowFinder(importlib.abc.MetaPathFinder):
    """Finds ``tensorflow`` like the normal machinery, but loads it with stderr silenced."""

    def find_spec(self, name, path, target=None):
        if name != "tensorflow":
            return None
        with _LOCK:
            if self in sys.meta_path:
                sys.meta_path.remove(self)  # one shot: the real finders take it from here
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def quiet_exec_module(module):
            with native_stderr_silenced():
                exec_module(module)

        spec.loader.exec_module = quiet_exec_module
        return spec


def install_quiet_tensorflow_import(user_set_log_level: bool) -> None:
    """Silence TensorFlow's first import, unless it already happened or the user asked."""
    if user_set_log_level or "tensorflow" in sys.modules:
        return
    try:
        os.fstat(2)
    except OSError:
        return  # no descriptor 2 to redirect (some embedded interpreters)
    with _LOCK:
        if not any(isinstance(f, _QuietTensorFlowFinder) for f in sys.meta_path):
            sys.meta_path.insert(0, _QuietTensorFlowFinder())


def quiet_tensorflow_unless_asked() -> None:
    """Keep TensorFlow's start-up lines out of the console, unless the user set the level."""
    level = os.environ.get(LOG_LEVEL)
    user_set_log_level = level is not None and level != os.environ.get(SET_BY_TRANSFERKIT)
    install_quiet_tensorflow_import(user_set_log_level)
    if level is None:
        os.environ[LOG_LEVEL] = os.environ[SET_BY_TRANSFERKIT] = QUIET_LEVEL
