"""An error's way out, in the words of where the user is: Python calls or the command line.

An error names the offending value and says what to do instead. What to do depends on where
the user stands: a Python caller is told to call ``transferkit.list_backbones()`` or to pass
``weights=None``, someone at the ``transferkit`` command to run ``transferkit backbones`` or
to pass ``--weights none``. A message that names such a way out is written once, as a
template whose fields are ways out (the keys of :data:`PYTHON`) and values; :func:`advised`
makes the exception, whose ``str`` is the Python wording, and :func:`worded` words the same
message with another vocabulary (the command line's lives in :mod:`transferkit.cli`).

An exception made by :func:`advised` is, by construction, a user's error with a way out: the
command line reports it in one line whatever its type.

Imports nothing of transferkit.
"""

# Authors: The transferkit developers
# SPDX-License-Identifier: BSD-3-Clause

from __future__ import annotations

import string
from collections.abc import Mapping
from typing import Any, TypeVar

__all__ = ["PYTHON", "advised", "is_advised", "worded"]

E = TypeVar("E", bound=BaseException)

PYTHON: dict[str, str] = {
    "list_backbones": "transferkit.list_backbones()",
    "list_cut_points": "transferkit.list_cut_points()",
    "cut_by_index": "an int index into model.layers",
    "cut_given": "cut={cut!r}",
    "cuts_given": "cut={cut!r}",
    "no_pooling": "pooling=None",
    "pool_each_cut": "pooling='avg' or pooling='max'",
    "weights_given": "weights={weights!r}",
    "choose_weights": "pass weights= to the estimator or to build_backbone",
    "random_weights": "weights=None",
    "weights_file": "weights='/path/to/weights.h5'",
    "input_size_given": "input_size={input_size}",
    "input_size_option": "input_size",
    "choose_input_size": "pass input_size=(height, width) to the estimator or to "
                         "build_backbone",
    "backbone_kwargs_option": "backbone_kwargs",
    "model_writer": "transferkit.save",
    "model_file_formats": "Files written by transferkit.save are zip archives; a file "
                          "written by joblib.dump must be loaded with joblib.load (only from "
                          "a trusted source).",
    "other_zip_files": "a Keras '.keras' file? load it with keras.saving.load_model; features "
                       "from 'transferkit extract'? load them with numpy.load",
    "statistics_target": "batchnorm_statistics='target'",
    "statistics_pretrained": "batchnorm_statistics='pretrained'",
    "fewer_views": "fewer images or head_views",
}
"""The ways out a message may name, as a Python caller takes them.

Every other vocabulary has the same keys. An entry may show values of the message: those
ending in ``_given`` show the offending ``cut``, ``weights`` or ``input_size``, which a
message naming them passes."""

_ADVICE = "_transferkit_advice"


def _render(template: str, values: Mapping[str, Any], vocabulary: Mapping[str, str]) -> str:
    named = _fields(template)
    ways = {key: text.format_map(values) for key, text in vocabulary.items() if key in named}
    return template.format_map({**values, **ways})


def _fields(template: str) -> set[str]:
    return {field.split(".")[0].split("[")[0]
            for _, field, _, _ in string.Formatter().parse(template) if field}


def advised(error: type[E], template: str, /, **values: Any) -> E:
    """An ``error`` whose message is ``template``, its ways out in :data:`PYTHON`'s words.

    Parameters
    ----------
    error : exception class
        What callers catch, as if the message were a plain string.
    template : str
        A :meth:`str.format` template; its fields are keys of :data:`PYTHON` or of
        ``values``.
    **values
        The offending values and whatever else the message shows.

    Returns
    -------
    exception : error
        Raise it; :func:`worded` gives its message in another vocabulary.
    """
    shared = sorted(set(values) & set(PYTHON))
    if shared:
        # A mistake in transferkit, not the user's: not a ValueError the CLI would report.
        raise TypeError(f"values {shared} would hide the ways out of the same names.")
    exception = error(_render(template, values, PYTHON))
    setattr(exception, _ADVICE, (template, dict(values)))
    return exception


def is_advised(exception: BaseException) -> bool:
    """Whether ``exception`` was made by :func:`advised`."""
    return hasattr(exception, _ADVICE)


def worded(exception: BaseException, vocabulary: Mapping[str, str]) -> str:
    """The message of ``exception``, its ways out worded by ``vocabulary``.

    ``str(exception)`` for an exception that :func:`advised` did not make.
    """
    advice = getattr(exception, _ADVICE, None)
    if advice is None:
        return str(exception)
    template, values = advice
    try:
        return _render(template, values, vocabulary)
    except (KeyError, IndexError, AttributeError, TypeError, ValueError):
        # A vocabulary that does not fit this message must not hide the error it reports.
        return str(exception)
