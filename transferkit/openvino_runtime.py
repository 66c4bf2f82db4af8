"""Running an estimator's network with OpenVINO's CPU runtime (``runtime="openvino"``).

KerasFeatureExtractor computes its features with it, FineTunedClassifier its predictions
(training stays on TensorFlow).

TensorFlow runs convolutions on CPUs without oneDNN (AMD, older Intel) through Eigen. On
the 2-core AMD CI machine, in five runs of ``benchmarks/roofline.py``, ResNet50 at 224 px
reached 0.70-0.80 of the float32 matrix-multiply roof through TensorFlow and 0.82-0.93
through OpenVINO (1.1-1.3x the images per second), whose CPU plugin has its own convolution
kernels and fuses the network as a whole. The Keras model stays the reference: it is
traced once, converted in memory, compiled for the CPU in float32, and its outputs equal
TensorFlow's up to float32 rounding.

OpenVINO is optional: ``pip install "transferkit[openvino]"``.
"""

from __future__ import annotations

import importlib.util
import threading
from typing import Any

import numpy as np

__all__ = ["RUNTIMES", "check_runtime", "make_openvino_forward", "openvino_available"]

#: Values of ``runtime`` in KerasFeatureExtractor and FineTunedClassifier.
RUNTIMES = ("tensorflow", "openvino")

_core_lock = threading.Lock()
_core: Any = None


def openvino_available() -> bool:
    """Whether the ``openvino`` package can be imported."""
    return importlib.util.find_spec("openvino") is not None


def _require_openvino() -> None:
    if not openvino_available():
        raise ImportError(
            "runtime='openvino' needs the openvino package, which is not installed: "
            'pip install "transferkit[openvino]" (or use runtime="tensorflow").'
        )


def check_runtime(runtime: Any, precision: str = "float32") -> None:
    """Raise if an estimator's ``runtime`` (with its compute ``precision``) cannot run here.

    Raises
    ------
    ValueError
        An unknown runtime, or OpenVINO with a precision other than float32.
    ImportError
        ``runtime="openvino"`` where the openvino package is not installed.
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime={runtime!r} is not supported; use one of {RUNTIMES}.")
    if runtime == "openvino":
        if precision != "float32":
            raise ValueError(
                f"runtime='openvino' runs float32 only, not precision={precision!r}; "
                "use precision='float32' or runtime='tensorflow'."
            )
        _require_openvino()


def _openvino_core() -> Any:
    # One Core per process: it loads the CPU plugin, which is slow to do per model.
    global _core
    with _core_lock:
        if _core is None:
            import openvino

            _core = openvino.Core()
        return _core


class _OpenVINOForward:
    """``float32 batch -> ndarray`` through a compiled OpenVINO model.

    An infer request holds its own input and output buffers, so each thread gets its own;
    the compiled model is shared (OpenVINO allows concurrent requests on it).
    """

    def __init__(self, compiled: Any) -> None:
        self.compiled = compiled
        self.output = compiled.output(0)
        self._local = threading.local()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        inputs = np.ascontiguousarray(batch, dtype=np.float32)
        # infer() returns copies of the outputs, so the next call cannot overwrite them.
        return np.asarray(request.infer({0: inputs})[self.output])


def _features_only(converted: Any, name: str) -> Any:
    """``converted`` with the traced function's own output as its only output.

    TensorFlow's frontend also turns some internal tensors into outputs: with swish
    activations (EfficientNet, EfficientNetV2) every ``tf.nn.silu`` left one behind, and the
    features were no longer output 0. Keeping only the features also spares OpenVINO
    from materialising the others.
    """
    import openvino

    matches = [output for output in converted.outputs if name in output.get_names()]
    if len(matches) != 1:
        found = sorted(n for output in converted.outputs for n in output.get_names())
        raise RuntimeError(
            f"OpenVINO's conversion of the network has {len(matches)} outputs named {name!r} "
            f"(outputs: {found[:10]}); use runtime='tensorflow' for this network."
        )
    if len(converted.outputs) == 1:
        return converted
    return openvino.Model(matches, converted.get_parameters(), converted.friendly_name)


def make_openvino_forward(model: Any, size: tuple[int, int]) -> _OpenVINOForward:
    """Compile ``model`` (float32 images of ``size``, any batch size) for OpenVINO's CPU plugin.

    The weights are those of ``model`` now: later changes to its layers are not seen.
    Raises ImportError when openvino is not installed (a pickle loaded elsewhere, say).
    """
    _require_openvino()
    import openvino
    import tensorflow as tf

    from .keras_setup import ForwardPass

    spec = tf.TensorSpec((None, size[0], size[1], 3), tf.float32)
    traced = tf.function(ForwardPass(model)).get_concrete_function(spec)
    try:
        converted = openvino.convert_model(traced)
    except Exception as err:  # OpenVINO raises its own classes for each unconvertible op
        raise RuntimeError(
            f"OpenVINO cannot convert the network {model.name!r} ({type(err).__name__}: "
            f"{str(err)[:300]}); use runtime='tensorflow' for this backbone."
        ) from err
    converted = _features_only(converted, traced.outputs[0].name)
    compiled = _openvino_core().compile_model(converted, "CPU", {
        # float32 arithmetic everywhere: on CPUs with bfloat16 units OpenVINO would
        # otherwise choose bfloat16 by itself and the features would drift.
        "INFERENCE_PRECISION_HINT": "f32",
        # One batch at a time on all cores: the extractor's loop feeds one batch per call.
        "PERFORMANCE_HINT": "LATENCY",
    })
    return _OpenVINOForward(compiled)
