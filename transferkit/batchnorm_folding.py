"""Inference graphs with BatchNormalization folded into the convolution before it.

In inference mode a BatchNormalization layer is a fixed per-channel affine map,
``gamma * (x - mean) / sqrt(var + eps) + beta``. When it directly follows a convolution
without activation, scaling the convolution's kernel per output channel and adjusting its
bias gives the same output in one pass over the activations instead of two. On a CPU,
where those extra passes are memory-bound, this made MobileNetV2 19% and ResNet50 12% faster
(2 cores, batch 8) at a relative difference of 2.5e-7 in the features.

The folded model is a separate inference copy: the original keeps its layers and weights,
and every layer that is not folded is shared between the two, not copied. The copy freezes
the folded weights at the time it is made, so it is only for networks whose weights no
longer change.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

__all__ = ["fold_batch_norms"]


class _Identity(keras.layers.Layer):
    """Passes its input through; stands where a folded BatchNormalization was."""

    def call(self, inputs: Any, training: Any = None, mask: Any = None) -> Any:
        return inputs


def _producer(tensor: Any) -> Any:
    return tensor._keras_history.operation


def _foldable_pairs(model: Any) -> dict[int, Any]:
    """``{id(conv): batch_norm}`` for every BatchNormalization that can be folded."""
    layers = keras.layers
    convolutions = (layers.Conv2D, layers.DepthwiseConv2D, layers.SeparableConv2D)
    # Only this model's calls count: a model built from another's intermediate tensor (a
    # stage of a backbone) calls its layers a second time, in a graph of its own.
    mine = {id(node) for nodes in model._nodes_by_depth.values() for node in nodes}
    calls = {id(op): [node for node in op._inbound_nodes if id(node) in mine]
             for op in model.operations}
    consumers: dict[int, int] = {}
    for operation in model.operations:
        for node in calls[id(operation)]:
            for tensor in node.input_tensors:
                key = id(_producer(tensor))
                consumers[key] = consumers.get(key, 0) + 1
    for output in model.outputs:  # a model output is one more consumer
        key = id(_producer(output))
        consumers[key] = consumers.get(key, 0) + 1

    pairs = {}
    for bn in model.operations:
        if not isinstance(bn, layers.BatchNormalization) or len(calls[id(bn)]) != 1:
            continue
        inputs = calls[id(bn)][0].input_tensors
        conv = _producer(inputs[0]) if len(inputs) == 1 else None
        if (
            isinstance(conv, convolutions)
            and len(calls.get(id(conv), ())) == 1
            and consumers.get(id(conv)) == 1
            and conv.data_format == "channels_last"
            and conv.activation is keras.activations.linear
            and bn.axis in (-1, len(inputs[0].shape) - 1)
        ):
            pairs[id(conv)] = bn
    return pairs


def _folded_weights(conv: Any, bn: Any) -> list[np.ndarray]:
    gamma = np.asarray(bn.gamma.numpy()) if bn.scale else 1.0
    beta = np.asarray(bn.beta.numpy()) if bn.center else 0.0
    mean = np.asarray(bn.moving_mean.numpy())
    variance = np.asarray(bn.moving_variance.numpy())
    scale = (gamma / np.sqrt(variance + bn.epsilon)).astype(np.float64)
    weights = [np.asarray(w, dtype=np.float64) for w in conv.get_weights()]
    bias = weights.pop() if conv.use_bias else np.zeros_like(mean, dtype=np.float64)
    if isinstance(conv, keras.layers.SeparableConv2D):
        # Output channels are the pointwise kernel's; the depthwise part is unchanged.
        weights[1] = weights[1] * scale
    elif isinstance(conv, keras.layers.DepthwiseConv2D):
        # Output channel c * multiplier + m comes from kernel[..., c, m].
        kernel = weights[0]
        weights[0] = kernel * scale.reshape(1, 1, kernel.shape[2], kernel.shape[3])
    else:
        weights[0] = weights[0] * scale
    new_bias = (bias - mean) * scale + beta
    return [w.astype(np.float32) for w in (*weights, new_bias)]


def fold_batch_norms(model: Any, memo: dict | None = None) -> tuple[Any, int]:
    """An inference copy of ``model`` with its foldable BatchNormalization layers folded.

    Functional models nested in ``model`` are folded too. A BatchNormalization is folded
    when its single input comes from a ``Conv2D``, ``DepthwiseConv2D`` or
    ``SeparableConv2D`` without activation, used by nothing else, in ``channels_last``;
    every other layer is kept as it is (shared with ``model``).

    Parameters
    ----------
    model : keras.Model
        A functional model, used in inference mode only.
    memo : dict, default=None
        Shared by several calls whose models nest the same network (a frozen part under
        several framings): each network is folded once, and every copy that nests it
        shares the folded one. The weights must not change between those calls.

    Returns
    -------
    folded : keras.Model
        Same inputs and outputs, equal to ``model(x, training=False)`` up to float
        rounding. ``model`` itself when nothing could be folded.
    n_folded : int
        Number of BatchNormalization layers folded.
    """
    if memo is not None and id(model) in memo:
        return memo[id(model)][1:]
    result = _fold(model, memo)
    if memo is not None:
        memo[id(model)] = (model, *result)  # the model held too: its id stays its own
    return result


def _fold(model: Any, memo: dict | None) -> tuple[Any, int]:
    if not _is_functional(model):
        return model, 0
    pairs = _foldable_pairs(model)
    folded_bns = {id(bn) for bn in pairs.values()}
    replacements: dict[int, tuple[Any, list[np.ndarray]]] = {}
    n_nested = 0

    def clone(layer: Any) -> Any:
        nonlocal n_nested
        if id(layer) in folded_bns:
            return _Identity(name=layer.name, dtype=layer.dtype_policy)
        if id(layer) in pairs:
            config = layer.get_config()
            config["use_bias"] = True
            # The weights are set from the folded ones at once: drawing random initial
            # values first took 0.05 s of MobileNetV2's 0.30 s fold.
            config.update({key: "zeros" for key in config if key.endswith("_initializer")})
            new = layer.__class__.from_config(config)
            replacements[id(new)] = (new, _folded_weights(layer, pairs[id(layer)]))
            return new
        if _is_functional(layer):
            inner, count = fold_batch_norms(layer, memo)
            n_nested += count
            return inner
        return layer

    if not pairs and not any(_is_functional(op) for op in model.operations):
        return model, 0
    folded = keras.models.clone_model(model, clone_function=clone)
    for new, weights in replacements.values():
        new.set_weights(weights)
    return folded, len(pairs) + n_nested


def _is_functional(layer: Any) -> bool:
    return isinstance(layer, keras.Model) and hasattr(layer, "_nodes_by_depth") \
        and bool(getattr(layer, "operations", None))
