"""Keeping TensorFlow's start-up noise out of a scikit-learn user's console.

Importing TensorFlow writes C++ log lines straight to file descriptor 2 (CUDA probing on
machines without a GPU, oneDNN notices, absl's "All log messages before
absl::InitializeLog()" banner), whatever Python's logging or warnings settings say, and some
of them ignore ``TF_CPP_MIN_LOG_LEVEL``. transferkit imports Keras lazily, so it can silence
that one import: a one-shot import hook runs TensorFlow's module code with descriptor 2
pointed at ``/dev/null``. Python exceptions still propagate (and print) once it is restored.

Progress bars are drawn only on a terminal (or in a notebook): redirected to a file, a log or a
documentation build, :func:`progress_bar` writes one plain line when the work is done instead
of carriage returns and ANSI colour codes. :func:`download_notice_kept_on_success` keeps Keras'
"Downloading data from ..." line out of the console when the download fails, where
transferkit's own error says what happened and what to do; when the download succeeds off a
terminal, Keras' progress bar becomes one line with the size and the time it took.

A user who sets ``TF_CPP_MIN_LOG_LEVEL`` themselves has asked for TensorFlow's own output and
gets it untouched; ``TF_CPP_MIN_LOG_LEVEL=0`` shows everything. The level transferkit sets
itself is marked as its own, so that worker processes (joblib's, for ``GridSearchCV(n_jobs=2)``),
which inherit it, stay quiet too instead of taking it for the user's.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import re
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

__all__ = [
    "download_notice_kept_on_success",
    "install_quiet_tensorflow_import",
    "progress_bar",
    "quiet_tensorflow_unless_asked",
]

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


# ---------------------------------------------------------------------------- progress
def draws_in_place(stream: Any) -> bool:
    """Whether ``stream`` shows a line redrawn in place: a terminal, or a notebook's output."""
    try:
        if stream.isatty():
            return True
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
    # Notebooks render carriage returns; their stdout is no terminal.
    return "ipykernel" in sys.modules and type(stream).__module__.startswith("ipykernel")


class PlainProgress:
    """Progress for a stream that is not a terminal: one plain line when the work is done.

    Parameters
    ----------
    total : int
        Units of work expected.
    unit_name : str
        What a unit is, for the line ("image").
    stream : file-like, default=None
        Where the line goes; ``sys.stdout`` at the time of writing when None.
    """

    def __init__(self, total: int, unit_name: str, stream: TextIO | None = None) -> None:
        self.total, self.unit_name, self.stream = int(total), unit_name, stream
        self._start = time.perf_counter()
        self._done = False

    def update(self, current: int) -> None:
        """Record that ``current`` units are done; write the line when all are."""
        if self._done or current < self.total:
            return
        self._done = True
        elapsed = time.perf_counter() - self._start
        per_unit = 1000 * elapsed / max(self.total, 1)
        stream = sys.stdout if self.stream is None else self.stream
        units = self.unit_name if self.total == 1 else f"{self.unit_name}s"
        stream.write(f"{self.total} {units} in {elapsed:.1f} s "
                     f"({per_unit:.0f} ms/{self.unit_name})\n")
        stream.flush()


def progress_bar(total: int, unit_name: str = "image") -> Any:
    """A progress bar on a terminal or in a notebook; elsewhere a :class:`PlainProgress`.

    Both have ``update(current)``. Keras' own bar decides by itself that any POSIX system
    has a terminal, which fills redirected output with redraws and escape codes.
    """
    if not draws_in_place(sys.stdout):
        return PlainProgress(total, unit_name)
    import keras

    return keras.utils.Progbar(total, unit_name=unit_name)


# ---------------------------------------------------------------------------- downloads
_DOWNLOAD_NOTICE = "Downloading data from "
_STDOUT_LOCK = threading.Lock()


# What Keras' Progbar writes to redraw its line: carriage returns, backspaces, colours.
_REDRAW = re.compile(r"[\r\b]|\x1b\[")
_COLOUR = re.compile(r"\x1b\[[0-9;]*m")
# Its text: bytes so far, then "/total" (or "/Unknown").
_BYTES = re.compile(r"(\d+)/(\d+|Unknown)")


class _HoldsDownloadNotice:
    """A stdout that holds back Keras' download notice until anything else is written.

    On a stream that cannot redraw a line in place (a file, a pipe), Keras' download
    progress bar (which takes any POSIX system for a terminal) becomes one plain line when
    the download ends: its size and how long it took.
    """

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self._held: list[str] = []
        self._passing = False
        self._plain = not draws_in_place(stream)
        self._progress: str | None = None  # the last redraw, colours removed
        self._progress_started = 0.0

    def write(self, text: str) -> int:
        # print() writes the line break on its own; it belongs to the notice.
        if not self._passing and (text.startswith(_DOWNLOAD_NOTICE)
                                  or (self._held and not text.strip())):
            self._held.append(text)
            return len(text)
        # A progress bar or any other output: the download is under way, say from where.
        self.release()
        if self._plain and _REDRAW.search(text):
            if self._progress is None:
                self._progress_started = time.perf_counter()
            self._progress = _COLOUR.sub("", re.split(r"[\r\b]", text.rstrip("\n"))[-1])
            if text.endswith("\n"):  # the bar's last redraw
                self._end_progress()
            return len(text)
        self._end_progress()
        return self._stream.write(text)

    def _end_progress(self) -> None:
        if self._progress is None:
            return
        found = _BYTES.search(self._progress)
        elapsed = time.perf_counter() - self._progress_started
        if found is not None:
            self._stream.write(f"{int(found.group(1)) / 1e6:.1f} MB downloaded in "
                               f"{elapsed:.1f} s\n")
        self._progress = None

    def release(self) -> None:
        self._passing = True
        for text in self._held:
            self._stream.write(text)
        self._held.clear()

    def finish(self) -> None:
        """Write what is held: the notice, and a download's line if its bar never ended."""
        self.release()
        self._end_progress()

    def flush(self) -> None:
        if self._passing:
            self._stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextmanager
def download_notice_kept_on_success() -> Iterator[None]:
    """Print Keras' "Downloading data from URL" only if the block does not fail.

    When the download fails transferkit raises its own error, which names the URL, the
    reason and the ways out; Keras' notice before it would only repeat the URL.
    """
    # One block at a time: two threads swapping sys.stdout in turn could leave a wrapper
    # in place of the real stream.
    with _STDOUT_LOCK:
        real = sys.stdout
        holding = _HoldsDownloadNotice(real)
        sys.stdout = holding
        try:
            yield
        except BaseException:
            sys.stdout = real
            raise
        sys.stdout = real
        holding.finish()
