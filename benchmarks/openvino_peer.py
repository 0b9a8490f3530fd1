"""OpenVINO as a peer: its CPU runtime in f32, and NNCF int8 from the same ONNX export and calibration images.

What an OpenVINO user would run instead of us: ``convert_model`` on the exported ONNX, ``nncf.quantize`` with its
defaults (fast bias correction, mixed precision where NNCF chooses it), the input reshaped to the measured batch,
and a latency-hinted single-stream compile with ``threads`` inference threads. Precision is pinned to f32 for the
parts NNCF left float, so a CPU with BF16 units does not silently run the "f32" peer in bf16.
Needs the ``peers`` extra (``pip install 'smallnets[peers]'``); imported only by the variants that use it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import numpy as np

from smallnets.benchmarks.loaded import LoadedModel

INSTALL_HINT = "install the peers extra: pip install 'smallnets[peers]' -c constraints.txt"


class PeerUnavailableError(RuntimeError):
    """openvino or nncf is not installed."""


def import_openvino() -> ModuleType:
    try:
        import openvino
    except ImportError as error:
        raise PeerUnavailableError(f"the openvino variants need OpenVINO ({error}); {INSTALL_HINT}") from error
    return openvino


def build_openvino_fp32(onnx_path: Path, output: Path) -> Path:
    """The export converted to OpenVINO IR (.xml + .bin), weights kept in f32."""
    ov = import_openvino()
    output.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(ov.convert_model(str(onnx_path)), str(output), compress_to_fp16=False)
    return output


def build_nncf_int8(onnx_path: Path, output: Path, calibration: Sequence[np.ndarray]) -> Path:
    """NNCF post-training int8 with its default settings, calibrated on ``calibration`` (batch-1 arrays)."""
    ov = import_openvino()
    try:
        import nncf
    except ImportError as error:
        raise PeerUnavailableError(f"the openvino-nncf-int8 variant needs NNCF ({error}); {INSTALL_HINT}") from error
    model = ov.convert_model(str(onnx_path))
    quantized = nncf.quantize(model, nncf.Dataset(list(calibration)), subset_size=len(calibration))
    output.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(quantized, str(output), compress_to_fp16=False)
    return output


def compile_config(threads: int) -> dict[str, object]:
    """One latency-hinted stream on ``threads`` threads, float parts in f32 (never bf16 behind our back)."""
    return {
        "INFERENCE_NUM_THREADS": threads,
        "PERFORMANCE_HINT": "LATENCY",
        "NUM_STREAMS": 1,
        "INFERENCE_PRECISION_HINT": "f32",
    }


def load_openvino(model_path: str, threads: int, input_shape: Sequence[int]) -> LoadedModel:
    """Read the IR, fix the input to ``input_shape`` (what an OpenVINO user does for a known batch) and compile."""
    ov = import_openvino()
    core = ov.Core()
    started = time.perf_counter()
    model = core.read_model(model_path)
    model.reshape({0: list(input_shape)})
    compiled = core.compile_model(model, "CPU", compile_config(threads))
    request = compiled.create_infer_request()
    load_ms = (time.perf_counter() - started) * 1000.0
    weights = Path(model_path).with_suffix(".bin")
    size = os.path.getsize(model_path) + (os.path.getsize(weights) if weights.is_file() else 0)

    def run(batch: np.ndarray) -> np.ndarray:
        return request.infer({0: batch})[compiled.output(0)]

    return LoadedModel(run, provider="openvino-cpu", size_bytes=size, load_ms=load_ms)
