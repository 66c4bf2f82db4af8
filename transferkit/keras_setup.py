"""Keras settings a build or a pass runs under: seeded initialisation, precision, tracing.

Owns the few things every network of transferkit needs from Keras and TensorFlow before any
layer exists: deterministic initial weights without touching global random state
(:func:`seeded_keras_init`), a dtype policy scoped to one build (:func:`keras_precision`),
the traced callable that stands for ``model(x, training=False)`` (:class:`ForwardPass`),
how many images a pass takes by default (:func:`default_batch_size`), and recognising a
``keras.Model`` without importing Keras (:func:`is_keras_model`).

It imports nothing of transferkit, so every other module may use it. It does not build,
truncate or run networks: :mod:`transferkit.network` does.
"""

from __future__ import annotations

import numbers
import random
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["ForwardPass", "default_batch_size", "is_keras_model", "keras_precision",
           "seeded_keras_init"]

PRECISIONS = ("float32", "bfloat16")
_SEEDED_BUILD_LOCK = threading.RLock()


@contextmanager
def seeded_keras_init(random_state: Any) -> Iterator[None]:
    """Make Keras' default initialisers deterministic without touching global RNG state.

    Keras draws the seed of every unseeded initializer from Python's ``random`` module.
    Seeding that shared module is not enough: any other thread that draws from it during
    the build (a Dask worker's event loop does) shifts the sequence and changes the
    weights. So, for the duration of the build, Keras' seed source is replaced by a
    private ``random.Random(seed)``; builds are serialised so that two cannot share it.
    """
    if random_state is None:
        yield
        return
    from sklearn.utils import check_random_state

    seed = (
        int(random_state)
        if isinstance(random_state, numbers.Integral)
        else int(check_random_state(random_state).randint(0, 2**31 - 1))
    )
    try:
        from keras.src.random import seed_generator
    except ImportError:  # a Keras without this module: seed the shared generator instead
        seed_generator = None
    with _SEEDED_BUILD_LOCK:
        if seed_generator is None or not hasattr(seed_generator, "python_random"):
            saved = random.getstate()
            random.seed(seed)
            try:
                yield
            finally:
                random.setstate(saved)
            return
        shared = seed_generator.python_random
        seed_generator.python_random = random.Random(seed)
        try:
            yield
        finally:
            seed_generator.python_random = shared


@contextmanager
def keras_precision(precision: str) -> Iterator[None]:
    """Build layers under a dtype policy, restoring the caller's policy afterwards."""
    if precision == "float32":
        yield
        return
    import keras

    saved = keras.config.dtype_policy()
    keras.config.set_dtype_policy(f"mixed_{precision}")
    try:
        yield
    finally:
        keras.config.set_dtype_policy(saved)


def is_keras_model(obj: Any) -> bool:
    """Whether ``obj`` is a ``keras.Model``; never imports Keras for anything else."""
    # Duck-typing first, so that importing transferkit never imports Keras.
    if not (hasattr(obj, "layers") and hasattr(obj, "inputs")):
        return False
    import keras

    return isinstance(obj, keras.Model)


class ForwardPass:
    """``model(x, training=False)`` as a callable object.

    tf.function groups its retracing statistics by the wrapped function's code object; a
    lambda would make every extractor in a grid search count as "retracing the same
    function" and trigger TensorFlow's warning. An instance is its own key.
    """

    def __init__(self, model: Any) -> None:
        self.model = model

    def __call__(self, x: Any) -> Any:
        return self.model(x, training=False)


def default_batch_size() -> int:
    """Images per forward pass when ``batch_size=None``: 8 on CPUs, 32 with a GPU.

    On a CPU a small batch keeps the activations of each layer in cache: on the 2-core
    CI machine a forward pass at batch 8 ran MobileNetV2 1.4x and ResNet50 1.1x faster per
    image than at 32 (and batch 4 was no faster than 8). A GPU needs large batches to be busy.
    """
    import tensorflow as tf

    return 32 if tf.config.list_logical_devices("GPU") else 8
