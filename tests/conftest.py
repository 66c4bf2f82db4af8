"""Test set-up shared by every test module.

Keras reads ``KERAS_HOME`` once, when it is first imported, and only uses it if the
folder is writable. The real ImageNet weights in ``../shared`` are read-only, so we
link them into a temporary, writable Keras home *before* anything imports Keras:
``weights="imagenet"`` then takes the genuine Keras download/cache path and finds
the files already cached, exactly as on a user's machine that downloaded them once.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SHARED_MODELS = SHARED / "keras_home" / "models"
HYMENOPTERA = SHARED / "datasets" / "hymenoptera_data"

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _prepare_keras_home() -> Path:
    home = Path(tempfile.mkdtemp(prefix="transferkit-keras-home-"))
    models = home / "models"
    models.mkdir()
    if SHARED_MODELS.is_dir():
        for weights_file in SHARED_MODELS.iterdir():
            (models / weights_file.name).symlink_to(weights_file)
    return home


KERAS_HOME = _prepare_keras_home()
os.environ["KERAS_HOME"] = str(KERAS_HOME)

needs_shared_weights = pytest.mark.skipif(
    not (SHARED_MODELS / "mobilenet_2_5_224_tf_no_top.h5").is_file(),
    reason=f"real ImageNet weights not found in {SHARED_MODELS} (../shared is absent)",
)
needs_hymenoptera = pytest.mark.skipif(
    not (HYMENOPTERA / "train").is_dir(),
    reason=f"hymenoptera data set not found in {HYMENOPTERA} (../shared is absent)",
)


def image_paths(split: str) -> tuple[list[str], list[str]]:
    """All hymenoptera images of a split that are real photographs, with their labels."""
    paths, labels = [], []
    for label in ("ants", "bees"):
        for path in sorted((HYMENOPTERA / split / label).iterdir()):
            if path.suffix.lower() in (".jpg", ".jpeg", ".png"):
                paths.append(str(path))
                labels.append(label)
    return paths, labels


@pytest.fixture(scope="session")
def rng_images():
    """Eight deterministic 40x48 uint8 RGB images."""
    import numpy as np

    return np.random.default_rng(0).integers(0, 256, size=(8, 40, 48, 3), dtype=np.uint8)


@pytest.fixture
def tensorflow_log():
    """Messages TensorFlow's Python logger emits during the test."""
    import logging

    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    handler = Collect(level=logging.WARNING)
    logger = logging.getLogger("tensorflow")
    logger.addHandler(handler)
    yield messages
    logger.removeHandler(handler)


#: Brightness band of each class of :func:`noise_images`.
NOISE_BANDS = {"dark": (0, 90), "bright": (160, 256), "grey": (90, 160)}


def noise_images(n_per_class: int = 12, *, classes: tuple[str, ...] = ("dark", "bright"),
                 size: int = 32, seed: int = 0):
    """Uniform-noise uint8 images, one brightness band per class, and their class names.

    Easy classes even for the random features of ``weights=None`` networks, so the tests
    that train on them check learning, not luck.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    X = np.concatenate([rng.integers(*NOISE_BANDS[name], (n_per_class, size, size, 3))
                        for name in classes])
    return X.astype(np.uint8), np.repeat(np.array(classes), n_per_class)


@pytest.fixture(scope="session")
def hub_presets(tmp_path_factory):
    """Tiny random keras-hub presets saved as directories, one per architecture:
    name -> (preset directory, keras-hub backbone, keras-hub image converter).

    See ``tests/hub_presets.py``; skips the test where keras-hub is not installed.
    """
    pytest.importorskip("keras_hub")
    from .hub_presets import save_presets

    return save_presets(tmp_path_factory.mktemp("hub_presets"))
