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
version, backbone, constructor arguments, weights identity, cut, pooling, input
size, preprocessing and precision, plus the image content (the pixel bytes of an
array or PIL image; for a file path, the file's resolved path, size and
modification time).
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
    "default_memory_cache",
    "image_keys",
    "resolve_cache",
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
        Bytes currently stored.

    Examples
    --------
    >>> from transferkit import KerasFeatureExtractor
    >>> from transferkit.cache import MemoryFeatureCache
    >>> shared = MemoryFeatureCache(max_bytes=256 * 2**20)
    >>> extractor = KerasFeatureExtractor("MobileNetV2", cache=shared)
    """

    def __init__(self, max_bytes: int = DEFAULT_MEMORY_BYTES) -> None:
        if not isinstance(max_bytes, (int, np.integer)) or max_bytes < 0:
            raise ValueError(f"max_bytes={max_bytes!r} must be a non-negative integer.")
        self.max_bytes = int(max_bytes)
        self._entries: OrderedDict[bytes, np.ndarray] = OrderedDict()
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
            for key, vector in items:
                # A private read-only copy: callers can neither change a stored vector
                # through their array nor see it change.
                vector = np.array(vector, copy=True)
                vector.setflags(write=False)
                old = self._entries.pop(key, None)
                if old is not None:
                    self.nbytes -= old.nbytes
                if vector.nbytes > self.max_bytes:
                    continue
                self._entries[key] = vector
                self.nbytes += vector.nbytes
            while self.nbytes > self.max_bytes and self._entries:
                _, evicted = self._entries.popitem(last=False)
                self.nbytes -= evicted.nbytes

    def clear(self) -> None:
        """Drop every entry and reset the statistics."""
        with self._lock:
            self._entries.clear()
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
    """

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
    return [None if key is None else _digest(model_fingerprint, key)
            for key in images.content_keys()]


class ModelMemo:
    """The few most recently built feature models, by fingerprint.

    ``GridSearchCV`` fits a fresh clone of the extractor for every candidate and
    fold; with identical parameters each clone would build (and load weights into)
    the same network again. The memo hands the clone the model already built.
    """

    def __init__(self, max_models: int = 4) -> None:
        self.max_models = max_models
        self._models: OrderedDict[bytes, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: bytes) -> Any:
        with self._lock:
            entry = self._models.get(key)
            if entry is not None:
                self._models.move_to_end(key)
            return entry

    def put(self, key: bytes, entry: Any) -> None:
        with self._lock:
            self._models[key] = entry
            self._models.move_to_end(key)
            while len(self._models) > self.max_models:
                self._models.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._models.clear()


model_memo = ModelMemo()
