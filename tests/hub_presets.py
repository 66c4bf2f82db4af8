"""Tiny random keras-hub presets, built and saved as an offline user would bring them.

Shared by every test module that needs a preset directory (keras-hub's own tests, Dask,
Spark), so that they all build the same ones, once per session (the ``hub_presets``
fixture of ``conftest.py``). Importing this module imports keras-hub.
"""

from __future__ import annotations

from pathlib import Path

import keras
import keras_hub
import numpy as np

SIZE = 32
# ImageNet's mean and standard deviation, as DINOv2's converter applies them.
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


def dinov2():
    backbone = keras_hub.models.DINOV2Backbone(
        patch_size=8, num_layers=2, hidden_dim=16, num_heads=2, intermediate_dim=32,
        num_register_tokens=2, image_shape=(SIZE, SIZE, 3),
        position_embedding_shape=(SIZE, SIZE, 3))
    converter = keras_hub.layers.DINOV2ImageConverter(
        image_size=(SIZE, SIZE), scale=list(1 / (255 * STD)), offset=list(-MEAN / STD))
    return backbone, converter


def siglip():
    vision = keras_hub.models.SigLIPVisionEncoder(
        patch_size=8, hidden_dim=16, num_layers=2, num_heads=2, intermediate_dim=32,
        image_shape=(SIZE, SIZE, 3))
    text = keras_hub.models.SigLIPTextEncoder(
        vocabulary_size=16, embedding_dim=16, hidden_dim=16, num_layers=1, num_heads=2,
        intermediate_dim=32, max_sequence_length=8)
    backbone = keras_hub.models.SigLIPBackbone(vision, text)
    converter = keras_hub.layers.SigLIPImageConverter(
        image_size=(SIZE, SIZE), scale=1 / 127.5, offset=-1.0)
    return backbone, converter


def resnet():
    # keras-hub's ResNet needs 64 filters in its first stage.
    backbone = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[7], stackwise_num_filters=[64, 64],
        stackwise_num_blocks=[1, 1], stackwise_num_strides=[1, 2], block_type="basic_block",
        use_pre_activation=False, image_shape=(None, None, 3))
    converter = keras_hub.layers.ResNetImageConverter(
        image_size=(SIZE, SIZE), scale=list(1 / (255 * STD)), offset=list(-MEAN / STD))
    return backbone, converter


def clip():
    vision = keras_hub.models.CLIPVisionEncoder(
        patch_size=8, hidden_dim=16, num_layers=2, num_heads=2, intermediate_dim=32,
        image_shape=(SIZE, SIZE, 3))
    converter = keras_hub.layers.CLIPImageConverter(image_size=(SIZE, SIZE), scale=1 / 255)
    return vision, converter


def vit():
    backbone = keras_hub.models.ViTBackbone(
        image_shape=(SIZE, SIZE, 3), patch_size=8, num_layers=2, num_heads=2, hidden_dim=16,
        mlp_dim=32)
    converter = keras_hub.layers.ViTImageConverter(
        image_size=(SIZE, SIZE), scale=1 / 127.5, offset=-1.0)
    return backbone, converter


def dinov3():
    backbone = keras_hub.models.DINOV3Backbone(
        patch_size=8, num_layers=2, hidden_dim=16, num_heads=2, intermediate_dim=32,
        num_register_tokens=2, image_shape=(SIZE, SIZE, 3))
    converter = keras_hub.layers.DINOV3ImageConverter(image_size=(SIZE, SIZE), scale=1 / 255)
    return backbone, converter


BUILDERS = {"dinov2": dinov2, "siglip": siglip, "resnet": resnet, "clip": clip, "vit": vit,
            "dinov3": dinov3}
# Tokens before the patch tokens: the class token, then DINO's two registers here; SigLIP
# has neither.
PREFIX_TOKENS = {"dinov2": 3, "dinov3": 3, "clip": 1, "vit": 1, "siglip": 0}


def save_presets(root: Path) -> dict:
    """name -> (preset directory, keras-hub backbone, keras-hub image converter)."""
    made = {}
    for name, build in BUILDERS.items():
        keras.utils.set_random_seed(0)
        backbone, converter = build()
        backbone.save_to_preset(str(root / name))
        converter.save_to_preset(str(root / name))
        made[name] = (str(root / name), backbone, converter)
    return made
