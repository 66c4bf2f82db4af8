"""What ``import transferkit`` gives: every public name, each imported when first used."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import transferkit

from .conftest import REPO


def _fresh(script: str) -> str:
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip()


def test_importing_transferkit_imports_neither_tensorflow_keras_nor_scikit_learn():
    assert _fresh("import sys, transferkit\n"
                  "print([m for m in ('tensorflow', 'keras', 'sklearn') if m in sys.modules])"
                  ) == "[]"


@pytest.mark.parametrize("name", sorted(set(transferkit.__all__) - {"__version__"}))
def test_every_public_name_is_the_object_its_module_defines(name):
    import importlib

    value = getattr(transferkit, name)
    defined_in = importlib.import_module(value.__module__)
    assert getattr(defined_in, name) is value


def test_from_import_of_a_public_name_works_in_a_fresh_process():
    assert _fresh("from transferkit import FineTunedClassifier, load\n"
                  "print(FineTunedClassifier.__name__, load.__module__)"
                  ) == "FineTunedClassifier transferkit.persistence"


def test_dir_lists_every_public_name_before_it_is_used():
    assert _fresh("import transferkit\n"
                  "print(set(transferkit.__all__) <= set(dir(transferkit)))") == "True"


def test_a_submodule_is_an_attribute_of_the_package_as_before():
    assert _fresh("import transferkit\n"
                  "print(transferkit.cut_points.list_cut_points('VGG16')[-1])") == "block5"


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="has no attribute 'FineTuneClassifier'"):
        transferkit.FineTuneClassifier  # noqa: B018
