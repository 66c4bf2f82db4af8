"""Saving and loading estimators in a file that cannot run code when it is loaded.

``joblib.dump`` / ``pickle`` keep working for every estimator and pipeline, but
unpickling a file can execute arbitrary code, so a pickle must only ever come from a
trusted source. :func:`save` and :func:`load` use a format that holds data only, a zip
file (see :mod:`transferkit.model_file` for its bytes) of:

* ``manifest.json``: the format version, the versions of transferkit, Keras, TensorFlow,
  NumPy and scikit-learn that wrote it, the estimator's class *name* (one of
  :data:`ESTIMATORS`, never an importable path), its parameters and its fitted attributes
  as JSON, the shape and dtype of every weight, and the size and SHA-256 digest of
  ``weights.npz``;
* ``manifest.sha256``: the SHA-256 digest of ``manifest.json``. A zip tool that edits the
  manifest recomputes its CRC but not this digest, so an edited manifest is refused;
* ``weights.npz``, for a fitted estimator: the network's weights (``model_.get_weights()``
  order), never read with pickles allowed.

Loading checks the structure, the manifest's digest and the format version before it
uses anything; rebuilds the network from the parameters with random weights (no download,
no network access) through the same ``__setstate__`` as unpickling; checks the shapes and
dtypes the file declares, and the ``.npy`` header of every weight, against that network
before any weight data is read; sets the weights; then checks that the fitted attributes
of the file are those the rebuilt network has and runs it once on a blank image. Any
truncated, damaged, edited or inconsistent file raises :class:`ModelFileError` naming the
file and the problem.

Versions. :data:`FORMAT_VERSION` changes with every change to what a file holds (a member,
a field, a parameter or attribute of an estimator). A file of an older format loads with a
:class:`FileVersionWarning`; a parameter it lacks gets the value from
:data:`VALUES_BEFORE_THEY_EXISTED`, the value that reproduces what the estimator did before
the parameter existed (``crop_fraction=1.0``: the whole image), so that it gives the output
it gave when it was saved. Unpickling uses the same table. A file of a newer format is
refused. A file written by another transferkit version warns naming both.

Writing. A file never chooses where the library writes: an extractor saved with an on-disk
``cache`` directory is loaded with ``cache="memory"`` and a warning, unless the caller passes
``load(path, cache=...)``. Files are written atomically, to a temporary file in the
destination folder moved into place, and a save removes the temporaries an earlier save of
the same file left when its process was killed (see :func:`save`).

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

import inspect
import json
import os
import reprlib
import sys
import warnings
from importlib import metadata
from pathlib import Path, PurePath
from typing import Any

import numpy as np

from .model_file import (
    MANIFEST,
    MANIFEST_DIGEST,
    MAX_MANIFEST_BYTES,
    WEIGHTS,
    ModelArchive,
    ModelFileError,
    digest_line,
    read_declared_weights,
    read_sealed_member,
    sha256,
    write_archive,
)
from .pickling import VALUES_BEFORE_THEY_EXISTED, WEIGHTS_KEY, fill_absent
from .plain_data import Unrepresentable, decode_mapping, encode

__all__ = [
    "ESTIMATORS",
    "FORMAT_VERSION",
    "VALUES_BEFORE_THEY_EXISTED",
    "FileVersionWarning",
    "ModelFileError",
    "load",
    "register_estimator",
    "save",
]

FORMAT_NAME = "transferkit.estimator"
FORMAT_VERSION = 7
"""Version of what a file holds, raised by every change to it: a member, a manifest field,
a parameter or a fitted attribute of an estimator (then also give the new parameter its
entry in :data:`VALUES_BEFORE_THEY_EXISTED`, and add fixtures of the new format to
``tests/fixtures``).

1. transferkit 0.1.0 up to 7e53f7b: no digest of the manifest; files of that format lack
   the parameters added while it was current (see :data:`VALUES_BEFORE_THEY_EXISTED`).
2. ``manifest.sha256``; every parameter of the estimator is in the file.
3. FineTunedClassifier's ``crop_fraction_`` (the framing ``crop_fraction="auto"`` chose).
4. FineTunedClassifier's ``label_smoothing`` and ``layer_decay``.
5. FineTunedClassifier's ``head_blocks`` (and ``head_layers_``, set again by every build).
6. FineTunedClassifier's ``validation_folds`` and ``temperature_``.
7. FineTunedClassifier's ``batchnorm_statistics`` and ``batchnorm_statistics_``.
"""

ESTIMATORS = ("KerasFeatureExtractor", "FineTunedClassifier")
"""The only classes a file may name. A name, never a module path: loading imports nothing
that the file chooses."""

_UNSET: Any = object()


class FileVersionWarning(UserWarning):
    """A file was written in an older format, or by another transferkit version."""


# ---------------------------------------------------------------------- helpers
_REGISTERED: dict[str, type] = {}


def register_estimator(cls: type) -> type:
    """Class decorator: let :func:`save` and :func:`load` handle ``cls``.

    The estimator modules register their classes, so that this module never imports
    them (they import it, for :class:`SaveMixin`). Only the names of :data:`ESTIMATORS`
    can be registered: a file can never name anything else.
    """
    if cls.__name__ not in ESTIMATORS:
        raise ValueError(f"{cls.__name__} is not one of the estimators files hold: "
                         f"{ESTIMATORS}.")
    _REGISTERED[cls.__name__] = cls
    return cls


def _estimator_classes() -> dict[str, type]:
    missing = set(ESTIMATORS) - set(_REGISTERED)
    if missing:
        # The estimator modules register themselves when imported, and the package imports
        # each the first time its public name is asked for: asking for the names of
        # ESTIMATORS imports exactly those modules, never one a file names.
        package = sys.modules[__package__]
        for name in sorted(missing):
            getattr(package, name)
    missing = set(ESTIMATORS) - set(_REGISTERED)
    if missing:
        raise RuntimeError(f"{sorted(missing)} did not register with transferkit.persistence.")
    return dict(_REGISTERED)


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


def _unrepresentable_error(estimator: Any, error: Unrepresentable) -> ValueError:
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


def _parameter_names(cls: type) -> set[str]:
    return {name for name in inspect.signature(cls.__init__).parameters if name != "self"}


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

    Notes
    -----
    The file is written to a temporary ``.NAME.XXXXXXXX.tmp`` beside ``path`` and moved
    over it, so a crash never leaves a partial file at ``path``. A process killed while
    saving leaves its temporary behind; the next save to the same ``path`` removes every
    such temporary not modified for :data:`~transferkit.model_file.STALE_TEMPORARY_SECONDS`
    (an hour), and leaves younger ones, which may belong to a save still running.
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
    weights = state.pop(WEIGHTS_KEY, None)
    params = estimator.get_params(deep=False)
    attributes = {key: value for key, value in state.items() if key not in params}
    try:
        encoded_params = {key: encode(value, key) for key, value in params.items()}
        encoded_attributes = {key: encode(value, key) for key, value in attributes.items()}
    except Unrepresentable as error:
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
        import io

        arrays = [np.asarray(w) for w in weights]
        buffer = io.BytesIO()
        np.savez(buffer, **{f"w{i:05d}": a for i, a in enumerate(arrays)})
        members[WEIGHTS] = buffer.getvalue()
        manifest["weights"] = [{"shape": list(a.shape), "dtype": a.dtype.str} for a in arrays]
    manifest["members"] = {
        member: {"size": len(data), "sha256": sha256(data)} for member, data in members.items()
    }
    manifest_bytes = json.dumps(manifest, indent=1, allow_nan=False).encode("utf-8")
    write_archive(path, [(MANIFEST, manifest_bytes),
                         (MANIFEST_DIGEST, digest_line(manifest_bytes)), *members.items()])
    return path


# ---------------------------------------------------------------------- load
def load(path: str | os.PathLike, *, estimator_class: type | None = None,
         cache: Any = _UNSET) -> Any:
    """Load an estimator written by :func:`save`, without running code from the file.

    The file's structure, the digest of its manifest and its format version are checked
    before anything in it is used; the network is rebuilt from random weights (nothing is
    downloaded), the file's weights are checked against it and set into it.

    Parameters
    ----------
    path : str or path-like
        A file written by :func:`save`.
    estimator_class : type, default=None
        If given, the file must hold an estimator of exactly this class.
    cache : "memory", None or path, default: the file's unless it is a directory
        The ``cache`` of a loaded :class:`KerasFeatureExtractor`. A file does not choose
        where the library writes: one saved with a cache directory loads with
        ``cache="memory"`` and a warning, unless that directory (or another) is passed here.
        A :class:`FineTunedClassifier` has no cache directory: passing ``cache`` for one is
        an error.

    Returns
    -------
    estimator : KerasFeatureExtractor or FineTunedClassifier
        Fitted if it was fitted when saved; it gives the same output as then.

    Raises
    ------
    ModelFileError
        If the file is not a transferkit file, is truncated or damaged, was edited, does
        not describe a network its weights fit, comes from a newer format version, or
        holds another class than ``estimator_class``.
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If ``cache`` is passed for a file holding a :class:`FineTunedClassifier`.

    Warns
    -----
    FileVersionWarning
        If the file was written in an older format or by another transferkit version.
    UserWarning
        If the file's extractor had a cache directory, which is not used.
    """
    path = Path(os.fspath(path)).expanduser()
    with ModelArchive(path) as archive:
        return _load_archive(archive, estimator_class, cache)


def _read_manifest(archive: ModelArchive) -> tuple[dict, bool]:
    """The parsed manifest, its digest checked where the file has one; and whether it has."""
    where = archive.where
    data = archive.read(MANIFEST, limit=MAX_MANIFEST_BYTES)
    sealed = MANIFEST_DIGEST in archive.names
    if sealed and archive.read(MANIFEST_DIGEST, limit=256) != digest_line(data):
        raise ModelFileError(
            f"{where}: {MANIFEST} does not match the SHA-256 digest in {MANIFEST_DIGEST}; it "
            f"was edited or damaged after the file was saved, and an edited manifest can make "
            f"the estimator compute something else than what was saved. Restore the file from "
            f"a copy or save the estimator again."
        )
    try:
        manifest = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ModelFileError(f"{where}: {MANIFEST} is not valid JSON ({exc}).") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise ModelFileError(
            f"{where}: {MANIFEST} does not describe a transferkit estimator (its 'format' "
            f"is not {FORMAT_NAME!r})."
        )
    return manifest, sealed


def _load_archive(archive: ModelArchive, estimator_class: type | None, cache: Any) -> Any:
    where = archive.where
    manifest, sealed = _read_manifest(archive)
    version = _check_versions(manifest, where, sealed)

    name = manifest.get("estimator")
    if name not in ESTIMATORS:
        raise ModelFileError(
            f"{where} names the class {reprlib.repr(name)}, which transferkit does not load: "
            f"a file can only hold one of {ESTIMATORS}."
        )
    if estimator_class is not None and estimator_class.__name__ != name:
        raise ModelFileError(
            f"{where} holds a {name}, not a {estimator_class.__name__}; load it with "
            f"transferkit.load(path) and no estimator_class."
        )

    members = manifest.get("members")
    fitted = manifest.get("fitted")
    if not isinstance(fitted, bool) or not isinstance(members, dict):
        raise ModelFileError(f"{where}: {MANIFEST} lacks a valid 'fitted' flag or 'members'.")
    expected = {WEIGHTS} if fitted else set()
    structure = expected | {MANIFEST} | ({MANIFEST_DIGEST} if version >= 2 else set())
    if set(members) != expected or set(archive.names) != structure:
        raise ModelFileError(
            f"{where} holds members {sorted(archive.names)} and its manifest lists "
            f"{sorted(members)}; a {'fitted' if fitted else 'unfitted'} {name} file of format "
            f"version {version} holds exactly {sorted(structure)}. The file was edited or "
            f"damaged."
        )

    # Damage to the weights is found before anything is built from the file.
    weights = read_sealed_member(archive, WEIGHTS, members[WEIGHTS]) if fitted else b""

    params = decode_mapping(manifest.get("params"), f"{where} params")
    attributes = decode_mapping(manifest.get("attributes"), f"{where} attributes")
    overlap = sorted(set(params) & set(attributes))
    if overlap or not all(key.isidentifier() for key in (*params, *attributes)):
        raise ModelFileError(f"{where}: malformed parameter or attribute names in {MANIFEST}.")

    cls = _estimator_classes()[name]
    _complete(name, cls, params, attributes, fitted, manifest, where)
    _choose_cache(name, params, cache, where)
    try:
        estimator = cls(**params)
    except TypeError as exc:
        raise ModelFileError(
            f"{where}: the saved parameters do not fit this transferkit's {name} ({exc}). "
            f"{_provenance(manifest)}"
        ) from exc
    state = {**estimator.__dict__, **attributes}
    if fitted:
        state[WEIGHTS_KEY] = _WeightsFromFile(where, weights, manifest, name)
    try:
        # The unpickling path: rebuilds the architecture without fetching any weights, has
        # _WeightsFromFile check the file against it and read the weights, and sets them.
        estimator.__setstate__(state)
    except ModelFileError:
        raise
    except Exception as exc:  # rebuilding from file data: any failure means a bad file
        raise ModelFileError(
            f"{where}: could not rebuild the {name} it describes ({type(exc).__name__}: "
            f"{exc}). {_provenance(manifest)}"
        ) from exc
    _check_rebuilt(estimator, attributes, where)
    if fitted:
        _check_forward(estimator, where)
    return estimator


def _complete(name: str, cls: type, params: dict, attributes: dict, fitted: bool,
              manifest: dict, where: str) -> None:
    """Fill in what an older format lacks; refuse a file that lacks anything else."""
    version = manifest["format_version"]
    names = _parameter_names(cls)
    unknown = sorted(set(params) - names)
    if unknown:
        raise ModelFileError(
            f"{where}: its {name} has parameters {', '.join(unknown)}, which this "
            f"transferkit's {name} does not take; the file was edited, or it comes from "
            f"another transferkit. {_provenance(manifest)}"
        )
    if version < FORMAT_VERSION:
        fill_absent(name, params, keys=names)
    # Attributes of the table are filled by __setstate__; a fitted file of this format has
    # them all, which only an edit removes.
    required = names | ({key for key in VALUES_BEFORE_THEY_EXISTED[name] if key not in names}
                        if fitted and version == FORMAT_VERSION else set())
    missing = sorted(required - set(params) - set(attributes))
    if missing:
        raise ModelFileError(
            f"{where}: its {name} lacks {', '.join(missing)}, which every {name} file of "
            f"format version {version} holds; the file was edited or damaged."
        )


def _is_directory(cache: Any) -> bool:
    return isinstance(cache, PurePath) or (isinstance(cache, str) and cache != "memory")


def _choose_cache(name: str, params: dict, cache: Any, where: str) -> None:
    if name != "KerasFeatureExtractor":
        if cache is not _UNSET:
            raise ValueError(
                f"cache={cache!r} was passed to transferkit.load, but {where} holds a {name}, "
                f"whose cache parameter is not a place on disk (it caches frozen activations "
                f"in memory while training); load it without cache."
            )
        return
    if cache is not _UNSET:
        params["cache"] = cache
    elif _is_directory(params.get("cache")):
        directory = str(params["cache"])
        warnings.warn(
            f"{where} sets the feature cache directory {directory!r}; a model file does not "
            f"choose where transferkit writes, so it was loaded with cache='memory'. To keep "
            f"features in that directory, pass it: transferkit.load(path, cache={directory!r}).",
            UserWarning, stacklevel=4,
        )
        params["cache"] = "memory"


class _WeightsFromFile:
    """The file's weights, parsed only once the network they must fit is built.

    The bytes of ``weights.npz`` were read and checked against the manifest's digest
    before; ``__setstate__`` calls this with the rebuilt ``model_``, and the shapes and
    dtypes the manifest declares and the ``.npy`` header of each array are checked against
    that network's before any array is made from the data.
    """

    def __init__(self, where: str, data: bytes, manifest: dict, name: str) -> None:
        self.where, self.data, self.manifest, self.name = where, data, manifest, name

    def __call__(self, model: Any) -> list[np.ndarray]:
        needed = [(v.path, tuple(int(n) for n in v.shape), np.dtype(v.dtype))
                  for v in model.weights]
        return read_declared_weights(
            self.where, self.data, self.manifest.get("weights"), needed,
            f"the {self.name} its parameters describe", _provenance(self.manifest),
        )


def _same(a: Any, b: Any) -> bool:
    if a is b:
        return True
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)
                and a.dtype == b.dtype and a.shape == b.shape and bool(np.all(a == b)))
    try:
        return type(a) is type(b) and bool(a == b)
    except Exception:  # a comparison that does not give one bool: not the same
        return False


def _check_rebuilt(estimator: Any, attributes: dict, where: str) -> None:
    """The file's attributes must be what rebuilding from its parameters gave."""
    for key, saved in attributes.items():
        if not hasattr(estimator, key):  # consumed by __setstate__ (_sklearn_version)
            continue
        rebuilt = getattr(estimator, key)
        if not _same(saved, rebuilt):
            raise ModelFileError(
                f"{where}: its manifest says {key} = {reprlib.repr(saved)}, but the "
                f"{type(estimator).__name__} its parameters describe has {key} = "
                f"{reprlib.repr(rebuilt)}: the parameters and the fitted network do not "
                f"belong together (the manifest was edited?). Save the estimator again."
            )


def _check_forward(estimator: Any, where: str) -> None:
    """Run the rebuilt network once, so that a file it cannot run fails now, not later."""
    height, width = estimator.source_size_
    name = type(estimator).__name__
    outputs = (estimator.n_features_out_ if name == "KerasFeatureExtractor"
               else len(estimator.classes_))
    try:
        shape = np.shape(estimator._forward(np.zeros((1, height, width, 3), np.float32)))
    except Exception as exc:  # whatever the framework raises: this file's network is unusable
        summary = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ModelFileError(
            f"{where}: the {name} it describes does not run on a {height}x{width} image "
            f"({type(exc).__name__}: {summary}); the file was edited or damaged."
        ) from exc
    if shape != (1, outputs):
        raise ModelFileError(
            f"{where}: the {name} it describes gives outputs of shape {shape[1:]} per image, "
            f"its manifest says {outputs}; the file was edited or damaged."
        )


def _check_versions(manifest: dict, where: str, sealed: bool) -> int:
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
    if version >= 2 and not sealed:
        raise ModelFileError(
            f"{where} has no {MANIFEST_DIGEST}, which every file of format version {version} "
            f"holds; it was edited or damaged. Restore it from a copy or save the estimator "
            f"again."
        )
    notes = []
    if version < FORMAT_VERSION:
        unchecked = ("its manifest has no digest, so an edit to it would go unnoticed. "
                     if version < 2 else "")
        notes.append(
            f"{where} is in file format version {version}; this transferkit writes version "
            f"{FORMAT_VERSION}. Parameters and attributes the file lacks take the values they "
            f"had before they existed (transferkit.persistence.VALUES_BEFORE_THEY_EXISTED), "
            f"so it gives the output it gave when saved; {unchecked}Save it again to write "
            f"the current format."
        )
    saved = manifest.get("transferkit_version")
    if saved != __version__:
        notes.append(
            f"{where} was saved with transferkit {saved} and is loaded with transferkit "
            f"{__version__}. It loads if the network it describes is built the same way; "
            f"check its output, and save it again with this version."
        )
    if notes:
        warnings.warn(FileVersionWarning(" ".join(notes)), stacklevel=4)
    return version


def _provenance(manifest: dict) -> str:
    current = _versions()
    return (
        f"It was saved with transferkit {manifest.get('transferkit_version')}, keras "
        f"{manifest.get('keras_version')}, tensorflow {manifest.get('tensorflow_version')}; "
        f"this is transferkit {current['transferkit_version']}, keras "
        f"{current['keras_version']}, tensorflow {current['tensorflow_version']}."
    )


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
