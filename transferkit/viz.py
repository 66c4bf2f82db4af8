"""Pictures of what the network sees: activation maps, Grad-CAM and training curves.

Every ``plot_*`` function returns a :class:`PIL.Image.Image`, drawn with Pillow alone, so
pictures work on a headless server, in a notebook (a PIL image displays itself) or saved
with ``.save("maps.png")``. Matplotlib is optional: with it installed, any of its colormap
names can be used; without it, the built-in ``"viridis"``, ``"magma"``, ``"jet"`` and
``"gray"`` are available.

Keras is imported inside the functions: ``import transferkit.viz`` stays cheap.
"""

# Authors: The transferkit developers
# SPDX-License-Identifier: BSD-3-Clause

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "activation_maps",
    "grad_cam",
    "plot_activation_maps",
    "plot_grad_cam",
    "plot_history",
]

# Control points (position, RGB) of the built-in colormaps, so that no plotting library is
# needed. viridis and magma are sampled from matplotlib's definitions at nine points, which
# is visually indistinguishable from the full tables at heat-map resolution.
_COLORMAPS: dict[str, list[tuple[float, tuple[int, int, int]]]] = {
    "viridis": [
        (0.0, (68, 1, 84)), (0.125, (71, 44, 122)), (0.25, (59, 81, 139)),
        (0.375, (44, 113, 142)), (0.5, (33, 144, 141)), (0.625, (39, 173, 129)),
        (0.75, (92, 200, 99)), (0.875, (170, 220, 50)), (1.0, (253, 231, 37)),
    ],
    "magma": [
        (0.0, (0, 0, 4)), (0.125, (28, 16, 68)), (0.25, (79, 18, 123)),
        (0.375, (129, 37, 129)), (0.5, (181, 54, 122)), (0.625, (229, 80, 100)),
        (0.75, (251, 135, 97)), (0.875, (254, 194, 135)), (1.0, (252, 253, 191)),
    ],
    "jet": [
        (0.0, (0, 0, 128)), (0.11, (0, 0, 255)), (0.125, (0, 0, 255)), (0.34, (0, 219, 255)),
        (0.35, (0, 229, 246)), (0.64, (255, 255, 0)), (0.65, (255, 234, 0)),
        (0.89, (255, 0, 0)), (1.0, (128, 0, 0)),
    ],
    "gray": [(0.0, (0, 0, 0)), (1.0, (255, 255, 255))],
}

_BACKGROUND = (255, 255, 255)
_TRAIN_COLOUR = (31, 119, 180)
_VAL_COLOUR = (255, 127, 14)


# ---------------------------------------------------------------------------- helpers
def _apply_colormap(values: np.ndarray, colormap: str) -> np.ndarray:
    """Map values in [0, 1] of shape (h, w) to uint8 RGB of shape (h, w, 3)."""
    values = np.clip(np.nan_to_num(values, nan=0.0), 0.0, 1.0)
    if not isinstance(colormap, str):
        raise TypeError(f"colormap must be a name (str); got {type(colormap).__name__}.")
    points = _COLORMAPS.get(colormap.lower())
    if points is not None:
        positions = np.array([p for p, _ in points])
        colours = np.array([c for _, c in points], dtype=np.float64)
        rgb = np.stack(
            [np.interp(values, positions, colours[:, k]) for k in range(3)], axis=-1
        )
        return np.round(rgb).astype(np.uint8)
    try:
        import matplotlib
    except ImportError:
        raise ValueError(
            f"colormap={colormap!r} is not built in; use one of {sorted(_COLORMAPS)}, or "
            "install matplotlib to use any of its colormaps."
        ) from None
    try:
        cmap = matplotlib.colormaps[colormap]
    except KeyError:
        raise ValueError(
            f"colormap={colormap!r} is neither built in ({sorted(_COLORMAPS)}) nor a "
            "matplotlib colormap (see matplotlib.colormaps)."
        ) from None
    return np.round(cmap(values)[..., :3] * 255).astype(np.uint8)


def _positive_int(name: str, value: Any) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive integer.")
    return int(value)


def _display_pixels(image: Any) -> np.ndarray:
    """One image (path, PIL image or array) as (h, w, 3) uint8 at its own resolution."""
    from .image_input import channels_to_rgb, load_image, to_rgb_pil

    if isinstance(image, (str, os.PathLike)):
        return load_image(image)
    if isinstance(image, Image.Image):
        return np.asarray(to_rgb_pil(image), dtype=np.uint8)
    pixels = np.asarray(image)
    if pixels.ndim == 4 and pixels.shape[0] == 1:
        pixels = pixels[0]
    if pixels.ndim not in (2, 3) or pixels.dtype == object:
        raise ValueError(
            f"image is an array of shape {pixels.shape}; expected one image of shape (height, "
            "width) or (height, width, channels). To look at image i of a batch, pass X[i]."
        )
    rgb = channels_to_rgb(pixels, "image")
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


def _model_input(image: Any, size: tuple[int, int]) -> np.ndarray:
    """One image as a float32 batch of shape (1, height, width, 3), validated as in fit."""
    from .image_input import as_image_collection

    if isinstance(image, np.ndarray) and image.ndim == 4 and image.shape[0] == 1:
        image = image[0]
    if isinstance(image, np.ndarray) and image.ndim not in (2, 3):
        raise ValueError(
            f"image is an array of shape {image.shape}; expected one image of shape (height, "
            "width) or (height, width, channels). To look at image i of a batch, pass X[i]."
        )
    _, batch = next(as_image_collection([image], name="image").batches(size, 1))
    return batch


def _resize_map(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a 2-D float map to ``size = (height, width)``."""
    resized = Image.fromarray(values.astype(np.float32), mode="F").resize(
        (size[1], size[0]), Image.Resampling.BILINEAR
    )
    return np.asarray(resized, dtype=np.float32)


def _font(size: int) -> Any:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed-size bitmap font
        return ImageFont.load_default()


# ---------------------------------------------------------------------------- activations
def activation_maps(extractor: Any, image: Any, *, layer: str | int | None = None) -> np.ndarray:
    """Activations of one layer of a feature extractor's backbone for one image.

    Parameters
    ----------
    extractor : KerasFeatureExtractor
        Fitted or not (an unfitted one is fitted first, which only builds its model).
    image : str, path-like, PIL.Image.Image or ndarray
        One image: a file path, a PIL image, or an array of shape (h, w) or (h, w, c) with
        pixel values in [0, 255]. It is resized, cropped (``crop_fraction``) and
        preprocessed as in ``transform``.
    layer : None, str or int, default=None
        The layer to look at, in the same forms as the extractor's ``cut``: ``None`` for the
        cut layer (the last one before pooling), a block name from
        :func:`transferkit.list_cut_points`, a layer name, or an index into the truncated
        backbone's layers. Layers after the cut are not part of the extractor.

    Returns
    -------
    maps : ndarray of shape (height, width, channels), dtype float32
        The layer's output for the image (channels last).

    Examples
    --------
    >>> import numpy as np
    >>> from transferkit import KerasFeatureExtractor
    >>> from transferkit.viz import activation_maps
    >>> extractor = KerasFeatureExtractor("VGG16", weights=None, input_size=32)
    >>> activation_maps(extractor, np.zeros((32, 32, 3)), layer="block3").shape  # doctest: +SKIP
    (8, 8, 256)
    """
    import keras

    from .augmentation import central_offsets
    from .backbones import get_backbone_spec
    from .cut_points import resolve_cut
    from .extractor import KerasFeatureExtractor
    from .network import trunk_of

    if not isinstance(extractor, KerasFeatureExtractor):
        raise TypeError(
            f"extractor must be a KerasFeatureExtractor; got {type(extractor).__name__}. For "
            "a fitted FineTunedClassifier, use transferkit.viz.grad_cam to see which regions "
            "drove a prediction."
        )
    if not hasattr(extractor, "model_"):
        extractor.fit()
    trunk = trunk_of(extractor.model_)
    user_model = getattr(extractor, "preprocessing_", None) == "user_model"
    spec = None if user_model else get_backbone_spec(extractor.backbone_name_)
    try:
        target = resolve_cut(trunk, layer, None if spec is None else spec.module)
    except ValueError as exc:
        raise ValueError(
            f"layer={layer!r} is not a layer of this extractor, which ends at its cut layer "
            f"{extractor.cut_layer_!r}: {exc} To look deeper, use an extractor with a later "
            "cut."
        ) from exc
    if len(target.output.shape) != 4:
        raise ValueError(
            f"layer={layer!r} ({target.name!r}) has output shape {tuple(target.output.shape)}, "
            "not a spatial map (batch, height, width, channels); choose a convolutional layer."
        )
    # Framed as transform frames it: resized to source_size_, central input_size_ kept.
    source, size = extractor.source_size_, extractor.input_size_
    pixels = _model_input(image, source)
    top, left = central_offsets(source, size)
    pixels = np.ascontiguousarray(pixels[:, top:top + size[0], left:left + size[1]])
    if spec is not None:
        # preprocess_input may work in place on a NumPy array; the batch is ours to change.
        pixels = np.asarray(spec.preprocess_input(pixels), dtype=np.float32)
    probe = keras.Model(trunk.inputs[0], target.output, name=f"activations_{target.name}")
    maps = keras.ops.convert_to_numpy(probe(pixels, training=False))
    return np.asarray(maps[0], dtype=np.float32)


def plot_activation_maps(
    extractor: Any,
    image: Any,
    *,
    layer: str | int | None = None,
    n_channels: int = 16,
    n_cols: int | None = None,
    tile_size: int = 64,
    padding: int = 2,
    colormap: str = "viridis",
) -> Image.Image:
    """A grid of small heat maps, one per channel of a layer, most active channel first.

    Parameters
    ----------
    extractor : KerasFeatureExtractor
        Fitted or not (an unfitted one is fitted first, which only builds its model).
    image : str, path-like, PIL.Image.Image or ndarray
        One image, as in :func:`activation_maps`.
    layer : None, str or int, default=None
        The layer, as in :func:`activation_maps`; by default the last one before pooling.
    n_channels : int, default=16
        How many channels to show, taken in decreasing order of mean activation. Fewer are
        shown when the layer has fewer.
    n_cols : int, default=None
        Tiles per row; the smallest square grid that holds them when None.
    tile_size : int, default=64
        Side of each tile in pixels. Maps are enlarged with nearest-neighbour
        interpolation, so each activation stays a visible square.
    padding : int, default=2
        White pixels between and around the tiles.
    colormap : str, default="viridis"
        ``"viridis"``, ``"magma"``, ``"jet"``, ``"gray"``, or with matplotlib installed any
        of its colormap names.

    Returns
    -------
    picture : PIL.Image.Image
        An RGB image of ``n_cols * tile_size + (n_cols + 1) * padding`` pixels across and
        ``n_rows * tile_size + (n_rows + 1) * padding`` down. Each tile is scaled to its
        own channel's range, so weak channels still show their pattern.

    Examples
    --------
    >>> from transferkit import KerasFeatureExtractor
    >>> from transferkit.viz import plot_activation_maps
    >>> extractor = KerasFeatureExtractor("MobileNet", backbone_kwargs={"alpha": 0.25})
    >>> picture = plot_activation_maps(extractor, "bee.jpg", layer="conv_pw_5")  # doctest: +SKIP
    >>> picture.save("maps.png")  # doctest: +SKIP
    """
    n_channels = _positive_int("n_channels", n_channels)
    tile_size = _positive_int("tile_size", tile_size)
    if not isinstance(padding, numbers.Integral) or isinstance(padding, bool) or padding < 0:
        raise ValueError(f"padding={padding!r} must be an integer >= 0.")
    maps = activation_maps(extractor, image, layer=layer)
    strength = maps.mean(axis=(0, 1))
    # Stable sort: equally active channels keep their index order, so pictures are repeatable.
    order = np.argsort(-strength, kind="stable")[: min(n_channels, maps.shape[-1])]
    n_shown = len(order)
    n_cols = math.ceil(math.sqrt(n_shown)) if n_cols is None else _positive_int("n_cols", n_cols)
    n_rows = math.ceil(n_shown / n_cols)

    width = n_cols * tile_size + (n_cols + 1) * padding
    height = n_rows * tile_size + (n_rows + 1) * padding
    picture = Image.new("RGB", (width, height), _BACKGROUND)
    for k, channel in enumerate(order):
        values = maps[..., channel]
        low, high = float(values.min()), float(values.max())
        scaled = (values - low) / (high - low) if high > low else np.zeros_like(values)
        tile = Image.fromarray(_apply_colormap(scaled, colormap)).resize(
            (tile_size, tile_size), Image.Resampling.NEAREST
        )
        row, col = divmod(k, n_cols)
        picture.paste(tile, (padding + col * (tile_size + padding),
                             padding + row * (tile_size + padding)))
    return picture


# ---------------------------------------------------------------------------- Grad-CAM
def grad_cam(classifier: Any, image: Any, *, target: Any = None) -> np.ndarray:
    """Grad-CAM heat map of the image regions that drove a class score.

    The gradient of the class score (before the softmax) with respect to the last
    spatial feature map of the network (the cut output) is averaged over space to
    weigh each channel; the weighted sum of the channels, keeping only positive
    evidence, is the heat map (Selvaraju et al., 2017).

    Parameters
    ----------
    classifier : FineTunedClassifier
        A fitted classifier.
    image : str, path-like, PIL.Image.Image or ndarray
        One image: a file path, a PIL image, or an array of shape (h, w) or (h, w, c) with
        pixel values in [0, 255].
    target : label, default=None
        The class whose evidence is shown, one of ``classifier.classes_``; the predicted
        class when None.

    Returns
    -------
    heatmap : ndarray of shape (height, width), dtype float32
        Values in [0, 1] at the image's own resolution (before resizing to the network's
        input size); 1 marks the strongest evidence. All zeros when nothing in the
        image speaks for ``target``, and outside the central crop the classifier looks at
        (its ``crop_fraction``).

    Examples
    --------
    >>> from transferkit.viz import grad_cam
    >>> heat = grad_cam(clf, "bee.jpg", target="bees")  # doctest: +SKIP
    """
    import keras
    import tensorflow as tf

    from .augmentation import central_offsets
    from .finetune import FineTunedClassifier
    from .finetune_network import explanation_parts

    if not isinstance(classifier, FineTunedClassifier):
        raise TypeError(
            f"classifier must be a fitted FineTunedClassifier; got {type(classifier).__name__}."
        )
    if not hasattr(classifier, "model_"):
        raise ValueError(
            "This FineTunedClassifier is not fitted yet; call fit(X, y) before grad_cam."
        )
    classes = np.asarray(classifier.classes_).tolist()
    # The model takes the image resized to source_size_ and looks at its central crop.
    source = getattr(classifier, "source_size_", classifier.input_size_)
    pixels = _model_input(image, source)
    display = _display_pixels(image)

    model = classifier.model_
    to_map, to_logits = explanation_parts(model)
    x = tf.convert_to_tensor(pixels)
    x = to_map(x, training=False)
    with tf.GradientTape() as tape:
        tape.watch(x)
        # Grad-CAM explains a score, not a probability: the softmax saturates and its
        # gradient vanishes for confident predictions.
        scores = to_logits(x, training=False)
        probabilities = tf.nn.softmax(scores)
        expected = model(pixels, training=False)
        if not np.allclose(probabilities.numpy(), keras.ops.convert_to_numpy(expected),
                           atol=1e-4):
            raise RuntimeError(
                f"Re-running {model.name!r} in two parts does not reproduce its output, so "
                "its gradients cannot be trusted; this transferkit.viz does not match the "
                "installed FineTunedClassifier."
            )
        if target is None:
            index = int(np.argmax(probabilities.numpy()[0]))
        elif target in classes:
            index = classes.index(target)
        else:
            raise ValueError(f"target={target!r} is not a class of the classifier: {classes}.")
        score = scores[:, index]
    grads = tape.gradient(score, x).numpy()[0]
    feature_map = x.numpy()[0]
    channel_weights = grads.mean(axis=(0, 1))
    cam = np.maximum((feature_map * channel_weights).sum(axis=-1), 0.0)
    peak = float(cam.max())
    cam = cam / peak if peak > 0 else np.zeros_like(cam)
    # The map covers the central crop the network saw; outside it there is no evidence.
    height, width = display.shape[:2]
    crop_h = int(round(height * classifier.input_size_[0] / source[0]))
    crop_w = int(round(width * classifier.input_size_[1] / source[1]))
    top, left = central_offsets((height, width), (crop_h, crop_w))
    heat = np.zeros((height, width), dtype=np.float32)
    heat[top:top + crop_h, left:left + crop_w] = _resize_map(cam, (crop_h, crop_w))
    return np.clip(heat, 0.0, 1.0).astype(np.float32)


def plot_grad_cam(
    classifier: Any,
    image: Any,
    *,
    target: Any = None,
    alpha: float = 0.5,
    colormap: str = "jet",
) -> Image.Image:
    """Grad-CAM heat map overlaid on the image.

    Parameters
    ----------
    classifier : FineTunedClassifier
        A fitted classifier.
    image : str, path-like, PIL.Image.Image or ndarray
        One image, as in :func:`grad_cam`.
    target : label, default=None
        The class whose evidence is shown; the predicted class when None.
    alpha : float, default=0.5
        Opacity of the heat map, in [0, 1]. Where the heat is zero the image shows through
        unchanged.
    colormap : str, default="jet"
        ``"jet"``, ``"viridis"``, ``"magma"``, ``"gray"``, or with matplotlib installed any
        of its colormap names.

    Returns
    -------
    picture : PIL.Image.Image
        An RGB image of the input image's own size.

    Examples
    --------
    >>> from transferkit.viz import plot_grad_cam
    >>> plot_grad_cam(clf, "bee.jpg").save("bee_grad_cam.png")  # doctest: +SKIP
    """
    if not isinstance(alpha, numbers.Real) or not 0 <= alpha <= 1:
        raise ValueError(f"alpha={alpha!r} must be a number in [0, 1].")
    heat = grad_cam(classifier, image, target=target)
    display = _display_pixels(image).astype(np.float32)
    colours = _apply_colormap(heat, colormap).astype(np.float32)
    # Opacity grows with the heat, so regions without evidence are left untouched.
    opacity = (alpha * heat)[..., None]
    blended = display * (1 - opacity) + colours * opacity
    return Image.fromarray(np.clip(np.round(blended), 0, 255).astype(np.uint8))


# ---------------------------------------------------------------------------- history
def _history_dict(history: Any) -> Mapping[str, Any]:
    if hasattr(history, "history_") and isinstance(history.history_, Mapping):
        return history.history_
    if isinstance(history, Mapping):
        return history
    raise TypeError(
        f"history must be a fitted FineTunedClassifier or its history_ dict; got "
        f"{type(history).__name__}. Fit the classifier first."
    )


def _phases(history: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Sequence[float]]]]:
    if "loss" in history:  # one phase given directly
        return [("", history)]
    phases = [(name, phase) for name, phase in history.items()
              if isinstance(phase, Mapping) and len(phase.get("loss", ())) > 0]
    if not phases:
        raise ValueError(
            f"history has no epochs to plot (phases {list(history)} ran 0 epochs); fit with "
            "head_epochs or epochs > 0."
        )
    return phases


def _nice_range(values: list[float]) -> tuple[float, float]:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return 0.0, 1.0
    low, high = min(finite), max(finite)
    if high - low < 1e-12:
        low, high = low - 0.5, high + 0.5
    margin = 0.05 * (high - low)
    return low - margin, high + margin


def plot_history(history: Any, *, size: tuple[int, int] = (900, 360)) -> Image.Image:
    """Training curves of a :class:`~transferkit.FineTunedClassifier`: loss and accuracy.

    The two training phases (the head alone, then fine-tuning) follow each other on one
    epoch axis, separated by a dashed line; training values are blue, validation values
    (with early stopping) orange, and the kept epoch of each phase is marked with a dot.

    Parameters
    ----------
    history : FineTunedClassifier or dict
        A fitted classifier, or its ``history_`` (``{"head": {...}, "finetune": {...}}``),
        or a single phase's dict with ``"loss"`` (and optionally ``"accuracy"``,
        ``"val_loss"``, ``"val_accuracy"``) lists.
    size : (int, int), default=(900, 360)
        ``(width, height)`` of the picture in pixels.

    Returns
    -------
    picture : PIL.Image.Image
        An RGB image of the given size with two panels, loss (left) and accuracy (right).

    Examples
    --------
    >>> from transferkit.viz import plot_history
    >>> plot_history(clf).save("curves.png")  # doctest: +SKIP
    """
    if (not isinstance(size, (tuple, list)) or len(size) != 2
            or not all(isinstance(s, numbers.Integral) and s >= 200 for s in size)):
        raise ValueError(f"size={size!r} must be a (width, height) pair of ints >= 200.")
    phases = _phases(_history_dict(history))
    width, height = int(size[0]), int(size[1])
    picture = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(picture)
    font = _font(12)

    lengths = [len(phase["loss"]) for _, phase in phases]
    n_epochs = sum(lengths)
    offsets = np.cumsum([0, *lengths])
    panel_width = width // 2
    for panel, metric in enumerate(("loss", "accuracy")):
        left = panel * panel_width + 50
        right = (panel + 1) * panel_width - 15
        top, bottom = 30, height - 40
        values = [float(v) for _, phase in phases
                  for key in (metric, f"val_{metric}") for v in phase.get(key, ())]
        low, high = _nice_range(values)

        def to_xy(epoch: float, value: float, low: float = low, high: float = high,
                  left: int = left, right: int = right, top: int = top,
                  bottom: int = bottom) -> tuple[float, float]:
            x = left + (right - left) * (epoch / max(n_epochs - 1, 1))
            y = bottom - (bottom - top) * ((value - low) / (high - low))
            return x, y

        draw.rectangle([left, top, right, bottom], outline=(0, 0, 0))
        draw.text((left, 8), metric, fill=(0, 0, 0), font=font)
        for fraction in (0.0, 0.5, 1.0):
            value = low + fraction * (high - low)
            _, y = to_xy(0, value)
            draw.line([left - 4, y, left, y], fill=(0, 0, 0))
            draw.text((4, y - 6) if panel == 0 else (left - 46, y - 6), f"{value:.3g}",
                      fill=(0, 0, 0), font=font)
        draw.text((left, bottom + 6), "epoch 1", fill=(0, 0, 0), font=font)
        draw.text((right - 50, bottom + 6), f"epoch {n_epochs}", fill=(0, 0, 0), font=font)

        for k, (name, phase) in enumerate(phases):
            start = int(offsets[k])
            if k > 0:
                x, _ = to_xy(start - 0.5, low)
                for y in range(top, bottom, 8):  # dashed boundary between phases
                    draw.line([x, y, x, min(y + 4, bottom)], fill=(120, 120, 120))
            if name:
                x, _ = to_xy(start, low)
                draw.text((x + 3, top + 3), name, fill=(90, 90, 90), font=font)
            for key, colour in ((metric, _TRAIN_COLOUR), (f"val_{metric}", _VAL_COLOUR)):
                series = [float(v) for v in phase.get(key, ())]
                if not series:
                    continue
                points = [to_xy(start + i, v) for i, v in enumerate(series)]
                if len(points) > 1:
                    draw.line(points, fill=colour, width=2)
                else:
                    x, y = points[0]
                    draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)
                best = phase.get("best_epoch")
                if key.startswith("val_") and isinstance(best, numbers.Integral) \
                        and 0 <= best < len(series):
                    x, y = points[best]
                    draw.ellipse([x - 4, y - 4, x + 4, y + 4], outline=colour, width=2)
    # One legend for both panels, in the title row, where no curve can run into it.
    for k, (label, colour) in enumerate((("train", _TRAIN_COLOUR), ("validation", _VAL_COLOUR))):
        x = width - 200 + 90 * k
        draw.line([x, 14, x + 20, 14], fill=colour, width=2)
        draw.text((x + 25, 8), label, fill=(0, 0, 0), font=font)
    return picture
