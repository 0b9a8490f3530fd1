"""optimize/int8_blocks.py: the rewrites keep SE pools and HardSigmoid gates in int8 without changing the result."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from smallnets.core.metadata import card_of
from smallnets.core.targets import KNOWN_REWRITES, QuantOptions
from smallnets.optimize.calibration import ImageCalibrationReader, demo_calibration_set
from smallnets.optimize.fuse import fuse
from smallnets.optimize.int8_blocks import (
    AFTER_QUANTIZATION,
    BEFORE_QUANTIZATION,
    average_pool_as_depthwise_conv,
    float_silu_as_quick_gelu,
    hard_sigmoid_as_qlinear_add,
    spatial_mean_as_global_pool,
)
from smallnets.optimize.quantize import prepare_for_quantization, quantize_model
from smallnets.optimize.simplify import simplify

SHAPE = [1, 8, 6, 6]


def run(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feed)[0]


def const(name: str, value: object, dtype: type) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(value, dtype=dtype), name)


def mean_model(axes: list[int], keepdims: int) -> onnx.ModelProto:
    node = helper.make_node("ReduceMean", ["x", "axes"], ["y"], name="mean", keepdims=keepdims)
    graph = helper.make_graph(
        [node],
        "mean",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, SHAPE)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [const("axes", axes, np.int64)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


@pytest.mark.parametrize(
    ("axes", "keepdims", "ops"),
    [
        ([2, 3], 1, ["GlobalAveragePool"]),
        ([-1, -2], 1, ["GlobalAveragePool"]),
        ([2, 3], 0, ["GlobalAveragePool", "Flatten"]),
    ],
)
def test_spatial_mean_becomes_global_pool_with_the_same_output(axes: list[int], keepdims: int, ops: list[str]) -> None:
    model = mean_model(axes, keepdims)
    x = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    before = run(model, {"x": x})
    assert spatial_mean_as_global_pool(model) == 1
    assert [node.op_type for node in model.graph.node] == ops
    after = run(model, {"x": x})
    assert after.shape == before.shape
    np.testing.assert_allclose(after, before, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(("axes", "keepdims"), [([1], 1), ([1, 2, 3], 1), ([1], 0)])
def test_other_means_stay(axes: list[int], keepdims: int) -> None:
    model = mean_model(axes, keepdims)
    assert spatial_mean_as_global_pool(model) == 0
    assert model.graph.node[0].op_type == "ReduceMean"


def qdq_model(nodes: list[onnx.NodeProto], name: str, output_type: int) -> onnx.ModelProto:
    """A one-input graph of ``nodes`` with the input's and the gate's quantization parameters as initializers."""
    inits = [
        const("s_in", 0.05, np.float32),
        const("z_in", 120, np.uint8),
        const("s_h", 1.0 / 255, np.float32),
        const("z_h", 0, np.uint8),
    ]
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, SHAPE)],
        [helper.make_tensor_value_info("y", output_type, None)],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def hard_swish_model(alpha: float, beta: float) -> onnx.ModelProto:
    """x -> Q -> DQ -> (HardSigmoid -> Q -> DQ) * DQ -> Q: a quantized HardSwish as ORT's quantizer writes it."""
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s_in", "z_in"], ["xq"], name="q_in"),
        helper.make_node("DequantizeLinear", ["xq", "s_in", "z_in"], ["xf"], name="dq_in"),
        helper.make_node("HardSigmoid", ["xf"], ["h"], name="gate", alpha=alpha, beta=beta),
        helper.make_node("QuantizeLinear", ["h", "s_h", "z_h"], ["hq"], name="q_h"),
        helper.make_node("DequantizeLinear", ["hq", "s_h", "z_h"], ["hf"], name="dq_h"),
        helper.make_node("Mul", ["xf", "hf"], ["y"], name="swish"),
    ]
    return qdq_model(nodes, "hswish", TensorProto.FLOAT)


@pytest.mark.parametrize(("alpha", "beta"), [(1.0 / 6, 0.5), (0.2, -0.1), (0.25, 0.0)])
def test_hard_sigmoid_becomes_one_qlinear_add_within_one_level(alpha: float, beta: float) -> None:
    model = hard_swish_model(alpha, beta)
    x = np.linspace(-7, 7, int(np.prod(SHAPE)), dtype=np.float32).reshape(SHAPE)
    before = run(model, {"x": x})
    assert hard_sigmoid_as_qlinear_add(model) == 1
    ops = Counter(node.op_type for node in model.graph.node)
    assert ops["HardSigmoid"] == 0 and ops["QLinearAdd"] == 1
    assert ops["DequantizeLinear"] == 2  # the input's DQ stays for the Mul
    after = run(model, {"x": x})
    gate_level = 1.0 / 255 * np.abs(x).max() * 1.01  # one level of the gate, times the largest input
    assert np.abs(after - before).max() <= gate_level
    assert (after != before).mean() < 0.05


def test_hard_sigmoid_kept_float_is_not_rewritten() -> None:
    model = hard_swish_model(1.0 / 6, 0.5)
    assert hard_sigmoid_as_qlinear_add(model, keep_float={"gate"}) == 0
    assert "HardSigmoid" in {node.op_type for node in model.graph.node}


def test_every_rewrite_a_target_can_name_exists() -> None:
    assert set(KNOWN_REWRITES) == set(BEFORE_QUANTIZATION) | set(AFTER_QUANTIZATION)
    with pytest.raises(ValueError, match="unknown rewrites"):
        QuantOptions("x", rewrites=("lookup-table",))


def session_ops(path: Path) -> Counter[str]:
    """Op types of the graph onnxruntime actually runs (after its QDQ fusions)."""
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(path.with_suffix(".opt.onnx"))
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return Counter(node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node)


def test_mobilenet_v3_runs_int8_from_input_to_logits(exported: Callable[..., Path], tmp_path: Path) -> None:
    """With the rewrites, ORT leaves no op in float: one QuantizeLinear at the input, one DequantizeLinear at the end.

    Without them the SE pools (ReduceMean) and every HardSigmoid run in float between a DQ and a Q.
    """
    fused, _ = fuse(simplify(exported("mobilenet_v3_small", resolution=96)))
    prepared = prepare_for_quantization(fused, tmp_path / "prepared.onnx")
    reader = ImageCalibrationReader(demo_calibration_set(2).images, card_of(prepared).preprocessing, "input")
    counts = {}
    for options in (QuantOptions("rewritten"), QuantOptions("plain", rewrites=())):
        output = tmp_path / f"{options.name}.onnx"
        quantize_model(tmp_path / "prepared.onnx", output, options, None, tmp_path / "cache.json", reader)
        counts[options.name] = session_ops(output)
    plain, rewritten = counts["plain"], counts["rewritten"]
    assert plain["HardSigmoid"] > 0 and plain["ReduceMean"] > 0
    assert rewritten["HardSigmoid"] == rewritten["ReduceMean"] == 0
    assert rewritten["QuantizeLinear"] == rewritten["DequantizeLinear"] == 1
    assert rewritten["QLinearGlobalAveragePool"] == plain["ReduceMean"]


def silu_model(quantized_gate: bool) -> onnx.ModelProto:
    """DQ -> SiLU -> Q, its Sigmoid float (as the recipe keeps it) or quantized (as ORT's quantizer writes it)."""
    gate = "s"
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s_in", "z_in"], ["xq"], name="q_in"),
        helper.make_node("DequantizeLinear", ["xq", "s_in", "z_in"], ["xf"], name="dq_in"),
        helper.make_node("Sigmoid", ["xf"], ["s"], name="sigmoid"),
    ]
    if quantized_gate:
        nodes += [
            helper.make_node("QuantizeLinear", ["s", "s_h", "z_h"], ["sq"], name="q_s"),
            helper.make_node("DequantizeLinear", ["sq", "s_h", "z_h"], ["sf"], name="dq_s"),
        ]
        gate = "sf"
    nodes += [
        helper.make_node("Mul", ["xf", gate], ["m"], name="silu"),
        helper.make_node("QuantizeLinear", ["m", "s_in", "z_in"], ["y"], name="q_out"),
    ]
    return qdq_model(nodes, "silu", TensorProto.UINT8)


def test_a_float_silu_becomes_one_quick_gelu_with_the_same_output() -> None:
    model = silu_model(quantized_gate=False)
    x = np.linspace(-6, 6, int(np.prod(SHAPE)), dtype=np.float32).reshape(SHAPE)
    before = run(model, {"x": x})
    assert float_silu_as_quick_gelu(model) == 1
    assert [node.op_type for node in model.graph.node] == [
        "QuantizeLinear",
        "DequantizeLinear",
        "QuickGelu",
        "QuantizeLinear",
    ]
    assert np.abs(run(model, {"x": x}).astype(int) - before.astype(int)).max() <= 1  # float rounding, one level


def test_an_int8_silu_is_left_alone() -> None:
    model = silu_model(quantized_gate=True)
    assert float_silu_as_quick_gelu(model) == 0
    assert "QuickGelu" not in {node.op_type for node in model.graph.node}


def pool_model(count_include_pad: int, pads: list[int]) -> onnx.ModelProto:
    node = helper.make_node(
        "AveragePool",
        ["x"],
        ["y"],
        name="pool",
        kernel_shape=[3, 3],
        strides=[2, 2],
        pads=pads,
        count_include_pad=count_include_pad,
    )
    graph = helper.make_graph(
        [node],
        "pool",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, SHAPE)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


@pytest.mark.parametrize(("count_include_pad", "pads"), [(1, [1, 1, 1, 1]), (0, [0, 0, 0, 0])])
def test_average_pool_becomes_a_depthwise_conv_with_the_same_output(count_include_pad: int, pads: list[int]) -> None:
    model = pool_model(count_include_pad, pads)
    x = np.random.default_rng(1).standard_normal(SHAPE).astype(np.float32)
    before = run(model, {"x": x})
    assert average_pool_as_depthwise_conv(model) == 1
    conv = model.graph.node[0]
    assert conv.op_type == "Conv" and helper.get_attribute_value(conv.attribute[0]) == SHAPE[1], "one group per channel"
    np.testing.assert_allclose(run(model, {"x": x}), before, rtol=1e-5, atol=1e-6)


def test_average_pool_that_leaves_padding_out_of_its_count_stays() -> None:
    model = pool_model(0, [1, 1, 1, 1])
    assert average_pool_as_depthwise_conv(model) == 0 and model.graph.node[0].op_type == "AveragePool"
