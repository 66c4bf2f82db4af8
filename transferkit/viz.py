"""Pictures of what the network sees: activation maps, Grad-CAM and training curves.

:func:`plot_activation_maps`, :func:`plot_grad_cam` and :func:`plot_history` draw with
matplotlib (the ``viz`` extra) and return Display objects in scikit-learn's manner: their
``figure_`` displays itself in a notebook, ``.save("maps.png")`` writes it, and ``ax=``
draws into a figure of one's own.
:func:`activation_maps`, :func:`grad_cam` and :func:`crop_box` return the arrays behind
the pictures.

Keras and matplotlib are imported inside the functions: ``import transferkit.viz`` stays
cheap.
"""

# Authors: The transferkit developers
# SPDX-License-Identifier: BSD-3-Clause

from __future__ import annotations

import numbers
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

__all__ = [
    "ActivationMapsDisplay",
    "GradCAMDisplay",
    "TrainingHistoryDisplay",
    "activation_maps",
    "crop_box",
    "grad_cam",
    "plot_activation_maps",
    "plot_grad_cam",
    "plot_history",
]


# ---------------------------------------------------------------------------- helpers
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


# ---------------------------------------------------------------------------- matplotlib
def _pyplot() -> Any:
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError(
            "transferkit.viz draws activation maps and Grad-CAM with matplotlib, which is "
            'not installed; install it with pip install "transferkit[viz]".'
        ) from None
    return plt


def _panel_grid(ax: Any, n_rows: int, n_cols: int, figsize: tuple[float, float],
                **gridspec_kw: Any) -> tuple[Any, Any]:
    """A grid of panels filling a new figure, or the area of ``ax`` (which is removed)."""
    plt = _pyplot()
    if ax is None:
        figure = plt.figure(figsize=figsize, layout="constrained")
        return figure, figure.add_gridspec(n_rows, n_cols, **gridspec_kw)
    spec = ax.get_subplotspec()
    if spec is None:
        raise ValueError(
            "ax must be an Axes made on a grid (plt.subplots, fig.add_subplot); this one was "
            "placed by hand, so it has no area to divide into panels."
        )
    figure = ax.figure
    ax.remove()
    return figure, spec.subgridspec(n_rows, n_cols, **gridspec_kw)


def _bare(ax: Any) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def _image_name(image: Any) -> str | None:
    return os.path.basename(os.fspath(image)) if isinstance(image, (str, os.PathLike)) else None


def _smooth_resize(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bicubic resize of a 2-D map, kept within the map's own range.

    Bicubic interpolation overshoots next to sharp edges; clipping keeps the labelled
    activation range the range of what is drawn.
    """
    resized = Image.fromarray(values.astype(np.float32), mode="F").resize(
        (size[1], size[0]), Image.Resampling.BICUBIC
    )
    return np.clip(np.asarray(resized, dtype=np.float32), values.min(), values.max())


# ---------------------------------------------------------------------------- activations
def _extractor_parts(extractor: Any) -> tuple[Any, Any]:
    """The fitted extractor's truncated backbone and its BackboneSpec (None for a user model)."""
    from .backbones import get_backbone_spec
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
    if getattr(extractor, "preprocessing_", None) == "keras_hub":
        # The pictures preprocess with keras.applications' functions, which a preset lacks.
        raise ValueError(
            f"Activation maps of keras-hub backbones ({extractor.backbone!r}) are not drawn "
            "yet; use an extractor with a keras.applications backbone."
        )
    trunk = trunk_of(extractor.model_)
    user_model = getattr(extractor, "preprocessing_", None) == "user_model"
    return trunk, None if user_model else get_backbone_spec(extractor.backbone_name_)


def _spatial_layer(extractor: Any, trunk: Any, spec: Any, layer: Any) -> Any:
    from .cut_points import resolve_cut

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
    return target


def _stage_ends(trunk: Any) -> list[Any]:
    """The last layer at each spatial resolution, input side first: where each stage ends."""
    ends: dict[tuple[Any, Any], Any] = {}
    for layer in trunk.layers[1:]:
        shape = getattr(getattr(layer, "output", None), "shape", None)
        if shape is not None and len(shape) == 4:
            ends.pop(tuple(shape[1:3]), None)  # re-inserted: dict order follows the last one
            ends[tuple(shape[1:3])] = layer
    return list(ends.values())


def _network_view(extractor: Any, image: Any, spec: Any) -> tuple[np.ndarray, np.ndarray]:
    """The pixels the network sees (uint8, input size) and the batch it is given."""
    from .augmentation import central_offsets

    # Framed as transform frames it: resized to source_size_, central input_size_ kept.
    source, size = extractor.source_size_, extractor.input_size_
    pixels = _model_input(image, source)
    top, left = central_offsets(source, size)
    pixels = np.ascontiguousarray(pixels[:, top:top + size[0], left:left + size[1]])
    view = np.clip(np.round(pixels[0]), 0, 255).astype(np.uint8)
    if spec is not None:
        # preprocess_input may work in place on a NumPy array; the batch is ours to change.
        pixels = np.asarray(spec.preprocess_input(pixels), dtype=np.float32)
    return view, pixels


def _layer_outputs(trunk: Any, targets: list[Any], batch: np.ndarray) -> list[np.ndarray]:
    import keras

    probe = keras.Model(trunk.inputs[0], [t.output for t in targets], name="activations")
    outputs = probe(batch, training=False)
    if len(targets) == 1 and not isinstance(outputs, (list, tuple)):
        outputs = [outputs]
    return [np.asarray(keras.ops.convert_to_numpy(o)[0], dtype=np.float32) for o in outputs]


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
    trunk, spec = _extractor_parts(extractor)
    target = _spatial_layer(extractor, trunk, spec, layer)
    _, batch = _network_view(extractor, image, spec)
    return _layer_outputs(trunk, [target], batch)[0]


_CHANNEL_RULES = ("most_active", "most_varied")


def _choose_channels(maps: np.ndarray, channels: Any, n_channels: int, name: str) -> np.ndarray:
    if isinstance(channels, str):
        if channels == "most_active":
            strength = maps.mean(axis=(0, 1))
        elif channels == "most_varied":
            strength = maps.std(axis=(0, 1))
        else:
            raise ValueError(
                f"channels={channels!r} is not a rule; use one of {list(_CHANNEL_RULES)} or a "
                "list of channel indices."
            )
        # Stable sort: equally ranked channels keep their index order, so pictures repeat.
        return np.argsort(-strength, kind="stable")[: min(n_channels, maps.shape[-1])]
    chosen = np.asarray(channels)
    if chosen.ndim != 1 or chosen.size == 0 or not np.issubdtype(chosen.dtype, np.integer):
        raise ValueError(
            f"channels={channels!r} must be {list(_CHANNEL_RULES)[0]!r}, "
            f"{list(_CHANNEL_RULES)[1]!r} or a non-empty list of channel indices."
        )
    outside = chosen[(chosen < 0) | (chosen >= maps.shape[-1])]
    if outside.size:
        raise ValueError(
            f"channels={channels!r}: layer {name!r} has channels 0 to {maps.shape[-1] - 1}; "
            f"{outside.tolist()} are out of range."
        )
    return chosen


def _percentile_range(values: np.ndarray, percentiles: tuple[float, float]) -> tuple[float, float]:
    low, high = (float(v) for v in np.percentile(values, percentiles))
    if high <= low:  # a flat map: any range shows it as one colour
        high = low + 1e-6
    return low, high


class ActivationMapsDisplay:
    """The input image beside activation maps of one or more layers, early to late.

    Build it with :meth:`from_estimator` (or :func:`plot_activation_maps`); the attributes
    hold what is drawn, so a picture can be checked or re-drawn without the network.

    Parameters
    ----------
    image : ndarray of shape (size, size, 3), dtype uint8
        The input as the network sees it (resized and cropped as in ``transform``).
    layers : list of str
        Layer names, input side first.
    channels : list of ndarray of int
        For each layer, the channels shown.
    maps : list of ndarray of shape (n_channels, height, width), dtype float32
        For each layer, the chosen channels upsampled (bicubic) to the image's size.
    ranges : list of ndarray of shape (n_channels, 2)
        For each layer and channel, the lowest and highest activation before upsampling.
    shapes : list of tuple of int
        For each layer, its output shape ``(height, width, channels)``.
    rule : str
        How the channels were chosen, for the title: ``"most active"``, ``"most varied"``
        or ``"chosen"``.
    name : str, default=None
        The image's file name, for the title.

    Attributes
    ----------
    figure_ : matplotlib.figure.Figure
        The figure drawn on (set by :meth:`plot`).
    axes_ : ndarray of matplotlib.axes.Axes of shape (n_layers, n_channels)
        The map panels.
    image_ax_ : matplotlib.axes.Axes
        The panel with the input image.
    """

    def __init__(self, image: np.ndarray, layers: list[str], channels: list[np.ndarray],
                 maps: list[np.ndarray], ranges: list[np.ndarray],
                 shapes: list[tuple[int, ...]], rule: str, name: str | None = None) -> None:
        self.image, self.layers, self.channels = image, layers, channels
        self.maps, self.ranges, self.shapes = maps, ranges, shapes
        self.rule, self.name = rule, name

    @classmethod
    def from_estimator(
        cls,
        extractor: Any,
        image: Any,
        *,
        layers: str | int | Sequence[str | int] | None = None,
        n_channels: int = 6,
        channels: str | Sequence[int] = "most_active",
        ax: Any = None,
        colormap: str = "viridis",
        percentiles: tuple[float, float] = (1.0, 99.0),
    ) -> ActivationMapsDisplay:
        """Compute the maps of ``extractor`` for ``image`` and draw them.

        Parameters are those of :func:`plot_activation_maps`.

        Returns
        -------
        display : ActivationMapsDisplay
        """
        n_channels = _positive_int("n_channels", n_channels)
        trunk, spec = _extractor_parts(extractor)
        if layers is None:
            # Three stage ends, evenly spaced from the first to the cut: edges to parts.
            ends = _stage_ends(trunk)
            picks = sorted({int(round(i)) for i in np.linspace(0, len(ends) - 1, 3)})
            targets = [ends[i] for i in picks]
        else:
            requested = [layers] if isinstance(layers, (str, numbers.Integral)) else list(layers)
            if not requested:
                raise ValueError("layers=[] names no layer; pass None for three stage ends.")
            targets = [_spatial_layer(extractor, trunk, spec, layer) for layer in requested]
        view, batch = _network_view(extractor, image, spec)
        outputs = _layer_outputs(trunk, targets, batch)
        shown_channels, shown_maps, ranges = [], [], []
        for target, maps in zip(targets, outputs, strict=True):
            chosen = _choose_channels(maps, channels, n_channels, target.name)
            shown_channels.append(chosen)
            shown_maps.append(np.stack([_smooth_resize(maps[..., c], view.shape[:2])
                                        for c in chosen]))
            ranges.append(np.array([[maps[..., c].min(), maps[..., c].max()] for c in chosen]))
        rule = channels.replace("_", " ") if isinstance(channels, str) else "chosen"
        display = cls(view, [t.name for t in targets], shown_channels, shown_maps, ranges,
                      [tuple(int(s) for s in m.shape) for m in outputs], rule,
                      _image_name(image))
        return display.plot(ax=ax, colormap=colormap, percentiles=percentiles)

    def plot(self, ax: Any = None, *, colormap: str = "viridis",
             percentiles: tuple[float, float] = (1.0, 99.0)) -> ActivationMapsDisplay:
        """Draw the picture.

        Parameters
        ----------
        ax : matplotlib.axes.Axes, default=None
            The area to draw in, divided into panels (the Axes itself is removed); a new
            figure when None.
        colormap : str, default="viridis"
            A matplotlib colormap name.
        percentiles : (float, float), default=(1.0, 99.0)
            Each map's colour scale runs from these percentiles of its values, so a few
            extreme activations do not flatten the rest into one colour.

        Returns
        -------
        display : ActivationMapsDisplay
            ``self``, with ``figure_``, ``axes_`` and ``image_ax_`` set.
        """
        if (not isinstance(percentiles, (tuple, list)) or len(percentiles) != 2
                or not 0 <= percentiles[0] < percentiles[1] <= 100):
            raise ValueError(
                f"percentiles={percentiles!r} must be a pair (low, high) with "
                "0 <= low < high <= 100, such as (1, 99)."
            )
        cmap = _colormap(colormap)
        n_rows, n_cols = len(self.layers), max(len(c) for c in self.channels)
        figure, grid = _panel_grid(ax, n_rows, n_cols + 1,
                                   (1.2 + 1.45 * (n_cols + 1), 0.6 + 1.7 * n_rows),
                                   width_ratios=[2] + [1] * n_cols)
        self.figure_ = figure
        self.image_ax_ = figure.add_subplot(grid[:, 0])
        self.image_ax_.imshow(self.image)
        self.image_ax_.set_title(
            f"input, as the network\nsees it ({self.image.shape[0]}x{self.image.shape[1]})",
            fontsize=8)
        _bare(self.image_ax_)
        self.axes_ = np.empty((n_rows, n_cols), dtype=object)
        for row, layer in enumerate(self.layers):
            for col in range(n_cols):
                panel = figure.add_subplot(grid[row, col + 1])
                self.axes_[row, col] = panel
                _bare(panel)
                if col >= len(self.channels[row]):
                    panel.set_visible(False)
                    continue
                values = self.maps[row][col]
                low, high = _percentile_range(values, percentiles)
                panel.imshow(values, cmap=cmap, vmin=low, vmax=high)
                raw_low, raw_high = self.ranges[row][col]
                panel.set_title(f"channel {int(self.channels[row][col])}", fontsize=7, pad=2)
                panel.set_xlabel(f"{raw_low:.3g} to {raw_high:.3g}", fontsize=6.5, labelpad=2)
                if col == 0:
                    height, width, depth = self.shapes[row]
                    panel.set_ylabel(f"{layer}\n{height}x{width}x{depth}", fontsize=7.5)
        where = f" of {self.name}" if self.name else ""
        figure.suptitle(
            f"Activation maps{where}: {self.rule} channels of {len(self.layers)} "
            f"layer{'s' if len(self.layers) > 1 else ''}, input side first\n"
            f"(under each map: its activation range; its colours span percentiles "
            f"{percentiles[0]:g} to {percentiles[1]:g} of its values)",
            fontsize=9)
        return self

    def save(self, path: str | os.PathLike, **savefig_kw: Any) -> None:
        """Save the picture, as ``figure_.savefig(path, **savefig_kw)``."""
        self.figure_.savefig(path, **{"dpi": 110, **savefig_kw})


def _colormap(colormap: Any) -> Any:
    import matplotlib

    if not isinstance(colormap, str):
        raise TypeError(f"colormap must be a name (str); got {type(colormap).__name__}.")
    try:
        return matplotlib.colormaps[colormap]
    except KeyError:
        raise ValueError(
            f"colormap={colormap!r} is not a matplotlib colormap; use one such as 'viridis', "
            "'magma' or 'turbo' (see matplotlib.colormaps)."
        ) from None


def plot_activation_maps(
    extractor: Any,
    image: Any,
    *,
    layers: str | int | Sequence[str | int] | None = None,
    n_channels: int = 6,
    channels: str | Sequence[int] = "most_active",
    ax: Any = None,
    colormap: str = "viridis",
    percentiles: tuple[float, float] = (1.0, 99.0),
    layer: str | int | None = None,
) -> ActivationMapsDisplay:
    """The input image beside the activation maps of one or more layers, early to late.

    Each row is a layer; each panel a channel's map, upsampled smoothly (bicubic) to the
    size of the image the network sees, titled with its channel index and labelled with
    its activation range. Needs matplotlib (``pip install "transferkit[viz]"``).

    .. versionchanged:: 0.1
       Returns an :class:`ActivationMapsDisplay` drawn with matplotlib instead of a PIL
       image; ``.save(path)`` still writes the picture. ``layer=`` is now ``layers=``.

    Parameters
    ----------
    extractor : KerasFeatureExtractor
        Fitted or not (an unfitted one is fitted first, which only builds its model).
    image : str, path-like, PIL.Image.Image or ndarray
        One image, as in :func:`activation_maps`.
    layers : None, str, int or list of them, default=None
        The layers, each in the forms :func:`activation_maps` takes, input side first.
        None: three stage ends (the last layer at a spatial resolution), evenly spaced
        from the first stage to the cut layer.
    n_channels : int, default=6
        How many channels to show per layer when ``channels`` is a rule.
    channels : {"most_active", "most_varied"} or list of int, default="most_active"
        Which channels: those of highest mean activation, those of highest spread over
        the image (saturated, uniform channels left out), or these indices in every layer.
    ax : matplotlib.axes.Axes, default=None
        The area to draw in, divided into panels; a new figure when None.
    colormap : str, default="viridis"
        A matplotlib colormap name.
    percentiles : (float, float), default=(1.0, 99.0)
        Each map's colour scale spans these percentiles of its values.
    layer : None, str or int, default=None
        One layer; kept for code written before ``layers``. Do not pass both.

    Returns
    -------
    display : ActivationMapsDisplay
        With ``figure_`` (save it with ``display.save("maps.png")``) and the maps drawn.

    Examples
    --------
    >>> from transferkit import KerasFeatureExtractor
    >>> from transferkit.viz import plot_activation_maps
    >>> extractor = KerasFeatureExtractor("MobileNet", backbone_kwargs={"alpha": 0.25})
    >>> display = plot_activation_maps(extractor, "bee.jpg")  # doctest: +SKIP
    >>> display.save("maps.png")  # doctest: +SKIP
    """
    if layer is not None:
        if layers is not None:
            raise ValueError(
                f"layer={layer!r} and layers={layers!r} both given; pass layers alone."
            )
        layers = layer
    return ActivationMapsDisplay.from_estimator(
        extractor, image, layers=layers, n_channels=n_channels, channels=channels, ax=ax,
        colormap=colormap, percentiles=percentiles)


# ---------------------------------------------------------------------------- Grad-CAM
def crop_box(classifier: Any, image_shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """The part of an image a fitted FineTunedClassifier sees: ``(top, left, height, width)``.

    Parameters
    ----------
    classifier : FineTunedClassifier
        A fitted classifier; its ``crop_fraction_`` (or, for one fitted by an older
        transferkit, ``input_size_ / source_size_``) is the part of each side it keeps.
    image_shape : (int, int)
        ``(height, width)`` of the image as shown.

    Returns
    -------
    box : tuple of int
        ``(top, left, height, width)`` in the image's pixels: the central
        ``crop_fraction_`` of each side, the whole image at 1.0.
    """
    from .augmentation import central_offsets

    height, width = int(image_shape[0]), int(image_shape[1])
    fraction = getattr(classifier, "crop_fraction_", None)
    if fraction is not None:
        fractions = (float(fraction), float(fraction))
    else:
        source = getattr(classifier, "source_size_", classifier.input_size_)
        fractions = (classifier.input_size_[0] / source[0], classifier.input_size_[1] / source[1])
    crop_h = min(height, max(1, int(round(height * fractions[0]))))
    crop_w = min(width, max(1, int(round(width * fractions[1]))))
    top, left = central_offsets((height, width), (crop_h, crop_w))
    return int(top), int(left), crop_h, crop_w


def _grad_cam(classifier: Any, image: Any, target: Any) -> dict[str, Any]:
    """Grad-CAM of ``target`` with what a caption needs: the probabilities and the crop."""
    import keras
    import tensorflow as tf

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
    if target is not None and target not in classes:
        raise ValueError(f"target={target!r} is not a class of the classifier: {classes}.")
    # The model takes the image resized to source_size_ and looks at its central view.
    source = getattr(classifier, "source_size_", classifier.input_size_)
    pixels = _model_input(image, source)
    display = _display_pixels(image)

    model = classifier.model_
    to_map, to_logits = explanation_parts(model)
    x = to_map(tf.convert_to_tensor(pixels), training=False)
    # A head that reads several blocks also takes their pooled features: constants here,
    # since they do not depend on the cut's map.
    x, others = (x[0], x[1:]) if isinstance(x, (list, tuple)) else (x, [])
    with tf.GradientTape() as tape:
        tape.watch(x)
        # Grad-CAM explains a score, not a probability: the softmax saturates and its
        # gradient vanishes for confident predictions.
        scores = to_logits([x, *others] if others else x, training=False)
        probabilities = tf.nn.softmax(scores).numpy()[0]
        expected = keras.ops.convert_to_numpy(model(pixels, training=False))[0]
        if not np.allclose(probabilities, expected, atol=1e-4):
            raise RuntimeError(
                f"Re-running {model.name!r} in two parts does not reproduce its output, so "
                "its gradients cannot be trusted; this transferkit.viz does not match the "
                "installed FineTunedClassifier."
            )
        predicted = int(np.argmax(probabilities))
        index = predicted if target is None else classes.index(target)
        score = scores[:, index]
    grads = tape.gradient(score, x).numpy()[0]
    feature_map = x.numpy()[0]
    channel_weights = grads.mean(axis=(0, 1))
    cam = np.maximum((feature_map * channel_weights).sum(axis=-1), 0.0)
    peak = float(cam.max())
    cam = cam / peak if peak > 0 else np.zeros_like(cam)
    # The map covers the part of the image the network saw; outside it there is no evidence.
    top, left, crop_h, crop_w = box = crop_box(classifier, display.shape[:2])
    heat = np.zeros(display.shape[:2], dtype=np.float32)
    heat[top:top + crop_h, left:left + crop_w] = _resize_map(cam, (crop_h, crop_w))
    return {
        "heatmap": np.clip(heat, 0.0, 1.0).astype(np.float32), "image": display,
        "crop_box": box, "classes": classes, "probabilities": probabilities,
        "predicted": predicted, "target": index,
    }


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
        image speaks for ``target``, and outside the part of the image the classifier
        sees (:func:`crop_box`: the central ``crop_fraction_`` of each side).

    Examples
    --------
    >>> from transferkit.viz import grad_cam
    >>> heat = grad_cam(clf, "bee.jpg", target="bees")  # doctest: +SKIP
    """
    return _grad_cam(classifier, image, target)["heatmap"]


class GradCAMDisplay:
    """A Grad-CAM heat map laid over the whole image, with the prediction in the caption.

    Build it with :meth:`from_estimator` (or :func:`plot_grad_cam`).

    Parameters
    ----------
    image : ndarray of shape (height, width, 3), dtype uint8
        The image at its own resolution.
    heatmap : ndarray of shape (height, width), dtype float32
        The output of :func:`grad_cam`, aligned pixel for pixel with ``image``.
    crop_box : (int, int, int, int)
        ``(top, left, height, width)`` of the part the network sees (:func:`crop_box`).
    classes : list
        The classifier's ``classes_``.
    probabilities : ndarray of shape (n_classes,)
        The predicted probabilities for the image.
    target : int
        Index into ``classes`` of the class whose evidence is shown.
    name : str, default=None
        The image's file name, for the caption.

    Attributes
    ----------
    figure_ : matplotlib.figure.Figure
        The figure drawn on (set by :meth:`plot`).
    ax_ : matplotlib.axes.Axes
        The Axes with the image, the heat map and, when the classifier sees only part of
        the image, the outline of that part.
    predicted_ : label
        The predicted class.
    """

    def __init__(self, image: np.ndarray, heatmap: np.ndarray,
                 crop_box: tuple[int, int, int, int], classes: list, probabilities: np.ndarray,
                 target: int, name: str | None = None) -> None:
        self.image, self.heatmap, self.crop_box = image, heatmap, crop_box
        self.classes, self.probabilities = classes, np.asarray(probabilities)
        self.target, self.name = int(target), name
        self.predicted_ = classes[int(np.argmax(self.probabilities))]

    @classmethod
    def from_estimator(cls, classifier: Any, image: Any, *, target: Any = None, ax: Any = None,
                       alpha: float = 0.6, colormap: str = "turbo") -> GradCAMDisplay:
        """Compute Grad-CAM of ``classifier`` for ``image`` and draw it.

        Parameters are those of :func:`plot_grad_cam`.

        Returns
        -------
        display : GradCAMDisplay
        """
        found = _grad_cam(classifier, image, target)
        display = cls(found["image"], found["heatmap"], found["crop_box"], found["classes"],
                      found["probabilities"], found["target"], _image_name(image))
        return display.plot(ax=ax, alpha=alpha, colormap=colormap)

    @property
    def caption(self) -> str:
        """What the picture shows, in words: the class explained and the prediction."""
        predicted = int(np.argmax(self.probabilities))
        shown = f"evidence for {self.classes[self.target]!r} " \
                f"(p = {self.probabilities[self.target]:.2f})"
        if self.target == predicted:
            return f"predicted {self.classes[predicted]!r} (p = " \
                   f"{self.probabilities[predicted]:.2f}); the heat map shows its evidence"
        return f"{shown}; predicted {self.classes[predicted]!r} " \
               f"(p = {self.probabilities[predicted]:.2f})"

    def plot(self, ax: Any = None, *, alpha: float = 0.6,
             colormap: str = "turbo") -> GradCAMDisplay:
        """Draw the picture.

        Parameters
        ----------
        ax : matplotlib.axes.Axes, default=None
            The Axes to draw on; a new figure when None.
        alpha : float, default=0.6
            Opacity of the strongest evidence, in [0, 1]. The opacity falls with the heat,
            so the photograph shows through unchanged where there is no evidence.
        colormap : str, default="turbo"
            A matplotlib colormap name.

        Returns
        -------
        display : GradCAMDisplay
            ``self``, with ``figure_`` and ``ax_`` set.
        """
        if not isinstance(alpha, numbers.Real) or not 0 <= alpha <= 1:
            raise ValueError(f"alpha={alpha!r} must be a number in [0, 1].")
        cmap = _colormap(colormap)
        plt = _pyplot()
        height, width = self.image.shape[:2]
        if ax is None:
            scale = 5.0 / max(height, width)
            figure, ax = plt.subplots(figsize=(width * scale + 1.2, height * scale + 0.9),
                                      layout="constrained")
        self.figure_, self.ax_ = ax.figure, ax
        ax.imshow(self.image)
        overlay = cmap(self.heatmap)
        overlay[..., 3] = alpha * self.heatmap
        ax.imshow(overlay, interpolation="bilinear")
        top, left, crop_h, crop_w = self.crop_box
        if (crop_h, crop_w) != (height, width):
            from matplotlib.patches import Rectangle

            # Pixel edges sit half a pixel before their centres in imshow's coordinates.
            ax.add_patch(Rectangle((left - 0.5, top - 0.5), crop_w, crop_h, fill=False,
                                   edgecolor="white", linestyle="--", linewidth=1.2))
            ax.text(left + 4, top + 4, "what the network sees", color="white", fontsize=7,
                    va="top", bbox={"facecolor": "black", "alpha": 0.4, "linewidth": 0})
        _bare(ax)
        scalar = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, 1))
        colorbar = self.figure_.colorbar(scalar, ax=ax, fraction=0.04, pad=0.02)
        colorbar.set_label(f"evidence for {self.classes[self.target]!r} (relative)",
                           fontsize=8)
        where = f"{self.name}: " if self.name else ""
        ax.set_title(f"Grad-CAM, {where}{self.caption}", fontsize=9, wrap=True)
        return self

    def save(self, path: str | os.PathLike, **savefig_kw: Any) -> None:
        """Save the picture, as ``figure_.savefig(path, **savefig_kw)``."""
        self.figure_.savefig(path, **{"dpi": 110, **savefig_kw})


def plot_grad_cam(
    classifier: Any,
    image: Any,
    *,
    target: Any = None,
    ax: Any = None,
    alpha: float = 0.6,
    colormap: str = "turbo",
) -> GradCAMDisplay:
    """Grad-CAM heat map laid over the whole image, the prediction in the caption.

    The heat map is aligned with the image as shown; when the classifier sees only the
    central part (``crop_fraction_`` below 1), that part is outlined and the evidence
    lies within it. Needs matplotlib (``pip install "transferkit[viz]"``).

    .. versionchanged:: 0.1
       Returns a :class:`GradCAMDisplay` drawn with matplotlib instead of a PIL image;
       ``.save(path)`` still writes the picture.

    Parameters
    ----------
    classifier : FineTunedClassifier
        A fitted classifier.
    image : str, path-like, PIL.Image.Image or ndarray
        One image, as in :func:`grad_cam`.
    target : label, default=None
        The class whose evidence is shown, one of ``classifier.classes_``; the predicted
        class when None. The caption gives its probability and the prediction's.
    ax : matplotlib.axes.Axes, default=None
        The Axes to draw on; a new figure when None.
    alpha : float, default=0.6
        Opacity of the strongest evidence, in [0, 1]; where the heat is zero the image
        shows through unchanged.
    colormap : str, default="turbo"
        A matplotlib colormap name.

    Returns
    -------
    display : GradCAMDisplay
        With ``figure_``, ``ax_``, ``caption`` and ``heatmap``.

    Examples
    --------
    >>> from transferkit.viz import plot_grad_cam
    >>> plot_grad_cam(clf, "bee.jpg", target="ants").save("ants_evidence.png")  # doctest: +SKIP
    """
    return GradCAMDisplay.from_estimator(classifier, image, target=target, ax=ax, alpha=alpha,
                                         colormap=colormap)


# ---------------------------------------------------------------------------- history
# The phases of FineTunedClassifier.history_ in the order they run, with how a reader
# knows them. A phase without epochs (a logistic head is fitted in one go) is not drawn.
_PHASE_NAMES = {
    "head": "head",
    "finetune": "fine-tuning",
    "refit_head": "head (refit)",
    "refit_finetune": "fine-tuning (refit)",
}


def _history_dict(history: Any) -> Mapping[str, Any]:
    if hasattr(history, "history_") and isinstance(history.history_, Mapping):
        return history.history_
    if isinstance(history, Mapping):
        return history
    raise TypeError(
        f"history must be a fitted FineTunedClassifier or its history_ dict; got "
        f"{type(history).__name__}. Fit the classifier first."
    )


def _kept_epoch(name: str, phase: Mapping[str, Any], history: Mapping[str, Any]) -> int:
    """Index of the epoch whose weights the phase ended with; -1 for its starting weights."""
    if name == "finetune" and (phase.get("worse_than_start")
                               or history.get("kept_epochs", 1) == 0):
        return -1  # fine-tuning ran, but the fit went on from the head it started from
    best = phase.get("best_epoch", len(phase["loss"]) - 1)
    return int(best) if isinstance(best, numbers.Integral) else len(phase["loss"]) - 1


class TrainingHistoryDisplay:
    """Loss and accuracy per epoch of a :class:`~transferkit.FineTunedClassifier`.

    The phases that ran epochs follow each other on one epoch axis, each named above the
    panels and separated by a dashed line: fine-tuning on the training part (and a head
    trained by gradient descent, with ``head_init="adam"``), then, with early stopping,
    the same phases refit on every image. Training values are drawn in one colour,
    validation values (on the part of the training images held out for early stopping)
    in another; a ring marks the epoch each phase kept, and the title says which weights
    the fit ended with (``history_["summary"]``).

    Build it with :meth:`from_estimator`, :meth:`from_history` (or :func:`plot_history`).

    Parameters
    ----------
    phases : dict
        Phase name to the phase's dict (``"loss"``, and optionally ``"accuracy"``,
        ``"val_loss"``, ``"val_accuracy"``, ``"initial_val_loss"`` and
        ``"initial_val_accuracy"``), in the order the phases ran; only phases with at
        least one epoch.
    kept : dict
        Phase name to the index of the epoch whose weights it kept (-1: the weights it
        started from).
    summary : str, default=None
        What the fit kept and why, for the title.

    Attributes
    ----------
    figure_ : matplotlib.figure.Figure
        The figure drawn on (set by :meth:`plot`).
    axes_ : ndarray of matplotlib.axes.Axes of shape (2,)
        The loss panel, then the accuracy panel.
    ax_ : matplotlib.axes.Axes
        The loss panel (``axes_[0]``), as in scikit-learn's single-panel Displays.
    boundaries_ : list of float
        Where one phase ends and the next begins, on the epoch axis.
    """

    def __init__(self, phases: Mapping[str, Mapping[str, Any]], kept: Mapping[str, int],
                 summary: str | None = None) -> None:
        self.phases, self.kept, self.summary = phases, kept, summary

    @classmethod
    def from_history(cls, history: Mapping[str, Any], *,
                     ax: Any = None) -> TrainingHistoryDisplay:
        """Draw a ``history_`` dict, or a single phase's dict with a ``"loss"`` list.

        Parameters
        ----------
        history : dict
            A fitted classifier's ``history_``, or one of its phases.
        ax : matplotlib.axes.Axes, default=None
            The area to draw in, divided into two panels; a new figure when None.

        Returns
        -------
        display : TrainingHistoryDisplay
        """
        history = _history_dict(history)
        if "loss" in history:  # one phase given directly
            phases = {"": history}
        else:
            phases = {name: phase for name, phase in history.items()
                      if isinstance(phase, Mapping) and len(phase.get("loss", ())) > 0}
        if not phases:
            raise ValueError(
                f"history has no epochs to plot (its phases {list(history)} ran none); fit "
                "with epochs > 0, or head_init='adam' and head_epochs > 0."
            )
        kept = {name: _kept_epoch(name, phase, history) for name, phase in phases.items()}
        summary = history.get("summary")
        display = cls(phases, kept, summary if isinstance(summary, str) else None)
        return display.plot(ax=ax)

    @classmethod
    def from_estimator(cls, classifier: Any, *, ax: Any = None) -> TrainingHistoryDisplay:
        """Draw the training history of a fitted FineTunedClassifier.

        Parameters
        ----------
        classifier : FineTunedClassifier
            A fitted classifier.
        ax : matplotlib.axes.Axes, default=None
            The area to draw in, divided into two panels; a new figure when None.

        Returns
        -------
        display : TrainingHistoryDisplay
        """
        if not isinstance(getattr(classifier, "history_", None), Mapping):
            raise TypeError(
                f"classifier must be a fitted FineTunedClassifier; got "
                f"{type(classifier).__name__} without a history_. Fit the classifier first."
            )
        return cls.from_history(classifier.history_, ax=ax)

    def plot(self, ax: Any = None) -> TrainingHistoryDisplay:
        """Draw the picture.

        Parameters
        ----------
        ax : matplotlib.axes.Axes, default=None
            The area to draw in, divided into two panels (the Axes itself is removed); a
            new figure when None.

        Returns
        -------
        display : TrainingHistoryDisplay
            ``self``, with ``figure_``, ``axes_``, ``ax_`` and ``boundaries_`` set.
        """
        import textwrap

        from matplotlib.lines import Line2D
        from matplotlib.ticker import FixedLocator, MaxNLocator

        figure, grid = _panel_grid(ax, 1, 2, (10.0, 4.2))
        self.figure_ = figure
        self.axes_ = np.array([figure.add_subplot(grid[0, 0]),
                               figure.add_subplot(grid[0, 1])], dtype=object)
        self.ax_ = self.axes_[0]
        starts, start = {}, 0
        for name, phase in self.phases.items():
            starts[name] = start
            start += len(phase["loss"])
        self.boundaries_ = [s + 0.5 for s in list(starts.values())[1:]]
        has_validation = any(phase.get("val_loss") for phase in self.phases.values())
        xlabel = "epoch, the phases one after the other" if len(self.phases) > 1 else "epoch"
        for panel, metric in zip(self.axes_, ("loss", "accuracy"), strict=True):
            for name, phase in self.phases.items():
                self._plot_phase(panel, metric, phase, starts[name], self.kept[name])
            for boundary in self.boundaries_:
                panel.axvline(boundary, color="0.55", linestyle="--", linewidth=1)
            # Room for the rings at both ends, the starting point's included.
            margin = max(0.35, 0.04 * start)
            panel.set_xlim(0.5 - margin, start + 0.5 + margin)
            # Epochs are whole: a short history gets each one, a long one a few.
            panel.xaxis.set_major_locator(FixedLocator(range(1, start + 1)) if start <= 12
                                          else MaxNLocator(integer=True))
            panel.set_xlabel(xlabel)
            panel.set_ylabel("loss (cross-entropy)" if metric == "loss" else metric)
            panel.grid(alpha=0.3)
            self._name_phases(panel, starts)
        self.axes_[1].set_ylim(top=min(1.02, self.axes_[1].get_ylim()[1]))
        handles = [Line2D([], [], marker="o", color="tab:blue", markersize=3,
                          label="training")]
        if has_validation:
            handles.append(Line2D([], [], marker="o", linestyle="--", color="tab:orange",
                                  markersize=3,
                                  label="validation (images held out of the training set)"))
        if any("val_loss_after" in phase for phase in self.phases.values()):
            handles.append(Line2D([], [], marker="D", linestyle="", color="tab:orange",
                                  markersize=5, label="validation, head refit after the epochs"))
        handles.append(Line2D([], [], marker="o", linestyle="", color="black", markersize=10,
                              markerfacecolor="none", label="kept epoch"))
        figure.legend(handles=handles, loc="outside lower center", ncols=len(handles),
                      frameon=False, fontsize=9)
        title = "Training history: loss and accuracy per epoch"
        if any(name.startswith("refit") for name in self.phases):
            title += " (a refit trains the phase again, on every image)"
        if self.summary:
            summary = self.summary[0].upper() + self.summary[1:]
            title += "\n" + textwrap.fill(summary, 120)
        figure.suptitle(title, fontsize=10)
        return self

    @staticmethod
    def _plot_phase(panel: Any, metric: str, phase: Mapping[str, Any], start: int,
                    kept: int) -> None:
        epochs = start + 1 + np.arange(len(phase["loss"]))
        curves = {}
        # Validation dashed: where it equals training (an accuracy of 1.0), both show.
        for key, colour, style in ((metric, "tab:blue", "o-"),
                                   (f"val_{metric}", "tab:orange", "o--")):
            values = np.asarray(phase.get(key, ()), dtype=float)
            if values.size == len(epochs):
                x = epochs
                if f"initial_{key}" in phase:
                    # Where the phase started from: the weights it can fall back to.
                    x = np.concatenate([[start + 0.5], epochs])
                    values = np.concatenate([[phase[f"initial_{key}"]], values])
                panel.plot(x, values, style, color=colour, markersize=3, linewidth=1.5)
                curves[key] = (x, values)
        after = phase.get(f"val_{metric}_after")
        if after is not None and f"val_{metric}" in curves:
            # The head refit on the tuned features after the last epoch: judged first.
            x, values = curves[f"val_{metric}"]
            x_after = x[-1] + 0.45
            panel.plot([x[-1], x_after], [values[-1], after], ":", color="tab:orange",
                       linewidth=1.2)
            panel.plot(x_after, after, "D", color="tab:orange", markersize=5)
            curves[f"val_{metric}"] = (np.append(x, x_after), np.append(values, after))
            epochs = np.append(epochs, x_after)
            # The ring goes on what the check kept: the refit, unless it fell back on
            # the head the epochs trained (``head_refit`` False), whose score is the
            # last epoch's.
            if kept >= 0 and phase.get("head_refit", True):
                kept = len(epochs) - 1
        # The ring goes on the curve that decided what was kept: validation where it ran.
        decided = curves.get(f"val_{metric}", curves.get(metric))
        if decided is None:
            return
        x, values = decided
        if kept >= 0:
            index = kept + (len(x) - len(epochs))
        elif len(x) > len(epochs):
            index = 0  # the starting weights, drawn before the first epoch
        else:
            return  # kept its start, whose score on this metric was not recorded
        panel.plot(x[index], values[index], "o", color="black", markersize=10,
                   markerfacecolor="none", markeredgewidth=1.5)

    def _name_phases(self, panel: Any, starts: Mapping[str, int]) -> None:
        """Name each phase above the panel, centred on its epochs.

        A name that would run into one before it goes a line higher, so that short phases
        side by side keep readable names.
        """
        if list(self.phases) == [""]:
            return
        low, high = panel.get_xlim()
        # About this much of the panel's width per character, at 8 points.
        per_char = 0.062 / max(panel.get_position().width * panel.figure.get_figwidth(), 1.0)
        names, centres, levels, ends = [], [], [], []  # ends: right edge reached per level
        for name, phase in self.phases.items():
            names.append(_PHASE_NAMES.get(name, name))
            if phase.get("folds", 1) > 1:  # the check's runs, pooled over their folds
                names[-1] += f" ({phase['folds']}-fold check)"
            centres.append(starts[name] + (len(phase["loss"]) + 1) / 2)
            middle, half = (centres[-1] - low) / (high - low), per_char * len(names[-1]) / 2
            level = next((k for k, end in enumerate(ends) if end + 0.01 < middle - half),
                         len(ends))
            ends[level:level + 1] = [middle + half]
            levels.append(level)
        for name, centre, level in zip(names, centres, levels, strict=True):
            panel.annotate(name, (centre, 1.0), xycoords=("data", "axes fraction"),
                           xytext=(0, 3 + 11 * level), textcoords="offset points",
                           ha="center", va="bottom", fontsize=8, annotation_clip=False)

    def save(self, path: str | os.PathLike, **savefig_kw: Any) -> None:
        """Save the picture, as ``figure_.savefig(path, **savefig_kw)``."""
        self.figure_.savefig(path, **{"dpi": 110, **savefig_kw})


def plot_history(history: Any, *, ax: Any = None) -> TrainingHistoryDisplay:
    """Training curves of a :class:`~transferkit.FineTunedClassifier`: loss and accuracy.

    The phases that ran epochs follow each other on one epoch axis, each named above
    the panels: fine-tuning on the training part, then, with early stopping, fine-tuning
    again on every image (and the head's epochs before each with ``head_init="adam"``).
    Training values and validation values (on the images held out for early stopping)
    are drawn in two colours; a ring marks the epoch each phase kept, and the title says
    which weights the fit ended with. Needs matplotlib (``pip install "transferkit[viz]"``).

    .. versionchanged:: 0.1
       Returns a :class:`TrainingHistoryDisplay` drawn with matplotlib instead of a PIL
       image; ``.save(path)`` still writes the picture. ``size=`` is gone: draw into an
       Axes of a figure of your own size with ``ax=``.

    Parameters
    ----------
    history : FineTunedClassifier or dict
        A fitted classifier, its ``history_``, or a single phase's dict with a ``"loss"``
        list (and optionally ``"accuracy"``, ``"val_loss"``, ``"val_accuracy"``).
    ax : matplotlib.axes.Axes, default=None
        The area to draw in, divided into two panels; a new figure when None.

    Returns
    -------
    display : TrainingHistoryDisplay
        With ``figure_`` and the loss and accuracy panels in ``axes_``.

    Examples
    --------
    >>> from transferkit.viz import plot_history
    >>> plot_history(clf).save("curves.png")  # doctest: +SKIP
    """
    if isinstance(history, Mapping):
        return TrainingHistoryDisplay.from_history(history, ax=ax)
    return TrainingHistoryDisplay.from_estimator(history, ax=ax)
