"""benchmarks/op_profile.py: per-op-type time shares and MAC counts from onnxruntime's profiler."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from smallnets.benchmarks.op_profile import conv_kind, main, node_macs, profile_model, summarize


def test_macs_of_a_conv_and_a_gemm() -> None:
    # 3x3 conv, 8 -> 16 channels, 10x10 output: 16*10*10 outputs x 8*3*3 each
    assert node_macs("QLinearConv", [16, 8, 3, 3], [1, 10, 10, 16]) == 1600 * 72
    assert node_macs("Conv", [16, 1, 3, 3], [1, 16, 10, 10]) == 1600 * 9  # depthwise: one input channel per filter
    assert node_macs("Gemm", [1000, 1280], [1, 1000]) == 1000 * 1280  # transposed B [N, K]
    assert node_macs("QGemm", [1280, 1000], [1, 1000]) == 1000 * 1280
    assert node_macs("Relu", [16, 8, 3, 3], [1, 16]) == 0.0
    assert node_macs("Conv", None, [1, 16, 10, 10]) == 0.0


def event(name: str, ts: int, dur: int, op: str = "", output: list[int] | None = None) -> dict:
    if op:
        args = {"op_name": op, "output_type_shape": [{"float": output or [1]}]}
        return {"cat": "Node", "name": f"{name}_kernel_time", "ts": ts, "dur": dur, "args": args}
    return {"cat": "Session", "name": name, "ts": ts, "dur": dur}


def test_conv_kinds() -> None:
    assert conv_kind([32, 1, 3, 3]) == "depthwise"
    assert conv_kind([32, 16, 1, 1]) == "1x1"
    assert conv_kind([32, 3, 3, 3]) == "kxk"


def test_summary_drops_the_warmup_runs_and_averages_per_run() -> None:
    events = [
        event("model_run", 0, 100),
        event("conv", 10, 90, "Conv", [1, 4, 2, 2]),  # warm-up: slow and not counted
        event("model_run", 200, 20),
        event("conv", 205, 12, "Conv", [1, 4, 2, 2]),
        event("relu", 218, 2, "Relu"),
        event("model_run", 300, 30),
        event("conv", 305, 18, "Conv", [1, 4, 2, 2]),
        event("relu", 324, 4, "Relu"),
    ]
    ops, runs, run_us = summarize(events, warmup=1, weights={"conv": [4, 3, 1, 1]})
    assert runs == 2 and run_us == 25
    by_type = {op.op_type: op for op in ops}
    assert by_type["Conv (1x1)"].us_per_run == 15 and by_type["Relu"].us_per_run == 3
    assert by_type["Conv (1x1)"].macs == 16 * 3 and by_type["Conv (1x1)"].nodes == 1
    with pytest.raises(ValueError, match="none after the 5 warm-up runs"):
        summarize(events, warmup=5, weights={})


def conv_model(path: Path) -> Path:
    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((16, 8, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])],
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 20, 20])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [weight],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_a_real_profile_counts_the_conv_macs(tmp_path: Path) -> None:
    profile = profile_model(conv_model(tmp_path / "conv.onnx"), threads=1, runs=5, warmup=2)
    assert profile.runs == 5
    macs = sum(op.macs for op in profile.ops)
    assert macs == pytest.approx(16 * 20 * 20 * 8 * 9, rel=0.01)  # NCHWc would pad channels; 8 and 16 need none
    assert sum(op.us_per_run for op in profile.ops) == pytest.approx(profile.kernel_us)


def test_cli_names_a_missing_model(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["/nonexistent/model.onnx"])
    assert "no such model file: /nonexistent/model.onnx" in capsys.readouterr().err
