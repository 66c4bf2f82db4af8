"""Declarative checks of estimator parameters, shared by both estimators.

An estimator lists what each parameter may be in a class attribute
``_parameter_checks = {"name": constraint, ...}`` and calls :func:`check_parameters` where
scikit-learn's convention puts validation: at ``fit``, and again wherever a parameter
changed by ``set_params`` after fitting would be read (``transform``). Checks between
parameters (an augmentation that rules out a cache) stay in the estimator, after the table.

Every message names the parameter and the offending value, and says what it may be. The
function is not called ``_validate_params``: that is scikit-learn's own method on
``BaseEstimator`` (for its ``_parameter_constraints``), which this must not shadow.

Imports nothing of transferkit.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["Integer", "Options", "Real", "Satisfies", "check_parameters"]


@dataclass(frozen=True)
class Integer:
    """An integer (not a bool) ``>= minimum``; None too if ``none_means`` says what it is."""

    minimum: int
    none_means: str | None = None

    def __call__(self, name: str, value: Any) -> None:
        if value is None and self.none_means is not None:
            return
        if isinstance(value, numbers.Integral) and not isinstance(value, bool) \
                and value >= self.minimum:
            return
        allowed = ("a positive integer" if self.minimum == 1
                   else f"an integer >= {self.minimum}")
        if self.none_means is not None:
            allowed += f" or None ({self.none_means})"
        raise ValueError(f"{name}={value!r} must be {allowed}.")


@dataclass(frozen=True)
class Real:
    """A finite real number (not a bool) in an interval; ``brackets`` as written in maths,
    e.g. ``"(]"`` for ``low < value <= high``. ``meaning`` follows the range in the message;
    ``also`` lists strings accepted besides the numbers (``"auto"``)."""

    low: float
    high: float = math.inf
    brackets: str = "()"
    meaning: str = ""
    also: tuple[str, ...] = ()

    def __call__(self, name: str, value: Any) -> None:
        if isinstance(value, str) and value in self.also:
            return
        if isinstance(value, numbers.Real) and not isinstance(value, bool) \
                and math.isfinite(value):
            above = value >= self.low if self.brackets[0] == "[" else value > self.low
            below = value <= self.high if self.brackets[1] == "]" else value < self.high
            if above and below:
                return
        if self.high == math.inf:
            allowed = f"a finite number {'>=' if self.brackets[0] == '[' else '>'} {self.low:g}"
        else:
            allowed = (f"a number in {self.brackets[0]}{self.low:g}, {self.high:g}"
                       f"{self.brackets[1]}")
        if self.also:
            allowed = " or ".join(repr(option) for option in self.also) + " or " + allowed
        tail = f": {self.meaning}" if self.meaning else ""
        raise ValueError(f"{name}={value!r} must be {allowed}{tail}.")


@dataclass(frozen=True)
class Options:
    """One of a fixed set of values (compared with ``==``, types included)."""

    values: tuple
    advice: str = ""

    def __call__(self, name: str, value: Any) -> None:
        for option in self.values:
            if option is None or isinstance(option, bool):
                if value is option:  # so that cache=1 is not taken for cache=True
                    return
            elif isinstance(value, type(option)) and not isinstance(value, bool) \
                    and value == option:
                return
        advice = self.advice or f"use one of {self.values}"
        raise ValueError(f"{name}={value!r} is not supported; {advice}.")


@dataclass(frozen=True)
class Satisfies:
    """Anything ``test`` accepts; ``message`` is formatted with ``name``, ``value`` (repr)
    and ``kind`` (the value's type name)."""

    test: Callable[[Any], bool]
    message: str

    def __call__(self, name: str, value: Any) -> None:
        if not self.test(value):
            raise ValueError(self.message.format(name=name, value=repr(value),
                                                 kind=type(value).__name__))


def check_parameters(estimator: Any) -> None:
    """Check every parameter in ``type(estimator)._parameter_checks``; raise on the first.

    Raises
    ------
    ValueError
        Naming the parameter, its value and what it may be.
    """
    for name, check in type(estimator)._parameter_checks.items():
        check(name, getattr(estimator, name))


def optional_dict(value: Any) -> bool:
    """For :class:`Satisfies`: a dict or None."""
    return value is None or isinstance(value, dict)


def cut_value(value: Any) -> bool:
    """For :class:`Satisfies`: a cut (None, a name, an integer index) or a non-empty list or
    tuple of names and indices; ``"blocks"`` is a name."""
    def one(item: Any) -> bool:
        return isinstance(item, str) or (isinstance(item, numbers.Integral)
                                         and not isinstance(item, bool))

    if isinstance(value, (list, tuple)):
        return len(value) > 0 and all(one(item) for item in value)
    return value is None or one(value)


def integer(value: Any) -> bool:
    """For :class:`Satisfies`: an integer of any kind (bools included, as Python has it)."""
    return isinstance(value, numbers.Integral)
