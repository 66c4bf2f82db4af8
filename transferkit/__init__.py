"""transferkit: transfer learning on images as scikit-learn estimators.

Keras Applications backbones become scikit-learn transformers
(:class:`KerasFeatureExtractor`) that compose with any classifier in a
``Pipeline``, and fine-tuned scikit-learn classifiers
(:class:`FineTunedClassifier`). Both take images as they come: pixel arrays,
file paths, PIL images or a DataFrame column of paths.
"""

import os as _os

from .console import install_quiet_tensorflow_import as _install_quiet_tensorflow_import

# TensorFlow's start-up lines are noise to a scikit-learn user: keep them out of the console
# unless the user set TF_CPP_MIN_LOG_LEVEL (0 shows everything). Level 3 also hides the
# "failed call to cuInit" error that CPU-only machines log at the first model build; real
# failures still raise Python exceptions. See transferkit.console.
_install_quiet_tensorflow_import("TF_CPP_MIN_LOG_LEVEL" in _os.environ)
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from .backbones import WeightsUnavailableError, list_backbones  # noqa: E402
from .cut_points import list_cut_points  # noqa: E402
from .extractor import KerasFeatureExtractor  # noqa: E402
from .finetune import FineTunedClassifier  # noqa: E402
from .persistence import FileVersionWarning, ModelFileError, load, save  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "FileVersionWarning",
    "FineTunedClassifier",
    "KerasFeatureExtractor",
    "ModelFileError",
    "WeightsUnavailableError",
    "__version__",
    "list_backbones",
    "list_cut_points",
    "load",
    "save",
]
