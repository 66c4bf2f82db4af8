"""Turning images as users have them into batches a ConvNet can take.

Users hand us 4-D pixel arrays, stacks of grayscale images, lists of file
paths, PIL images or a DataFrame column of paths.  This module validates them
up front (so errors name the offending image before any compute is spent),
then streams them as float32 RGB batches at the model's input size.  Paths are
decoded on worker threads one batch ahead of the consumer, so memory grows with
the batch size and never with the number of images.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageOps

__all__ = ["ImageCollection", "as_image_collection", "load_image", "resize_image"]

# Bilinear with Pillow's area-aware filter support: it antialiases when shrinking, which is
# what a careful hand-written loader would do (Keras' load_img defaults to "nearest").
_RESAMPLE = Image.Resampling.BILINEAR


class ImageLoadError(ValueError):
    """An image file exists but cannot be decoded into pixels."""


def _describe(index: int, item: Any) -> str:
    if isinstance(item, (str, os.PathLike)):
        return f"image {index} ({os.fspath(item)!r})"
    return f"image {index}"


def to_rgb_pil(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB the way a viewer would show it.

    Raises
    ------
    ImageLoadError
        High-bit-depth pixel values whose scale cannot be told (see :func:`_eight_bits`).
    """
    img = ImageOps.exif_transpose(img)
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # Pillow's direct conversion of these modes clips at 255 instead of scaling.
        img = Image.fromarray(_eight_bits(np.asarray(img), img.mode), mode="L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img.convert("RGB")


def _eight_bits(values: np.ndarray, mode: str) -> np.ndarray:
    """Single-channel 16-bit, 32-bit integer or float pixels scaled to uint8.

    Float files (mode ``"F"``) hold [0, 1] by convention and are scaled by 255; float
    values in [0, 255] are kept. 16-bit files span [0, 65535]; a 32-bit integer file
    (mode ``"I"``) is read as 8-bit when its values fit, as 16-bit when they fit that.
    Anything else has no scale we could know: it is refused, with how to convert it.
    """
    values = values.astype(np.float64)
    if not np.isfinite(values).all():
        raise ImageLoadError(
            "its float pixel values include NaN or infinity; expected finite values in [0, 1] "
            "or [0, 255]."
        )
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if mode == "F":
        if low < 0 or high > 255:
            raise ImageLoadError(
                f"its float pixel values lie in [{low:g}, {high:g}], neither [0, 1] nor "
                "[0, 255], so their scale is unknown. Rescale it yourself and pass the array, "
                "e.g. a = np.asarray(Image.open(path)); (a - a.min()) * 255 / np.ptp(a)."
            )
        top = 1.0 if high <= 1 else 255.0
    else:
        if low < 0 or high > 65535:
            raise ImageLoadError(
                f"its 32-bit integer pixel values lie in [{low:g}, {high:g}], beyond the "
                "16-bit range, so their scale is unknown. Rescale it yourself and pass the "
                "array, e.g. a = np.asarray(Image.open(path), dtype=float); "
                "(a - a.min()) * 255 / np.ptp(a)."
            )
        top = 65535.0 if mode.startswith("I;16") or high > 255 else 255.0
    return np.clip(np.round(values * (255.0 / top)), 0, 255).astype(np.uint8)


def resize_image(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize one (h, w, 3) image to ``size = (height, width)``.

    uint8 images go through Pillow's bilinear filter; float images are resized
    channel by channel in Pillow's 32-bit float mode, so both kinds get the same
    filter and an array loaded from a file matches the file itself.

    Parameters
    ----------
    pixels : ndarray of shape (h, w, 3)
        Integer or float pixel values in [0, 255].
    size : tuple of int
        Target ``(height, width)``.

    Returns
    -------
    ndarray of shape (height, width, 3)
        Same dtype family as the input (uint8 stays uint8, floats become float32).
    """
    height, width = size
    if pixels.shape[:2] == (height, width):
        return pixels
    if np.issubdtype(pixels.dtype, np.integer) or pixels.dtype == np.bool_:
        # Integer pixels are validated to lie in [0, 255]: as uint8 they take exactly the
        # path of a decoded file.
        pixels = pixels.astype(np.uint8)
    if pixels.dtype == np.uint8:
        return np.asarray(Image.fromarray(pixels, mode="RGB").resize((width, height), _RESAMPLE))
    channels = [
        np.asarray(
            Image.fromarray(np.ascontiguousarray(pixels[..., c], dtype=np.float32), mode="F")
            .resize((width, height), _RESAMPLE)
        )
        for c in range(pixels.shape[2])
    ]
    return np.stack(channels, axis=-1)


def load_image(path: str | os.PathLike, size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode an image file into an (h, w, 3) uint8 RGB array.

    EXIF orientation is applied, grayscale, palette, CMYK and alpha images are
    converted to RGB, and the whole file is decoded: a truncated file raises
    instead of returning a half-grey image.

    Parameters
    ----------
    path : str or path-like
        The image file.
    size : tuple of int, optional
        ``(height, width)`` to resize to; the native size when omitted.

    Returns
    -------
    ndarray of shape (height, width, 3), dtype uint8
    """
    path = os.fspath(path)
    _check_regular_file(path)
    try:
        with Image.open(path) as img:
            img.load()
            rgb = to_rgb_pil(img)
    except ImageLoadError as exc:
        raise ImageLoadError(f"{path!r}: {exc}") from exc
    except Image.DecompressionBombError as exc:
        raise ImageLoadError(
            f"{path!r} is larger than Pillow's decompression-bomb limit ({exc}). If the file is "
            "trusted, raise PIL.Image.MAX_IMAGE_PIXELS before transforming."
        ) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageLoadError(
            f"Cannot decode {path!r} as an image ({type(exc).__name__}: {exc}). Expected a "
            "complete image file in a format Pillow reads (JPEG, PNG, GIF, BMP, TIFF, WebP, ...)."
        ) from exc
    if size is not None and rgb.size != (size[1], size[0]):
        rgb = rgb.resize((size[1], size[0]), _RESAMPLE)
    return np.asarray(rgb, dtype=np.uint8)


_FILE_KINDS = ((stat.S_ISFIFO, "named pipe (FIFO)"), (stat.S_ISSOCK, "socket"),
               (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"))


def _check_regular_file(path: str) -> os.stat_result:
    """``os.stat(path)``, refusing what is not a regular file before anything opens it.

    Opening a named pipe blocks until something writes to it, and a device can stream
    forever: neither may ever be read as an image.
    """
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"Image file not found: {path!r}.") from None
    except OSError as exc:
        reason = ("it is a loop of symbolic links" if exc.errno == errno.ELOOP
                  else f"{type(exc).__name__}: {exc.strerror or exc}")
        raise ImageLoadError(f"Cannot read {path!r}: {reason}.") from exc
    except RuntimeError as exc:  # what some Python versions raise for a symbolic-link loop
        raise ImageLoadError(f"Cannot read {path!r}: {exc}.") from exc
    if stat.S_ISDIR(info.st_mode):
        raise ImageLoadError(f"{path!r} is a directory, not an image file.")
    if not stat.S_ISREG(info.st_mode):
        kind = next((name for test, name in _FILE_KINDS if test(info.st_mode)), "special file")
        raise ImageLoadError(
            f"{path!r} is a {kind}, not a regular file; reading it could block forever. Pass "
            "image files only."
        )
    return info


def _pil_pixels(img: Image.Image) -> np.ndarray:
    """(h, w, 3) uint8 RGB pixels of a PIL image, decoding it if it was opened lazily.

    A lazily opened image decodes only now: its file may be closed (Pillow then fails an
    assertion) or truncated. Every such failure becomes an :class:`ImageLoadError`.
    """
    try:
        return np.asarray(to_rgb_pil(img), dtype=np.uint8)
    except ImageLoadError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageLoadError(f"it is larger than Pillow's decompression-bomb limit ({exc})") \
            from exc
    except (AssertionError, OSError, SyntaxError, ValueError, AttributeError) as exc:
        source = getattr(img, "filename", "") or ""
        opened = f" opened from {source!r}" if source else ""
        raise ImageLoadError(
            f"the PIL image{opened} cannot be decoded ({type(exc).__name__}: "
            f"{exc or 'its file was closed or is damaged'}). Keep the file open until "
            "transform returns, call img.load() first, or pass the path instead."
        ) from exc


def channels_to_rgb(pixels: np.ndarray, where: str) -> np.ndarray:
    """(h, w) or (h, w, c) with c in 1, 3, 4 -> (h, w, 3)."""
    if pixels.ndim == 2:
        return np.repeat(pixels[..., None], 3, axis=-1)
    channels = pixels.shape[-1]
    if channels == 3:
        return pixels
    if channels == 1:
        return np.repeat(pixels, 3, axis=-1)
    if channels == 4:
        # Same as Pillow's RGBA -> RGB conversion of a file: the alpha channel is dropped.
        return pixels[..., :3]
    raise ValueError(
        f"{where} has {channels} channels; expected 1 (grayscale), 3 (RGB) or 4 (RGBA) "
        "in the last axis."
    )


def _check_pixel_values(pixels: np.ndarray, offset: int, name: str) -> None:
    """Raise on NaN/inf or out-of-range values, naming the first offending image."""
    if pixels.dtype == np.bool_ or not np.issubdtype(pixels.dtype, np.number):
        raise ValueError(
            f"{name} has dtype {pixels.dtype}; expected uint8 or float pixel values in [0, 255]."
        )
    if np.issubdtype(pixels.dtype, np.complexfloating):
        raise ValueError(f"{name} has complex dtype {pixels.dtype}; expected real pixel values.")
    per_image_axes = tuple(range(1, pixels.ndim))
    if np.issubdtype(pixels.dtype, np.floating):
        finite = np.isfinite(pixels).all(axis=per_image_axes)
        if not finite.all():
            bad = int(np.argmin(finite)) + offset
            raise ValueError(
                f"image {bad} of {name} contains NaN or infinite pixel values; "
                "expected finite values in [0, 255]."
            )
    if pixels.dtype == np.uint8:
        return
    low = pixels.min(axis=per_image_axes)
    high = pixels.max(axis=per_image_axes)
    out = (low < 0) | (high > 255)
    if out.any():
        bad = int(np.argmax(out))
        raise ValueError(
            f"image {bad + offset} of {name} has pixel values in [{low[bad]:g}, {high[bad]:g}]; "
            "expected values in [0, 255]. Rescale it (e.g. 16-bit data: x / 257, "
            "standardised data: undo the standardisation) before passing it in."
        )
    # All-black images are legitimate; only a nonzero maximum of at most 1 looks unscaled.
    if np.issubdtype(pixels.dtype, np.floating) and pixels.size and 0 < float(high.max()) <= 1:
        warnings.warn(
            f"All pixel values of {name} lie in [0, 1]; transferkit expects [0, 255] (the "
            "backbone's own preprocessing is applied for you). Multiply by 255 if these are "
            "scaled images.",
            UserWarning,
            stacklevel=4,
        )


def _content_hash(header: bytes, data: Any) -> bytes:
    # XXH3-128 reads pixels about 8x faster than SHA-256 (4 ms against 30 ms for 300 images of
    # 224 x 224 here), and a grid search keys every image once per fold and candidate. It is
    # not cryptographic: it tells apart the images a user feeds, it is no defence against
    # images crafted to collide.
    import xxhash

    hasher = xxhash.xxh3_128(header)
    hasher.update(data)
    return hasher.digest()


def _array_key(pixels: np.ndarray) -> bytes:
    pixels = np.ascontiguousarray(pixels)
    header = f"array:{pixels.dtype.str}:{pixels.shape}".encode()
    return _content_hash(header, memoryview(pixels).cast("B"))


class FileDigests:
    """Digests of file contents, remembered per file version.

    A file version is its device, inode, size, modification time and change time. The
    change time (``st_ctime``) is set by the kernel on every write and cannot be restored
    the way ``cp -p``, ``rsync -t`` or ``tar x`` restore the modification time, so a
    rewritten file is read and hashed again. A grid search that transforms the same files
    for every fold and candidate reads each file once.
    """

    def __init__(self, max_entries: int = 200_000) -> None:
        self.max_entries = max_entries
        self._digests: OrderedDict[tuple, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: str) -> bytes | None:
        """Digest of the regular file at ``path``; None if it is not one or cannot be read."""
        try:
            info = os.stat(path)
        except (OSError, RuntimeError):
            return None
        if not stat.S_ISREG(info.st_mode):
            return None  # never open a pipe or a device: the loader refuses them, naming them
        version = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
        with self._lock:
            digest = self._digests.get(version)
            if digest is not None:
                self._digests.move_to_end(version)
                return digest
        try:
            with open(path, "rb") as handle:
                digest = _content_hash(b"file:", handle.read())
        except OSError:
            return None
        with self._lock:
            self._digests[version] = digest
            while len(self._digests) > self.max_entries:
                self._digests.popitem(last=False)
        return digest


_file_digests = FileDigests()


def content_key(item: Any) -> bytes | None:
    """A digest of what determines the pixels one image gives; None if it cannot be read.

    - a file: its bytes (so a copy or a renamed file keys the same, and a file rewritten
      with its old size and modification time does not);
    - a PIL image: its RGB pixels after conversion (mode, palette, EXIF orientation and
      all), the same key as the equal uint8 array;
    - an array: its dtype, shape and values.

    None tells the caller to compute the image and not to cache it; the loader then
    reports why it cannot be read, naming the image.
    """
    if isinstance(item, (str, os.PathLike)):
        return _file_digests.get(os.fspath(item))
    if isinstance(item, Image.Image):
        try:
            return _array_key(_pil_pixels(item))
        except ImageLoadError:
            return None
    return _array_key(np.asarray(item))


@dataclass
class ImageCollection:
    """A validated set of images that yields model-ready batches.

    Either ``array`` holds every image as one (n, h, w, c) array, or ``items``
    holds one entry per image (a path, a PIL image or an (h, w[, c]) array)
    decoded lazily batch by batch.
    """

    array: np.ndarray | None = None
    items: list[Any] | None = None
    index: Any = None
    # Position of each image in the caller's input, so that errors about a subset (a cache
    # miss, a validation split) still name the image the caller knows.
    positions: list[int] | None = None
    # (position, message) of each image that could not be loaded under on_error="nan".
    failures: list[tuple[int, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.array) if self.array is not None else len(self.items)

    @property
    def is_streamed(self) -> bool:
        return self.items is not None

    def position(self, i: int) -> int:
        """Where image ``i`` of this collection stood in the caller's input."""
        return self.positions[i] if self.positions is not None else i

    def take(self, indices: Any) -> ImageCollection:
        """The images at ``indices``, in that order, without decoding anything."""
        indices = [int(i) for i in indices]
        positions = [self.position(i) for i in indices]
        if self.array is not None:
            return ImageCollection(array=self.array[np.asarray(indices, dtype=np.intp)],
                                   positions=positions)
        return ImageCollection(items=[self.items[i] for i in indices], positions=positions)

    def content_keys(self) -> list[bytes | None]:
        """What determines each image's pixels, as a digest; None where nothing can.

        See :func:`content_key`. The feature cache combines these with the network's
        fingerprint.
        """
        if self.array is not None:
            return [_array_key(pixels) for pixels in self.array]
        return [content_key(item) for item in self.items]

    def held_in_memory(self, size: tuple[int, int], batch_size: int,
                       max_bytes: int) -> ImageCollection:
        """These images decoded once, at ``size``, and kept as uint8 pixels in memory.

        For work that reads the same images many times (training epochs): later batches
        are copied from memory instead of decoded and resized again, and are bit-identical
        to what decoding gives. Returns the collection itself when it is not streamed,
        when the pixels would take more than ``max_bytes``, or when an image does not
        decode to integer pixel values (a float array in a list), which uint8 cannot hold
        exactly.
        """
        n_bytes = len(self) * size[0] * size[1] * 3
        if not self.is_streamed or n_bytes > max_bytes:
            return self
        pixels = np.empty((len(self), size[0], size[1], 3), dtype=np.uint8)
        for start, batch in self.batches(size, batch_size):
            rows = pixels[start:start + len(batch)]
            rows[...] = np.clip(batch, 0, 255)
            if not np.array_equal(rows, batch):
                return self
        return ImageCollection(array=pixels, positions=self.positions)

    def _load_item(self, i: int, size: tuple[int, int]) -> np.ndarray:
        item, i = self.items[i], self.position(i)
        try:
            if isinstance(item, (str, os.PathLike)):
                return load_image(item, size)
            if isinstance(item, Image.Image):
                pixels = _pil_pixels(item)
            else:
                pixels = channels_to_rgb(np.asarray(item), _describe(i, item))
                _check_pixel_values(pixels[None], i, "the input")
            return resize_image(pixels, size)
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"{_describe(i, item)}: {exc}") from exc
        except ValueError as exc:
            message = str(exc)
            if not message.startswith("image "):
                message = f"{_describe(i, item)}: {message}"
            raise type(exc)(message) from exc

    def _array_batch(self, start: int, stop: int, size: tuple[int, int]) -> np.ndarray:
        chunk = self.array[start:stop]
        if chunk.ndim == 3:
            chunk = chunk[..., None]
        if chunk.shape[1:3] == size and chunk.shape[-1] == 3:
            # astype copies: the caller's array is never handed to code that may write to it.
            return chunk.astype(np.float32)
        rgb = channels_to_rgb(chunk, "the input")
        out = np.empty((len(chunk), size[0], size[1], 3), dtype=np.float32)
        for j, pixels in enumerate(rgb):
            out[j] = resize_image(pixels, size)
        return out

    def batches(
        self, size: tuple[int, int], batch_size: int, n_threads: int | None = None,
        on_error: str = "raise",
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(start, float32 batch of shape (b, height, width, 3))`` in input order.

        For streamed inputs the next batch is decoded on a thread pool while the
        caller works on the current one; at most two batches are alive at once.

        With ``on_error="raise"`` the first image that cannot be loaded raises, naming
        it. With ``on_error="nan"`` it is recorded in :attr:`failures` instead, its slot
        in the batch is filled with zeros (callers blank the matching output row), and
        the other images go on: rows never shift.
        """
        if on_error not in ("raise", "nan"):
            raise ValueError(f"on_error={on_error!r} is not supported; use 'raise' or 'nan'.")
        n = len(self)
        if not self.is_streamed:
            for start in range(0, n, batch_size):
                yield start, self._array_batch(start, min(start + batch_size, n), size)
            return
        n_threads = n_threads or min(8, (os.cpu_count() or 1) + 1)

        def load_or_record(i: int) -> np.ndarray:
            if on_error == "raise":
                return self._load_item(i, size)
            try:
                return self._load_item(i, size)
            except (ValueError, OSError) as exc:
                self.failures.append((self.position(i), str(exc)))
                return np.zeros((size[0], size[1], 3), dtype=np.float32)

        def load_batch(start: int) -> np.ndarray:
            stop = min(start + batch_size, n)
            out = np.empty((stop - start, size[0], size[1], 3), dtype=np.float32)
            # map() keeps order, so row j is always image start + j even when decodes finish
            # out of order.
            for j, pixels in enumerate(pool.map(load_or_record, range(start, stop))):
                out[j] = pixels
            return out

        with ThreadPoolExecutor(max_workers=n_threads) as pool, \
                ThreadPoolExecutor(max_workers=1) as ahead:
            starts = list(range(0, n, batch_size))
            pending = ahead.submit(load_batch, starts[0]) if starts else None
            for k, start in enumerate(starts):
                batch = pending.result()
                pending = ahead.submit(load_batch, starts[k + 1]) if k + 1 < len(starts) else None
                yield start, batch


def _refuse_unsupported_array(pixels: np.ndarray, where: str) -> None:
    """Refuse masked and object arrays of pixels with what to pass instead."""
    if isinstance(pixels, np.ma.MaskedArray):
        raise ValueError(
            f"{where} is a masked array: transferkit cannot tell what its masked pixels should "
            "be (their stored fill values would reach the network). Pass plain pixels, e.g. "
            "X.filled(0) for black or X.data for the values under the mask."
        )
    if pixels.dtype == object:
        raise ValueError(
            f"{where} is an array of shape {pixels.shape} with object dtype, which is not "
            "supported for pixels; convert it with X.astype(np.uint8) (or np.float32), or pass "
            "a list of images."
        )


def _is_pathlike(item: Any) -> bool:
    return isinstance(item, (str, os.PathLike))


def as_image_collection(X: Any, name: str = "X") -> ImageCollection:
    """Validate ``X`` and wrap it as an :class:`ImageCollection`.

    Parameters
    ----------
    X : array-like, sequence or pandas object
        - ndarray of shape (n, h, w, c), c in {1, 3, 4}, or (n, h, w) grayscale,
          uint8 or float pixel values in [0, 255];
        - a sequence (list, tuple, 1-D array, pandas Series, one-column
          DataFrame) whose items are file paths (str or Path), PIL images or
          single-image arrays of shape (h, w) or (h, w, c).
    name : str
        How to call ``X`` in error messages.

    Returns
    -------
    ImageCollection
    """
    index = None
    if hasattr(X, "iloc") and hasattr(X, "columns"):
        if X.shape[1] != 1:
            raise ValueError(
                f"{name} is a DataFrame with {X.shape[1]} columns {list(X.columns)!r}; expected "
                "exactly one column of image paths or images. Select it, e.g. X['path'], or "
                "use a ColumnTransformer to route that column here."
            )
        X = X.iloc[:, 0]
    if hasattr(X, "iloc") and hasattr(X, "index"):
        index = X.index
        X = X.tolist()
    if isinstance(X, (str, os.PathLike, Image.Image)):
        raise ValueError(
            f"{name} is a single image ({type(X).__name__}); expected a sequence of images. "
            f"Wrap it in a list: [{name}]."
        )
    if (isinstance(X, np.ndarray) and X.ndim == 2 and X.shape[1] == 1
            and (X.dtype == object or X.dtype.kind in "US")):
        X = X[:, 0]  # one column of paths, as a one-column DataFrame gives
    if isinstance(X, np.ndarray) and (X.ndim != 1 or isinstance(X, np.ma.MaskedArray)):
        _refuse_unsupported_array(X, name)
    if isinstance(X, np.ndarray) and X.dtype != object and X.dtype.kind not in "US":
        if X.ndim not in (3, 4):
            raise ValueError(
                f"{name} is an array of shape {X.shape}; expected (n_images, height, width, "
                "channels) or (n_images, height, width) for grayscale. A single image needs a "
                f"leading axis: {name}[None]."
            )
        if X.shape[0] == 0:
            raise ValueError(f"{name} is empty (shape {X.shape}); expected at least one image.")
        if X.ndim == 4 and X.shape[-1] not in (1, 3, 4):
            raise ValueError(
                f"{name} has shape {X.shape}: {X.shape[-1]} channels in the last axis; expected "
                "1 (grayscale), 3 (RGB) or 4 (RGBA), channels last."
            )
        if min(X.shape[1:3]) < 1:
            raise ValueError(f"{name} has shape {X.shape}; images need at least 1x1 pixels.")
        _check_pixel_values(X, 0, name)
        return ImageCollection(array=X, index=index)
    if isinstance(X, np.ndarray):
        X = X.tolist() if X.ndim == 1 else list(X)
    if not isinstance(X, Sequence):
        try:
            X = list(X)
        except TypeError:
            raise ValueError(
                f"{name} of type {type(X).__name__} is not a supported image input; expected an "
                "array of pixels or a sequence of file paths, PIL images or arrays."
            ) from None
    items = list(X)
    if not items:
        raise ValueError(f"{name} is empty; expected at least one image.")
    for i, item in enumerate(items):
        if _is_pathlike(item) or isinstance(item, Image.Image):
            continue
        if isinstance(item, np.ndarray):
            _refuse_unsupported_array(item, f"image {i} of {name}")
            if item.ndim not in (2, 3) or (item.ndim == 3 and item.shape[-1] not in (1, 3, 4)):
                raise ValueError(
                    f"image {i} of {name} is an array of shape {item.shape}; expected (height, "
                    "width) or (height, width, channels) with 1, 3 or 4 channels."
                )
            if min(item.shape[:2]) < 1:
                raise ValueError(
                    f"image {i} of {name} is an array of shape {item.shape}; an image needs at "
                    "least 1x1 pixels."
                )
            continue
        raise ValueError(
            f"image {i} of {name} is a {type(item).__name__} ({item!r:.60}); expected a file "
            "path (str or pathlib.Path), a PIL image or an array of pixels."
        )
    return ImageCollection(items=items, index=index)
