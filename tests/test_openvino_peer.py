"""benchmarks/openvino_peer.py: openvino-fp32 pins f32 and openvino-default leaves precision to OpenVINO (our own
int8 file on OpenVINO is the OpenVINO runtime's: tests/test_openvino_runtime.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from smallnets.benchmarks.openvino_peer import build_openvino_fp32, compile_config, load_openvino

pytest.importorskip("openvino", reason="needs the peers extra: pip install 'smallnets[peers]'")


def test_only_the_pinned_peer_sets_a_precision_hint() -> None:
    assert compile_config(2)["INFERENCE_PRECISION_HINT"] == "f32"
    default = compile_config(2, "default")
    assert "INFERENCE_PRECISION_HINT" not in default
    assert default["PERFORMANCE_HINT"] == "LATENCY" and default["INFERENCE_NUM_THREADS"] == 2


def tiny_onnx(path: Path) -> Path:
    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 3, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w"], ["y"], pads=[1, 1, 1, 1])],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [weight],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_the_ir_remembers_its_precision_and_the_provider_names_what_ran(tmp_path: Path) -> None:
    source = tiny_onnx(tmp_path / "tiny.onnx")
    pinned = load_openvino(str(build_openvino_fp32(source, tmp_path / "f32.xml")), 1, (1, 3, 16, 16))
    default = load_openvino(str(build_openvino_fp32(source, tmp_path / "d.xml", "default")), 1, (1, 3, 16, 16))
    assert pinned.provider == "openvino-cpu"
    flags = Path("/proc/cpuinfo").read_text(errors="ignore").split() if Path("/proc/cpuinfo").is_file() else []
    bf16 = "avx512_bf16" in flags or "amx_bf16" in flags  # OpenVINO's CPU plugin then defaults to bf16
    assert default.provider == ("openvino-cpu-bf16" if bf16 else "openvino-cpu-f32")
    batch = np.ones((1, 3, 16, 16), np.float32)
    np.testing.assert_allclose(default.run(batch), pinned.run(batch), rtol=0.05, atol=0.1)  # bf16 is close, not equal
    with pytest.raises(ValueError, match="precision must be"):
        build_openvino_fp32(source, tmp_path / "x.xml", "fp16")
