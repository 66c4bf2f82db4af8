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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import keras

__all__ = [
    "BackboneSpec",
    "WeightsUnavailableError",
    "build_backbone",
    "get_backbone_spec",
    "list_backbones",
    "resolve_input_size",
]

# name -> (default square input size, channels of the include_top=False output).
# Sizes are the ones each constructor documents as `default_size`; widths were
# measured on Keras 3 with the default constructor arguments.
_KNOWN_BACKBONES: dict[str, tuple[int, int]] = {
    "ConvNeXtTiny": (224, 768),
    "ConvNeXtSmall": (224, 768),
    "ConvNeXtBase": (224, 1024),
    "ConvNeXtLarge": (224, 1536),
    "ConvNeXtXLarge": (224, 2048),
    "DenseNet121": (224, 1024),
    "DenseNet169": (224, 1664),
    "DenseNet201": (224, 1920),
    "EfficientNetB0": (224, 1280),
    "EfficientNetB1": (240, 1280),
    "EfficientNetB2": (260, 1408),
    "EfficientNetB3": (300, 1536),
    "EfficientNetB4": (380, 1792),
    "EfficientNetB5": (456, 2048),
    "EfficientNetB6": (528, 2304),
    "EfficientNetB7": (600, 2560),
    "EfficientNetV2B0": (224, 1280),
    "EfficientNetV2B1": (240, 1280),
    "EfficientNetV2B2": (260, 1408),
    "EfficientNetV2B3": (300, 1536),
    "EfficientNetV2S": (384, 1280),
    "EfficientNetV2M": (480, 1280),
    "EfficientNetV2L": (480, 1280),
    "InceptionResNetV2": (299, 1536),
    "InceptionV3": (299, 2048),
    "MobileNet": (224, 1024),
    "MobileNetV2": (224, 1280),
    "MobileNetV3Small": (224, 576),
    "MobileNetV3Large": (224, 960),
    "NASNetMobile": (224, 1056),
    "NASNetLarge": (331, 4032),
    "ResNet50": (224, 2048),
    "ResNet101": (224, 2048),
    "ResNet152": (224, 2048),
    "ResNet50V2": (224, 2048),
    "ResNet101V2": (224, 2048),
    "ResNet152V2": (224, 2048),
    "VGG16": (224, 512),
    "VGG19": (224, 512),
    "Xception": (299, 2048),
}

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

# Constructor parameters that build_backbone sets itself, with what to do instead.
_RESERVED_KWARGS: dict[str, str] = {
    "include_top": (
        "transferkit always builds the backbone without its classification top; "
        "choose how deep to go with a cut point instead (see list_cut_points())"
    ),
    "weights": "pass weights= to build_backbone instead",
    "input_shape": "pass input_size=(height, width) to build_backbone instead",
    "input_tensor": "pass input_size=(height, width) to build_backbone instead",
    "pooling": (
        "build_backbone always returns the unpooled feature map; pooling is applied "
        "after the cut point, outside the backbone"
    ),
    "classes": (
        "the number of classes only matters for the classification top, which "
        "transferkit never builds; remove this key"
    ),
}

_WEIGHT_FILE_SUFFIXES = (".weights.h5", ".keras", ".h5", ".hdf5")


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
    """Walk keras.applications once; map lower-cased name -> entry."""
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
            default_size, feature_width = _KNOWN_BACKBONES.get(
                attr, (_DEFAULT_SIZE_FOR_UNKNOWN, None)
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
        raise ValueError(
            f"Unknown backbone {name!r}.{hint} Call transferkit.backbones.list_backbones() "
            f"for the {len(known)} backbones of the installed keras.applications."
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
            raise ValueError(f"backbone_kwargs may not contain {key!r}: {_RESERVED_KWARGS[key]}.")
    parameters = inspect.signature(spec.constructor).parameters
    takes_var_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    unknown = sorted(set(backbone_kwargs) - set(parameters))
    if unknown and not takes_var_kwargs:
        accepted = sorted(set(parameters) - set(_RESERVED_KWARGS))
        raise TypeError(
            f"keras.applications.{spec.name} does not accept {unknown} in backbone_kwargs; "
            f"it accepts {accepted}."
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
        if minimum is not None:
            raise ValueError(
                f"input_size={input_size} is too small for {spec.name}: it needs images of "
                f"at least {minimum.group(1)}x{minimum.group(2)} pixels. Pass a larger "
                f"input_size (the default for {spec.name} is {spec.default_size})."
            ) from err
        if re.search(r"negative|output size|too small", message, flags=re.IGNORECASE):
            raise ValueError(
                f"input_size={input_size} is too small for {spec.name}: its feature map "
                f"shrinks below one pixel. Pass a larger input_size (the default for "
                f"{spec.name} is {spec.default_size})."
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
            raise WeightsUnavailableError(
                f"Could not download the ImageNet weights of {spec.name} ({err}). Without "
                f"internet, put the Keras weight file in {str(cache)!r} (KERAS_HOME must be "
                f"writable), pass weights='/path/to/weights.h5', or use weights=None for "
                f"random initialisation."
            ) from err
        raise


def _resolve_weights(weights: Any) -> str | Path | None:
    """Classify `weights` as "imagenet", None or an existing weights file."""
    if weights is None or weights == "imagenet":
        return weights
    if not isinstance(weights, (str, os.PathLike)):
        raise TypeError(
            f"weights must be 'imagenet', None or the path of a weights file; got "
            f"{type(weights).__name__} {weights!r}."
        )
    path = Path(os.fspath(weights)).expanduser()
    looks_like_path = (
        isinstance(weights, os.PathLike)
        or path.name.lower().endswith(_WEIGHT_FILE_SUFFIXES)
        or os.sep in str(weights)
        or (os.altsep is not None and os.altsep in str(weights))
    )
    if path.is_file():
        if not path.name.lower().endswith(_WEIGHT_FILE_SUFFIXES):
            raise ValueError(
                f"weights={str(weights)!r} is a file, but not a format transferkit can load: "
                f"use a legacy Keras '.h5'/'.hdf5' weights file, a Keras 3 '.weights.h5' "
                f"file or a '.keras' model file."
            )
        return path
    if path.exists():
        raise ValueError(
            f"weights={str(weights)!r} is a directory; pass the path of a '.h5', '.hdf5', "
            f"'.weights.h5' or '.keras' file."
        )
    if looks_like_path:
        raise FileNotFoundError(f"Weights file not found: {str(path)!r}.")
    raise ValueError(
        f"weights={weights!r} is not understood: pass 'imagenet' for the ImageNet weights "
        f"(downloaded once and cached under $KERAS_HOME/models), None for random "
        f"initialisation, or the path of an existing '.h5', '.hdf5', '.weights.h5' or "
        f"'.keras' file."
    )


def _weighted_layers(model: keras.Model) -> list[Any]:
    return [layer for layer in model.layers if layer.weights]


def _missing_layers_error(model: keras.Model, path: Path, missing: list[str]) -> ValueError:
    shown = ", ".join(repr(name) for name in missing[:10])
    more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
    return ValueError(
        f"{str(path)!r} has no matching weights (same layer name and shapes) for "
        f"{len(missing)} of the "
        f"{len(_weighted_layers(model))} weighted layers of {model.name!r}: {shown}{more}. "
        f"The file must come from the same backbone and constructor arguments "
        f"(backbone_kwargs); refusing to leave these layers randomly initialised."
    )


def _legacy_variables(layer: Any) -> list[Any]:
    # Legacy HDF5 files store a layer's trainable weights before its non-trainable ones.
    return list(layer.trainable_weights) + list(layer.non_trainable_weights)


def _load_legacy_h5(model: keras.Model, path: Path) -> None:
    import h5py

    with h5py.File(path, "r") as handle:
        group: Any = handle
        if "layer_names" not in group.attrs and "model_weights" in group:
            group = group["model_weights"]
        if "layer_names" not in group.attrs:
            layout = (
                " It looks like a Keras 3 weights file: rename it to end in '.weights.h5'."
                if "layers" in group or "vars" in group
                else ""
            )
            raise ValueError(
                f"{str(path)!r} is not a legacy Keras weights file (no 'layer_names' "
                f"attribute).{layout}"
            )
        # name -> weight shapes, for the saved layers that have weights, in file order.
        saved: dict[str, list[tuple[int, ...]]] = {}
        for raw_name in group.attrs["layer_names"]:
            name = _decode(raw_name)
            weight_names = [_decode(w) for w in group[name].attrs.get("weight_names", [])]
            if weight_names:
                saved[name] = [tuple(group[name][w].shape) for w in weight_names]

        weighted = _weighted_layers(model)
        if len(saved) == len(weighted):
            # Same number of weighted layers: the file was saved from this very
            # architecture (this is how keras.applications loads its *_no_top.h5
            # files), so match by topology, which survives auto-generated names.
            model.load_weights(path)
            return

        # A different count means extra layers, typically the classification top.
        expected = [[tuple(v.shape) for v in _legacy_variables(layer)] for layer in weighted]
        order = list(saved)
        if all(layer.name in saved for layer in weighted):
            positions = [order.index(layer.name) for layer in weighted]
            by_name_consistent = positions == sorted(positions) and all(
                saved[layer.name] == shapes
                for layer, shapes in zip(weighted, expected, strict=True)
            )
            if by_name_consistent:
                model.load_weights(path, by_name=True)
                return
        # Auto-generated names ("conv2d_7") depend on what the saving session built
        # before, so they need not match ours; a top saved after the body leaves our
        # layers as the file's first ones, which the shapes confirm.
        prefix = order[: len(weighted)]
        if len(prefix) == len(weighted) and [saved[n] for n in prefix] == expected:
            for layer, name in zip(weighted, prefix, strict=True):
                weight_names = [_decode(w) for w in group[name].attrs["weight_names"]]
                for variable, weight_name in zip(
                    _legacy_variables(layer), weight_names, strict=True
                ):
                    variable.assign(group[name][weight_name][()])
            return

    missing = [
        layer.name
        for layer, shapes in zip(weighted, expected, strict=True)
        if saved.get(layer.name) != shapes
    ]
    raise _missing_layers_error(model, path, missing or [layer.name for layer in weighted])


def _decode(name: Any) -> str:
    return name.decode("utf8") if isinstance(name, bytes) else str(name)


def _load_keras_file(model: keras.Model, path: Path) -> None:
    import keras

    source = keras.saving.load_model(path, compile=False, safe_mode=True)
    by_name: dict[str, Any] = {}
    for layer in _flatten_layers(source):
        by_name.setdefault(layer.name, layer)
    weighted = _weighted_layers(model)
    missing = [layer.name for layer in weighted if layer.name not in by_name]
    if missing:
        raise _missing_layers_error(model, path, missing)
    for layer in weighted:
        values = by_name[layer.name].get_weights()
        expected = [tuple(w.shape) for w in layer.weights]
        received = [tuple(v.shape) for v in values]
        if expected != received:
            raise ValueError(
                f"Layer {layer.name!r} has weights of shapes {expected} but {str(path)!r} "
                f"holds shapes {received} for it: the file comes from a different "
                f"architecture or backbone_kwargs."
            )
        layer.set_weights(values)


def _flatten_layers(model: Any) -> list[Any]:
    """Layers of a model, descending into nested models (e.g. a backbone inside a classifier)."""
    flat = []
    for layer in getattr(model, "layers", []):
        flat.append(layer)
        if getattr(layer, "layers", None):
            flat.extend(_flatten_layers(layer))
    return flat


def _load_keras3_weights(model: keras.Model, path: Path) -> None:
    # Keras 3 files key layers by class and position, not by name; Keras itself
    # raises when a layer of ours has nothing in the file, listing the layers.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            model.load_weights(path)
        except ValueError as err:
            listing = str(err).partition("could not be loaded:")[2]
            missing = re.findall(r"name=([^,>\s]+)", listing)
            if missing:
                raise _missing_layers_error(model, path, missing) from err
            raise ValueError(f"Could not load {str(path)!r} into {model.name!r}: {err}") from err
    # Only pass Keras' warnings on when the load succeeded: on failure they
    # just repeat, less clearly, what the error says.
    for warning in caught:
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)


def _load_weights_file(model: keras.Model, path: Path) -> None:
    lower = path.name.lower()
    if lower.endswith(".weights.h5"):
        _load_keras3_weights(model, path)
    elif lower.endswith(".keras"):
        _load_keras_file(model, path)
    else:
        _load_legacy_h5(model, path)


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
    source = _resolve_weights(weights)
    model = _construct(
        spec,
        weights="imagenet" if source == "imagenet" else None,
        input_size=size,
        kwargs=kwargs,
    )
    if isinstance(source, Path):
        _load_weights_file(model, source)
    return model
