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

import hashlib
import json
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

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


_MAGIC = b"TKFEAT1\n"
_HEADER = len(_MAGIC) + 16 + 8  # magic, digest of the payload, number of float32 values


class DiskFeatureCache:
    """Feature cache in a directory, safe to share between processes and runs.

    Each feature vector is one file named after its key. Writes go to a temporary
    file in the same directory and are moved into place atomically, so a reader
    never sees a half-written entry; every entry carries a digest of its content,
    so a corrupt or truncated file is detected, removed and recomputed — never
    returned.

    Parameters
    ----------
    directory : str or path-like
        Where the entries live; created if missing.

    Attributes
    ----------
    hits, misses : int
        Lookup statistics of this process.
    corrupt : int
        Damaged entries found (and removed) by this process.
    """

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory).expanduser()
        self.hits = self.misses = self.corrupt = 0
        self._lock = threading.Lock()

    def _path(self, key: bytes) -> Path:
        name = key.hex()
        return self.directory / name[:2] / f"{name}.feat"

    def _read(self, path: Path) -> np.ndarray | None:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        payload = data[_HEADER:]
        intact = (
            len(data) >= _HEADER
            and data[: len(_MAGIC)] == _MAGIC
            and int.from_bytes(data[len(_MAGIC) + 16 : _HEADER], "little") * 4 == len(payload)
            and _digest(payload) == data[len(_MAGIC) : len(_MAGIC) + 16]
        )
        if not intact:
            with self._lock:
                self.corrupt += 1
            path.unlink(missing_ok=True)
            return None
        return np.frombuffer(payload, dtype="<f4").astype(np.float32)

    def get_many(self, keys: Sequence[bytes]) -> list[np.ndarray | None]:
        """Stored vectors for ``keys`` (``None`` where absent or damaged)."""
        found = [self._read(self._path(key)) for key in keys]
        with self._lock:
            n_hits = sum(vector is not None for vector in found)
            self.hits += n_hits
            self.misses += len(found) - n_hits
        return found

    def put_many(self, items: Iterable[tuple[bytes, np.ndarray]]) -> None:
        """Write vectors atomically (temporary file, then ``os.replace``)."""
        for key, vector in items:
            payload = np.ascontiguousarray(vector, dtype="<f4").tobytes()
            blob = (
                _MAGIC + _digest(payload) + (len(payload) // 4).to_bytes(8, "little") + payload
            )
            path = self._path(key)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".feat")
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(blob)
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise

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

    from . import __version__

    full = {"transferkit": __version__, "keras": keras.__version__, **description}
    return _digest(json.dumps(full, sort_keys=True, default=repr).encode())


def weights_identity(weights: Any, random_state: Any, model: Any = None) -> str | None:
    """What identifies the weights a model is built with; None when nothing can.

    ImageNet weights are identified by name (Keras pins its files per version), a
    file by its resolved path, size and modification time, random weights by their
    integer seed, and a user's model by a digest of its current weights. Random
    weights without an integer seed differ on every build, so they are never cached.
    """
    if model is not None:
        digest = _digest(*(memoryview(np.ascontiguousarray(a)).cast("B")
                           for a in model.get_weights()))
        return f"model:{model.name}:{digest.hex()}"
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
    stat = path.stat()
    return f"file:{path}:{stat.st_size}:{stat.st_mtime_ns}"


def _content_hash(header: bytes, pixels: Any) -> bytes:
    """Digest of an image's pixel buffer, prefixed by what describes its layout.

    XXH3-128 reads pixels about 8x faster than SHA-256 (4 ms against 30 ms for 300 images
    of 224 x 224 here): a grid search keys every image once per fold and candidate. It is
    not cryptographic: it tells apart the images a user feeds, it is no defence against
    images crafted to collide. The key then goes through :func:`_digest` with the rest.
    """
    import xxhash

    hasher = xxhash.xxh3_128(header)
    hasher.update(pixels)
    return hasher.digest()


def _array_key(pixels: np.ndarray) -> bytes:
    pixels = np.ascontiguousarray(pixels)
    header = f"array:{pixels.dtype.str}:{pixels.shape}".encode()
    return _content_hash(header, memoryview(pixels).cast("B"))


def _item_key(item: Any) -> bytes:
    if isinstance(item, (str, os.PathLike)):
        path = Path(os.fspath(item)).resolve()
        try:
            stat = path.stat()
        except OSError:
            # Unreadable paths get a key that never matches a stored entry twice, so the
            # loader raises its usual error naming the file.
            return _digest(f"unreadable:{path}:{os.urandom(8).hex()}".encode())
        return _digest(f"file:{path}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    if isinstance(item, Image.Image):
        header = f"pil:{item.mode}:{item.size}:{item.getexif().get(0x0112)}".encode()
        return _content_hash(header, item.tobytes())
    return _array_key(np.asarray(item))


def image_keys(images: Any, model_fingerprint: bytes) -> list[bytes]:
    """One cache key per image of an :class:`~transferkit.image_input.ImageCollection`."""
    if images.array is not None:
        content = [_array_key(pixels) for pixels in images.array]
    else:
        content = [_item_key(item) for item in images.items]
    return [_digest(model_fingerprint, key) for key in content]


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
