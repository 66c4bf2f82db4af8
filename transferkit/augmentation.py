"""Image framing and augmentation: random resized crops while training, a central view
otherwise, and the other augmentations fine-tuning may draw (flip, rotation, zoom).

The ImageNet backbones of ``keras.applications`` were trained on random resized crops
(a random part of the image, of random size and aspect ratio, resized to the input) and
evaluated on a central crop of the image resized slightly larger than the input. A model
fine-tuned with the same framing sees objects at the scale its pretrained filters expect.
"""

from __future__ import annotations

import math
from typing import Any

import keras

__all__ = ["AUGMENTATIONS", "AUTO_FRAMINGS", "CentralCrop", "CentralView", "RandomResizedCrop",
           "augmentation_names", "augmented", "central_offsets", "framings", "source_size"]

#: Area of a random crop as a fraction of the image: the lower bound is milder than
#: ImageNet training's 0.08, because a small data set cannot afford crops that miss the object.
CROP_SCALE = (0.35, 1.0)
#: Aspect ratio (width / height) of a random crop, drawn log-uniformly.
CROP_RATIO = (3 / 4, 4 / 3)


#: What ``crop_fraction="auto"`` chooses between: ImageNet's evaluation framing (the central
#: 87.5% of each side) and the whole image. Neither is right for every data set: on the
#: brain MRI scans and textures of docs/benchmarks.rst the whole image scored higher, on
#: 8 x 8 digits, whose border is blank, the central crop did.
AUTO_FRAMINGS = (0.875, 1.0)

MAX_SOURCE_SIDE = 4096
"""Largest side images are resized to before their central crop (a float32 batch of eight
4096 x 4096 images is 1.6 GB)."""


def source_size(input_size: tuple[int, int], crop_fraction: float) -> tuple[int, int]:
    """Size images are loaded at so that a central ``crop_fraction`` of them is ``input_size``.

    >>> source_size((224, 224), 0.875)
    (256, 256)

    Raises
    ------
    ValueError
        If the source would exceed :data:`MAX_SOURCE_SIDE` pixels a side: every image is
        resized to it, so a tiny ``crop_fraction`` would allocate terabytes.
    """
    source = tuple(int(round(side / crop_fraction)) for side in input_size)
    if max(source) > MAX_SOURCE_SIDE:
        smallest = max(input_size) / MAX_SOURCE_SIDE
        raise ValueError(
            f"crop_fraction={crop_fraction!r} would resize every image to {source[0]} x "
            f"{source[1]} pixels to keep its central {input_size[0]} x {input_size[1]}; the "
            f"source may be at most {MAX_SOURCE_SIDE} pixels a side, so for this input size "
            f"crop_fraction must be at least {smallest:.3g} (0.875 is ImageNet's framing)."
        )
    return source


def framings(crop_fraction: float | str) -> tuple[float, ...]:
    """The framings ``crop_fraction`` allows: all of :data:`AUTO_FRAMINGS` for ``"auto"``.

    >>> framings("auto"), framings(0.9)
    ((0.875, 1.0), (0.9,))
    """
    if isinstance(crop_fraction, str) and crop_fraction == "auto":
        return AUTO_FRAMINGS
    return (float(crop_fraction),)


def central_offsets(source: tuple[Any, Any], size: tuple[Any, Any]) -> tuple[Any, Any]:
    """(top, left) of the central ``size`` pixels of an image of ``source`` pixels.

    ``(source - size) // 2`` on each axis, as ``keras.layers.CenterCrop`` places it: an odd
    margin leaves the extra pixel at the bottom and right. Works on ints and on tensors.

    >>> central_offsets((256, 257), (224, 224))
    (16, 16)
    """
    return (source[0] - size[0]) // 2, (source[1] - size[1]) // 2


def _central_crop(images: Any, height: int, width: int) -> Any:
    shape = keras.ops.shape(images)
    top, left = central_offsets((shape[1], shape[2]), (height, width))
    return images[:, top:top + height, left:left + width, :]


class CentralCrop(keras.layers.Layer):
    """The central ``(height, width)`` pixels of each image, without resampling.

    The offset is ``(input - output) // 2`` on each axis, as ``keras.layers.CenterCrop``
    does. Unlike that layer, this one has no ``training`` argument: Keras resolves a
    model's training mode from the first layer that declares a default, and
    ``CenterCrop``'s ``training=True`` would put every BatchNormalization after it in
    training mode (batch statistics, moving averages overwritten) when the model is
    called without ``training=False``.

    Parameters
    ----------
    height, width : int
        Output size; the input must be at least this large.
    """

    def __init__(self, height: int, width: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.height, self.width = int(height), int(width)

    def call(self, images: Any) -> Any:
        return _central_crop(images, self.height, self.width)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return (input_shape[0], self.height, self.width, input_shape[-1])

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(height=self.height, width=self.width)
        return config


def _central_view(images: Any, height: int, width: int, fraction: float) -> Any:
    crop_h = int(round(images.shape[1] * fraction))
    crop_w = int(round(images.shape[2] * fraction))
    x = _central_crop(images, crop_h, crop_w)
    if (crop_h, crop_w) == (height, width):
        return x
    # Antialiased: a bilinear reduction without it reads only the pixels nearest to the
    # sample points, which aliases fine texture.
    return keras.ops.image.resize(x, (height, width), interpolation="bilinear",
                                  antialias=True)


class CentralView(keras.layers.Layer):
    """The central ``fraction`` of each side of each image, resized to ``(height, width)``.

    Without resampling when that part is already ``(height, width)`` pixels, as for an
    image loaded at ``input_size / fraction`` (then it is :class:`CentralCrop`); resized
    bilinearly, antialiased, otherwise: ``fraction=1`` of an image loaded larger than the
    input (for the random crops to draw from) is the whole image at the input size. No
    ``training`` argument, for :class:`CentralCrop`'s reason.

    Parameters
    ----------
    height, width : int
        Output size.
    fraction : float
        Part of each side kept, in (0, 1].
    """

    def __init__(self, height: int, width: int, fraction: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.height, self.width, self.fraction = int(height), int(width), float(fraction)

    def call(self, images: Any) -> Any:
        return _central_view(images, self.height, self.width, self.fraction)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return (input_shape[0], self.height, self.width, input_shape[-1])

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(height=self.height, width=self.width, fraction=self.fraction)
        return config


class RandomResizedCrop(keras.layers.Layer):
    """A random part of each image, resized to ``(height, width)``; a central crop at inference.

    In training, each image gets its own box: area a uniform fraction ``scale`` of the
    image, aspect ratio log-uniform in ``ratio``, position uniform, and the box is resized
    bilinearly to the output size; with ``flip``, half the boxes are read right to left,
    which mirrors them in the same resampling. At inference (``training=False``) each
    image's central view is kept (:class:`CentralView` with ``central_fraction``): what
    ``predict`` sees.

    Parameters
    ----------
    height, width : int
        Output size.
    scale : (float, float), default=CROP_SCALE
        Range of the crop's area as a fraction of the image's.
    ratio : (float, float), default=CROP_RATIO
        Range of the crop's aspect ratio (width / height).
    seed : int, default=None
        Seed of the boxes; the sequence of boxes is reproducible given it.
    central_fraction : float, default=None
        The part of each side the inference view keeps; None: the central
        ``(height, width)`` pixels, without resampling.
    flip : bool, default=False
        Mirror each crop left to right with probability 1/2. A separate
        ``keras.layers.RandomFlip`` after the crop cost as much as the crop itself (it
        writes every image twice); a box read backwards costs nothing.
    """

    def __init__(
        self,
        height: int,
        width: int,
        scale: tuple[float, float] = CROP_SCALE,
        ratio: tuple[float, float] = CROP_RATIO,
        seed: int | None = None,
        central_fraction: float | None = None,
        flip: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.height, self.width = int(height), int(width)
        self.scale, self.ratio, self.seed = tuple(scale), tuple(ratio), seed
        self.central_fraction, self.flip = central_fraction, bool(flip)
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.supports_masking = False

    def call(self, images: Any, training: bool | None = None) -> Any:
        if training:
            return self._random_crops(images)
        if self.central_fraction is not None:
            return _central_view(images, self.height, self.width, self.central_fraction)
        return _central_crop(images, self.height, self.width)

    def _random_crops(self, images: Any) -> Any:
        import tensorflow as tf

        n = tf.shape(images)[0]
        area = keras.random.uniform((n,), *self.scale, seed=self.seed_generator)
        log_ratio = keras.random.uniform(
            (n,), math.log(self.ratio[0]), math.log(self.ratio[1]), seed=self.seed_generator
        )
        aspect = tf.exp(log_ratio)
        # Box sides as fractions of the image's; a box wider or taller than the image is
        # clipped, which only makes the crop's area smaller than drawn.
        box_h = tf.minimum(1.0, tf.sqrt(area / aspect))
        box_w = tf.minimum(1.0, tf.sqrt(area * aspect))
        position = keras.random.uniform((n, 2), 0.0, 1.0, seed=self.seed_generator)
        top = position[:, 0] * (1.0 - box_h)
        left = position[:, 1] * (1.0 - box_w)
        right = left + box_w
        if self.flip:
            # crop_and_resize reads a box whose left edge lies right of its right edge
            # backwards: the crop comes out mirrored.
            mirror = keras.random.uniform((n,), 0.0, 1.0, seed=self.seed_generator) < 0.5
            left, right = tf.where(mirror, right, left), tf.where(mirror, left, right)
        boxes = tf.stack([top, left, top + box_h, right], axis=1)
        return tf.image.crop_and_resize(
            tf.cast(images, tf.float32), boxes, tf.range(n), (self.height, self.width)
        )

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return (input_shape[0], self.height, self.width, input_shape[-1])

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(height=self.height, width=self.width, scale=self.scale,
                      ratio=self.ratio, seed=self.seed, central_fraction=self.central_fraction,
                      flip=self.flip)
        return config


# ---------------------------------------------------------------------- training augmentation
AUGMENTATIONS = ("crop", "flip", "rotation", "zoom")
"""Names ``FineTunedClassifier(augment=...)`` takes, in the order they are applied."""
#: Strength of rotation (fraction of a full turn) and zoom: the values of the Keras
#: transfer-learning guide, mild enough to keep an object recognisable.
ROTATION_FACTOR = 0.1
ZOOM_FACTOR = 0.1


def augmentation_names(augment: Any) -> tuple[str, ...]:
    """The augmentations ``augment`` asks for, in :data:`AUGMENTATIONS` order.

    ``None``: none; ``"all"``: every one; a name or a tuple of names.

    Raises
    ------
    ValueError
        For an unknown name or an empty tuple, naming the value.
    """
    if augment is None:
        return ()
    if isinstance(augment, str) and augment == "all":
        return AUGMENTATIONS
    names = (augment,) if isinstance(augment, str) else tuple(augment)
    unknown = [name for name in names if name not in AUGMENTATIONS]
    if unknown or not names:
        raise ValueError(
            f"augment={augment!r} is not supported; use None, 'all', or any of "
            f"{AUGMENTATIONS} (a name or a tuple of names)."
        )
    return tuple(name for name in AUGMENTATIONS if name in names)


def augmented(images: Any, names: tuple[str, ...], size: tuple[int, int], seed: int,
              central: Any, framing: float | None = None) -> Any:
    """Images at the source size -> augmented images at ``size``, as Keras layers.

    ``central`` is the central view of ``images`` (``framing``: the part of each side it
    keeps), used when ``"crop"`` is not asked for; each augmentation draws from its own
    seed (``seed``, ``seed + 1``, ...). After a crop, the flip is the crop's own (mirrored
    boxes, :class:`RandomResizedCrop`'s ``flip``), not a layer of its own.
    """
    layers = keras.layers
    if "crop" in names:
        # Inference mode keeps the central view, so validation sees what predict sees.
        x = RandomResizedCrop(size[0], size[1], seed=seed, central_fraction=framing,
                              flip="flip" in names, name="augment_crop")(images)
    else:
        x = central
    for k, name in enumerate(names):
        seed_k = seed + 1 + k
        if name == "flip" and "crop" not in names:
            x = layers.RandomFlip("horizontal", seed=seed_k, name="augment_flip")(x)
        elif name == "rotation":
            x = layers.RandomRotation(ROTATION_FACTOR, seed=seed_k, name="augment_rotation")(x)
        elif name == "zoom":
            x = layers.RandomZoom(ZOOM_FACTOR, seed=seed_k, name="augment_zoom")(x)
    return x
