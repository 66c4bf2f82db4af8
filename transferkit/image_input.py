"""Turning images as users have them into batches a ConvNet can take.

Users hand us 4-D pixel arrays, stacks of grayscale images, lists of file
paths, PIL images or a DataFrame column of paths.  This module validates them
up front (so errors name the offending image before any compute is spent),
then streams them as float32 RGB batches at the model's input size.  Paths are
decoded on worker threads one batch ahead of the consumer, so memory grows with
the batch size and never with the number of images.
"""

from __future__ import annotations

import os
import warnings
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


def _to_rgb_pil(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB the way a viewer would show it."""
    img = ImageOps.exif_transpose(img)
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # Pillow's direct I;16 -> RGB conversion clips at 255 instead of scaling; scale the
        # full 16-bit range to 8 bits first so a 16-bit scan keeps its contrast.
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(np.round(arr * (255.0 / top)), 0, 255).astype(np.uint8)
        img = Image.fromarray(arr, mode="L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img.convert("RGB")


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
    if not os.path.exists(path):
        raise FileNotFoundError(f"Image file not found: {path!r}.")
    if os.path.isdir(path):
        raise ImageLoadError(f"{path!r} is a directory, not an image file.")
    try:
        with Image.open(path) as img:
            img.load()
            rgb = _to_rgb_pil(img)
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


def _channels_to_rgb(pixels: np.ndarray, where: str) -> np.ndarray:
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

    def _load_item(self, i: int, size: tuple[int, int]) -> np.ndarray:
        item, i = self.items[i], self.position(i)
        try:
            if isinstance(item, (str, os.PathLike)):
                return load_image(item, size)
            if isinstance(item, Image.Image):
                pixels = np.asarray(_to_rgb_pil(item), dtype=np.uint8)
            else:
                pixels = _channels_to_rgb(np.asarray(item), _describe(i, item))
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
        rgb = _channels_to_rgb(chunk, "the input")
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
        if isinstance(item, np.ndarray) and item.dtype != object:
            if item.ndim == 2 or (item.ndim == 3 and item.shape[-1] in (1, 3, 4)):
                continue
            raise ValueError(
                f"image {i} of {name} is an array of shape {item.shape}; expected (height, "
                "width) or (height, width, channels) with 1, 3 or 4 channels."
            )
        raise ValueError(
            f"image {i} of {name} is a {type(item).__name__} ({item!r:.60}); expected a file "
            "path (str or pathlib.Path), a PIL image or an array of pixels."
        )
    return ImageCollection(items=items, index=index)
