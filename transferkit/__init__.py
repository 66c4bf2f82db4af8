"""transferkit: transfer learning on images as scikit-learn estimators.

Keras Applications backbones become scikit-learn transformers
(:class:`KerasFeatureExtractor`) that compose with any classifier in a
``Pipeline``, and fine-tuned scikit-learn classifiers
(:class:`FineTunedClassifier`). Both take images as they come: pixel arrays,
file paths, PIL images or a DataFrame column of paths.
"""

from .backbones import WeightsUnavailableError, list_backbones
from .cut_points import list_cut_points
from .extractor import KerasFeatureExtractor
from .finetune import FineTunedClassifier

__version__ = "0.1.0"

__all__ = [
    "FineTunedClassifier",
    "KerasFeatureExtractor",
    "WeightsUnavailableError",
    "__version__",
    "list_backbones",
    "list_cut_points",
]
