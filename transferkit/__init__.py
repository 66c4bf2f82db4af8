"""transferkit: transfer learning on images as scikit-learn estimators.

Keras Applications backbones become scikit-learn transformers
(:class:`KerasFeatureExtractor`) that compose with any classifier in a
``Pipeline``, and fine-tuned scikit-learn classifiers
(:class:`FineTunedClassifier`). Both take images as they come: pixel arrays,
file paths, PIL images or a DataFrame column of paths.
"""

from importlib import import_module as _import_module
from importlib import util as _importlib_util
from typing import TYPE_CHECKING as _TYPE_CHECKING
from typing import Any as _Any

from .console import quiet_tensorflow_unless_asked as _quiet_tensorflow_unless_asked

# TensorFlow's start-up lines are noise to a scikit-learn user: keep them out of the console
# unless the user set TF_CPP_MIN_LOG_LEVEL (0 shows everything). See transferkit.console.
_quiet_tensorflow_unless_asked()

__version__ = "0.1.0"

# Public name -> the module defining it, imported when the name is first used (PEP 562):
# the estimators import scikit-learn, which costs seconds that `import transferkit` and the
# command line's listings need not pay.
_PUBLIC = {
    "FileVersionWarning": "persistence",
    "FineTunedClassifier": "finetune",
    "KerasFeatureExtractor": "extractor",
    "ModelFileError": "persistence",
    "WeightsUnavailableError": "backbones",
    "list_backbones": "backbones",
    "list_cut_points": "cut_points",
    "load": "persistence",
    "logme": "transferability",
    "logme_scorer": "transferability",
    "rank_transferability": "transferability",
    "save": "persistence",
}

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
    "logme",
    "logme_scorer",
    "rank_transferability",
    "save",
]

if _TYPE_CHECKING:
    from .backbones import WeightsUnavailableError, list_backbones
    from .cut_points import list_cut_points
    from .extractor import KerasFeatureExtractor
    from .finetune import FineTunedClassifier
    from .persistence import FileVersionWarning, ModelFileError, load, save
    from .transferability import logme, logme_scorer, rank_transferability


def __getattr__(name: str) -> _Any:
    if name in _PUBLIC:
        value = getattr(_import_module(f".{_PUBLIC[name]}", __name__), name)
    elif not name.startswith("_") and _importlib_util.find_spec(f"{__name__}.{name}"):
        # `import transferkit; transferkit.backbones.list_backbones()` worked when this
        # module imported its submodules eagerly; it still does.
        value = _import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})
