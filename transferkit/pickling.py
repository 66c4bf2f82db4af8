"""Pickling an estimator that holds Keras networks: the weights travel, the networks are
rebuilt.

Owns the one ``__getstate__`` / ``__setstate__`` pair of both estimators
(:class:`KerasPicklingMixin`) and the table of values that parameters and attributes added
over time had before they existed (:data:`VALUES_BEFORE_THEY_EXISTED`,
:func:`fill_absent`), used by unpickling and by :func:`transferkit.load` alike.

A Keras object does not pickle portably. The state of an estimator therefore leaves out
every attribute its class lists in ``_keras_attributes`` and carries the weights of
``model_`` as arrays; unpickling builds the networks again from the parameters, without
downloading anything, through the class's ``_rebuild_networks(weights)``, which sets those
weights. Which networks an estimator has, and how they are built, is the estimator's.

Imports nothing of transferkit.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

__all__ = ["VALUES_BEFORE_THEY_EXISTED", "WEIGHTS_KEY", "KerasPicklingMixin", "SameAs",
           "fill_absent", "weights_for"]

WEIGHTS_KEY = "_fitted_weights"
"""The key of ``model_``'s weights in an estimator's pickled state."""

@dataclass(frozen=True)
class SameAs:
    """In :data:`VALUES_BEFORE_THEY_EXISTED`: the value of another key of the same state
    (one filled before it, if it was absent too)."""

    key: str


VALUES_BEFORE_THEY_EXISTED: dict[str, dict[str, Any]] = {
    "KerasFeatureExtractor": {
        # 83565a6, the feature cache: nothing was cached before it. Without a fingerprint
        # nothing is, which is right for an old estimator: its weights need not be those a
        # fresh build with its parameters gives, so its features must not share a cache key.
        "cache": None,
        "_fingerprint_": None,
        "precision": "float32",  # 83565a6
        "on_error": "raise",  # 270a115
        "crop_fraction": 1.0,  # f5342cf: the whole image was resized to the input size
        "runtime": "tensorflow",  # 29e4772
    },
    "FineTunedClassifier": {
        "head_init": "adam",  # f2c7f56: the head was trained by Adam
        "crop_fraction": 1.0,  # 188a806: the whole image was resized to the input size
        "head_views": 0,  # 188a806: the head learned from the images alone
        "runtime": "tensorflow",  # 93a9096
        # crop_fraction="auto": before it, the network saw the crop_fraction it was given.
        "crop_fraction_": SameAs("crop_fraction"),
        # Format 4: the loss was the plain cross-entropy, every block learned at one rate.
        "label_smoothing": 0.0,
        "layer_decay": 1.0,
        # Format 5: the head read the cut's pooled features alone.
        "head_blocks": 1,
        # Format 6: one held-out split of validation_fraction checked fine-tuning, and the
        # logits were not calibrated.
        "validation_folds": None,
        "temperature_": 1.0,
        # Format 7: the trainable part normalised with ImageNet's statistics.
        "batchnorm_statistics": "pretrained",
        "batchnorm_statistics_": "pretrained",
    },
}
"""For each estimator, parameters and attributes added after its first release, mapped to
the value that reproduces what it did before they existed. What a file or a pickle lacks
is filled from here (:func:`fill_absent`), by :func:`transferkit.load` and by
``__setstate__`` alike."""


def fill_absent(estimator: str, state: dict[str, Any], keys: Any = None) -> list[str]:
    """Give ``state`` the values of :data:`VALUES_BEFORE_THEY_EXISTED` it lacks.

    Parameters
    ----------
    estimator : str
        The class name, a key of :data:`VALUES_BEFORE_THEY_EXISTED`.
    state : dict
        Parameters and attributes, updated in place.
    keys : collection of str, default=None
        Fill only these names (None: all of the table).

    Returns
    -------
    filled : list of str
        The names that were absent and were filled.
    """
    filled = []
    for key, value in VALUES_BEFORE_THEY_EXISTED[estimator].items():
        if key not in state and (keys is None or key in keys):
            state[key] = state[value.key] if isinstance(value, SameAs) else copy.deepcopy(value)
            filled.append(key)
    return filled



def weights_for(weights: Any, model: Any) -> list:
    """The weights to set into ``model``: ``weights`` itself, or what it gives for ``model``.

    :func:`transferkit.load` passes a callable, so that a file's weights are read only once
    the network they must fit is built and their declared shapes have been checked.
    """
    return weights(model) if callable(weights) else weights


class KerasPicklingMixin:
    """``__getstate__`` / ``__setstate__`` for an estimator whose networks are Keras objects.

    A class using it lists its Keras-holding attributes in ``_keras_attributes`` (those
    not in the pickle) and implements ``_rebuild_networks(weights)``: build every network
    from the parameters and fitted attributes, with no weights fetched, set ``weights``
    (through :func:`weights_for`) into ``model_``, and make its forward pass. Attributes
    that ``_rebuild_networks`` sets again from what it builds, listed in
    ``_rebuilt_attributes``, are not carried either (nor written by
    :func:`transferkit.save`), so adding one changes no file format.
    """

    _keras_attributes: tuple[str, ...] = ("model_",)
    _rebuilt_attributes: tuple[str, ...] = ()

    def __getstate__(self) -> dict:
        state = dict(super().__getstate__())
        model = state.get("model_")
        for key in (*self._keras_attributes, *self._rebuilt_attributes):
            state.pop(key, None)
        if model is not None:
            # Weights travel with the pickle, so a loaded estimator needs no network access
            # and gives the same output even when it was built from random weights.
            state[WEIGHTS_KEY] = model.get_weights()
        return state

    def __setstate__(self, state: dict) -> None:
        weights = state.pop(WEIGHTS_KEY, None)
        # An estimator pickled or saved before a parameter existed gets the value that
        # reproduces what it did then (crop_fraction=1.0: the whole image).
        fill_absent(type(self).__name__, state)
        super().__setstate__(state)
        if weights is not None:
            self._rebuild_networks(weights)
