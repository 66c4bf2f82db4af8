"""Keras layers of a fine-tuned classifier's head.

Imported only where a head is built: this module defines Keras layers, and importing
transferkit must not import Keras.
"""

from __future__ import annotations

from typing import Any

import keras

__all__ = ["Standardization"]


class Standardization(keras.layers.Layer):
    """``(x - mean) / scale * keep``, column by column, all three fixed weights of the layer.

    The head of a classifier that reads several blocks standardises their concatenated
    features: a middle block's columns vary less from image to image than the last
    block's (on DTD with MobileNet, a median standard deviation of 0.30 for block 9 against
    0.79 for block 13), and one L2 penalty then leaves their variation mostly unused.
    :func:`transferkit.training.set_head_standardization` sets the weights from the
    features the head learns from. A layer, not folded into the head's weights: the
    fine-tuning phase then trains the head in the standardised space, where Adam's steps,
    about the same size for every weight, are the same relative size for every column
    (folded, the weights take each column's scale). ``keep`` is 1 for the columns the head
    reads and 0 for those of blocks its cross-validation left out: their weights then get
    no gradient either, and stay zero.
    """

    def build(self, input_shape: Any) -> None:
        width = int(input_shape[-1])
        self.mean = self.add_weight(shape=(width,), initializer="zeros", trainable=False,
                                    name="mean")
        self.scale = self.add_weight(shape=(width,), initializer="ones", trainable=False,
                                     name="scale")
        self.keep = self.add_weight(shape=(width,), initializer="ones", trainable=False,
                                    name="keep")

    def call(self, inputs: Any) -> Any:
        return (inputs - self.mean) / self.scale * self.keep
