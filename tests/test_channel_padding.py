"""optimize/channel_padding.py: depthwise convs padded to 16 channels compute exactly what they computed before.

A block like MobileNet V3's (expand, HardSwish, depthwise, squeeze-excite, project) on 12 channels must come out on
16 with the same outputs; regions the rewrite cannot pad through stay as they were; and every family of the
registry keeps its logits when padded.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static
from registry_choices import FAMILY_IDS

from smallnets.optimize.channel_padding import pad_depthwise_channels, pad_quantized_input, pad_stem_channels
from smallnets.optimize.sensitivity import layer_errors

RNG = np.random.default_rng(0)


def weight(name: str, *shape: int) -> onnx.TensorProto:
    return numpy_helper.from_array(RNG.normal(size=shape).astype(np.float32), name)


def se_block(tail: str = "project") -> onnx.ModelProto:
    """x (8) -> expand 1x1 (12) -> HardSwish -> depthwise 3x3 (12) -> Relu -> SE (pool, fc 4, Relu, fc 12,
    HardSigmoid, Mul) -> ``tail``: "project" (1x1 to 8), "output" (the block's output), "concat" (with itself),
    "channel-constant" (Mul by a per-channel constant, then project)."""
    nodes = [
        helper.make_node("Conv", ["x", "we", "be"], ["e"], name="expand"),
        helper.make_node("HardSwish", ["e"], ["ea"], name="expand_act"),
        helper.make_node("Conv", ["ea", "wd", "bd"], ["d"], name="depthwise", group=12, pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["d"], ["da"], name="depthwise_act"),
        helper.make_node("GlobalAveragePool", ["da"], ["p"], name="se_pool"),
        helper.make_node("Conv", ["p", "w1", "b1"], ["f1"], name="se_fc1"),
        helper.make_node("Relu", ["f1"], ["f1a"], name="se_act"),
        helper.make_node("Conv", ["f1a", "w2", "b2"], ["f2"], name="se_fc2"),
        helper.make_node("HardSigmoid", ["f2"], ["g"], name="se_gate", alpha=1 / 6, beta=0.5),
        helper.make_node("Mul", ["da", "g"], ["s"], name="se_scale"),
    ]
    weights = [weight("we", 12, 8, 1, 1), weight("be", 12), weight("wd", 12, 1, 3, 3), weight("bd", 12)]
    weights += [weight("w1", 4, 12, 1, 1), weight("b1", 4), weight("w2", 12, 4, 1, 1), weight("b2", 12)]
    weights += [weight("wp", 8, 12, 1, 1), weight("k", 1, 12, 1, 1)]
    output = {
        "project": [helper.make_node("Conv", ["s", "wp"], ["y"], name="project")],
        "output": [helper.make_node("Identity", ["s"], ["y"], name="out")],
        "concat": [helper.make_node("Concat", ["s", "s"], ["y"], name="concat", axis=1)],
        "channel-constant": [
            helper.make_node("Mul", ["s", "k"], ["sk"], name="rescale"),
            helper.make_node("Conv", ["sk", "wp"], ["y"], name="project"),
        ],
    }[tail]
    graph = helper.make_graph(
        nodes + output,
        "se-block",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 10, 10])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        weights,
    )
    return onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def run(model: onnx.ModelProto, feed: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: feed})[0]


def depthwise_channels(model: onnx.ModelProto) -> list[int]:
    weights = {init.name: init for init in model.graph.initializer}
    return [
        int(weights[node.input[1]].dims[0])
        for node in model.graph.node
        if node.op_type == "Conv" and weights[node.input[1]].dims[1] == 1 and weights[node.input[1]].dims[0] > 1
    ]


def test_a_squeeze_excite_block_is_padded_to_16_channels_with_the_same_outputs() -> None:
    model, feed = se_block(), RNG.normal(size=(1, 8, 10, 10)).astype(np.float32)
    before = run(model, feed)
    assert pad_depthwise_channels(model) == 1
    onnx.checker.check_model(model, full_check=True)
    assert depthwise_channels(model) == [16]
    shapes = {init.name: list(init.dims) for init in model.graph.initializer}
    assert shapes["we"] == [16, 8, 1, 1] and shapes["w1"] == [4, 16, 1, 1] and shapes["w2"] == [16, 4, 1, 1]
    assert shapes["wp"] == [8, 16, 1, 1], "the project conv reads the padded channels with zero weights"
    np.testing.assert_allclose(run(model, feed), before, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("tail", ["output", "concat", "channel-constant"])
def test_a_region_that_meets_what_cannot_be_padded_is_left_alone(tail: str) -> None:
    model = se_block(tail)
    original = model.SerializeToString()
    assert pad_depthwise_channels(model) == 0
    assert model.SerializeToString() == original


def test_channels_already_a_multiple_are_left_alone() -> None:
    model = se_block()
    assert pad_depthwise_channels(model, multiple=4) == 0 and depthwise_channels(model) == [12]
    assert pad_depthwise_channels(model, multiple=8) == 1 and depthwise_channels(model) == [16]


@pytest.mark.parametrize("family", FAMILY_IDS)
def test_every_family_keeps_its_logits_when_padded(
    family: str, fused_family: Callable[[str], tuple[onnx.ModelProto, np.ndarray]]
) -> None:
    model, feed = fused_family(family)
    before, unaligned = run(model, feed), sum(channels % 16 != 0 for channels in depthwise_channels(model))
    padded = pad_depthwise_channels(model)
    assert pad_stem_channels(model) >= 1, "every family's stem reads the RGB input"
    onnx.checker.check_model(model)
    np.testing.assert_allclose(run(model, feed), before, rtol=1e-4, atol=1e-5 * float(np.abs(before).max()))
    left = sum(channels % 16 != 0 for channels in depthwise_channels(model))
    assert left == unaligned - padded, "each padded depthwise conv now has a multiple of 16 channels"
    print(f"{family}: {padded} of {unaligned} unaligned depthwise convs padded")


def test_per_layer_evidence_compares_the_real_channels_of_a_padded_model(tmp_path: Path) -> None:
    """optimize/sensitivity.py reads a padded int8 file's layers beside fp32's: the padded float model is exact."""
    fp32, padded = tmp_path / "fp32.onnx", tmp_path / "padded.onnx"
    model = se_block()
    onnx.save(model, str(fp32))
    pad_depthwise_channels(model)
    onnx.save(model, str(padded))
    errors = layer_errors(fp32, padded, RNG.normal(size=(4, 8, 10, 10)).astype(np.float32))
    assert {error.node for error in errors} == {"expand", "depthwise", "se_fc1", "se_fc2", "project"}
    assert all(error.sqnr_db > 100 and error.cosine > 0.999999 for error in errors), errors


def stem(groups: int = 1, second_reader: str = "Conv") -> onnx.ModelProto:
    """RGB input -> 3x3 stride-2 conv to 6 channels (``groups``) -> Relu; ``second_reader`` reads the input too."""
    nodes = [
        helper.make_node("Conv", ["x", "ws"], ["s"], name="stem", group=groups, strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["s"], ["y"], name="stem_act"),
    ]
    weights = [weight("ws", 6, 3 // groups, 3, 3), weight("wo", 2, 3, 1, 1)]
    other = {"Conv": ["x", "wo"], "ReduceMean": ["x"]}[second_reader]
    nodes.append(helper.make_node(second_reader, other, ["z"], name="second_reader"))
    graph = helper.make_graph(
        nodes,
        "stem",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, None),
        ],
        weights,
    )
    return onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def test_the_stems_rgb_input_gets_a_zero_fourth_channel_with_the_same_outputs() -> None:
    model, feed = stem(), RNG.normal(size=(1, 3, 16, 16)).astype(np.float32)
    before = run(model, feed)
    assert pad_stem_channels(model) == 2, "both convs reading the input"
    onnx.checker.check_model(model)
    shapes = {init.name: list(init.dims) for init in model.graph.initializer}
    assert shapes["ws"] == [6, 4, 3, 3] and shapes["wo"] == [2, 4, 1, 1]
    assert model.graph.node[0].op_type == "Pad", "the input is padded once, before its readers"
    assert model.graph.input[0].type.tensor_type.shape.dim[1].dim_value == 3, "callers still send RGB"
    np.testing.assert_allclose(run(model, feed), before, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("groups", "second_reader"), [(3, "Conv"), (1, "ReduceMean")])
def test_an_input_read_by_anything_but_plain_convs_stays_rgb(groups: int, second_reader: str) -> None:
    model = stem(groups, second_reader)
    original = model.SerializeToString()
    assert pad_stem_channels(model) == 0
    assert model.SerializeToString() == original


class Pictures(CalibrationDataReader):
    def __init__(self, count: int = 4) -> None:
        self.feeds = iter([{"x": RNG.normal(size=(1, 3, 16, 16)).astype(np.float32)} for _ in range(count)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.feeds, None)


def quantized_padded_stem(tmp_path: Path, quant_format: QuantFormat = QuantFormat.QDQ) -> onnx.ModelProto:
    """The padded stem through onnxruntime's quantizer: QDQ Q -> DQ -> Pad -> Q -> DQ -> Conv, QOperator
    Pad -> Q -> QLinearConv."""
    model = stem()
    pad_stem_channels(model)
    source, output = tmp_path / "padded.onnx", tmp_path / "int8.onnx"
    onnx.save(model, str(source))
    quantize_static(str(source), str(output), Pictures(), quant_format=quant_format, per_channel=True)
    return onnx.load(str(output))


def test_the_stems_pad_moves_onto_the_integers_with_the_same_outputs(tmp_path: Path) -> None:
    model, feed = quantized_padded_stem(tmp_path), RNG.normal(size=(1, 3, 16, 16)).astype(np.float32)
    before, quantizers = run(model, feed), op_count(model, "QuantizeLinear")
    assert pad_quantized_input(model) == 1
    onnx.checker.check_model(model)
    pad = next(node for node in model.graph.node if node.op_type == "Pad")
    producer = next(node for node in model.graph.node if pad.input[0] in node.output)
    assert producer.op_type == "QuantizeLinear" and producer.input[0] == "x", "the Pad reads the quantized input"
    assert op_count(model, "QuantizeLinear") == quantizers - 1
    assert np.array_equal(run(model, feed), before), "zero on the floats is the zero point on the integers"


@pytest.mark.parametrize("quant_format", [QuantFormat.QOperator, QuantFormat.QDQ], ids=["qoperator", "qdq-rescaled"])
def test_a_pad_before_a_quantizer_of_its_own_moves_behind_it(tmp_path: Path, quant_format: QuantFormat) -> None:
    """Pad -> Q (QOperator's stem, or a QDQ Pad whose next Q has another scale) becomes Q -> Pad(zero point)."""
    model, feed = quantized_padded_stem(tmp_path, quant_format), RNG.normal(size=(1, 3, 16, 16)).astype(np.float32)
    pad = next(node for node in model.graph.node if node.op_type == "Pad")
    if quant_format == QuantFormat.QDQ:
        model.graph.initializer.append(numpy_helper.from_array(np.array(0.05, np.float32), "other_scale"))
        after = next(node for node in model.graph.node if node.input and node.input[0] == pad.output[0])
        readers = [node for node in model.graph.node if node.input and node.input[0] == after.output[0]]
        for quantizer in (after, *readers):
            quantizer.input[1] = "other_scale"
    before = run(model, feed)
    assert pad_quantized_input(model) == 1
    onnx.checker.check_model(model)
    producer = next(node for node in model.graph.node if pad.input[0] in node.output)
    assert producer.op_type == "QuantizeLinear" and list(model.graph.node).index(producer) < list(
        model.graph.node
    ).index(pad)
    assert np.array_equal(run(model, feed), before), "zero on the floats is the zero point on the integers"


def test_a_pad_of_another_value_stays_float(tmp_path: Path) -> None:
    model = quantized_padded_stem(tmp_path)
    pad = next(node for node in model.graph.node if node.op_type == "Pad")
    model.graph.initializer.append(numpy_helper.from_array(np.array(0.5, np.float32), "half"))
    pad.input.append("half")
    original = model.SerializeToString()
    assert pad_quantized_input(model) == 0
    assert model.SerializeToString() == original


def op_count(model: onnx.ModelProto, op_type: str) -> int:
    return sum(node.op_type == op_type for node in model.graph.node)
