"""What the backbones of ``keras.applications`` are, recorded so that listings need no Keras.

Importing Keras means importing TensorFlow: seconds before ``transferkit backbones`` could
print a line. Everything the listings show is recorded here: for each constructor its
``keras.applications`` submodule, default input side, feature width, and cut points (the
block names :func:`transferkit.list_cut_points` reads from a built network). Default sizes
and widths cannot be read from a constructor without building it, so
:mod:`transferkit.backbones` uses them for any Keras; the rest describes exactly the Keras
release :data:`KERAS_VERSION`, and is used only when that release is installed
(:func:`describes_installed_keras`). With any other release the registry walks
``keras.applications`` and cut points are read from built networks, as before this table
existed.

``tests/test_backbone_table.py`` checks every entry against the installed Keras; after a
Keras upgrade it names the entries to change.

Imports nothing of transferkit.
"""

# Authors: The transferkit developers
# SPDX-License-Identifier: BSD-3-Clause

from __future__ import annotations

import functools
import sys
from importlib import metadata

__all__ = ["BACKBONES", "KERAS_VERSION", "describes_installed_keras"]

KERAS_VERSION = "3.15.1"


def _run(template: str, first: int, last: int) -> tuple[str, ...]:
    return tuple(template.format(i) for i in range(first, last + 1))


_CONVNEXT = _run("stage_{}", 0, 3)
_DENSENET = ("conv2", "pool2", "conv3", "pool3", "conv4", "pool4", "conv5")
_EFFICIENTNET = (*_run("block{}", 1, 7), "top")
_EFFICIENTNET_V2_B = (*_run("block{}", 1, 6), "top")
_RESNET = _run("conv{}", 2, 5)
_VGG = _run("block{}", 1, 5)

# name -> (keras.applications submodule, default square input side, channels of the
# include_top=False output, cut points shallowest first). Sizes are each constructor's
# documented `default_size`; widths and cut points were read from networks built with the
# default constructor arguments.
BACKBONES: dict[str, tuple[str, int, int, tuple[str, ...]]] = {
    "ConvNeXtTiny": ("convnext", 224, 768, _CONVNEXT),
    "ConvNeXtSmall": ("convnext", 224, 768, _CONVNEXT),
    "ConvNeXtBase": ("convnext", 224, 1024, _CONVNEXT),
    "ConvNeXtLarge": ("convnext", 224, 1536, _CONVNEXT),
    "ConvNeXtXLarge": ("convnext", 224, 2048, _CONVNEXT),
    "DenseNet121": ("densenet", 224, 1024, _DENSENET),
    "DenseNet169": ("densenet", 224, 1664, _DENSENET),
    "DenseNet201": ("densenet", 224, 1920, _DENSENET),
    "EfficientNetB0": ("efficientnet", 224, 1280, _EFFICIENTNET),
    "EfficientNetB1": ("efficientnet", 240, 1280, _EFFICIENTNET),
    "EfficientNetB2": ("efficientnet", 260, 1408, _EFFICIENTNET),
    "EfficientNetB3": ("efficientnet", 300, 1536, _EFFICIENTNET),
    "EfficientNetB4": ("efficientnet", 380, 1792, _EFFICIENTNET),
    "EfficientNetB5": ("efficientnet", 456, 2048, _EFFICIENTNET),
    "EfficientNetB6": ("efficientnet", 528, 2304, _EFFICIENTNET),
    "EfficientNetB7": ("efficientnet", 600, 2560, _EFFICIENTNET),
    "EfficientNetV2B0": ("efficientnet_v2", 224, 1280, _EFFICIENTNET_V2_B),
    "EfficientNetV2B1": ("efficientnet_v2", 240, 1280, _EFFICIENTNET_V2_B),
    "EfficientNetV2B2": ("efficientnet_v2", 260, 1408, _EFFICIENTNET_V2_B),
    "EfficientNetV2B3": ("efficientnet_v2", 300, 1536, _EFFICIENTNET_V2_B),
    "EfficientNetV2S": ("efficientnet_v2", 384, 1280, _EFFICIENTNET_V2_B),
    "EfficientNetV2M": ("efficientnet_v2", 480, 1280, _EFFICIENTNET),
    "EfficientNetV2L": ("efficientnet_v2", 480, 1280, _EFFICIENTNET),
    "InceptionResNetV2": ("inception_resnet_v2", 299, 1536, (
        "mixed_5b", *_run("block35_{}", 1, 10), "mixed_6a", *_run("block17_{}", 1, 20),
        "mixed_7a", *_run("block8_{}", 1, 10), "conv_7b")),
    "InceptionV3": ("inception_v3", 299, 2048, _run("mixed{}", 0, 10)),
    "MobileNet": ("mobilenet", 224, 1024, _run("conv_pw_{}", 1, 13)),
    "MobileNetV2": ("mobilenet_v2", 224, 1280,
                    ("expanded_conv", *_run("block_{}", 1, 16), "Conv_1")),
    "MobileNetV3Small": ("mobilenet_v3", 224, 576,
                         ("expanded_conv", *_run("expanded_conv_{}", 1, 10), "conv_1")),
    "MobileNetV3Large": ("mobilenet_v3", 224, 960,
                         ("expanded_conv", *_run("expanded_conv_{}", 1, 14), "conv_1")),
    "NASNetMobile": ("nasnet", 224, 1056, (
        "stem_1", "stem_2", *_run("normal_{}", 0, 3), "reduce_4", *_run("normal_{}", 5, 8),
        "reduce_8", *_run("normal_{}", 9, 12))),
    "NASNetLarge": ("nasnet", 331, 4032, (
        "stem_1", "stem_2", *_run("normal_{}", 0, 5), "reduce_6", *_run("normal_{}", 7, 12),
        "reduce_12", *_run("normal_{}", 13, 18))),
    "ResNet50": ("resnet", 224, 2048, _RESNET),
    "ResNet101": ("resnet", 224, 2048, _RESNET),
    "ResNet152": ("resnet", 224, 2048, _RESNET),
    "ResNet50V2": ("resnet_v2", 224, 2048, _RESNET),
    "ResNet101V2": ("resnet_v2", 224, 2048, _RESNET),
    "ResNet152V2": ("resnet_v2", 224, 2048, _RESNET),
    "VGG16": ("vgg16", 224, 512, _VGG),
    "VGG19": ("vgg19", 224, 512, _VGG),
    "Xception": ("xception", 299, 2048, _run("block{}", 1, 14)),
}


@functools.cache
def describes_installed_keras() -> bool:
    """Whether :data:`BACKBONES` is the whole of the installed ``keras.applications``.

    Asks the package metadata, which costs milliseconds, unless Keras is already imported.
    """
    keras = sys.modules.get("keras")
    version = getattr(keras, "__version__", None)
    if version is None:
        try:
            version = metadata.version("keras")
        except metadata.PackageNotFoundError:
            return False
    return version == KERAS_VERSION
