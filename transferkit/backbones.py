"""Registry of the Keras Applications backbones and how to build them.

The registry is discovered from the installed ``keras.applications`` rather
than hard-coded, so a Keras release that adds a constructor makes it available
here without a transferkit release. A small static table adds what cannot be
read from a constructor without building it (default input size, width of the
feature map, kind of preprocessing).

Keras is imported inside the functions: ``import transferkit`` must not pay
for TensorFlow's start-up.
"""

# Authors: The transferkit developers
# SPDX-License-Identifier: BSD-3-Clause

from __future__ import annotations

import difflib
import functools
import inspect
import numbers
import os
import re
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .advice import advised
from .backbone_table import BACKBONES, describes_installed_keras
from .console import download_notice_kept_on_success
from .weights_files import load_weights_file, resolve_weights

if TYPE_CHECKING:
    import keras

__all__ = [
    "BackboneSpec",
    "WeightsUnavailableError",
    "build_backbone",
    "build_smallest",
    "get_backbone_spec",
    "list_backbones",
    "resolve_input_size",
]

# `preprocess_input` is defined once per keras.applications submodule, so the
# kind of preprocessing is a property of the module, not of the constructor.
_PREPROCESSING_BY_MODULE: dict[str, str] = {
    "convnext": "in_model",
    "densenet": "torch",
    "efficientnet": "in_model",
    "efficientnet_v2": "in_model",
    "inception_resnet_v2": "tf",
    "inception_v3": "tf",
    "mobilenet": "tf",
    "mobilenet_v2": "tf",
    "mobilenet_v3": "in_model",
    "nasnet": "tf",
    "resnet": "caffe",
    "resnet_v2": "tf",
    "vgg16": "caffe",
    "vgg19": "caffe",
    "xception": "tf",
}

# Smallest input side each module's constructor accepts (its `min_size`).
# Used to build throw-away models cheaply, e.g. to read layer names.
_MIN_INPUT_SIZE_BY_MODULE: dict[str, int] = {
    "inception_resnet_v2": 75,
    "inception_v3": 75,
    "xception": 71,
}
_DEFAULT_MIN_INPUT_SIZE = 32

_DEFAULT_SIZE_FOR_UNKNOWN = 224

# Constructor parameters that build_backbone sets itself, with what to do instead (templates
# of transferkit.advice).
_RESERVED_KWARGS: dict[str, str] = {
    "include_top": (
        "transferkit always builds the backbone without its classification top; "
        "choose how deep to go with a cut point instead (see {list_cut_points})"
    ),
    "weights": "{choose_weights} instead",
    "input_shape": "{choose_input_size} instead",
    "input_tensor": "{choose_input_size} instead",
    "pooling": (
        "build_backbone always returns the unpooled feature map; pooling is applied "
        "after the cut point, outside the backbone"
    ),
    "classes": (
        "the number of classes only matters for the classification top, which "
        "transferkit never builds; remove this key"
    ),
}


class WeightsUnavailableError(OSError):
    """The ImageNet weights of a backbone could not be downloaded or found in the Keras cache."""


@dataclass(frozen=True)
class BackboneSpec:
    """Static description of a ``keras.applications`` backbone.

    Parameters
    ----------
    name : str
        Name of the Keras constructor, e.g. ``"ResNet50"``.
    module : str
        Submodule of ``keras.applications`` holding the constructor's
        ``preprocess_input``, e.g. ``"resnet"`` or ``"efficientnet_v2"``.
    default_size : int
        Side of the square input the constructor defaults to, and that the
        ImageNet weights were trained at.
    feature_width : int
        Number of channels of the ``include_top=False`` output, i.e. the
        length of the feature vector after global pooling, with the default
        constructor arguments.
    preprocessing : str
        What ``preprocess_input`` does: ``"caffe"`` (RGB to BGR and ImageNet
        mean subtracted), ``"tf"`` (scaled to ``[-1, 1]``), ``"torch"``
        (scaled to ``[0, 1]`` and standardised with the ImageNet statistics),
        ``"in_model"`` (identity: the model rescales its inputs itself) or
        ``"unknown"`` for a module transferkit has no record of.
    """

    name: str
    module: str
    default_size: int
    feature_width: int
    preprocessing: str

    @property
    def constructor(self) -> Callable[..., keras.Model]:
        """The ``keras.applications`` function that builds this backbone."""
        import keras

        submodule = getattr(keras.applications, self.module, None)
        # MobileNetV3Large/Small are exported at the top level only.
        constructor = getattr(submodule, self.name, None) or getattr(
            keras.applications, self.name, None
        )
        if constructor is None:
            raise AttributeError(
                f"keras.applications has no constructor named {self.name!r} (looked in "
                f"keras.applications.{self.module} and keras.applications); the installed "
                f"Keras {keras.__version__} may be older than the one this spec was made for."
            )
        return constructor

    @property
    def preprocess_input(self) -> Callable[..., Any]:
        """``keras.applications.<module>.preprocess_input`` for this backbone."""
        import keras

        submodule = getattr(keras.applications, self.module, None)
        if submodule is None or not hasattr(submodule, "preprocess_input"):
            raise AttributeError(
                f"keras.applications.{self.module} has no preprocess_input for {self.name}; "
                f"preprocess the images as {self.name}'s documentation describes."
            )
        return submodule.preprocess_input


@dataclass(frozen=True)
class _Entry:
    name: str
    module: str
    default_size: int
    feature_width: int | None
    preprocessing: str


def _module_of(constructor: Callable[..., Any], found_in: str | None) -> str:
    """Name of the keras.applications submodule exposing a constructor's preprocessing."""
    import keras

    # keras.src.applications.resnet.ResNet50 -> "resnet"; this also collapses the
    # `resnet50` alias module onto `resnet`.
    defined_in = getattr(constructor, "__module__", "") or ""
    candidate = defined_in.rsplit(".", 1)[-1]
    submodule = getattr(keras.applications, candidate, None)
    if inspect.ismodule(submodule) and hasattr(submodule, "preprocess_input"):
        return candidate
    if found_in is not None:
        return found_in
    return candidate


@functools.cache
def _registry() -> dict[str, _Entry]:
    """Map lower-cased name -> entry, for every constructor of keras.applications."""
    if describes_installed_keras():
        return {
            name.lower(): _Entry(name, module, size, width,
                                 _PREPROCESSING_BY_MODULE.get(module, "unknown"))
            for name, (module, size, width, _) in BACKBONES.items()
        }
    return _discovered_registry()


def _discovered_registry() -> dict[str, _Entry]:
    """Walk keras.applications; map lower-cased name -> entry."""
    import keras

    applications = keras.applications
    # (owner, name of the owning submodule or None for the top level)
    owners: list[tuple[Any, str | None]] = [(applications, None)]
    for attr in sorted(dir(applications)):
        value = getattr(applications, attr)
        if not attr.startswith("_") and inspect.ismodule(value):
            owners.append((value, attr))

    entries: dict[str, _Entry] = {}
    for owner, owner_name in owners:
        for attr in sorted(dir(owner)):
            if not attr[:1].isupper():
                continue
            constructor = getattr(owner, attr)
            if not callable(constructor) or inspect.isclass(constructor):
                continue
            key = attr.lower()
            if key in entries:
                continue
            module = _module_of(constructor, owner_name)
            _, default_size, feature_width, _ = BACKBONES.get(
                attr, (None, _DEFAULT_SIZE_FOR_UNKNOWN, None, None)
            )
            entries[key] = _Entry(
                name=attr,
                module=module,
                default_size=default_size,
                feature_width=feature_width,
                preprocessing=_PREPROCESSING_BY_MODULE.get(module, "unknown"),
            )
    return entries


def _canonical_entry(name: str) -> _Entry:
    if not isinstance(name, str):
        raise TypeError(
            f"backbone must be the name of a keras.applications constructor, e.g. "
            f"'ResNet50'; got {name!r} of type {type(name).__name__}."
        )
    registry = _registry()
    entry = registry.get(name.strip().lower())
    if entry is None:
        known = sorted(e.name for e in registry.values())
        by_lower = {k.lower(): k for k in known}
        close = difflib.get_close_matches(name.strip().lower(), list(by_lower), n=5, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(by_lower[c]) for c in close)}?" if close else ""
        if "/" in name or os.sep in name:
            # A keras-hub preset directory is recognised by its config.json, so one missing
            # here (a worker that cannot read the client's disk) reads as a backbone name.
            hint += (
                " Nor is it a keras-hub preset directory on this machine: it holds no "
                "config.json here. Pass a preset directory that every process building the "
                "network can read (on Dask or Spark, every worker), or fit the extractor "
                "first: a fitted one carries its preset."
            )
        raise advised(
            ValueError,
            "Unknown backbone {name!r}.{hint} See {list_backbones} for the {count} backbones "
            "of the installed keras.applications.",
            name=name, hint=hint, count=len(known),
        )
    return entry


@functools.cache
def _spec_for(canonical_name: str) -> BackboneSpec:
    entry = _registry()[canonical_name.lower()]
    feature_width = entry.feature_width
    if feature_width is None:
        feature_width = _measure_feature_width(entry)
    return BackboneSpec(
        name=entry.name,
        module=entry.module,
        default_size=entry.default_size,
        feature_width=feature_width,
        preprocessing=entry.preprocessing,
    )


def _measure_feature_width(entry: _Entry) -> int:
    """Channels of a constructor the static table does not know, by building it."""
    import keras

    provisional = BackboneSpec(entry.name, entry.module, entry.default_size, 0, "unknown")
    model = _construct(
        provisional,
        weights=None,
        input_size=(entry.default_size, entry.default_size),
        kwargs={},
    )
    channel_axis = 1 if keras.config.image_data_format() == "channels_first" else -1
    return int(model.output.shape[channel_axis])


def get_backbone_spec(name: str) -> BackboneSpec:
    """Look up a backbone of the installed ``keras.applications`` by name.

    Parameters
    ----------
    name : str
        Constructor name, matched case-insensitively (``"resnet50"``,
        ``"ResNet50"`` and ``"RESNET50"`` are the same backbone).

    Returns
    -------
    spec : BackboneSpec
        The backbone's description.

    Raises
    ------
    ValueError
        If no constructor of that name exists; the message lists the closest
        valid names.
    """
    return _spec_for(_canonical_entry(name).name)


def list_backbones() -> list[dict[str, Any]]:
    """Describe every backbone of the installed ``keras.applications``.

    Returns
    -------
    backbones : list of dict
        One dict per backbone with keys ``name``, ``module``,
        ``default_size``, ``feature_width`` and ``preprocessing``, sorted by
        name. Convenient as ``pandas.DataFrame(list_backbones())``.

    Notes
    -----
    keras-hub presets are backbones too (``pip install "transferkit[hub]"``), spelled
    ``"hub:<preset name>"`` (``"hub:dinov2_small"``; the names are those of
    ``keras_hub.models.Backbone.presets``) or given as the path of a preset directory, so
    that no name of ``keras.applications`` is ambiguous; they are not listed here, whose
    table needs no download.
    """
    specs = [_spec_for(entry.name) for entry in _registry().values()]
    return [
        {
            "name": spec.name,
            "module": spec.module,
            "default_size": spec.default_size,
            "feature_width": spec.feature_width,
            "preprocessing": spec.preprocessing,
        }
        for spec in sorted(specs, key=lambda s: s.name)
    ]


def resolve_input_size(input_size: None | int | tuple[int, int], default: int) -> tuple[int, int]:
    """Normalise an input size to a ``(height, width)`` pair.

    Parameters
    ----------
    input_size : None, int or (int, int)
        ``None`` for the default square size, an int for a square image of
        that side, or a ``(height, width)`` pair.
    default : int
        Side used when ``input_size`` is None, typically the backbone's
        ``default_size``.

    Returns
    -------
    size : tuple of (int, int)
        ``(height, width)`` in pixels.

    Raises
    ------
    ValueError
        If a side is not a positive integer or the pair does not have
        exactly two entries.
    """
    if input_size is None:
        input_size = default
    if isinstance(input_size, numbers.Integral) and not isinstance(input_size, bool):
        sides: tuple[Any, ...] = (input_size, input_size)
    elif isinstance(input_size, (tuple, list)) and len(input_size) == 2:
        sides = tuple(input_size)
    else:
        raise ValueError(
            f"input_size must be None, a positive int or a (height, width) pair of positive "
            f"ints; got {input_size!r}."
        )
    for side in sides:
        if not isinstance(side, numbers.Integral) or isinstance(side, bool) or side <= 0:
            raise ValueError(
                f"input_size must contain positive integers (pixels); got {input_size!r}, "
                f"whose entry {side!r} is not one."
            )
    return int(sides[0]), int(sides[1])


def _small_input_size(spec: BackboneSpec) -> int:
    """Smallest square side the constructor accepts: the cheapest model to build."""
    return _MIN_INPUT_SIZE_BY_MODULE.get(spec.module, _DEFAULT_MIN_INPUT_SIZE)


def build_smallest(backbone: str, backbone_kwargs: dict[str, Any] | None = None) -> keras.Model:
    """The backbone with random weights at the smallest input size it accepts.

    The cheapest model that has every layer of the architecture: what reading its layer
    graph (cut points, say) needs.
    """
    spec = get_backbone_spec(backbone)
    kwargs = _check_backbone_kwargs(backbone_kwargs, spec)
    side = _small_input_size(spec)
    try:
        return _construct(spec, weights=None, input_size=(side, side), kwargs=kwargs)
    except ValueError:
        # A constructor transferkit does not know may need more than the usual minimum.
        side = spec.default_size
        return _construct(spec, weights=None, input_size=(side, side), kwargs=kwargs)


def _check_backbone_kwargs(
    backbone_kwargs: dict[str, Any] | None, spec: BackboneSpec
) -> dict[str, Any]:
    if backbone_kwargs is None:
        return {}
    if not isinstance(backbone_kwargs, dict):
        raise TypeError(
            f"backbone_kwargs must be a dict of extra arguments for "
            f"keras.applications.{spec.name}, e.g. {{'alpha': 0.25}}; got "
            f"{type(backbone_kwargs).__name__} {backbone_kwargs!r}."
        )
    for key in backbone_kwargs:
        if key in _RESERVED_KWARGS:
            raise advised(ValueError, "{backbone_kwargs_option} may not contain {key!r}: "
                          + _RESERVED_KWARGS[key] + ".", key=key)
    parameters = inspect.signature(spec.constructor).parameters
    takes_var_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    unknown = sorted(set(backbone_kwargs) - set(parameters))
    if unknown and not takes_var_kwargs:
        accepted = sorted(set(parameters) - set(_RESERVED_KWARGS))
        raise advised(
            TypeError,
            "keras.applications.{name} does not accept {unknown} in {backbone_kwargs_option}; it "
            "accepts {accepted}.",
            name=spec.name, unknown=unknown, accepted=accepted,
        )
    return dict(backbone_kwargs)


def _construct(
    spec: BackboneSpec,
    *,
    weights: str | None,
    input_size: tuple[int, int],
    kwargs: dict[str, Any],
) -> keras.Model:
    import keras

    height, width = input_size
    if keras.config.image_data_format() == "channels_first":
        input_shape: tuple[int, int, int] = (3, height, width)
    else:
        input_shape = (height, width, 3)
    try:
        downloads = download_notice_kept_on_success() if weights == "imagenet" else nullcontext()
        with warnings.catch_warnings(), downloads:
            # MobileNet's constructors warn at any size but 128/160/192/224 that the 224
            # weights are loaded: right without the top, whose convolutions take any size.
            warnings.filterwarnings(
                "ignore", message=r"`input_shape` is undefined or non-square", category=UserWarning
            )
            return spec.constructor(
                include_top=False,
                weights=weights,
                input_shape=input_shape,
                pooling=None,
                **kwargs,
            )
    except WeightsUnavailableError:
        raise
    except ValueError as err:
        message = str(err)
        minimum = re.search(r"at least (\d+)\s*x\s*(\d+)", message)
        sizes = {"input_size": input_size, "name": spec.name, "default": spec.default_size}
        if minimum is not None:
            raise advised(
                ValueError,
                "{input_size_given} is too small for {name}: it needs images of at least "
                "{minimum} pixels. Pass a larger {input_size_option} (the default for {name} is "
                "{default}).",
                minimum=f"{minimum.group(1)}x{minimum.group(2)}", **sizes,
            ) from err
        if re.search(r"negative|output size|too small", message, flags=re.IGNORECASE):
            raise advised(
                ValueError,
                "{input_size_given} is too small for {name}: its feature map shrinks below "
                "one pixel. Pass a larger {input_size_option} (the default for {name} is "
                "{default}).",
                **sizes,
            ) from err
        raise
    except Exception as err:
        # keras.utils.get_file reports every failed download as a bare Exception.
        if weights == "imagenet" and "URL fetch failure" in str(err):
            home = os.path.expanduser(
                os.environ.get("KERAS_HOME") or os.path.join("~", ".keras")
            )
            if not os.access(home, os.W_OK):
                home = os.path.join("/tmp", ".keras")  # where Keras itself falls back
            cache = Path(home) / "models"
            raise advised(
                WeightsUnavailableError,
                "Could not download the ImageNet weights of {name} ({reason}). Without "
                "internet, put the Keras weight file in {cache!r} (KERAS_HOME must be "
                "writable), pass {weights_file}, or use {random_weights} for random "
                "initialisation.",
                name=spec.name, reason=str(err), cache=str(cache),
            ) from err
        raise


def build_backbone(
    backbone: str,
    *,
    weights: str | os.PathLike[str] | None = "imagenet",
    input_size: tuple[int, int] | int | None,
    backbone_kwargs: dict[str, Any] | None = None,
) -> keras.Model:
    """Build a ``keras.applications`` backbone without its classification top.

    Parameters
    ----------
    backbone : str
        Constructor name, case-insensitive (see :func:`list_backbones`).
    weights : "imagenet", None or path-like, default="imagenet"
        ``"imagenet"`` downloads (once, into ``$KERAS_HOME/models``) and
        loads the ImageNet weights through Keras itself; ``None`` keeps the
        random initialisation; a path loads a weights file into the model:
        a legacy ``.h5``/``.hdf5`` file (as distributed for
        ``keras.applications``, with or without the classification top), a
        Keras 3 ``.weights.h5`` file or a ``.keras`` model file (loaded with
        ``safe_mode=True``; weights are copied by layer name).
    input_size : (int, int), int or None
        ``(height, width)`` of the input images; an int means a square; None
        means the backbone's ``default_size``.
    backbone_kwargs : dict, default=None
        Extra arguments for the constructor, e.g. ``{"alpha": 0.25}`` for
        MobileNet. Arguments transferkit sets itself (``include_top``,
        ``weights``, ``input_shape``, ``input_tensor``, ``pooling``,
        ``classes``) are rejected.

    Returns
    -------
    model : keras.Model
        The ``include_top=False`` model with ``pooling=None``: its output is
        the last feature map.

    Raises
    ------
    ValueError
        For an unknown backbone, an input size the backbone cannot take, a
        reserved key in ``backbone_kwargs``, an unusable ``weights`` value or
        a weights file that does not cover every weighted layer.
    FileNotFoundError
        If ``weights`` is a path that does not exist.
    """
    spec = get_backbone_spec(backbone)
    size = resolve_input_size(input_size, spec.default_size)
    kwargs = _check_backbone_kwargs(backbone_kwargs, spec)
    source = resolve_weights(weights)
    model = _construct(
        spec,
        weights="imagenet" if source == "imagenet" else None,
        input_size=size,
        kwargs=kwargs,
    )
    if isinstance(source, Path):
        load_weights_file(model, source)
    return model
