"""optimize/concat_scales.py: a Concat's inputs are written at its output's scale, in QDQ and QOperator files alike,
the outputs stay as close to float as before, and inputs read elsewhere or written by scale-keeping ops stay."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

from smallnets.optimize.concat_scales import concat_inputs_at_output_scale

RNG = np.random.default_rng(0)
SHAPE = [1, 8, 12, 12]


class Pictures(CalibrationDataReader):
    def __init__(self) -> None:
        self.feeds = iter([{"x": RNG.normal(size=SHAPE).astype(np.float32)} for _ in range(8)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.feeds, None)


def fire(first: str = "Conv", extra_reader: bool = False, signed: bool = False) -> onnx.ModelProto:
    """x -> squeeze 1x1 -> Relu -> [``first`` (a 1x1 conv + Relu, or a MaxPool), 3x3 conv + Relu at 3x the weights]
    -> Concat -> 1x1 conv: SqueezeNet's fire module, whose two halves calibrate to different ranges.
    ``extra_reader``: the first half is also read by a second conv; ``signed``: the 3x3 half has no Relu."""
    weights = {
        "ws": RNG.normal(size=(8, 8, 1, 1)),
        "w1": RNG.normal(size=(8, 8, 1, 1)),
        "w3": 3 * RNG.normal(size=(8, 8, 3, 3)),
        "wo": RNG.normal(size=(4, 16, 1, 1)),
        **({"wx": RNG.normal(size=(4, 8, 1, 1))} if extra_reader else {}),
    }
    nodes = [
        helper.make_node("Conv", ["x", "ws"], ["s"], name="squeeze"),
        helper.make_node("Relu", ["s"], ["sr"], name="squeeze_act"),
        helper.make_node("Conv", ["sr", "w3"], ["e3"], name="expand3", pads=[1, 1, 1, 1]),
    ]
    if not signed:
        nodes.append(helper.make_node("Relu", ["e3"], ["e3r"], name="expand3_act"))
    if first == "Conv":
        nodes += [
            helper.make_node("Conv", ["sr", "w1"], ["e1"], name="expand1"),
            helper.make_node("Relu", ["e1"], ["e1r"], name="expand1_act"),
        ]
    else:
        nodes.append(helper.make_node("MaxPool", ["sr"], ["e1r"], name="pool", kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
    nodes += [
        helper.make_node("Concat", ["e1r", "e3" if signed else "e3r"], ["c"], name="concat", axis=1),
        helper.make_node("Conv", ["c", "wo"], ["y"], name="out"),
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if extra_reader:
        nodes.append(helper.make_node("Conv", ["e1r", "wx"], ["z"], name="extra"))
        outputs.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, None))
    initializers = [numpy_helper.from_array(value.astype(np.float32), name) for name, value in weights.items()]
    graph = helper.make_graph(
        nodes, "fire", [helper.make_tensor_value_info("x", TensorProto.FLOAT, SHAPE)], outputs, initializers
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def quantized(tmp_path: Path, model: onnx.ModelProto, quant_format: QuantFormat) -> tuple[Path, onnx.ModelProto]:
    """The float model saved (onnxruntime's quantizer folds each conv's Relu into its output quantizer) and its int8."""
    source, output = tmp_path / "fire.onnx", tmp_path / f"fire-{quant_format.name}.onnx"
    onnx.save(model, str(source))
    quantize_static(str(source), str(output), Pictures(), quant_format=quant_format, per_channel=True)
    return source, onnx.load(str(output))


def run(model: onnx.ModelProto | Path, feed: np.ndarray) -> np.ndarray:
    source = str(model) if isinstance(model, Path) else model.SerializeToString()
    return ort.InferenceSession(source, providers=["CPUExecutionProvider"]).run(None, {"x": feed})[0]


def concat_input_scales(model: onnx.ModelProto) -> tuple[list[str], str]:
    """The scale each concat input is quantized with (as its reader sees it), and the concat output's."""
    producers = {output: node for node in model.graph.node for output in node.output}
    concat = next(node for node in model.graph.node if node.op_type in ("Concat", "QLinearConcat"))
    if concat.op_type == "QLinearConcat":
        return [concat.input[index] for index in range(3, len(concat.input), 3)], concat.input[0]
    output_quantizer = next(node for node in model.graph.node if node.input and node.input[0] == concat.output[0])
    return [producers[name].input[1] for name in concat.input], output_quantizer.input[1]


@pytest.mark.parametrize("quant_format", [QuantFormat.QDQ, QuantFormat.QOperator], ids=["qdq", "qoperator"])
def test_both_inputs_move_to_the_output_scale_and_stay_as_close_to_float(
    tmp_path: Path, quant_format: QuantFormat
) -> None:
    source, model = quantized(tmp_path, fire(), quant_format)
    inputs, output = concat_input_scales(model)
    assert output not in inputs, "the two halves calibrate to their own ranges"
    feed = RNG.normal(size=SHAPE).astype(np.float32)
    exact, before = run(source, feed), run(model, feed)
    assert concat_inputs_at_output_scale(model) == 0, "without the float model a folded Relu cannot be told apart"
    assert concat_inputs_at_output_scale(model, reference=onnx.load(str(source))) == 2
    onnx.checker.check_model(model)
    inputs, output = concat_input_scales(model)
    assert inputs == [output, output]
    after = run(model, feed)
    step = float(np.abs(exact).max()) / 127
    assert np.abs(after - exact).mean() <= np.abs(before - exact).mean() + 0.05 * step, "one rounding, not two"
    read = {name for node in model.graph.node for name in node.input}
    assert all(init.name in read for init in model.graph.initializer), "no scale is left behind unread"


@pytest.mark.parametrize(("first", "extra_reader"), [("MaxPool", False), ("Conv", True)], ids=["maxpool", "shared"])
def test_an_input_read_elsewhere_or_kept_at_its_writers_scale_stays(
    tmp_path: Path, first: str, extra_reader: bool
) -> None:
    """A MaxPool's output keeps its input's scale (onnxruntime pools on the integers only then); an input another
    conv reads too would reach it coarser. Only the other half moves."""
    source, model = quantized(tmp_path, fire(first, extra_reader), QuantFormat.QDQ)
    kept = concat_input_scales(model)[0][0]
    assert concat_inputs_at_output_scale(model, reference=onnx.load(str(source))) == 1
    inputs, output = concat_input_scales(model)
    assert inputs == [kept, output]


@pytest.mark.parametrize("quant_format", [QuantFormat.QDQ, QuantFormat.QOperator], ids=["qdq", "qoperator"])
def test_a_relu_folded_into_the_quantizer_survives(tmp_path: Path, quant_format: QuantFormat) -> None:
    """Concat(Relu(conv), signed conv): the quantizer clips the first half at 0 in place of its Relu; at the
    Concat's signed scale it would let negatives through, so it stays, and the model still computes the Relu."""
    source, model = quantized(tmp_path, fire(signed=True), quant_format)
    feed = RNG.normal(size=SHAPE).astype(np.float32)
    exact, before = run(source, feed), run(model, feed)
    kept = concat_input_scales(model)[0][0]
    assert concat_inputs_at_output_scale(model, reference=onnx.load(str(source))) == 1, "only the signed half"
    inputs, output = concat_input_scales(model)
    assert inputs == [kept, output]
    assert np.abs(run(model, feed) - exact).mean() <= np.abs(before - exact).mean() * 1.05
