"""OpenVINO as the runtime that runs a smallnets ONNX file, instead of onnxruntime.

On x86 CPUs OpenVINO's int8 kernels run our QDQ files ~10% faster than onnxruntime 1.32's (depthwise convs, and the
element-wise tails it fuses into convolutions: docs/decisions.md#the-openvino-runtime), so a server may choose it.
OpenVINO reads the ONNX file itself (QDQ pairs become FakeQuantize); the model card travels in its rt_info. Float
parts run in f32 (``INFERENCE_PRECISION_HINT``): OpenVINO would pick bf16 on CPUs with BF16 units, and the card's
accuracy holds for the precision it names. Batch 1 runs a copy compiled for that static shape (~5% faster than
the dynamic one on Lite0 int8); other batch sizes share one dynamic compile, made at the first such batch.
Optional: needs the ``openvino`` extra; imported only when that runtime is chosen.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from smallnets.core.metadata import CARD_KEY

INSTALL_HINT = "pip install 'smallnets[openvino]' -c constraints.txt"
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
        self._core = ov.Core()
        self.version = version(ov)
        self._model = read_onnx(self._core, path, self.version)
        self.metadata = metadata_props(self._model)
        self._config = compile_config(threads)
        single = self._model.clone()
        row = list(self._model.input(0).get_partial_shape())[1:]
        if not all(dim.is_static for dim in row):
            raise UnreadableModelError(f"{path}: OpenVINO needs a fixed input size, the file has {row}")
        single.reshape({0: [1, *(dim.get_length() for dim in row)]})
        self._compiled: dict[int | None, Any] = {1: self._core.compile_model(single, "CPU", self._config)}
        self._compiling = threading.Lock()
        # An InferRequest is not thread-safe: a run takes one from its pool (or makes one) and gives it back, so the
        # warm-up's request serves the first batch whatever thread runs it.
        self._requests: dict[int | None, queue.SimpleQueue] = {1: queue.SimpleQueue(), None: queue.SimpleQueue()}

    @property
    def name(self) -> str:
        """How the runtime is named beside figures and in the server's metadata."""
        return f"openvino-{self.version}-cpu"

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Logits (N, classes) of a preprocessed float32 batch."""
        key = 1 if len(batch) == 1 else None
        pool = self._requests[key]
        try:
            request = pool.get_nowait()
        except queue.Empty:
            request = self._compiled_for(key).create_infer_request()
        try:
            request.infer({0: batch})
            return request.get_output_tensor(0).data.copy()
        finally:
            pool.put(request)

    def _compiled_for(self, key: int | None) -> Any:
        """The batch-1 compile, or the dynamic one (compiled once, at the first batch of another size)."""
        with self._compiling:
            if key not in self._compiled:
                self._compiled[key] = self._core.compile_model(self._model, "CPU", self._config)
            return self._compiled[key]


def read_onnx(core: Any, path: Path, release: str) -> Any:
    """The ONNX file as an OpenVINO model; UnreadableModelError naming the ops when its frontend lacks some."""
    try:
        return core.read_model(str(path))
    except RuntimeError as error:  # OpenVINO's Core raises its frontend's OpConversionFailure as this
        if UNCONVERTED not in str(error):
            raise
        raise UnreadableModelError(
            f"OpenVINO {release} cannot read {path} ({unread_ops(str(error))}; onnxruntime's QOperator int8 has "
            "such ops): run it with --runtime onnxruntime, or build it with --target x86-openvino"
        ) from error


def check_readable(path: Path) -> None:
    """UnreadableModelError when OpenVINO cannot read the file (before anything is timed or served on it)."""
    ov = import_openvino()
    read_onnx(ov.Core(), path, version(ov))


def version(ov: ModuleType) -> str:
    """OpenVINO's release, e.g. 2026.4.1 (without its build suffix)."""
    return ov.get_version().split("-")[0]


def metadata_props(model: Any) -> Mapping[str, str]:
    """The ONNX file's metadata_props that the project reads (the model card), from OpenVINO's rt_info."""
    path = [FRAMEWORK_INFO, CARD_KEY]
    return {CARD_KEY: model.get_rt_info(path).astype(str)} if model.has_rt_info(path) else {}


def unread_ops(message: str) -> str:
    """The op lists of OpenVINO's "Model wasn't fully converted" summary, on one line (else its first line)."""
    lines = message.splitlines()
    found = [line.strip("- ").strip() for line in lines if "for operations:" in line or "failed for:" in line]
    return "; ".join(found) or message.strip().splitlines()[0]
