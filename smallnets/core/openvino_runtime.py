"""OpenVINO as the runtime that runs a smallnets ONNX file, instead of onnxruntime.

On x86 CPUs OpenVINO's int8 kernels run our QDQ files ~10% faster than onnxruntime 1.32's (depthwise convs, and the
element-wise tails it fuses into convolutions: docs/decisions.md#the-openvino-runtime), so a server may choose it.
OpenVINO reads the ONNX file itself (QDQ pairs become FakeQuantize); the model card travels in its rt_info. Float
parts run in f32 (``INFERENCE_PRECISION_HINT``): OpenVINO would pick bf16 on CPUs with BF16 units, and the card's
accuracy holds for the precision it names. Batch 1 runs a copy compiled for that static shape (~5% faster than
the dynamic one on Lite0 int8); other batch sizes share one dynamic compile, so memory stays two compiles.
Optional: needs the ``openvino`` extra; imported only when that runtime is chosen.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from smallnets.core.metadata import CARD_KEY

INSTALL_HINT = "pip install 'smallnets[openvino]' -c constraints.txt (or pick --runtime onnxruntime)"
UNCONVERTED = "wasn't fully converted"  # OpenVINO's message for a model with ops its ONNX frontend lacks
# ONNX metadata_props land here in an OpenVINO model's rt_info.
FRAMEWORK_INFO = "framework"


class RuntimeUnavailableError(RuntimeError):
    """The chosen runtime is not installed here."""


class UnreadableModelError(ValueError):
    """OpenVINO cannot read the file's ops (onnxruntime's com.microsoft QLinear* contrib ops, a QOperator int8)."""


def import_openvino() -> ModuleType:
    try:
        import openvino
    except ImportError as error:
        raise RuntimeUnavailableError(f"the openvino runtime needs OpenVINO ({error}); {INSTALL_HINT}") from error
    return openvino


def compile_config(threads: int) -> dict[str, object]:
    """One latency-hinted stream on ``threads`` threads, float parts pinned to f32 (see the module docstring)."""
    return {
        "PERFORMANCE_HINT": "LATENCY",
        "NUM_STREAMS": 1,
        "INFERENCE_NUM_THREADS": threads,
        "INFERENCE_PRECISION_HINT": "f32",
    }


class OpenVinoSession:
    """An ONNX file compiled by OpenVINO's CPU plugin: ``run`` a preprocessed batch, ``metadata`` its card."""

    def __init__(self, path: Path, threads: int) -> None:
        ov = import_openvino()
        core = ov.Core()
        self.version = ov.get_version().split("-")[0]
        model = read_onnx(core, path, self.version)
        self.metadata = metadata_props(model)
        single = model.clone()
        row = list(model.input(0).get_partial_shape())[1:]  # (3, crop, crop): static in every smallnets export
        single.reshape({0: [1, *(dim.get_length() for dim in row)]})
        config = compile_config(threads)
        self._compiled = {1: core.compile_model(single, "CPU", config), None: core.compile_model(model, "CPU", config)}
        # An InferRequest is not thread-safe: each thread that runs the model gets its own.
        self._local = threading.local()

    @property
    def name(self) -> str:
        """How the runtime is named beside figures and in the server's metadata."""
        return f"openvino-{self.version}-cpu"

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Logits (N, classes) of a preprocessed float32 batch."""
        key = 1 if len(batch) == 1 else None
        requests: dict[int | None, Any] = self._local.__dict__.setdefault("requests", {})
        if key not in requests:
            requests[key] = self._compiled[key].create_infer_request()
        request = requests[key]
        request.infer({0: batch})
        return request.get_output_tensor(0).data.copy()


def read_onnx(core: Any, path: Path, version: str) -> Any:
    """The ONNX file as an OpenVINO model; UnreadableModelError naming the ops when its frontend lacks some."""
    try:
        return core.read_model(str(path))
    except RuntimeError as error:  # OpenVINO's Core raises its frontend's OpConversionFailure as this
        if UNCONVERTED not in str(error):
            raise
        raise UnreadableModelError(
            f"OpenVINO {version} cannot read {path} ({unread_ops(str(error))}): it is in onnxruntime's QOperator "
            "int8 form; serve it with --runtime onnxruntime"
        ) from error


def check_readable(path: Path) -> None:
    """UnreadableModelError when OpenVINO cannot read the file (before anything is timed or served on it)."""
    ov = import_openvino()
    read_onnx(ov.Core(), path, ov.get_version().split("-")[0])


def metadata_props(model: Any) -> Mapping[str, str]:
    """The ONNX file's metadata_props that the project reads (the model card), from OpenVINO's rt_info."""
    path = [FRAMEWORK_INFO, CARD_KEY]
    return {CARD_KEY: model.get_rt_info(path).astype(str)} if model.has_rt_info(path) else {}


def unread_ops(message: str) -> str:
    """The op lists of OpenVINO's "Model wasn't fully converted" summary, on one line (else its first line)."""
    lines = message.splitlines()
    found = [line.strip("- ").strip() for line in lines if "for operations:" in line or "failed for:" in line]
    return "; ".join(found) or message.strip().splitlines()[0]
