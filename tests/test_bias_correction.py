"""optimize/bias_correction.py: a quantized conv whose channel means drifted from fp32 is moved back onto them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from smallnets.core.metadata import card_of
from smallnets.core.targets import QuantOptions
from smallnets.optimize.bias_correction import correct_biases
from smallnets.optimize.calibration import ImageCalibrationReader, demo_calibration_set
from smallnets.optimize.fuse import fuse
from smallnets.optimize.quantize import prepare_for_quantization, quantize_model
from smallnets.optimize.simplify import simplify

RNG = np.random.default_rng(0)
WEIGHT = RNG.standard_normal((6, 4, 3, 3)).astype(np.float32)
BIAS = RNG.standard_normal(6).astype(np.float32)
X_SCALE, W_SCALE = 0.02, np.abs(WEIGHT).reshape(6, -1).max(axis=1) / 127


def fp32_model(path: Path, batch: int | str = 1) -> Path:
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", pads=[1, 1, 1, 1])],
        "fp32",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(WEIGHT, "w"), numpy_helper.from_array(BIAS, "b")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def qdq_model(bias_error_steps: np.ndarray, batch: int | str = 1) -> onnx.ModelProto:
    """The conv in QDQ form as ORT's quantizer writes it (u8 input, per-channel s8 weights, int32 bias with scale
    x_scale * w_scale), its int32 bias off by ``bias_error_steps`` per channel."""
    bias_scale = (X_SCALE * W_SCALE).astype(np.float32)
    weight_q = np.round(WEIGHT / W_SCALE[:, None, None, None]).astype(np.int8)
    bias_q = (np.round(BIAS / bias_scale) + bias_error_steps).astype(np.int32)
    inits = [
        numpy_helper.from_array(np.array(X_SCALE, np.float32), "xs"),
        numpy_helper.from_array(np.array(128, np.uint8), "xz"),
        numpy_helper.from_array(weight_q, "wq"),
        numpy_helper.from_array(W_SCALE.astype(np.float32), "ws"),
        numpy_helper.from_array(np.zeros(6, np.int8), "wz"),
        numpy_helper.from_array(bias_q, "bq"),
        numpy_helper.from_array(bias_scale, "bs"),
        numpy_helper.from_array(np.zeros(6, np.int32), "bz"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
        helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], axis=0),
        helper.make_node("DequantizeLinear", ["bq", "bs", "bz"], ["bd"], axis=0),
        helper.make_node("Conv", ["xd", "wd", "bd"], ["y"], name="conv", pads=[1, 1, 1, 1]),
    ]
    graph = helper.make_graph(
        nodes,
        "qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def channel_means(model: onnx.ModelProto | Path, inputs: np.ndarray) -> np.ndarray:
    source = str(model) if isinstance(model, Path) else model.SerializeToString()
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    outputs = np.concatenate([session.run(None, {"x": inputs[i : i + 1]})[0] for i in range(len(inputs))])
    return outputs.mean(axis=(0, 2, 3))


@pytest.fixture
def inputs() -> np.ndarray:
    return np.random.default_rng(1).uniform(-2.5, 2.5, (6, 4, 8, 8)).astype(np.float32)


@pytest.mark.parametrize("batch", [1, "N"])  # one picture per run, or all in one where the batch axis is free
def test_a_deliberately_biased_channel_is_moved_back_onto_fp32(
    tmp_path: Path, inputs: np.ndarray, batch: int | str
) -> None:
    fp32 = fp32_model(tmp_path / "fp32.onnx", batch)
    error = np.array([0, 0, 4000, 0, -2500, 0])  # channel 2 by about +0.5, channel 4 by about -0.4 (bias steps)
    biased = qdq_model(error, batch)
    target = channel_means(fp32, inputs)
    before = np.abs(channel_means(biased, inputs) - target)
    assert before[2] > 0.2 and before[4] > 0.2
    corrected, report = correct_biases(fp32, biased, inputs)
    after = np.abs(channel_means(corrected, inputs) - target)
    assert after.max() < 0.01, after
    assert [entry.node for entry in report] == ["conv"] and report[0].max_shift == pytest.approx(before.max(), rel=0.05)


def test_skipped_layers_and_empty_inputs(tmp_path: Path, inputs: np.ndarray) -> None:
    fp32 = fp32_model(tmp_path / "fp32.onnx")
    biased = qdq_model(np.array([0, 0, 4000, 0, 0, 0]))
    before = channel_means(biased, inputs)
    corrected, report = correct_biases(fp32, biased, inputs, skip={"conv"})
    assert report == [] and np.array_equal(channel_means(corrected, inputs), before)
    with pytest.raises(ValueError, match="at least one calibration picture"):
        correct_biases(fp32, biased, inputs[:0])


def test_the_quantizer_corrects_biases_when_the_options_say_so(exported: Callable[..., Path], tmp_path: Path) -> None:
    """quantize_model with bias_correction moves the int32 biases; a later call (no reader, cached calibration)
    reuses the calibration pictures the first call kept."""
    fused, _ = fuse(simplify(exported("mobilenet_v1", width=0.25, resolution=128)))
    prepared = tmp_path / "prepared.onnx"
    prepare_for_quantization(fused, prepared)
    reader = ImageCalibrationReader(demo_calibration_set(6).images, card_of(fused).preprocessing, "input")
    plain = quantize_model(prepared, tmp_path / "plain.onnx", QuantOptions("p"), None, tmp_path / "c.json", reader)
    corrected = quantize_model(
        prepared, tmp_path / "bc.onnx", QuantOptions("b", bias_correction=True), None, tmp_path / "c.json", None
    )
    biases = [
        (numpy_helper.to_array(a), numpy_helper.to_array(b))
        for a, b in zip(plain.graph.initializer, corrected.graph.initializer, strict=True)
        if a.data_type == TensorProto.INT32 and "zero_point" not in a.name  # the biases, not their zero points
    ]
    assert biases and sum(not np.array_equal(a, b) for a, b in biases) > len(biases) // 2
    with pytest.raises(ValueError, match="needs the qdq format"):
        QuantOptions("q", bias_correction=True, quant_format="qoperator")
