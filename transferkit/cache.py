"""Caching of per-image features and of built backbones.

A grid search over the classifier behind a feature extractor
(``GridSearchCV(Pipeline([extractor, LogisticRegression()]), {"clf__C": ...})``)
runs the ConvNet over every image once per candidate and fold, although the
features never change. Two caches remove that waste:

* a **feature cache**, keyed per image, so the different subsets that CV folds
  cut from the same images all hit it. It lives outside the estimator (scikit-learn
  clones the estimator for every candidate and fold): in process memory, bounded
  by a byte budget with least-recently-used eviction, or in a directory on disk
  that processes and runs can share;
* a **model memo** that hands an already-built Keras model to an estimator whose
  parameters describe exactly the same network, so refitting a clone costs no
  model build.

Keys cover everything that changes a feature: the library version, the Keras
version, backbone, constructor arguments, weights identity, input size, preprocessing and
precision (the *network*), the layer and the pooling (a *tap* of it), plus the image
content (the pixel bytes of an array or PIL image; for a file path, the file's resolved
path, size and modification time).

Keyed by layer rather than by the ``cut`` parameter, one entry serves every extractor that
reads that layer: a list of cuts, ``"conv4"``, the name of its last layer or its index.
That is what makes a search over cuts cost one pass (``GridSearchCV`` over
``features__cut`` and ``features__pooling``): an extractor that computes an image at a
block boundary also stores, in a memory cache, both poolings of its cuts and of the resume
points it passes through, and the activation at the last of those
(:meth:`MemoryFeatureCache.put_activations`), from which a deeper cut resumes instead of
starting again from the pixels (:func:`resume_points`). Activations count against the same
byte budget and are evicted before any feature vector.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import threading
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DiskFeatureCache",
    "MemoryFeatureCache",
    "activation_fingerprint",
    "default_memory_cache",
    "image_keys",
    "keyed",
    "resolve_cache",
    "resume_points",
    "tap_fingerprint",
]

DEFAULT_MEMORY_BYTES = 1 << 30  # 1 GiB: ~130,000 ResNet50 feature vectors.


def _digest(*parts: Any) -> bytes:
    # Combines fingerprints and per-image keys (small inputs; pixels are hashed by
    # _content_hash first). SHA-256 runs on the SHA extensions of current CPUs.
    hasher = hashlib.sha256()
    for part in parts:
        hasher.update(part)
    return hasher.digest()[:16]


class MemoryFeatureCache:
    """In-process feature cache with a byte budget and least-recently-used eviction.

    Thread-safe. Copies of it (``copy.deepcopy``, which ``sklearn.base.clone`` uses for
    parameters) are the same object, so every clone of an estimator shares it;
    pickling it (to a worker process) gives that process its own default cache.

    Parameters
    ----------
    max_bytes : int, default=1 GiB
        Budget for the stored feature vectors; the least recently used entries are
        evicted beyond it.

    Attributes
    ----------
    hits : int
        Lookups that found a stored feature vector.
    misses : int
        Lookups that did not.
    nbytes : int
        Bytes currently stored, activations included.
    keeps_activations : bool
        True: it also keeps the activations deeper cuts resume from, within ``max_bytes``,
        evicted before any feature vector.

    Examples
    --------
    >>> from transferkit import KerasFeatureExtractor
    >>> from transferkit.cache import MemoryFeatureCache
    >>> shared = MemoryFeatureCache(max_bytes=256 * 2**20)
    >>> extractor = KerasFeatureExtractor("MobileNetV2", cache=shared)
    """

    keeps_activations = True

    def __init__(self, max_bytes: int = DEFAULT_MEMORY_BYTES) -> None:
        if not isinstance(max_bytes, (int, np.integer)) or max_bytes < 0:
            raise ValueError(f"max_bytes={max_bytes!r} must be a non-negative integer.")
        self.max_bytes = int(max_bytes)
        self._entries: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self._activations: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.nbytes = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __deepcopy__(self, memo: dict) -> MemoryFeatureCache:
        return self

    def __reduce__(self):
        return (default_memory_cache, ())

    def get_many(self, keys: Sequence[bytes]) -> list[np.ndarray | None]:
        """Stored vectors for ``keys`` (``None`` where absent), marking hits as recent."""
        found: list[np.ndarray | None] = []
        with self._lock:
            for key in keys:
                vector = self._entries.get(key)
                if vector is not None:
                    self._entries.move_to_end(key)
                    self.hits += 1
                else:
                    self.misses += 1
                found.append(vector)
        return found

    def put_many(self, items: Iterable[tuple[bytes, np.ndarray]]) -> None:
        """Store vectors, evicting the least recently used beyond ``max_bytes``."""
        with self._lock:
            self._store(self._entries, items)

    def get_activations(self, keys: Sequence[bytes | None]) -> list[np.ndarray | None]:
        """Stored activations for ``keys`` (``None`` where absent or where the key is None)."""
        found: list[np.ndarray | None] = []
        with self._lock:
            for key in keys:
                activation = self._activations.get(key) if key is not None else None
                if activation is not None:
                    self._activations.move_to_end(key)
                found.append(activation)
        return found

    def put_activations(self, items: Iterable[tuple[bytes, np.ndarray]]) -> None:
        """Store activations; within ``max_bytes``, they are evicted before feature vectors."""
        with self._lock:
            self._store(self._activations, items)

    def _store(self, entries: OrderedDict, items: Iterable[tuple[bytes, np.ndarray]]) -> None:
        for key, vector in items:
            # A private read-only copy: callers can neither change a stored vector
            # through their array nor see it change.
            vector = np.array(vector, copy=True)
            vector.setflags(write=False)
            old = entries.pop(key, None)
            if old is not None:
                self.nbytes -= old.nbytes
            if vector.nbytes > self.max_bytes:
                continue
            entries[key] = vector
            self.nbytes += vector.nbytes
        # Activations go first: they only save time for deeper cuts, while a feature vector
        # is what a later transform returns.
        for victims in (self._activations, self._entries):
            while self.nbytes > self.max_bytes and victims:
                _, evicted = victims.popitem(last=False)
                self.nbytes -= evicted.nbytes

    def clear(self) -> None:
        """Drop every entry and reset the statistics."""
        with self._lock:
            self._entries.clear()
            self._activations.clear()
            self.nbytes = self.hits = self.misses = 0

    def __repr__(self) -> str:
        return (
            f"MemoryFeatureCache(max_bytes={self.max_bytes}, entries={len(self)}, "
            f"nbytes={self.nbytes})"
        )


_MAGIC = b"TKFEAT2\n"
# magic, the entry's own key, digest of the payload, number of float32 values
_HEADER = len(_MAGIC) + 16 + 16 + 8
_unwritable_warned: set[str] = set()
_unwritable_lock = threading.Lock()


class DiskFeatureCache:
    """Feature cache in a directory, safe to share between processes and runs.

    Each feature vector is one file named after its key. Writes go to a temporary
    file in the same directory and are moved into place atomically, so a reader
    never sees a half-written entry. Every entry carries its own key and a digest of
    its content: a corrupt, truncated or misplaced entry (another image's, copied
    over it) is detected, removed and recomputed — never returned. Whatever cannot be
    read (a directory in an entry's place, a permission error) is a miss.

    The cache is an optimisation: where the directory cannot be written, features are
    computed as usual and one warning names the directory.

    Parameters
    ----------
    directory : str or path-like
        Where the entries live; created if missing.

    Attributes
    ----------
    hits, misses : int
        Lookup statistics of this process.
    corrupt : int
        Damaged or misplaced entries found (and removed) by this process.
    keeps_activations : bool
        False: activations are as large as images, too large to write for every image.
    """

    keeps_activations = False

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory).expanduser()
        self.hits = self.misses = self.corrupt = 0
        self._lock = threading.Lock()

    def _path(self, key: bytes) -> Path:
        name = key.hex()
        return self.directory / name[:2] / f"{name}.feat"

    def _read(self, key: bytes) -> np.ndarray | None:
        path = self._path(key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError:
            # A directory in the entry's place, or no permission: unusable, so a miss. Not
            # removed: it is not ours to delete.
            with self._lock:
                self.corrupt += 1
            return None
        start = len(_MAGIC)
        payload = data[_HEADER:]
        intact = (
            len(data) >= _HEADER
            and data[:start] == _MAGIC
            and data[start : start + 16] == key
            and int.from_bytes(data[start + 32 : _HEADER], "little") * 4 == len(payload)
            and _digest(payload) == data[start + 16 : start + 32]
        )
        if not intact:
            with self._lock:
                self.corrupt += 1
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
            return None
        return np.frombuffer(payload, dtype="<f4").astype(np.float32)

    def get_many(self, keys: Sequence[bytes]) -> list[np.ndarray | None]:
        """Stored vectors for ``keys`` (``None`` where absent or damaged)."""
        found = [self._read(key) for key in keys]
        with self._lock:
            n_hits = sum(vector is not None for vector in found)
            self.hits += n_hits
            self.misses += len(found) - n_hits
        return found

    def put_many(self, items: Iterable[tuple[bytes, np.ndarray]]) -> None:
        """Write vectors atomically (temporary file, then ``os.replace``).

        Where the directory cannot be written, warns once per directory and stores nothing.
        """
        for key, vector in items:
            payload = np.ascontiguousarray(vector, dtype="<f4").tobytes()
            blob = (_MAGIC + key + _digest(payload) + (len(payload) // 4).to_bytes(8, "little")
                    + payload)
            path = self._path(key)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".feat")
            except OSError as exc:
                self._warn_unwritable(exc)
                return
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(blob)
                os.replace(tmp, path)
            except IsADirectoryError:
                # Something else occupies this one entry's name: leave it, keep the others.
                Path(tmp).unlink(missing_ok=True)
                continue
            except OSError as exc:
                Path(tmp).unlink(missing_ok=True)
                self._warn_unwritable(exc)
                return
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise

    def get_activations(self, keys: Sequence[bytes | None]) -> list[np.ndarray | None]:
        """None for every key: a directory keeps no activations."""
        return [None] * len(keys)

    def put_activations(self, items: Iterable[tuple[bytes, np.ndarray]]) -> None:
        """Nothing: a directory keeps no activations."""

    def _warn_unwritable(self, error: OSError) -> None:
        where = str(self.directory)
        with _unwritable_lock:
            if where in _unwritable_warned:
                return
            _unwritable_warned.add(where)
        warnings.warn(
            f"transferkit cannot write to the feature cache directory {where!r} "
            f"({type(error).__name__}: {error.strerror or error}); features are computed as "
            "usual but not cached there. Pass cache='memory', cache=None or a writable "
            "directory.",
            UserWarning, stacklevel=4,
        )

    def clear(self) -> None:
        """Remove every entry of the directory."""
        for path in self.directory.glob("*/*.feat"):
            path.unlink(missing_ok=True)

    def __repr__(self) -> str:
        return f"DiskFeatureCache({str(self.directory)!r})"


_DEFAULT_MEMORY_CACHE: MemoryFeatureCache | None = None
_DEFAULT_LOCK = threading.Lock()


def default_memory_cache() -> MemoryFeatureCache:
    """The process-wide cache that ``cache="memory"`` uses (1 GiB budget by default).

    Change its budget with ``default_memory_cache().max_bytes = ...``, or set the
    ``TRANSFERKIT_CACHE_BYTES`` environment variable before first use.
    """
    global _DEFAULT_MEMORY_CACHE
    with _DEFAULT_LOCK:
        if _DEFAULT_MEMORY_CACHE is None:
            budget = int(os.environ.get("TRANSFERKIT_CACHE_BYTES", DEFAULT_MEMORY_BYTES))
            _DEFAULT_MEMORY_CACHE = MemoryFeatureCache(budget)
        return _DEFAULT_MEMORY_CACHE


def resolve_cache(cache: Any) -> MemoryFeatureCache | DiskFeatureCache | None:
    """Turn the ``cache`` parameter of an estimator into a cache object (or None)."""
    if cache is None:
        return None
    if isinstance(cache, str) and cache == "memory":
        return default_memory_cache()
    if isinstance(cache, (MemoryFeatureCache, DiskFeatureCache)):
        return cache
    if isinstance(cache, (str, os.PathLike)):
        path = Path(cache).expanduser()
        if path.exists() and not path.is_dir():
            raise ValueError(
                f"cache={str(cache)!r} is a file; pass a directory for an on-disk cache, "
                "'memory' for the in-process cache or None to disable caching."
            )
        return DiskFeatureCache(path)
    raise ValueError(
        f"cache={cache!r} is not understood; use 'memory' (in-process, LRU), None (off), a "
        "directory path (on disk, shared between processes) or a MemoryFeatureCache / "
        "DiskFeatureCache instance."
    )


def fingerprint(description: dict[str, Any]) -> bytes:
    """Digest of everything that determines a feature extractor's output."""
    import keras
    import PIL

    from . import __version__

    # Pillow decodes the files: another version's JPEG decoder may give other pixels.
    full = {"transferkit": __version__, "keras": keras.__version__, "pillow": PIL.__version__,
            **description}
    return _digest(json.dumps(full, sort_keys=True, default=repr).encode())


def _weights_digest(model: Any) -> str:
    # XXH3 rather than SHA-256: a user's model is keyed by its current weights at every
    # transform, and XXH3 reads ResNet50's 100 MB of weights in a few milliseconds.
    import xxhash

    hasher = xxhash.xxh3_128()
    for array in model.get_weights():
        array = np.ascontiguousarray(array)
        hasher.update(f"{array.dtype.str}{array.shape}".encode())
        hasher.update(memoryview(array).cast("B"))
    return hasher.hexdigest()


def weights_identity(weights: Any, random_state: Any, model: Any = None) -> str | None:
    """What identifies the weights a model is built with; None when nothing can.

    ImageNet weights are identified by name (Keras pins its files per version), a
    file by its resolved path, size and modification time, random weights by their
    integer seed, and a user's model by a digest of its current weights (the extractor
    asks again at every ``transform``, so features always match the weights that made
    them). Random
    weights without an integer seed differ on every build, so they are never cached.
    """
    if model is not None:
        return f"model:{model.name}:{_weights_digest(model)}"
    if weights is None:
        if isinstance(random_state, (int, np.integer)) and not isinstance(random_state, bool):
            return f"random:{int(random_state)}"
        return None
    if isinstance(weights, str) and weights == "imagenet":
        return "imagenet"
    if not isinstance(weights, (str, os.PathLike)):
        return None
    path = Path(os.fspath(weights)).expanduser().resolve()
    if not path.is_file():
        return None  # the build reports the bad value with its own, clearer error
    info = path.stat()
    # The change time too: cp -p, rsync -t and tar x restore the modification time of a
    # rewritten file, but the kernel sets its change time on every write.
    return (f"file:{path}:{info.st_ino}:{info.st_size}:{info.st_mtime_ns}:"
            f"{info.st_ctime_ns}")


def image_keys(images: Any, model_fingerprint: bytes) -> list[bytes | None]:
    """One cache key per image of an :class:`~transferkit.image_input.ImageCollection`.

    None for an image whose content cannot be read: it is computed (the loader names the
    problem) and never stored.
    """
    return keyed(images.content_keys(), model_fingerprint)


def keyed(content_keys: Sequence[bytes | None], fingerprint: bytes) -> list[bytes | None]:
    """The cache keys of images whose content keys are known, for one fingerprint (of a
    network, a tap or an activation): hashing the pixels once serves every tap."""
    return [None if key is None else _digest(fingerprint, key) for key in content_keys]


def tap_fingerprint(network: bytes, layer: str, pooling: str | None) -> bytes:
    """The fingerprint of the features of one layer of a network, pooled one way.

    ``network`` identifies everything but the cut and the pooling (see
    :func:`fingerprint`); every extractor that reads ``layer`` of that network with that
    pooling, whatever its ``cut`` says, shares these entries.
    """
    return _digest(network, b"\0tap\0", layer.encode(), b"\0", str(pooling).encode())


def activation_fingerprint(network: bytes, layer: str) -> bytes:
    """The fingerprint of the unpooled output of one layer of a network."""
    return _digest(network, b"\0activation\0", layer.encode())


def resume_points(cache: Any, content_keys: Sequence[bytes | None], network: bytes,
                  boundaries: Sequence[str], limits: Sequence[int]
                  ) -> tuple[list[int | None], list[np.ndarray | None]]:
    """Where each image's computation can resume: the deepest block boundary kept.

    Parameters
    ----------
    cache : MemoryFeatureCache or DiskFeatureCache
    content_keys : sequence of bytes or None
        One per image (:meth:`~transferkit.image_input.ImageCollection.content_keys`).
    network : bytes
        The network's fingerprint.
    boundaries : sequence of str
        The layers ending the backbone's blocks, shallowest first.
    limits : sequence of int
        Per image, how many of the first ``boundaries`` it may resume from.

    Returns
    -------
    points : list of int or None
        Per image, the index in ``boundaries`` of the deepest activation the cache keeps
        below its limit; None: start from the pixels.
    activations : list of ndarray or None
        That activation.
    """
    points: list[int | None] = [None] * len(content_keys)
    activations: list[np.ndarray | None] = [None] * len(content_keys)
    if not getattr(cache, "keeps_activations", False):
        return points, activations
    pending = [i for i, limit in enumerate(limits) if limit > 0]
    for index in reversed(range(max(limits, default=0))):
        asking = [i for i in pending if index < limits[i]]
        if not asking:
            continue
        keys = keyed([content_keys[i] for i in asking],
                     activation_fingerprint(network, boundaries[index]))
        for i, activation in zip(asking, cache.get_activations(keys), strict=True):
            if activation is not None:
                points[i], activations[i] = index, activation
        pending = [i for i in pending if points[i] is None]
    return points, activations


class ModelMemo:
    """The built feature models of the few most recently used backbones, by fingerprint.

    ``GridSearchCV`` fits a fresh clone of the extractor for every candidate and
    fold; with identical parameters each clone would build (and load weights into)
    the same network again. The memo hands the clone the model already built.

    Entries belong to a group, the backbone they are built on (its weights loaded once):
    a search over ten cuts and poolings of one backbone keeps ten light networks sharing
    one backbone. The memo keeps the ``max_models`` most recently used groups whole.
    """

    def __init__(self, max_models: int = 4) -> None:
        self.max_models = max_models
        self._models: OrderedDict[bytes, Any] = OrderedDict()
        self._group_of: dict[bytes, bytes] = {}
        self._groups: OrderedDict[bytes, set[bytes]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: bytes) -> Any:
        with self._lock:
            entry = self._models.get(key)
            if entry is not None:
                self._groups.move_to_end(self._group_of[key])
            return entry

    def put(self, key: bytes, entry: Any, group: bytes | None = None) -> None:
        group = key if group is None else group
        with self._lock:
            self._models[key] = entry
            self._group_of[key] = group
            self._groups.setdefault(group, set()).add(key)
            self._groups.move_to_end(group)
            while len(self._groups) > self.max_models:
                _, members = self._groups.popitem(last=False)
                for member in members:
                    self._models.pop(member, None)
                    self._group_of.pop(member, None)

    def clear(self) -> None:
        with self._lock:
            self._models.clear()
            self._group_of.clear()
            self._groups.clear()


model_memo = ModelMemo()
