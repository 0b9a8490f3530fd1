"""benchmarks/openvino_peer.py: openvino-fp32 pins f32, openvino-default leaves precision to OpenVINO, and our own
int8 file runs in OpenVINO with onnxruntime's results (or is refused with the ops OpenVINO cannot read)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

from smallnets.benchmarks.openvino_peer import (
    build_openvino_fp32,
    build_openvino_int8,
    compile_config,
    converted_from,
    int8_companions,
    load_openvino,
)

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


class Pictures(CalibrationDataReader):
    def __init__(self) -> None:
        rng = np.random.default_rng(1)
        self.feeds = iter([{"input": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)} for _ in range(4)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.feeds, None)


def tiny_int8(tmp_path: Path, quant_format: QuantFormat) -> Path:
    source, output = tiny_onnx(tmp_path / "tiny.onnx"), tmp_path / f"int8-{quant_format.name}.onnx"
    quantize_static(str(source), str(output), Pictures(), quant_format=quant_format, per_channel=True)
    return output


def test_our_int8_file_runs_in_openvino_with_onnxruntimes_integers(tmp_path: Path) -> None:
    int8 = tiny_int8(tmp_path, QuantFormat.QDQ)
    ir = build_openvino_int8(int8, tmp_path / "ov" / "model.int8.xml")
    assert ir == tmp_path / "ov" / "model.int8.xml" and not int8_companions(ir)[1].exists()
    assert converted_from(ir, int8)
    batch = np.random.default_rng(2).standard_normal((1, 3, 16, 16)).astype(np.float32)
    ours = ort.InferenceSession(str(int8), providers=["CPUExecutionProvider"]).run(None, {"input": batch})[0]
    theirs = load_openvino(str(ir), 1, batch.shape).run(batch)
    step = float(np.abs(ours).max()) / 127  # about one output quantization step
    assert np.abs(theirs - ours).max() <= 2 * step, "the same integers, give or take a rounding step"
    assert np.abs(theirs - ours).max() < 0.1 * np.abs(ours).std()


def test_an_int8_file_openvino_cannot_read_gets_a_note_naming_the_ops(tmp_path: Path) -> None:
    int8 = tiny_int8(tmp_path, QuantFormat.QOperator)
    model = onnx.load(str(int8))
    conv = next(node for node in model.graph.node if node.op_type == "QLinearConv")
    conv.domain, conv.op_type = "com.microsoft", "QLinearUnknown"  # an op no frontend converts
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    onnx.save(model, str(int8))
    output = tmp_path / "model.int8.xml"
    refusal = int8_companions(output)[1]
    output.write_text("a stale IR")
    assert build_openvino_int8(int8, output) == refusal
    assert not output.exists(), "no IR of an older file is left to be timed"
    assert "cannot read it" in refusal.read_text() and "QLinearUnknown" in refusal.read_text()
    assert converted_from(output, int8), "the refusal stands for this file"
    int8.write_bytes(int8.read_bytes() + b"\0")
    assert not converted_from(output, int8), "a rewritten int8 file is converted again"
