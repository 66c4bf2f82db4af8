"""BatchNormalization statistics of the trained block, re-estimated on the target images.

A pretrained BatchNormalization layer normalises each channel with the mean and variance
of what reached it on ImageNet. Where the images are unlike ImageNet's (scans, digits,
textures), the activations reaching the trained block have other statistics, and the
layers after each normalisation read channels shifted and scaled away from what they were
trained on. Setting each layer's statistics to those of the target images ("AdaBN", Li et
al. 2016) puts them back where the pretrained weights expect them, with nothing learned:
training the statistics instead (``train_batchnorm=True``) estimates them from batches of
a few dozen images, whose noise the layers after them then learn to follow.

Only the trained block's layers are re-estimated: the frozen part is run once and its
activations cached (:func:`transferkit.training.frozen_pass`), so its statistics stay
ImageNet's and the trained block's inputs are what it computes.

Who owns what: :func:`transferkit.finetune_network.build_finetune_network` builds the
network from the frozen activations to every re-estimated layer's input
(``FineTuneNetwork.batchnorm_inputs``); this module computes the statistics and sets
them; :class:`transferkit.FineTunedClassifier` asks for them
(``batchnorm_statistics="target"``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["reestimate_statistics"]


def _input_moments(inputs_net: Any, k: int, activations: np.ndarray,
                   batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and variance of output ``k`` of ``inputs_net`` over ``activations``."""
    total = total_sq = None
    count = 0
    for start in range(0, len(activations), batch_size):
        out = np.asarray(inputs_net(activations[start:start + batch_size], training=False)[k],
                         dtype=np.float64)
        out = out.reshape(-1, out.shape[-1])  # every position of every image, by channel
        total = out.sum(axis=0) if total is None else total + out.sum(axis=0)
        total_sq = (out**2).sum(axis=0) if total_sq is None else total_sq + (out**2).sum(axis=0)
        count += len(out)
    mean = total / count
    # The population variance, as BatchNormalization's own batch statistics are; clipped
    # at zero against the rounding of a constant channel.
    return mean, np.maximum(total_sq / count - mean**2, 0.0)


def reestimate_statistics(inputs_net: Any, layers: Sequence[Any], activations: np.ndarray,
                          batch_size: int = 256) -> None:
    """Set each BatchNormalization layer's moving mean and variance to its inputs' own.

    Parameters
    ----------
    inputs_net : keras.Model
        Frozen activations -> the input of each layer of ``layers``, in their order.
    layers : sequence of keras.layers.BatchNormalization
        In the order the network runs them.
    activations : ndarray
        The frozen activations of the target images (one row per image).
    batch_size : int, default=256
        Images per call of ``inputs_net``.

    Notes
    -----
    One layer after the other: a layer's inputs are computed once the layers before it
    normalise with their new statistics, so each one is estimated on what it will read.
    That runs ``inputs_net`` once per layer (two layers in MobileNet's last block).
    """
    if len(activations) == 0:
        raise ValueError("re-estimating BatchNormalization statistics needs at least one "
                         "image; got no activations.")
    for k, layer in enumerate(layers):
        mean, variance = _input_moments(inputs_net, k, activations, batch_size)
        layer.moving_mean.assign(mean.astype(np.float32))
        layer.moving_variance.assign(variance.astype(np.float32))
