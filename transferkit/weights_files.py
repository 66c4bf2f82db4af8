"""Weights files loaded into a built backbone: legacy ``.h5``, Keras 3 ``.weights.h5``,
``.keras``.

Owns telling what a ``weights=`` value is (:func:`resolve_weights`: "imagenet", None or an
existing file of a format transferkit loads) and loading such a file into a model built
without weights (:func:`load_weights_file`), with an error naming the layers a file does
not cover. ``"imagenet"`` itself goes through Keras' own download and cache, in
:func:`transferkit.backbones.build_backbone`, which calls this module.

Imports nothing of transferkit.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .advice import advised

if TYPE_CHECKING:
    import keras

__all__ = ["WEIGHT_FILE_SUFFIXES", "load_weights_file", "resolve_weights"]

WEIGHT_FILE_SUFFIXES = (".weights.h5", ".keras", ".h5", ".hdf5")


def resolve_weights(weights: Any) -> str | Path | None:
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
        or path.name.lower().endswith(WEIGHT_FILE_SUFFIXES)
        or os.sep in str(weights)
        or (os.altsep is not None and os.altsep in str(weights))
    )
    if path.is_file():
        if not path.name.lower().endswith(WEIGHT_FILE_SUFFIXES):
            raise advised(
                ValueError,
                "{weights_given} is a file, but not a format transferkit can load: use a "
                "legacy Keras '.h5'/'.hdf5' weights file, a Keras 3 '.weights.h5' file or a "
                "'.keras' model file.",
                weights=str(weights),
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
    return advised(
        ValueError,
        "{path!r} has no matching weights (same layer name and shapes) for {n_missing} of "
        "the {n_weighted} weighted layers of {model!r}: {shown}{more}. The file must come "
        "from the same backbone and constructor arguments ({backbone_kwargs_option}); refusing "
        "to leave these layers randomly initialised.",
        path=str(path), n_missing=len(missing), n_weighted=len(_weighted_layers(model)),
        model=model.name, shown=shown, more=more,
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
            raise advised(
                ValueError,
                "Layer {layer!r} has weights of shapes {expected} but {path!r} holds shapes "
                "{received} for it: the file comes from a different architecture or "
                "{backbone_kwargs_option}.",
                layer=layer.name, expected=expected, path=str(path), received=received,
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


def load_weights_file(model: keras.Model, path: Path) -> None:
    lower = path.name.lower()
    if lower.endswith(".weights.h5"):
        _load_keras3_weights(model, path)
    elif lower.endswith(".keras"):
        _load_keras_file(model, path)
    else:
        _load_legacy_h5(model, path)
