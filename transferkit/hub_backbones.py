"""keras-hub backbones as a backbone source: presets by name (``"hub:<preset>"``) or by path.

Owns what is particular to keras-hub: recognising a hub backbone among the values of
``backbone=``, loading a preset (its backbone and its image converter) with the preset's
weights or randomly initialised, the error that says how to bring a preset without
internet, turning a backbone into a flat functional model whose transformer blocks (or, for
a ConvNet, the stages of its feature pyramid) are cut points, the scale and offset of its
image converter, and how many tokens come before the patch tokens (class token,
registers).

Does not own: the network around the backbone (central crop, pooling, the runner:
:mod:`transferkit.network`), cuts by index or layer name (:mod:`transferkit.cut_points`),
the cache key (:mod:`transferkit.cache`).

keras-hub is an optional dependency (``pip install "transferkit[hub]"``), imported only
when a hub backbone is built; recognising one needs no import.
"""

# Authors: The transferkit developers
# SPDX-License-Identifier: BSD-3-Clause

from __future__ import annotations

import json
import os
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

__all__ = ["HUB_MODULE", "HUB_PREFIX", "HubBackbone", "PresetUnavailableError",
           "build_hub_backbone", "hub_block_ends", "hub_identity", "is_hub_backbone",
           "list_hub_cut_points"]

HUB_PREFIX = "hub:"
"""What a keras-hub preset name starts with in ``backbone=``: ``"hub:dinov2_small"``."""

HUB_MODULE = "keras_hub"
"""The ``module`` of a hub trunk: its block names come from :func:`hub_block_ends`."""

# Layers of a transformer's flat model that are not blocks even though they output tokens.
_NOT_BLOCKS = ("Embedding", "Normalization", "Pooling", "Dropout", "InputLayer")

# Block name -> name of the layer ending it, for every flat model built here. Weak: a
# model no one holds any more takes its entry with it.
_BLOCKS: weakref.WeakKeyDictionary[Any, dict[str, str]] = weakref.WeakKeyDictionary()


class PresetUnavailableError(OSError):
    """A keras-hub preset name could not be downloaded (no internet, or an unknown name)."""


@dataclass
class HubBackbone:
    """A keras-hub backbone made ready for transferkit.

    Attributes
    ----------
    full : keras.Model
        Functional model with one image input (channels last), sharing the preset
        backbone's layers; its output is the backbone's.
    name : str
        The preset name or directory name, e.g. ``"dinov2_small"``.
    input_size : (int, int)
        (height, width) the backbone sees.
    scale, offset : ndarray or None
        What the preset's image converter multiplies the pixels (0-255) by and adds.
    prefix_tokens : int or None
        Tokens before the patch tokens (class token and registers) for a transformer,
        None for a ConvNet.
    architecture : dict
        The Keras serialisation of the backbone and of the image converter (plain data):
        what builds the same network again without the preset (a saved estimator).
    """

    full: Any
    name: str
    input_size: tuple[int, int]
    scale: np.ndarray | None
    offset: np.ndarray | None
    prefix_tokens: int | None
    architecture: dict

    def preprocess(self, x: Any) -> Any:
        """The image converter's rescaling, in the graph: ``x * scale + offset``."""
        import keras

        if self.scale is not None:
            x = keras.ops.multiply(x, self.scale)
        if self.offset is not None:
            x = keras.ops.add(x, self.offset)
        return x


def is_hub_backbone(backbone: Any) -> bool:
    """Whether ``backbone=`` names a keras-hub preset: ``"hub:<name or path>"``, or a
    directory holding a preset's ``config.json``."""
    if isinstance(backbone, os.PathLike):
        backbone = os.fspath(backbone)
    if not isinstance(backbone, str):
        return False
    if backbone.startswith(HUB_PREFIX):
        return True
    return (Path(backbone).expanduser() / "config.json").is_file()


def _source(backbone: Any) -> str:
    """The preset as keras-hub takes it: a preset name, a handle or a local directory."""
    backbone = os.fspath(backbone)
    source = backbone[len(HUB_PREFIX):] if backbone.startswith(HUB_PREFIX) else backbone
    local = Path(source).expanduser()
    return str(local.resolve()) if local.is_dir() else source


def _display_name(source: str) -> str:
    # The same for a directory and for the file that saved it once the directory is gone.
    return Path(source).name


def _keras_hub() -> Any:
    try:
        import keras_hub
    except ImportError as err:
        raise ImportError(
            "keras-hub backbones need the keras-hub package: pip install \"transferkit[hub]\" "
            f"(or pip install keras-hub); importing it failed: {err}"
        ) from err
    return keras_hub


def _load(source: str, *, load_weights: bool, image_shape: tuple | None) -> tuple[Any, Any]:
    """The preset's backbone and image converter."""
    local = Path(source).is_dir()
    if local and not (Path(source) / "config.json").is_file():
        raise FileNotFoundError(
            f"{source!r} is not a keras-hub preset directory: it has no config.json. Pass the "
            "folder that Backbone.save_to_preset(folder) wrote (or a preset downloaded from "
            "Kaggle or Hugging Face)."
        )
    keras_hub = _keras_hub()
    overrides = {} if image_shape is None else {"image_shape": image_shape}
    try:
        backbone = keras_hub.models.Backbone.from_preset(
            source, load_weights=load_weights, **overrides)
        converter = _converter(keras_hub, source, local)
    except FileNotFoundError as err:
        if local and not (Path(source) / "image_converter.json").is_file():
            raise FileNotFoundError(
                f"The preset directory {source!r} has no image_converter.json, so transferkit "
                "cannot preprocess images as the model expects. Save the converter next to "
                "the backbone: image_converter.save_to_preset(directory) (a task's preset, "
                "such as an ImageClassifier's, holds one)."
            ) from err
        raise
    except (OSError, ValueError) as err:
        if local:
            raise
        raise PresetUnavailableError(
            f"Could not download the keras-hub preset {source!r} ({type(err).__name__}: "
            f"{str(err)[:200]}). Without internet, bring the preset directory: on a machine "
            "with internet, run keras_hub.models.Backbone.from_preset(name).save_to_preset(dir) "
            "and keras_hub.layers.ImageConverter.from_preset(name).save_to_preset(dir) (or "
            "download the preset from Kaggle or Hugging Face), copy dir here, and pass its path "
            "as backbone=\"/path/to/dir\". The names keras-hub knows: "
            "keras_hub.models.Backbone.presets."
        ) from err
    return backbone, converter


def _converter(keras_hub: Any, source: str, local: bool) -> Any:
    """The preset's image converter.

    A local directory's is read from its file: ``ImageConverter.from_preset`` only finds a
    converter class made for the backbone's class, and a vision tower saved on its own
    (``SigLIPVisionEncoder``) has none.
    """
    import keras

    path = Path(source) / "image_converter.json"
    if local and path.is_file():
        return keras.saving.deserialize_keras_object(json.loads(path.read_text()))
    return keras_hub.layers.ImageConverter.from_preset(source)


def _preset_size(backbone: Any, converter: Any) -> tuple[int, int]:
    size = getattr(converter, "image_size", None)
    if size is not None and None not in size:
        return int(size[0]), int(size[1])
    shape = getattr(backbone, "image_shape", None) or (None, None)
    if shape[0] is not None and shape[1] is not None:
        return int(shape[0]), int(shape[1])
    return 224, 224


def _prefix_tokens(backbone: Any) -> int | None:
    """Tokens before the patches: class token and registers (None: not a transformer)."""
    kind = type(backbone).__name__
    if hasattr(backbone, "num_register_tokens"):  # DINOv2 / DINOv3: class token, registers
        return 1 + int(backbone.num_register_tokens)
    if hasattr(backbone, "use_class_token"):  # ViT
        return int(bool(backbone.use_class_token))
    if kind.startswith("SigLIP"):
        return 0
    if kind.startswith("CLIP"):
        return 1
    return None


def _chain(backbone: Any, image_shape: tuple) -> tuple[Any, list[tuple[Any, dict]]] | None:
    """A transformer's computation as a chain: its embedding, then each layer after it
    with the arguments it takes besides the tokens; None for any other graph.

    Only backbones whose computation is known to be such a chain once its blocks are
    called one by one: DINOv2 and ViT run theirs inside one encoder layer (ViT's encoder
    also holds the dropout before them and the normalisation after them), DINOv3's also
    take its rotary position embeddings, which depend on the image size only and so are
    computed once here, as its rope layer computes them, and given to every block as
    constants.
    """
    import numpy as np

    kind = type(backbone).__name__
    if kind == "DINOV2Backbone":
        return backbone.embeddings, [(layer, {}) for layer in
                                     [*backbone.encoder.layers, backbone.layernorm]]
    if kind == "SigLIPVisionEncoder":
        return backbone.embedding, [(layer, {}) for layer in
                                    [*backbone.encoder_layers, backbone.post_layer_norm,
                                     backbone.head]]
    if kind == "ViTBackbone":
        of_type = {type(layer).__name__: layer for layer in backbone.layers}
        encoder = of_type["ViTEncoder"]
        return of_type["ViTPatchingAndEmbedding"], [
            (layer, {}) for layer in
            [encoder.dropout, *encoder.encoder_layers, encoder.layer_norm]]
    if kind == "DINOV3Backbone" and None not in image_shape:
        # In the compute dtype the rope layer casts to, as it does in the backbone's graph.
        rotary = backbone.rope_embedding(np.zeros((1, *image_shape), dtype="float32"))
        arguments = {"position_embeddings": tuple(rotary),
                     "num_prefix_tokens": 1 + int(backbone.num_register_tokens)}
        return backbone.embeddings, [
            *((layer, arguments) for layer in backbone.encoder.layers),
            (backbone.layernorm, {})]
    return None


def _flat(backbone: Any) -> tuple[Any, dict[str, str]]:
    """One-input functional model sharing the backbone's weights; its blocks by name.

    A chain (:func:`_chain`) is built again from the embedding's output in the backbone's
    graph, calling its blocks one by one, so that each block's output is a layer's output,
    which a cut can end at. A layer the backbone's graph already calls is copied (same
    weights), because a layer called in two graphs has no single ``output``; a block that
    runs inside an encoder layer was never called in a graph and is used as it is. The
    embedding is not copied: ViT's config holds counts its constructor does not take back.
    The number of tokens the embedding declares is checked against the number it makes:
    SigLIP's declares a class token it does not have, which a network built on the
    declared shape (a frozen prefix's output, a flattened cut) would then refuse.
    """
    import keras
    import numpy as np

    images = backbone.inputs[0]
    image_shape = tuple(images.shape[1:])
    chain = _chain(backbone, image_shape)
    if chain is not None:
        embedding, rest = chain
        x = embedding.output
        if None not in image_shape:
            made = embedding(np.zeros((1, *image_shape), dtype="float32")).shape
            if tuple(made[1:]) != tuple(x.shape[1:]):
                # An op, not a Reshape layer: that one checks the declared shape.
                x = keras.ops.reshape(x, (-1, *made[1:]))
        in_graph = {id(layer) for layer in backbone.layers}
        for layer, arguments in rest:
            if id(layer) in in_graph:
                copy = type(layer).from_config(layer.get_config())
                x = copy(x, **arguments)
                copy.set_weights(layer.get_weights())
            else:
                x = layer(x, **arguments)
        full = keras.Model(images, x, name=backbone.name)
    else:
        full = keras.Model(images, backbone.outputs[0], name=backbone.name)

    blocks: dict[str, str] = {}
    pyramid = getattr(backbone, "pyramid_outputs", None)
    transformer_blocks = [
        layer for layer in full.layers
        if len(getattr(layer.output, "shape", ())) == 3
        and not any(part in type(layer).__name__ for part in _NOT_BLOCKS)
        # A whole encoder holding all the blocks (of a transformer not rebuilt as a chain)
        # is none of them.
        and not type(layer).__name__.endswith("Encoder")
    ]
    if _prefix_tokens(backbone) is not None:
        # A transformer not rebuilt as a chain whose blocks run inside one encoder layer
        # has none to cut at: cut=None, or a layer name.
        blocks = {f"block{k}": layer.name for k, layer in enumerate(transformer_blocks, 1)}
    elif isinstance(pyramid, dict):
        names = {layer.name for layer in full.layers}
        for key, tensor in pyramid.items():
            producer = tensor._keras_history.operation
            # A level made inside a layer of several outputs is no layer's output.
            if producer.name in names and hasattr(producer.output, "shape"):
                blocks[key] = producer.name
    return full, blocks


def build_hub_backbone(backbone: Any, *, weights: Any, input_size: tuple[int, int] | None,
                       backbone_kwargs: dict | None = None,
                       architecture: dict | None = None) -> HubBackbone:
    """Load a keras-hub preset as a :class:`HubBackbone`.

    Parameters
    ----------
    backbone : str or path-like
        ``"hub:<preset name>"`` (downloaded once by keras-hub), ``"hub:<directory>"`` or the
        directory itself (what ``Backbone.save_to_preset`` and
        ``ImageConverter.save_to_preset`` write).
    weights : "imagenet" or None
        ``"imagenet"`` (the default of the estimators) loads the preset's own weights,
        whatever data they were trained on; None keeps the architecture's random
        initialisation (seed it with :func:`transferkit.keras_setup.seeded_keras_init`).
    input_size : (int, int) or None
        None: the preset's image size; another size rebuilds the backbone for it (vision
        transformers interpolate their position embeddings).
    backbone_kwargs : None
        Not taken: a preset fixes its architecture.
    architecture : dict, default=None
        ``HubBackbone.architecture`` of an earlier build: the same network is built from it,
        randomly initialised, without reading or downloading the preset (``weights`` and
        ``input_size`` are then ignored).

    Returns
    -------
    HubBackbone

    Raises
    ------
    PresetUnavailableError
        If a preset name cannot be downloaded; the message says how to bring the
        directory instead.
    """
    if backbone_kwargs:
        raise ValueError(
            f"backbone_kwargs={backbone_kwargs!r} does not apply to the keras-hub preset "
            f"{backbone!r}: a preset fixes its architecture. Leave backbone_kwargs=None."
        )
    if not (weights is None or (isinstance(weights, str) and weights == "imagenet")):
        raise ValueError(
            f"weights={weights!r} cannot be used with the keras-hub preset {backbone!r}: its "
            "own weights are used with the default weights='imagenet', random ones with "
            "weights=None. To use other weights, save them as a preset directory "
            "(Backbone.save_to_preset) and pass its path as backbone."
        )
    import keras

    source = _source(backbone)
    if architecture is not None:
        keras_hub = _keras_hub()
        model = _rebuilt(architecture["backbone"], keras_hub.models, keras_hub.models.Backbone)
        converter = _rebuilt(architecture["image_converter"], keras_hub.layers,
                             keras_hub.layers.ImageConverter)
        input_size = tuple(architecture["input_size"])
    else:
        image_shape = None if input_size is None else (input_size[0], input_size[1], 3)
        model, converter = _load(source, load_weights=weights is not None,
                                 image_shape=image_shape)
        # An image-text model (SigLIP, CLIP): its image tower is the backbone.
        model = getattr(model, "vision_encoder", model)
    policy = keras.config.dtype_policy()
    if model.dtype_policy.name != policy.name:
        # An image-text preset keeps its tower's dtype in the tower's own config, which the
        # precision transferkit builds with (keras_setup.keras_precision) does not reach.
        retyped = type(model).from_config({**model.get_config(), "dtype": policy.name})
        retyped.set_weights(model.get_weights())
        model = retyped
    size = input_size if input_size is not None else _preset_size(model, converter)
    fixed = tuple(model.inputs[0].shape[1:3])
    if None not in fixed and fixed != tuple(size):
        # An image-text preset keeps its tower's size: image_shape only reaches the top.
        raise ValueError(
            f"input_size={tuple(size)} cannot be used with the keras-hub preset {backbone!r}, "
            f"whose image tower takes {fixed[0]}x{fixed[1]} images only; leave "
            "input_size=None."
        )
    # JSON's round trip, so that a saved estimator's copy deserialises as this one does.
    described = json.loads(json.dumps({
        "backbone": keras.saving.serialize_keras_object(model),
        "image_converter": keras.saving.serialize_keras_object(converter),
        "input_size": [int(size[0]), int(size[1])],
    }))
    full, blocks = _flat(model)
    _BLOCKS[full] = blocks

    import numpy as np

    def as_array(value: Any) -> np.ndarray | None:
        return None if value is None else np.asarray(value, dtype="float32")

    return HubBackbone(full, _display_name(source), (int(size[0]), int(size[1])),
                       as_array(converter.scale), as_array(converter.offset),
                       _prefix_tokens(model), described)


def _rebuilt(described: dict, namespace: Any, base: type) -> Any:
    """A keras-hub object from its Keras serialisation, kept in a saved estimator.

    Only a class of keras-hub's public ``namespace`` deriving from ``base`` is built, from
    its config: a file names no module to import and no code to run.
    """
    name = described.get("class_name")
    cls = getattr(namespace, name, None) if isinstance(name, str) else None
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ValueError(
            f"The saved keras-hub architecture names {name!r}, which is no "
            f"keras_hub {base.__name__} of the installed keras-hub; the file was made with "
            "another keras-hub, or edited. Fit the estimator again from the preset."
        )
    return cls.from_config(described["config"])


def hub_block_ends(model: Any) -> dict[str, str]:
    """Block name -> name of the layer ending it, for a model :func:`build_hub_backbone`
    built (empty for any other)."""
    return dict(_BLOCKS.get(model, {}))


def list_hub_cut_points(backbone: Any) -> list[str]:
    """The block names of a keras-hub preset, shallowest first.

    Transformer blocks are ``"block1"`` ... ``"blockN"`` (the output of block k); a ConvNet's
    are the levels of its feature pyramid (``"P2"`` ... ``"P5"``).
    """
    hub = build_hub_backbone(backbone, weights=None, input_size=None)
    return list(hub_block_ends(hub.full))


def hub_identity(backbone: Any, weights: Any, random_state: Any) -> str | None:
    """What identifies a hub backbone's weights, for the cache key; None when nothing does.

    A local preset by the path, size and times of its files (a rewritten directory is
    another preset), a preset name by its name (keras-hub pins its versions), random
    weights by their integer seed.
    """
    from .cache import weights_identity

    source = _source(backbone)
    if weights is None:
        random = weights_identity(None, random_state)
        return None if random is None else f"hub:{source}:{random}"
    if not Path(source).is_dir():
        return f"hub:{source}"
    if not (Path(source) / "config.json").is_file():
        return None  # the build reports the bad directory with its own, clearer error
    files = sorted(p for p in Path(source).iterdir() if p.is_file())
    parts = [weights_identity(p, None) for p in files]
    config = json.loads((Path(source) / "config.json").read_text())
    return f"hub:{config.get('class_name')}:" + "|".join(str(p) for p in parts)
