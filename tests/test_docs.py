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
        # plot_gallery=0: the gallery is rendered without running the examples, which
        # tests/test_examples.py runs; .ci/run's build runs them.
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
         "-D", "plot_gallery=0",
         str(source / "docs"), str(tmp_path / "html"), "-d", str(tmp_path / "doctrees")],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 0, result.stderr[-5000:]
    for page in ("index", "install", "user_guide", "command_line", "benchmarks",
                 "auto_examples/quickstart", "auto_examples/plot_activations",
                 "generated/transferkit.viz.plot_grad_cam"):
        assert (tmp_path / "html" / f"{page}.html").is_file(), page


def test_the_quick_start_page_gives_the_readme_s_test_command():
    readme = (REPO / "README.md").read_text()
    command = next(line for line in readme.splitlines() if "python -m pytest" in line)
    assert command.strip() in (REPO / "docs" / "quick_start.rst").read_text()


@pytest.mark.parametrize("example", sorted(p.name for p in (REPO / "examples").glob("*.py")))
def test_every_command_an_example_page_shows_is_in_a_code_block(example):
    import ast

    text = ast.get_docstring(ast.parse((REPO / "examples" / example).read_text()))
    directive = None  # the last line that starts at the margin: what an indented line is in
    for line in text.splitlines():
        if line and not line[0].isspace():
            assert not line.startswith("python "), (example, line)  # a paragraph, not code
            directive = line
        elif "python " in line:
            assert directive == ".. code-block:: bash", (example, line)
