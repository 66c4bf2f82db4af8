"""What a user sees in the console: nothing from TensorFlow's start-up, nothing logged."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

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


def test_progress_redirected_to_a_file_is_one_plain_line():
    script = ("import numpy as np, transferkit\n"
              "transferkit.KerasFeatureExtractor('VGG16', weights=None, input_size=32,\n"
              "    cache=None, verbose=1).fit_transform(np.zeros((3, 32, 32, 3)))\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "\r" not in result.stdout and "\x1b" not in result.stdout
    assert result.stdout.startswith("3 images in ")
    assert len(result.stdout.splitlines()) == 1


def test_plain_progress_says_nothing_until_the_work_is_done():
    import io

    from transferkit.console import PlainProgress

    stream = io.StringIO()
    progress = PlainProgress(4, "image", stream)
    progress.update(2)
    assert stream.getvalue() == ""
    progress.update(4)
    progress.update(4)
    assert stream.getvalue().startswith("4 images in ")
    assert stream.getvalue().count("\n") == 1


def test_a_terminal_gets_keras_progress_bar(monkeypatch):
    import keras

    from transferkit.console import progress_bar

    class Terminal:
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stdout", Terminal())
    assert isinstance(progress_bar(3), keras.utils.Progbar)


def test_a_failed_download_leaves_no_download_notice(monkeypatch):
    import io

    import pytest

    from transferkit.console import download_notice_kept_on_success

    stream = io.StringIO()
    monkeypatch.setattr(sys, "stdout", stream)
    with pytest.raises(OSError), download_notice_kept_on_success():
        print("Downloading data from https://example.invalid/weights.h5")
        raise OSError("URL fetch failure")
    assert sys.stdout is stream
    assert stream.getvalue() == ""


def test_a_download_under_way_shows_its_notice_before_its_progress(monkeypatch):
    import io

    from transferkit.console import download_notice_kept_on_success

    stream = io.StringIO()
    monkeypatch.setattr(sys, "stdout", stream)
    with download_notice_kept_on_success():
        print("Downloading data from https://example.invalid/weights.h5")
        print("1/1 done")
    assert stream.getvalue() == ("Downloading data from https://example.invalid/weights.h5\n"
                                 "1/1 done\n")


def _serve_once(folder):
    """A server on the loopback that answers one request from ``folder``, then stops."""
    import functools
    import http.server
    import threading

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):  # the request log would go to the test's stderr
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0),
                                    functools.partial(Quiet, directory=str(folder)))
    server.timeout = 30  # no request within 30 s: stop anyway
    thread = threading.Thread(target=lambda: (server.handle_request(), server.server_close()),
                              daemon=True)
    thread.start()
    return f"http://127.0.0.1:{server.server_address[1]}", thread


def test_a_download_redirected_to_a_file_writes_plain_lines(tmp_path, monkeypatch):
    import keras

    from transferkit.console import download_notice_kept_on_success

    served = tmp_path / "served"
    served.mkdir()
    (served / "weights.h5").write_bytes(np.random.default_rng(0).bytes(600_000))
    url, server = _serve_once(served)
    cache = tmp_path / "keras"
    cache.mkdir()  # Keras downloads into /tmp/.keras instead when cache_dir is not writable
    with open(tmp_path / "console.txt", "w") as redirected:
        monkeypatch.setattr(sys, "stdout", redirected)
        # What backbones.py wraps around a Keras Applications constructor that downloads
        # its weights with keras.utils.get_file.
        with download_notice_kept_on_success():
            path = keras.utils.get_file("weights.h5", f"{url}/weights.h5",
                                        cache_dir=str(cache))
    server.join(timeout=30)
    assert not server.is_alive()  # it answered its one request: the file was downloaded
    assert Path(path).is_relative_to(cache)
    assert Path(path).read_bytes() == (served / "weights.h5").read_bytes()
    written = (tmp_path / "console.txt").read_text()
    assert "\r" not in written and "\b" not in written and "\x1b" not in written
    lines = written.splitlines()
    assert lines[0] == f"Downloading data from {url}/weights.h5"
    assert lines[1].startswith("0.6 MB downloaded in ")
    assert len(lines) == 2


def test_a_download_on_a_terminal_keeps_keras_progress_bar(monkeypatch):
    import io

    from transferkit.console import download_notice_kept_on_success

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    with download_notice_kept_on_success():
        print("Downloading data from https://example.invalid/weights.h5")
        sys.stdout.write("\r\x1b[1m1/2\x1b[0m")
        sys.stdout.write("\b\b\b\r\x1b[1m2/2\x1b[0m\n")
    assert terminal.getvalue().endswith("\r\x1b[1m1/2\x1b[0m\b\b\b\r\x1b[1m2/2\x1b[0m\n")
