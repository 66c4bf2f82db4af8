"""Where a backbone can be truncated: block names, layer names and indices.

A *cut* names the layer whose output becomes the extracted feature map.
Users rarely want an arbitrary layer: the useful places are the boundaries
between the blocks (stages) of the architecture, where the whole state of the
network is a single tensor. Those are offered under the block names the Keras
implementation uses (``"conv4"`` for ResNet50, ``"mixed7"`` for InceptionV3,
...), read from the real layer names. For the Keras release
:mod:`transferkit.backbone_table` was recorded from, the block names of each backbone with
its default constructor arguments are read from that table instead: listing them then needs
neither Keras nor a network.

Keras is imported inside the functions: ``import transferkit`` must not pay
for TensorFlow's start-up.
"""

# Authors: The transferkit developers
# SPDX-License-Identifier: BSD-3-Clause

from __future__ import annotations

import difflib
import numbers
import re
from typing import TYPE_CHECKING, Any

from .advice import advised
from .backbone_table import BACKBONES, describes_installed_keras
from .hub_backbones import HUB_MODULE, hub_block_ends, is_hub_backbone, list_hub_cut_points

if TYPE_CHECKING:
    import keras

__all__ = ["articulation_names", "block_layers", "list_cut_points", "resolve_cut", "truncate"]

# keras.applications module -> ((regex, template), ...): a layer whose name
# matches a regex belongs to the block ``match.expand(template)``; the first
# matching pair wins. Stems are deliberately left out (too shallow to be a
# useful cut); layers in no block after a block's end, such as ResNetV2's
# post_bn/post_relu, are folded into that block by `_block_ends`.
_BLOCK_PATTERNS: dict[str, tuple[tuple[str, str], ...]] = {
    "convnext": ((r"_(stage_\d+)_block_", r"\1"),),
    "densenet": ((r"^(conv[2-9]|pool[2-9])_", r"\1"),),
    "efficientnet": ((r"^(block\d+)[a-z]+_", r"\1"), (r"^(top)_", r"\1")),
    "efficientnet_v2": ((r"^(block\d+)[a-z]+_", r"\1"), (r"^(top)_", r"\1")),
    "inception_resnet_v2": ((r"^(mixed_\d+[a-z]|block(?:35|17|8)_\d+|conv_7b)(?:_|$)", r"\1"),),
    # mixed9_0 / mixed9_1 are concatenations *inside* mixed9 and mixed10.
    "inception_v3": ((r"^(mixed\d+)$", r"\1"),),
    # Block i is depthwise conv i followed by pointwise conv i; it ends at conv_pw_i_relu.
    "mobilenet": ((r"^conv_(?:pad|dw|pw)_(\d+)(?:_|$)", r"conv_pw_\1"),),
    "mobilenet_v2": ((r"^(expanded_conv|block_\d+|Conv_1)(?:_|$)", r"\1"),),
    "mobilenet_v3": ((r"^(expanded_conv(?:_\d+)?|conv_1)(?:_|$)", r"\1"),),
    # NASNet cells are suffixed with their index: *_stem_1, *_reduce_4, normal_*_5.
    "nasnet": (
        (r"_(stem_\d+)$", r"\1"),
        (r"_(reduce_\d+)$", r"\1"),
        (r"^(?:normal|adjust|separable_conv_\d_(?:bn_)?normal)_.*?(\d+)$", r"normal_\1"),
    ),
    "resnet": ((r"^(conv\d+)_block\d+_", r"\1"),),
    "resnet_v2": ((r"^(conv\d+)_block\d+_", r"\1"),),
    "vgg16": ((r"^(block\d+)_", r"\1"),),
    "vgg19": ((r"^(block\d+)_", r"\1"),),
    "xception": ((r"^(block\d+)_", r"\1"),),
}

_CUT_POINT_CACHE: dict[tuple[str, str], list[str]] = {}


def _block_of(name: str, patterns: tuple[tuple[str, str], ...]) -> str | None:
    for pattern, template in patterns:
        match = re.search(pattern, name)
        if match is not None:
            return match.expand(template)
    return None


def _producer_node(tensor: Any) -> Any:
    history = getattr(tensor, "_keras_history", None)
    if history is None or history.operation is None:
        return None
    return history.operation._inbound_nodes[history.node_index]


def _graph(model: keras.Model) -> tuple[list[Any], list[bool]]:
    """Operations of a model in topological order, and which are articulations.

    An articulation is an operation called once, with a single output tensor,
    such that no later operation consumes a tensor produced before it: cutting
    there keeps everything the rest of the network depends on.
    """
    try:
        outputs = list(model.outputs)
    except (AttributeError, ValueError) as err:
        raise TypeError(
            f"Cut points need a model with a graph of layers (functional or sequential, "
            f"already built on an Input); {model.name!r} of type {type(model).__name__} "
            f"has none. Wrap it with keras.Model(inputs, outputs) first."
        ) from err

    # Walk back from the outputs so only this model's call events count: a layer
    # shared with another model also carries that model's nodes.
    nodes: dict[int, Any] = {}
    parents: dict[int, list[Any]] = {}
    postorder: list[Any] = []
    stack: list[tuple[Any, bool]] = [
        (node, False) for node in map(_producer_node, reversed(outputs)) if node is not None
    ]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            postorder.append(node)
            continue
        if id(node) in nodes:
            continue
        nodes[id(node)] = node
        parents[id(node)] = list(node.parent_nodes)
        stack.append((node, True))
        stack.extend((p, False) for p in reversed(parents[id(node)]) if id(p) not in nodes)

    if hasattr(model, "operations"):
        in_graph = {id(node.operation) for node in postorder}
        operations = [op for op in model.operations if id(op) in in_graph]
    else:
        operations = []
        seen: set[int] = set()
        for node in postorder:
            if id(node.operation) not in seen:
                seen.add(id(node.operation))
                operations.append(node.operation)
    position = {id(op): i for i, op in enumerate(operations)}

    calls: dict[int, int] = {}
    node_of: dict[int, Any] = {}
    for node in postorder:
        calls[id(node.operation)] = calls.get(id(node.operation), 0) + 1
        node_of[id(node.operation)] = node

    # crossing[i] > 0 when some edge jumps over position i.
    crossing = [0] * (len(operations) + 1)
    for node in postorder:
        child = position[id(node.operation)]
        for parent in parents[id(node)]:
            start = position[id(parent.operation)] + 1
            if start < child:
                crossing[start] += 1
                crossing[child] -= 1
    # Several outputs join in a virtual sink after the last operation.
    sink = len(operations)
    for tensor in outputs:
        node = _producer_node(tensor)
        if node is not None:
            start = position[id(node.operation)] + 1
            if start < sink:
                crossing[start] += 1
                crossing[sink] -= 1

    articulation = []
    running = 0
    for i, op in enumerate(operations):
        running += crossing[i]
        node = node_of[id(op)]
        articulation.append(
            running == 0 and calls[id(op)] == 1 and not node.is_input and len(node.outputs) == 1
        )
    return operations, articulation


def _is_input_layer(op: Any) -> bool:
    import keras

    return isinstance(op, keras.layers.InputLayer)


def _output_shape(op: Any) -> tuple[Any, ...] | None:
    try:
        return tuple(op.output.shape)
    except (AttributeError, ValueError):
        return None


def _block_ends(operations: list[Any], articulation: list[bool], module: str) -> dict[str, int]:
    """Map each block name of `module` to the position of the operation ending it.

    A block ends at its last named layer, or at the first articulation after it
    when the block's output is produced by an unnamed layer (ConvNeXt's residual
    `add`, Xception's `add_N`). Shape-preserving unnamed articulations right
    after that (a final BatchNormalization / activation such as ResNetV2's
    post_relu or MobileNetV3's last activation) are part of the block's output.
    """
    patterns = _BLOCK_PATTERNS.get(module, ())
    if not patterns:
        return {}
    owner = [_block_of(op.name, patterns) for op in operations]
    last: dict[str, int] = {}
    for i, block in enumerate(owner):
        if block is not None:
            last[block] = i

    ends: dict[str, int] = {}
    for block, end in last.items():
        chosen = end
        # Look for the block's single output, without walking into another block.
        for i in range(end, len(operations)):
            if owner[i] is not None and owner[i] != block:
                break
            if articulation[i]:
                chosen = i
                break
        if articulation[chosen]:
            shape = _output_shape(operations[chosen])
            i = chosen + 1
            while (
                i < len(operations)
                and owner[i] is None
                and articulation[i]
                and shape is not None
                and _output_shape(operations[i]) == shape
            ):
                chosen = i
                i += 1
        ends[block] = chosen
    return dict(sorted(ends.items(), key=lambda item: item[1]))


def _cache_key(name: str, backbone_kwargs: dict[str, Any] | None) -> tuple[str, str]:
    kwargs = backbone_kwargs or {}
    return name, repr(sorted(kwargs.items()))


def list_cut_points(
    backbone: str | keras.Model, backbone_kwargs: dict[str, Any] | None = None
) -> list[str]:
    """List the natural places to cut a backbone, shallowest first.

    Parameters
    ----------
    backbone : str or keras.Model
        The name of a ``keras.applications`` backbone (case-insensitive), or
        a functional / sequential model of your own.
    backbone_kwargs : dict, default=None
        Constructor arguments, for a backbone given by name, that change its
        architecture (e.g. ``{"alpha": 0.25}``); ignored for a model.

    Returns
    -------
    cut_points : list of str
        For a named backbone, the block (stage) names of its Keras
        implementation, e.g. ``["conv2", "conv3", "conv4", "conv5"]`` for
        ResNet50; each can be passed as ``cut`` and resolves to the layer
        ending that block. For a model, the names of its layers whose single
        output is all the rest of the network depends on.

    Notes
    -----
    Block names are read from a model built with ``weights=None`` at the
    smallest input size the backbone accepts; the result is cached per
    backbone and ``backbone_kwargs``. Without ``backbone_kwargs``, and with the Keras
    release :mod:`transferkit.backbone_table` records, they come from that table and
    nothing is built.
    """
    if not isinstance(backbone, str):
        operations, articulation = _graph(backbone)
        return [
            op.name
            for op, is_cut in zip(operations, articulation, strict=True)
            if is_cut and not _is_input_layer(op)
        ]

    from .backbones import get_backbone_spec

    if is_hub_backbone(backbone):
        return list_hub_cut_points(backbone)
    spec = get_backbone_spec(backbone)
    if not backbone_kwargs and spec.name in BACKBONES and describes_installed_keras():
        return list(BACKBONES[spec.name][3])
    key = _cache_key(spec.name, backbone_kwargs)
    if key not in _CUT_POINT_CACHE:
        _CUT_POINT_CACHE[key] = _built_cut_points(spec.name, spec.module, backbone_kwargs)
    return list(_CUT_POINT_CACHE[key])


def _built_cut_points(name: str, module: str, backbone_kwargs: dict[str, Any] | None
                      ) -> list[str]:
    """Block names read from the smallest network of a backbone (what the table records)."""
    from .backbones import build_smallest

    operations, articulation = _graph(build_smallest(name, backbone_kwargs))
    return list(_block_ends(operations, articulation, module))


def articulation_names(model: keras.Model) -> set[str]:
    """Names of the layers a computation can stop at and go on from.

    Every later layer depends on the model's input through such a layer alone (ResNet's
    and MobileNet's block ends are; a NASNet cell, which also reads the cell before the
    previous one, is not), so a network that starts from its activation computes the rest.
    """
    operations, articulation = _graph(model)
    return {op.name for op, is_cut in zip(operations, articulation, strict=True) if is_cut}


def block_layers(model: keras.Model, module: str | None) -> dict[str, Any]:
    """The layer ending each block of a backbone of ``module``, shallowest first.

    What :func:`resolve_cut` gives for each block name, from one walk of the graph.
    Empty for a family without block names (``module=None``: a user's model).
    """
    if not module:
        return {}
    operations, articulation = _graph(model)
    if module == HUB_MODULE:
        # keras-hub's transformer blocks are one layer each, found by the hub module.
        by_name = {op.name: op for op in operations}
        return {block: by_name[layer] for block, layer in hub_block_ends(model).items()}
    return {name: operations[position]
            for name, position in _block_ends(operations, articulation, module).items()}


def resolve_cut(
    model: keras.Model, cut: None | str | int, module: str | None = None
) -> keras.layers.Layer:
    """Find the layer whose output is the requested cut.

    Parameters
    ----------
    model : keras.Model
        The backbone, typically from :func:`transferkit.backbones.build_backbone`.
    cut : None, str or int
        ``None`` for the model's last layer (the full backbone), i.e. the
        one producing its output. An int
        indexes ``model.layers`` (negative counts from the end; the input
        layer cannot be a cut). A str is a block name of the backbone family
        (case-insensitive, see :func:`list_cut_points`), resolving to the layer
        that ends the block, or else the exact name of a layer.
    module : str, default=None
        The ``keras.applications`` submodule the model comes from (e.g.
        ``"resnet"``, ``BackboneSpec.module``), which enables block names.

    Returns
    -------
    layer : keras.layers.Layer
        The layer (or, for Keras' functional ``ops`` such as ConvNeXt's
        residual additions, the operation) whose output is the cut.

    Raises
    ------
    ValueError
        If the index is out of range or points at the input layer, or if the
        name is neither a block nor a layer; the message lists close matches.
    """
    if cut is None:
        outputs = getattr(model, "outputs", None) or []
        producer = _producer_node(outputs[0]) if len(outputs) == 1 else None
        # The producer is the last layer for keras.applications models, but a
        # user's model may end in a raw `keras.ops` call, which is no layer.
        return producer.operation if producer is not None else model.layers[-1]

    if isinstance(cut, numbers.Integral) and not isinstance(cut, bool):
        layers = model.layers
        first = next((i for i, layer in enumerate(layers) if not _is_input_layer(layer)), 0)
        n_layers = len(layers)
        valid = f"{first}..{n_layers - 1} or -{n_layers - first}..-1"
        if not -n_layers <= cut < n_layers:
            raise advised(
                ValueError,
                "{cut_given} is out of range for {model!r}, which has {n_layers} layers; use "
                "an index in {valid}, or a name from {list_cut_points}.",
                cut=cut, model=model.name, n_layers=n_layers, valid=valid,
            )
        layer = layers[cut]
        if _is_input_layer(layer):
            raise advised(
                ValueError,
                "{cut_given} is the input layer {layer!r} of {model!r}, which extracts "
                "nothing; use an index in {valid}.",
                cut=cut, layer=layer.name, model=model.name, valid=valid,
            )
        return layer

    if not isinstance(cut, str):
        raise TypeError(
            f"cut must be None, an int index or a block/layer name; got "
            f"{type(cut).__name__} {cut!r}."
        )

    operations, articulation = _graph(model)
    # Block names win over layer names: MobileNet's block "conv_pw_1" ends at
    # conv_pw_1_relu, not at the layer "conv_pw_1" (the bare convolution).
    blocks = _block_ends(operations, articulation, module) if module else {}
    if module == HUB_MODULE:
        # keras-hub's transformer blocks are one layer each, found by the hub module.
        position = {op.name: i for i, op in enumerate(operations)}
        blocks = {block: position[layer] for block, layer in hub_block_ends(model).items()}
    blocks_by_lower = {name.lower(): position for name, position in blocks.items()}
    if cut.lower() in blocks_by_lower:
        return operations[blocks_by_lower[cut.lower()]]

    by_name = {op.name: op for op in operations if not _is_input_layer(op)}
    if cut in by_name:
        return by_name[cut]
    folded = [op for name, op in by_name.items() if name.lower() == cut.lower()]
    if len(folded) == 1:
        return folded[0]

    candidates = list(blocks) + list(by_name)
    lowered = {name.lower(): name for name in reversed(candidates)}
    close = difflib.get_close_matches(cut.lower(), list(lowered), n=6, cutoff=0.6)
    hint = f" Closest: {', '.join(repr(lowered[c]) for c in close)}." if close else ""
    kind = "block or layer" if blocks else "layer"
    family = f" ({module} family)" if module else ""
    raise advised(
        ValueError,
        "{cut_given} is not a {kind} name of {model!r}{family}.{hint} See {list_cut_points} "
        "for the valid cut points, or pass {cut_by_index}.",
        cut=cut, kind=kind, model=model.name, family=family, hint=hint,
    )


def truncate(model: keras.Model, layer: Any) -> keras.Model:
    """Cut a model at a layer (or at several), sharing its layers (and weights).

    Parameters
    ----------
    model : keras.Model
        The model to cut.
    layer : keras.layers.Layer or list of them
        A layer of ``model``, e.g. from :func:`resolve_cut`; a list gives a model with one
        output per layer, which runs only the layers the deepest of them needs.

    Returns
    -------
    truncated : keras.Model
        ``keras.Model(model.inputs, layer.output)``, named
        ``"<model name>_to_<layer name>"``; training it trains ``model``.
    """
    import keras

    if isinstance(layer, (list, tuple)):
        return keras.Model(model.inputs, [one.output for one in layer],
                           name=f"{model.name}_to_{'_'.join(one.name for one in layer)}")
    return keras.Model(model.inputs, layer.output, name=f"{model.name}_to_{layer.name}")
