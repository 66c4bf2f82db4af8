"""The documentation builds, warnings as errors, as .ci/run builds it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from .conftest import REPO


def test_docs_build_without_warnings(tmp_path):
    for module in ("sphinx", "numpydoc", "sphinx_gallery", "pydata_sphinx_theme"):
        pytest.importorskip(module, reason=f"{module} is not installed: pip install -e '.[docs]'")
    # Build from a copy beside links to the package and the examples: the gallery and the
    # API pages are generated inside the source folder, which must not be the checkout's.
    source = tmp_path / "src"
    (source / "docs").parent.mkdir()
    subprocess.run(["cp", "-r", str(REPO / "docs"), str(source / "docs")], check=True)
    for name in ("transferkit", "examples"):
        (source / name).symlink_to(REPO / name)
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
         str(source / "docs"), str(tmp_path / "html"), "-d", str(tmp_path / "doctrees")],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 0, result.stderr[-5000:]
    for page in ("index", "install", "user_guide", "command_line", "benchmarks",
                 "auto_examples/quickstart", "auto_examples/plot_activations",
                 "generated/transferkit.viz.plot_grad_cam"):
        assert (tmp_path / "html" / f"{page}.html").is_file(), page
