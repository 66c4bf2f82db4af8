"""The JSON form of the parameters and attributes in a model file: plain data, never code.

:func:`encode` turns a value into JSON-compatible data and :func:`decode` turns it back,
for ``None``, bools, numbers (NaN and infinities included), strings, bytes, paths, lists,
tuples, dicts with any plain keys, and NumPy arrays of plain scalars. Every JSON object the
encoding produces is tagged with the type it stands for, and decoding knows a fixed set of
tags: nothing a file holds can name a class, a function or a pickle.
"""

from __future__ import annotations

import math
import numbers
import reprlib
from pathlib import Path, PurePath
from typing import Any

import numpy as np

from .model_file import ModelFileError

__all__ = ["Unrepresentable", "decode", "decode_mapping", "encode"]

TAG = "__type__"
_ARRAY_KINDS = "biufUSO"  # bool, int, uint, float, str, bytes, object (of scalars)


class Unrepresentable(ValueError):
    """A value with no JSON form; ``where`` says which parameter or attribute holds it."""

    def __init__(self, where: str, value: Any) -> None:
        super().__init__(where)
        self.where = where
        self.value = value


def encode(value: Any, where: str) -> Any:
    """A JSON-compatible form of ``value``; containers and non-JSON scalars are tagged.

    Every dict of the output is a tag (``{"__type__": ...}``), so decoding never has to
    guess whether a dict was data or an encoded value.
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        number = float(value)
        # Strict JSON has no NaN or infinity (a diverged loss in history_ can be either).
        return number if math.isfinite(number) else {TAG: "float", "value": repr(number)}
    if isinstance(value, list):
        return [encode(item, f"{where}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, tuple):
        return {TAG: "tuple", "items": [encode(item, f"{where}[{i}]")
                                        for i, item in enumerate(value)]}
    if isinstance(value, dict):
        return {TAG: "dict", "items": [[encode(key, f"{where} key {key!r}"),
                                         encode(item, f"{where}[{key!r}]")]
                                        for key, item in value.items()]}
    if isinstance(value, PurePath):
        return {TAG: "path", "value": str(value)}
    if isinstance(value, bytes):
        return {TAG: "bytes", "hex": value.hex()}
    if isinstance(value, np.ndarray) and value.dtype.kind in _ARRAY_KINDS:
        items = value.ravel().tolist()
        if value.dtype.kind == "O" and not all(
            item is None or isinstance(item, (bool, int, float, str, bytes)) for item in items
        ):
            raise Unrepresentable(where, value)
        return {TAG: "ndarray", "dtype": value.dtype.str, "shape": list(value.shape),
                "items": [encode(item, f"{where}[{i}]") for i, item in enumerate(items)]}
    raise Unrepresentable(where, value)


def decode(value: Any, where: str) -> Any:
    """Inverse of :func:`_encode`; anything it did not produce raises ModelFileError."""
    if value is None or isinstance(value, (bool, str, int, float)):
        return value
    if isinstance(value, list):
        return [decode(item, where) for item in value]
    if not isinstance(value, dict):
        raise ModelFileError(f"{where}: unexpected JSON value {reprlib.repr(value)}.")
    tag = value.get(TAG)
    try:
        if tag == "tuple":
            return tuple(decode(item, where) for item in _field(value, "items", list))
        if tag == "dict":
            pairs = _field(value, "items", list)
            if not all(isinstance(pair, list) and len(pair) == 2 for pair in pairs):
                raise TypeError("items must be [key, value] pairs")
            return {decode(key, where): decode(item, where) for key, item in pairs}
        if tag == "float":
            text = _field(value, "value", str)
            if text not in ("nan", "inf", "-inf"):
                raise TypeError(f"{text!r} is not 'nan', 'inf' or '-inf'")
            return float(text)
        if tag == "path":
            return Path(_field(value, "value", str))
        if tag == "bytes":
            return bytes.fromhex(_field(value, "hex", str))
        if tag == "ndarray":
            return _decode_array(value, where)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ModelFileError):
            raise
        raise ModelFileError(f"{where}: malformed {tag!r} value ({exc}).") from exc
    # Notably a "pickle" or "object" tag: the format has no way to express code.
    raise ModelFileError(
        f"{where}: {reprlib.repr(value)} is not a value transferkit writes (unknown type tag "
        f"{tag!r}); the file was edited or not written by transferkit.persistence.save."
    )


def _field(value: dict, key: str, kind: type) -> Any:
    item = value.get(key)
    if not isinstance(item, kind):
        raise TypeError(f"field {key!r} must be a {kind.__name__}, got {reprlib.repr(item)}")
    return item


def _decode_array(value: dict, where: str) -> np.ndarray:
    dtype = np.dtype(_field(value, "dtype", str))
    if dtype.kind not in _ARRAY_KINDS or dtype.fields is not None:
        raise ValueError(f"dtype {dtype.str!r} is not one transferkit writes")
    shape = tuple(_field(value, "shape", list))
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
        raise ValueError(f"shape {shape!r} must hold non-negative integers")
    items = [decode(item, where) for item in _field(value, "items", list)]
    if not all(item is None or isinstance(item, (bool, int, float, str, bytes))
               for item in items):
        raise ValueError("array items must be scalars")
    if len(items) != math.prod(shape):
        raise ValueError(f"{len(items)} items do not fill shape {shape}")
    array = np.empty(len(items), dtype=dtype)
    # Element by element: np.array(items) would turn equal-length strings of an object
    # array into a character grid, and silently reshape nested data.
    for i, item in enumerate(items):
        array[i] = item
    return array.reshape(shape)


def decode_mapping(value: Any, where: str) -> dict[str, Any]:
    """Decode a JSON object of names to encoded values, such as a manifest's ``params``."""
    if not isinstance(value, dict) or TAG in value:
        raise ModelFileError(f"{where}: expected a JSON object of names to values.")
    return {key: decode(item, f"{where}[{key!r}]") for key, item in value.items()}
