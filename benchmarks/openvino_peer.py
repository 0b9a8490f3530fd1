"""OpenVINO as a peer: its CPU runtime in f32 and at its own default precision, and NNCF int8 from the same ONNX
export and calibration images.

What an OpenVINO user would run instead of us: ``convert_model`` on the exported ONNX, ``nncf.quantize`` with its
defaults (fast bias correction, mixed precision where NNCF chooses it), the input reshaped to the measured batch,
and a latency-hinted single-stream compile with ``threads`` inference threads. ``openvino-fp32`` and NNCF's int8
pin the float parts to f32, so a CPU with BF16 units does not silently run the "f32" peer in bf16;
``openvino-default`` leaves precision to OpenVINO (bf16 on CPUs with AVX-512 BF16 or AMX): what a user gets who
sets only ``PERFORMANCE_HINT=LATENCY``. The IR records which one it is (rt_info ``smallnets_precision``).
Needs the ``peers`` extra (``pip install 'smallnets[peers]'``); imported only by the variants that use it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import numpy as np

from smallnets.benchmarks.loaded import TimedModel
from smallnets.core.openvino_runtime import compile_config as runtime_compile_config

INSTALL_HINT = "install the peers extra: pip install 'smallnets[peers]' -c constraints.txt"


class PeerUnavailableError(RuntimeError):
    """openvino or nncf is not installed."""


def import_openvino() -> ModuleType:
    try:
        import openvino
    except ImportError as error:
        raise PeerUnavailableError(f"the openvino variants need OpenVINO ({error}); {INSTALL_HINT}") from error
    return openvino


PRECISION_KEY = "smallnets_precision"
PINNED, DEFAULT = "f32", "default"


def build_openvino_fp32(onnx_path: Path, output: Path, precision: str = PINNED) -> Path:
    """The export converted to OpenVINO IR (.xml + .bin), weights kept in f32; ``precision`` is what it runs at:
    f32 pinned, or ``default`` (OpenVINO's choice for this CPU)."""
    if precision not in (PINNED, DEFAULT):
        raise ValueError(f"precision must be {PINNED!r} or {DEFAULT!r}, got {precision!r}")
    ov = import_openvino()
    output.parent.mkdir(parents=True, exist_ok=True)
    model = ov.convert_model(str(onnx_path))
    model.set_rt_info(precision, PRECISION_KEY)
    ov.save_model(model, str(output), compress_to_fp16=False)
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


def compile_config(threads: int, precision: str = PINNED) -> dict[str, object]:
    """The compile `--runtime openvino` serves with (one latency-hinted stream on ``threads`` threads, float parts
    in f32), with OpenVINO's own precision choice when ``precision`` is ``default``."""
    config = runtime_compile_config(threads)
    if precision == DEFAULT:
        del config["INFERENCE_PRECISION_HINT"]
    return config


def ir_precision(model: object) -> str:
    """The precision an IR was built to run at (f32 for IRs without the note, e.g. NNCF's int8)."""
    if not model.has_rt_info(PRECISION_KEY):  # type: ignore[attr-defined]
        return PINNED
    return model.get_rt_info(PRECISION_KEY).astype(str)  # type: ignore[attr-defined]


def load_openvino(model_path: str, threads: int, input_shape: Sequence[int]) -> TimedModel:
    """Read the IR, fix the input to ``input_shape`` (what an OpenVINO user does for a known batch) and compile."""
    ov = import_openvino()
    core = ov.Core()
    started = time.perf_counter()
    model = core.read_model(model_path)
    model.reshape({0: list(input_shape)})
    compiled = core.compile_model(model, "CPU", compile_config(threads, ir_precision(model)))
    request = compiled.create_infer_request()
    load_ms = (time.perf_counter() - started) * 1000.0
    weights = Path(model_path).with_suffix(".bin")
    size = os.path.getsize(model_path) + (os.path.getsize(weights) if weights.is_file() else 0)

    def run(batch: np.ndarray) -> np.ndarray:
        return request.infer({0: batch})[compiled.output(0)]

    # At OpenVINO's default the provider names the precision the CPU plugin chose (bf16 on CPUs with BF16 units).
    chosen = compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
    provider = "openvino-cpu" if ir_precision(model) == PINNED else f"openvino-cpu-{chosen}"
    return TimedModel(run, provider=provider, size_bytes=size, load_ms=load_ms)
