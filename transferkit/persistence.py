"""Saving and loading estimators in a file that cannot run code when it is loaded.

``joblib.dump`` / ``pickle`` keep working for every estimator and pipeline, but
unpickling a file can execute arbitrary code, so a pickle must only ever come from a
trusted source. :func:`save` and :func:`load` use a format that holds data only:

* one zip file holding ``manifest.json`` and, for a fitted estimator, ``weights.npz``;
* ``manifest.json`` records the format version, the versions of transferkit, Keras,
  TensorFlow, NumPy and scikit-learn that wrote it, the estimator's class *name* (one of
  :data:`ESTIMATORS`, never an importable path), its parameters and its fitted
  attributes as JSON, and the size and SHA-256 digest of ``weights.npz``;
* ``weights.npz`` holds the network's weights (``model_.get_weights()`` order), read
  back with ``allow_pickle=False``.

Loading checks the structure, the format version and every digest before it uses
anything, rebuilds the network with random weights (no download, no network access)
through the same code path as unpickling, and sets the saved weights, which Keras checks
against the rebuilt architecture. A truncated, damaged or edited file raises
:class:`ModelFileError` naming the file and the problem; a file written by another
transferkit version loads with a :class:`FileVersionWarning` naming both versions.

Files are written atomically: to a temporary file in the destination folder, flushed
to disk, then moved over the destination with :func:`os.replace`. A crash or error while
saving leaves the previous file at that path untouched and no partial file behind it.

Examples
--------
>>> from transferkit import KerasFeatureExtractor
>>> from transferkit.persistence import load, save
>>> extractor = KerasFeatureExtractor("VGG16", weights=None, random_state=0)
>>> extractor.fit()  # doctest: +SKIP
>>> save(extractor, "extractor.tkz")  # doctest: +SKIP
>>> load("extractor.tkz").transform(images)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import numbers
import os
import reprlib
import stat
import tempfile
import warnings
import zipfile
from importlib import metadata
from pathlib import Path, PurePath
from typing import Any

import numpy as np

__all__ = [
    "ESTIMATORS",
    "FORMAT_VERSION",
    "FileVersionWarning",
    "ModelFileError",
    "load",
    "save",
]

FORMAT_NAME = "transferkit.estimator"
FORMAT_VERSION = 1
"""Version of the file layout; bumped whenever a reader of the previous one would misread it."""

ESTIMATORS = ("KerasFeatureExtractor", "FineTunedClassifier")
"""The only classes a file may name. A name, never a module path: loading imports nothing
that the file chooses."""

_MANIFEST = "manifest.json"
_WEIGHTS = "weights.npz"
# A manifest is a few kilobytes; the cap stops a crafted file from making load() read
# gigabytes into memory before any check has run.
_MAX_MANIFEST_BYTES = 16 * 2**20
_TAG = "__type__"
_ARRAY_KINDS = "biufUSO"  # bool, int, uint, float, str, bytes, object (of scalars)
# Fixed timestamps make two saves of the same estimator byte-identical.
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


class ModelFileError(ValueError):
    """A file cannot be loaded: not a transferkit file, truncated, damaged or edited."""


class FileVersionWarning(UserWarning):
    """A file was written by a different transferkit version than the one loading it."""


class _Unrepresentable(ValueError):
    """A value with no JSON form; ``where`` says which parameter or attribute holds it."""

    def __init__(self, where: str, value: Any) -> None:
        super().__init__(where)
        self.where = where
        self.value = value


# ---------------------------------------------------------------------- JSON encoding
def _encode(value: Any, where: str) -> Any:
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
        return number if math.isfinite(number) else {_TAG: "float", "value": repr(number)}
    if isinstance(value, list):
        return [_encode(item, f"{where}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, tuple):
        return {_TAG: "tuple", "items": [_encode(item, f"{where}[{i}]")
                                        for i, item in enumerate(value)]}
    if isinstance(value, dict):
        return {_TAG: "dict", "items": [[_encode(key, f"{where} key {key!r}"),
                                         _encode(item, f"{where}[{key!r}]")]
                                        for key, item in value.items()]}
    if isinstance(value, PurePath):
        return {_TAG: "path", "value": str(value)}
    if isinstance(value, bytes):
        return {_TAG: "bytes", "hex": value.hex()}
    if isinstance(value, np.ndarray) and value.dtype.kind in _ARRAY_KINDS:
        items = value.ravel().tolist()
        if value.dtype.kind == "O" and not all(
            item is None or isinstance(item, (bool, int, float, str, bytes)) for item in items
        ):
            raise _Unrepresentable(where, value)
        return {_TAG: "ndarray", "dtype": value.dtype.str, "shape": list(value.shape),
                "items": [_encode(item, f"{where}[{i}]") for i, item in enumerate(items)]}
    raise _Unrepresentable(where, value)


def _decode(value: Any, where: str) -> Any:
    """Inverse of :func:`_encode`; anything it did not produce raises ModelFileError."""
    if value is None or isinstance(value, (bool, str, int, float)):
        return value
    if isinstance(value, list):
        return [_decode(item, where) for item in value]
    if not isinstance(value, dict):
        raise ModelFileError(f"{where}: unexpected JSON value {reprlib.repr(value)}.")
    tag = value.get(_TAG)
    try:
        if tag == "tuple":
            return tuple(_decode(item, where) for item in _field(value, "items", list))
        if tag == "dict":
            pairs = _field(value, "items", list)
            if not all(isinstance(pair, list) and len(pair) == 2 for pair in pairs):
                raise TypeError("items must be [key, value] pairs")
            return {_decode(key, where): _decode(item, where) for key, item in pairs}
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
    items = [_decode(item, where) for item in _field(value, "items", list)]
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


# ---------------------------------------------------------------------- helpers
def _estimator_classes() -> dict[str, type]:
    # Imported here, not at module level: the estimator modules import this one's users.
    from .extractor import KerasFeatureExtractor
    from .finetune import FineTunedClassifier

    classes = {"KerasFeatureExtractor": KerasFeatureExtractor,
               "FineTunedClassifier": FineTunedClassifier}
    assert set(classes) == set(ESTIMATORS)
    return classes


def _versions() -> dict[str, str | None]:
    """Versions of the libraries that shape a saved network; read without importing them."""
    from . import __version__

    def installed(distribution: str) -> str | None:
        try:
            return metadata.version(distribution)
        except metadata.PackageNotFoundError:
            return None

    return {
        "transferkit_version": __version__,
        "keras_version": installed("keras"),
        "tensorflow_version": installed("tensorflow"),
        "numpy_version": np.__version__,
        "sklearn_version": installed("scikit-learn"),
    }


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _unrepresentable_error(estimator: Any, error: _Unrepresentable) -> ValueError:
    value = error.value
    if isinstance(value, (np.random.RandomState, np.random.Generator)):
        hint = "pass an integer seed instead (it gives the same reproducibility)"
    elif hasattr(value, "layers") and hasattr(value, "inputs"):
        hint = ("a keras.Model lives outside the file format; save it with "
                "model.save('backbone.keras') and persist this estimator with joblib.dump")
    else:
        hint = "set it to a plain value (str, number, bool, None, list, tuple, dict or path)"
    return ValueError(
        f"Cannot save {type(estimator).__name__}: {error.where} = {reprlib.repr(value)} "
        f"({type(value).__name__}) has no representation in a transferkit file, which holds "
        f"plain data only so that loading it can never run code. Either {hint}, or use "
        f"joblib.dump(estimator, path) (a pickle: load it only from a trusted source)."
    )


def _zip_info(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
    info.compress_type = zipfile.ZIP_STORED  # weights barely compress; storing is fast
    info.external_attr = (stat.S_IFREG | 0o644) << 16
    return info


# ---------------------------------------------------------------------- save
def save(estimator: Any, path: str | os.PathLike) -> Path:
    """Write an estimator to a file that loads without running any code from it.

    Parameters
    ----------
    estimator : KerasFeatureExtractor or FineTunedClassifier
        Fitted or not. An unfitted estimator is saved as its parameters only. Every
        parameter and fitted attribute must be plain data (str, number, bool, None,
        list, tuple, dict, path or array): a ``keras.Model`` backbone, a
        ``RandomState`` or a cache object are refused with a ``ValueError``; use
        ``joblib.dump`` for those.
    path : str or path-like
        Destination file, replaced atomically if it exists. Its folder must exist.

    Returns
    -------
    path : pathlib.Path
        The file written.

    Raises
    ------
    TypeError
        If ``estimator`` is not one of :data:`ESTIMATORS` (subclasses included: their
        behaviour would be lost on load).
    ValueError
        If a parameter or attribute is not plain data, naming it.
    """
    classes = _estimator_classes()
    name = type(estimator).__name__
    if classes.get(name) is not type(estimator):
        raise TypeError(
            f"transferkit.persistence.save stores {' and '.join(ESTIMATORS)} objects only, "
            f"not {type(estimator).__module__}.{type(estimator).__qualname__}; use "
            f"joblib.dump for other objects (a pickle: load it only from a trusted source)."
        )
    path = Path(os.fspath(path)).expanduser()
    if path.is_dir():
        raise IsADirectoryError(f"{str(path)!r} is a directory; pass the path of a file.")

    # The pickling state: exactly what __setstate__ turns back into a working estimator.
    state = dict(estimator.__getstate__())
    weights = state.pop("_fitted_weights", None)
    params = estimator.get_params(deep=False)
    attributes = {key: value for key, value in state.items() if key not in params}
    try:
        encoded_params = {key: _encode(value, key) for key, value in params.items()}
        encoded_attributes = {key: _encode(value, key) for key, value in attributes.items()}
    except _Unrepresentable as error:
        raise _unrepresentable_error(estimator, error) from None

    members: dict[str, bytes] = {}
    manifest: dict[str, Any] = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        **_versions(),
        "estimator": name,
        "fitted": weights is not None,
        "params": encoded_params,
        "attributes": encoded_attributes,
        "weights": [],
        "members": {},
    }
    if weights is not None:
        arrays = [np.asarray(w) for w in weights]
        buffer = io.BytesIO()
        np.savez(buffer, **{f"w{i:05d}": a for i, a in enumerate(arrays)})
        members[_WEIGHTS] = buffer.getvalue()
        manifest["weights"] = [{"shape": list(a.shape), "dtype": a.dtype.str} for a in arrays]
    manifest["members"] = {
        member: {"size": len(data), "sha256": _sha256(data)} for member, data in members.items()
    }
    manifest_bytes = json.dumps(manifest, indent=1, allow_nan=False).encode("utf-8")
    _write_atomically(path, [(_MANIFEST, manifest_bytes), *members.items()])
    return path


def _write_atomically(path: Path, members: list[tuple[str, bytes]]) -> None:
    """Zip ``members`` into a temporary file beside ``path``, sync it, move it into place."""
    directory = path.parent if str(path.parent) else Path(".")
    # Same folder as the destination: os.replace is only atomic within one file system.
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            with zipfile.ZipFile(handle, "w") as archive:
                for member, data in members:
                    archive.writestr(_zip_info(member), data)
            handle.flush()
            # On disk before the rename: otherwise a power cut could leave the new name
            # pointing at an empty file.
            os.fsync(handle.fileno())
        # mkstemp creates the file readable by its owner only; keep the mode a file saved
        # in place would have had.
        mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    _sync_directory(directory)


def _sync_directory(directory: Path) -> None:
    # Makes the rename itself durable. Not possible on every platform (Windows cannot
    # open a directory); the file is complete either way.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ---------------------------------------------------------------------- load
def load(path: str | os.PathLike, *, estimator_class: type | None = None) -> Any:
    """Load an estimator written by :func:`save`, without running code from the file.

    The file's structure, format version and digests are checked before anything in it
    is used; the network is rebuilt from random weights (nothing is downloaded) and the
    saved weights are set into it.

    Parameters
    ----------
    path : str or path-like
        A file written by :func:`save`.
    estimator_class : type, default=None
        If given, the file must hold an estimator of exactly this class.

    Returns
    -------
    estimator : KerasFeatureExtractor or FineTunedClassifier
        Fitted if it was fitted when saved; it gives the same output as then.

    Raises
    ------
    ModelFileError
        If the file is not a transferkit file, is truncated or damaged, was edited,
        comes from a newer format version, or holds another class than
        ``estimator_class``.
    FileNotFoundError
        If ``path`` does not exist.

    Warns
    -----
    FileVersionWarning
        If the file was written by another transferkit version.
    """
    path = Path(os.fspath(path)).expanduser()
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise ModelFileError(
            f"{str(path)!r} is not a transferkit model file, or it is truncated ({exc}). "
            f"Files written by transferkit.persistence.save are zip archives; a file written "
            f"by joblib.dump must be loaded with joblib.load (only from a trusted source)."
        ) from exc
    with archive:
        return _load_archive(archive, path, estimator_class)


def _read_member(archive: zipfile.ZipFile, path: Path, member: str, limit: int) -> bytes:
    info = archive.getinfo(member)
    if info.file_size > limit:
        raise ModelFileError(
            f"{str(path)!r}: member {member!r} claims {info.file_size} bytes, more than the "
            f"{limit} expected; the file was edited or not written by transferkit."
        )
    try:
        # zipfile checks each member's CRC-32 while reading it.
        return archive.read(member)
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
        raise ModelFileError(
            f"{str(path)!r}: member {member!r} is damaged ({exc}); the file was corrupted "
            f"after it was written. Restore it from a copy or save the estimator again."
        ) from exc


def _load_archive(archive: zipfile.ZipFile, path: Path, estimator_class: type | None) -> Any:
    where = repr(str(path))
    names = archive.namelist()
    if _MANIFEST not in names:
        raise ModelFileError(
            f"{where} is a zip file without {_MANIFEST!r}: not a file written by "
            f"transferkit.persistence.save (a Keras '.keras' file? load it with "
            f"keras.saving.load_model)."
        )
    if len(names) != len(set(names)):
        raise ModelFileError(f"{where} holds the same member twice; the file was edited.")

    try:
        manifest = json.loads(_read_member(archive, path, _MANIFEST, _MAX_MANIFEST_BYTES))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ModelFileError(f"{where}: {_MANIFEST} is not valid JSON ({exc}).") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise ModelFileError(
            f"{where}: {_MANIFEST} does not describe a transferkit estimator (its 'format' "
            f"is not {FORMAT_NAME!r})."
        )
    _check_versions(manifest, where)

    name = manifest.get("estimator")
    if name not in ESTIMATORS:
        raise ModelFileError(
            f"{where} names the class {reprlib.repr(name)}, which transferkit does not load: "
            f"a file can only hold one of {ESTIMATORS}."
        )
    if estimator_class is not None and estimator_class.__name__ != name:
        raise ModelFileError(
            f"{where} holds a {name}, not a {estimator_class.__name__}; load it with "
            f"transferkit.persistence.load(path) and no estimator_class."
        )

    members = manifest.get("members")
    fitted = manifest.get("fitted")
    if not isinstance(fitted, bool) or not isinstance(members, dict):
        raise ModelFileError(f"{where}: {_MANIFEST} lacks a valid 'fitted' flag or 'members'.")
    expected = {_WEIGHTS} if fitted else set()
    if set(members) != expected or set(names) != expected | {_MANIFEST}:
        raise ModelFileError(
            f"{where} holds members {sorted(names)} and its manifest lists "
            f"{sorted(members)}; a {'fitted' if fitted else 'unfitted'} {name} file holds "
            f"exactly {sorted(expected | {_MANIFEST})}. The file was edited or damaged."
        )
    contents = {member: _verified_member(archive, path, member, members[member])
                for member in sorted(expected)}

    params = _decode_mapping(manifest.get("params"), f"{where} params")
    attributes = _decode_mapping(manifest.get("attributes"), f"{where} attributes")
    overlap = sorted(set(params) & set(attributes))
    if overlap or not all(key.isidentifier() for key in (*params, *attributes)):
        raise ModelFileError(f"{where}: malformed parameter or attribute names in {_MANIFEST}.")
    weights = (_read_weights(contents[_WEIGHTS], manifest.get("weights"), where)
               if fitted else None)

    cls = _estimator_classes()[name]
    try:
        estimator = cls(**params)
    except TypeError as exc:
        raise ModelFileError(
            f"{where}: the saved parameters do not fit this transferkit's {name} ({exc}). "
            f"{_provenance(manifest)}"
        ) from exc
    state = {**estimator.__dict__, **attributes}
    if weights is not None:
        state["_fitted_weights"] = weights
    try:
        # The unpickling path: rebuilds the architecture without fetching any weights and
        # sets the saved ones, which Keras checks against it (count and shapes).
        estimator.__setstate__(state)
    except Exception as exc:  # rebuilding from file data: any failure means a bad file
        raise ModelFileError(
            f"{where}: could not rebuild the {name} it describes ({type(exc).__name__}: "
            f"{exc}). {_provenance(manifest)}"
        ) from exc
    return estimator


def _check_versions(manifest: dict, where: str) -> None:
    from . import __version__

    version = manifest.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ModelFileError(f"{where}: format_version {version!r} is not a valid version.")
    if version > FORMAT_VERSION:
        raise ModelFileError(
            f"{where} uses file format version {version}, written by transferkit "
            f"{manifest.get('transferkit_version')!r}; this transferkit ({__version__}) reads "
            f"format version {FORMAT_VERSION} and older. Upgrade transferkit to load it."
        )
    saved = manifest.get("transferkit_version")
    if saved != __version__:
        warnings.warn(
            FileVersionWarning(
                f"{where} was saved with transferkit {saved} and is loaded with transferkit "
                f"{__version__}. It loads if the network it describes is built the same way; "
                f"check its output, and save it again with this version."
            ),
            stacklevel=4,
        )


def _provenance(manifest: dict) -> str:
    current = _versions()
    return (
        f"It was saved with transferkit {manifest.get('transferkit_version')}, keras "
        f"{manifest.get('keras_version')}, tensorflow {manifest.get('tensorflow_version')}; "
        f"this is transferkit {current['transferkit_version']}, keras "
        f"{current['keras_version']}, tensorflow {current['tensorflow_version']}."
    )


def _verified_member(archive: zipfile.ZipFile, path: Path, member: str, entry: Any) -> bytes:
    where = repr(str(path))
    if not (isinstance(entry, dict) and isinstance(entry.get("size"), int)
            and isinstance(entry.get("sha256"), str)):
        raise ModelFileError(f"{where}: the manifest entry of {member!r} is malformed.")
    data = _read_member(archive, path, member, entry["size"])
    if len(data) != entry["size"] or _sha256(data) != entry["sha256"]:
        raise ModelFileError(
            f"{where}: {member!r} does not match the SHA-256 digest recorded when the file "
            f"was saved; it was modified or damaged since. Restore it from a copy or save "
            f"the estimator again."
        )
    return data


def _decode_mapping(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict) or _TAG in value:
        raise ModelFileError(f"{where}: expected a JSON object of names to values.")
    return {key: _decode(item, f"{where}[{key!r}]") for key, item in value.items()}


def _read_weights(data: bytes, described: Any, where: str) -> list[np.ndarray]:
    if not isinstance(described, list):
        raise ModelFileError(f"{where}: the manifest does not describe the weights.")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as stored:
            names = [f"w{i:05d}" for i in range(len(described))]
            if sorted(stored.files) != names:
                raise ModelFileError(
                    f"{where}: {_WEIGHTS} holds {len(stored.files)} arrays, the manifest "
                    f"describes {len(described)}."
                )
            arrays = [stored[key] for key in names]
    except ModelFileError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        # allow_pickle=False turns an object (pickled) array into a ValueError here.
        raise ModelFileError(f"{where}: {_WEIGHTS} cannot be read as plain arrays ({exc}).") \
            from exc
    for i, (array, entry) in enumerate(zip(arrays, described, strict=True)):
        if not isinstance(entry, dict) or entry.get("shape") != list(array.shape) \
                or entry.get("dtype") != array.dtype.str or array.dtype.kind not in "biuf":
            raise ModelFileError(
                f"{where}: weight {i} has shape {array.shape} and dtype {array.dtype}, "
                f"which the manifest does not describe ({reprlib.repr(entry)})."
            )
    return arrays


class SaveMixin:
    """Gives an estimator ``save(path)``, the counterpart of :func:`transferkit.load`."""

    def save(self, path: str | os.PathLike) -> Path:
        """Save to a file that :func:`transferkit.load` reads without running code from it.

        Parameters
        ----------
        path : str or path-like
            Destination file, replaced atomically if it exists.

        Returns
        -------
        path : pathlib.Path
            The file written.

        See Also
        --------
        transferkit.persistence.save : The format, its guarantees, what cannot be saved.
        """
        return save(self, path)
