"""transferkit.advice: one message, its way out worded for where the user is."""

from __future__ import annotations

import pickle

import pytest

from transferkit.advice import PYTHON, advised, is_advised, worded

SHELL = {**PYTHON, "random_weights": "--weights none", "cut_given": "--cut {cut!r}"}


def _error() -> ValueError:
    return advised(ValueError, "{cut_given} failed; try {random_weights}.", cut="conv9")


def test_the_message_is_the_python_wording():
    assert str(_error()) == "cut='conv9' failed; try weights=None."


def test_another_vocabulary_words_the_same_message():
    assert worded(_error(), SHELL) == "--cut 'conv9' failed; try --weights none."


def test_the_error_is_of_the_type_callers_catch():
    error = _error()
    assert isinstance(error, ValueError) and is_advised(error)


def test_the_advice_survives_a_trip_to_another_process():
    error = pickle.loads(pickle.dumps(_error()))
    assert worded(error, SHELL) == "--cut 'conv9' failed; try --weights none."


def test_an_error_made_otherwise_is_worded_as_it_is():
    assert not is_advised(ValueError("plain"))
    assert worded(ValueError("plain"), SHELL) == "plain"


def test_a_vocabulary_that_does_not_fit_falls_back_to_the_python_wording():
    assert worded(_error(), {**SHELL, "cut_given": "--cut {cutt}"}) == str(_error())


def test_a_value_named_like_a_way_out_is_a_mistake_in_transferkit():
    with pytest.raises(TypeError, match="random_weights"):
        advised(ValueError, "{random_weights}", random_weights="x")
