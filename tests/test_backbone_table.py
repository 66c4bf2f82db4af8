"""transferkit.backbone_table: what the listings print without Keras is what Keras builds.

The table stands in for ``keras.applications`` when the Keras release it records is
installed. When one of these tests fails after a Keras upgrade, change the entries it names
in transferkit/backbone_table.py and set ``KERAS_VERSION`` to the installed release.
"""

from __future__ import annotations

from importlib import metadata

import pytest

from transferkit import backbone_table, backbones
from transferkit.backbone_table import BACKBONES, KERAS_VERSION, describes_installed_keras
from transferkit.cut_points import _built_cut_points

needs_recorded_keras = pytest.mark.skipif(
    not describes_installed_keras(),
    reason=f"the table records Keras {KERAS_VERSION}; another release is installed",
)


def _built(name: str) -> tuple[str, int, int, tuple[str, ...]]:
    """The table's entry for ``name``, read from keras.applications and a built network."""
    import keras

    entry = backbones._discovered_registry()[name.lower()]
    model = backbones.build_smallest(name)
    width = int(model.output.shape[-1])  # the channels do not depend on the input size
    cut_points = tuple(_built_cut_points(name, entry.module, None))
    keras.backend.clear_session()
    return entry.module, entry.default_size, width, cut_points


@needs_recorded_keras
def test_the_table_holds_exactly_the_constructors_of_keras_applications():
    discovered = {entry.name for entry in backbones._discovered_registry().values()}
    assert discovered == set(BACKBONES)


@needs_recorded_keras
def test_the_table_gives_the_registry_keras_applications_gives():
    assert backbones._registry() == backbones._discovered_registry()


@needs_recorded_keras
@pytest.mark.parametrize("name", ["VGG16", "MobileNetV3Small"])
def test_an_entry_is_what_a_built_network_shows(name):
    assert _built(name) == BACKBONES[name]


@needs_recorded_keras
@pytest.mark.slow
def test_every_entry_is_what_a_built_network_shows():
    wrong = {name: _built(name) for name in BACKBONES}
    wrong = {name: built for name, built in wrong.items() if built != BACKBONES[name]}
    assert not wrong, f"entries to write into transferkit/backbone_table.py: {wrong}"


def test_the_table_stands_in_only_for_the_keras_it_records(monkeypatch):
    check = describes_installed_keras.__wrapped__
    assert check() == (metadata.version("keras") == KERAS_VERSION)
    monkeypatch.setattr(backbone_table, "KERAS_VERSION", "0.0.0")
    assert not check()
