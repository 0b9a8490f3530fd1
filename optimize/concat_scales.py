"""Quantize what a Concat joins at the Concat's own output scale, so onnxruntime's QLinearConcat only copies.

QLinearConcat requantizes every input whose scale or zero point differs from its output's through a lookup, byte
by byte, on one thread: ~43 us per 55x55x64 input against ~3.5 us for an input already at the output's scale
(AVX-512 VNNI x86, 1 thread). SqueezeNet's eight concats were 16% of its int8 time at 1 thread and 23% at 2.

Where an input's only reader is the Concat, the op that writes it may as well write it at the Concat's scale and
zero point: one rounding instead of two. Inputs read elsewhere too, or written by an op that must keep its input's
scale (a Split, a Transpose, a MaxPool: onnxruntime keeps those on the integers only while the scales agree), stay.

One case needs the float model: onnxruntime's quantizer drops a Relu or Clip after a conv and lets the conv's output
quantizer clip instead. Such an input moves only when the Concat's output range lies within that activation's bounds
(a Relu'd input moves to a Concat whose output starts at 0), so the clip survives; without the float model it stays.
Both quantized forms are handled: QDQ (the input's QuantizeLinear and DequantizeLinear) and QOperator (the writing
QLinear op's output scale and the QLinearConcat's input scale).
"""

from __future__ import annotations

import math
from collections.abc import Collection

import numpy as np
import onnx

from smallnets.optimize.groups import GraphView, attribute, drop_unread_initializers

# Float ops whose output quantizer requantizes (so it may take any scale), and QLinear ops by where their output
# scale and zero point sit among their inputs.
REQUANTIZING_FLOAT_OPS = frozenset(
    {"Conv", "ConvTranspose", "Gemm", "MatMul", "Relu", "Clip", "Add", "Mul", "Sigmoid", "HardSwish", "LeakyRelu"}
)
QLINEAR_OUTPUT_SCALE = {"QLinearConv": 6, "QLinearMatMul": 6, "QLinearAdd": 6, "QLinearMul": 6}
# Ops onnxruntime's quantizer folds a following Relu or Clip into (their output quantizer clips instead).
FOLDING_WRITERS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "QLinearConv", "QLinearMatMul"})
ACTIVATIONS = frozenset({"Relu", "Clip"})  # the ones the quantizer folds
QOPERATOR_SUFFIX = "_quantized"  # onnxruntime's QOperator name for the integer copy of a float tensor


def concat_inputs_at_output_scale(
    model: onnx.ModelProto, keep_float: Collection[str] = (), reference: onnx.ModelProto | None = None
) -> int:
    """Point each Concat input's quantizer at the Concat's output scale and zero point, in place; returns how many
    inputs moved. ``reference`` is the float model that was quantized; Concats named in ``keep_float`` stay."""
    view = GraphView.of(model)
    float_view = GraphView.of(reference) if reference is not None else None
    moves: list[set[str]] = []
    for node in model.graph.node:
        if node.name in keep_float:
            continue
        if node.op_type == "Concat":
            moves += _move_qdq_inputs(node, view, float_view)
        elif node.op_type == "QLinearConcat":
            moves += _move_qlinear_inputs(node, view, float_view)
    drop_unread_initializers(model.graph, set().union(*moves))
    return len(moves)


def _move_qdq_inputs(concat: onnx.NodeProto, view: GraphView, float_view: GraphView | None) -> list[set[str]]:
    """DQ -> Concat -> Q: each input's Q and its DQs take the output Q's scale and zero point; returns, per input
    moved, the scale and zero point names they stopped reading."""
    readers = view.consumers.get(concat.output[0], [])
    if len(readers) != 1 or readers[0].op_type != "QuantizeLinear" or len(readers[0].input) < 3:
        return []
    target = tuple(readers[0].input[1:3])
    moved: list[set[str]] = []
    for name in concat.input:
        dequantize = view.producers.get(name)
        if dequantize is None or dequantize.op_type != "DequantizeLinear" or len(dequantize.input) < 3:
            continue
        quantize = view.producers.get(dequantize.input[0])
        if quantize is None or quantize.op_type != "QuantizeLinear" or len(quantize.input) < 3:
            continue
        writer, dequantizers = view.producers.get(quantize.input[0]), view.consumers.get(quantize.output[0], [])
        if writer is None or writer.op_type not in REQUANTIZING_FLOAT_OPS or quantize.output[0] in view.graph_outputs:
            continue
        if any(d.op_type != "DequantizeLinear" or view.consumers.get(d.output[0]) != [concat] for d in dequantizers):
            continue
        if not _may_move(tuple(quantize.input[1:3]), target, writer, quantize.input[0], view, float_view):
            continue
        moved.append(set(quantize.input[1:3]))
        for quantizer in (quantize, *dequantizers):
            quantizer.input[1], quantizer.input[2] = target
    return moved


def _move_qlinear_inputs(concat: onnx.NodeProto, view: GraphView, float_view: GraphView | None) -> list[set[str]]:
    """QLinearConcat(Y scale, Y zero point, (X, X scale, X zero point)...): each X's writer and the X's triple take
    the Y scale and zero point; returns, per input moved, the names they stopped reading."""
    target = tuple(concat.input[0:2])
    moved: list[set[str]] = []
    for index in range(2, len(concat.input), 3):
        name = concat.input[index]
        writer = view.producers.get(name)
        at = QLINEAR_OUTPUT_SCALE.get(writer.op_type) if writer is not None else None
        if (
            at is None
            or len(writer.input) <= at + 1
            or view.consumers.get(name) != [concat]
            or name in view.graph_outputs
        ):
            continue
        float_name = name.removesuffix(QOPERATOR_SUFFIX)
        if not _may_move(tuple(concat.input[index + 1 : index + 3]), target, writer, float_name, view, float_view):
            continue
        moved.append(set(concat.input[index + 1 : index + 3]) | set(writer.input[at : at + 2]))
        writer.input[at], writer.input[at + 1] = target
        concat.input[index + 1], concat.input[index + 2] = target
    return moved


def _may_move(
    current: tuple[str, str],
    target: tuple[str, str],
    writer: onnx.NodeProto,
    name: str,
    view: GraphView,
    float_view: GraphView | None,
) -> bool:
    """Not there yet, of the same integer type, within the bounds of any activation folded into the quantizer."""
    if current == target or any(part not in view.weights for part in (*current, *target)):
        return False
    if view.weights[current[1]].data_type != view.weights[target[1]].data_type:
        return False
    bounds = _folded_bounds(writer, name, float_view)
    if bounds is None:
        return False
    low, high = _range(view.constant(target[0]), view.constant(target[1]))
    return low >= bounds[0] and high <= bounds[1]


def _folded_bounds(writer: onnx.NodeProto, name: str, float_view: GraphView | None) -> tuple[float, float] | None:
    """The bounds of a Relu or Clip folded into the quantizer of float tensor ``name`` (-inf, inf when none was);
    None when the float model is not at hand to tell, or does not know the tensor.

    Folded, the activation is gone from the quantized graph and the Concat reads the writer's integers directly:
    QDQ keeps the activation's output name for them (the float model's writer of ``name`` is the Relu), QOperator
    the conv's (``name``'s one float reader is the Relu)."""
    if writer.op_type not in FOLDING_WRITERS:
        return -math.inf, math.inf
    if float_view is None or (float_writer := float_view.producers.get(name)) is None:
        return None
    readers = float_view.consumers.get(name, [])
    activation = float_writer if float_writer.op_type in ACTIVATIONS else next(iter(readers), None)
    if activation is None or activation.op_type not in ACTIVATIONS or len(readers) > 1:
        return -math.inf, math.inf
    if activation.op_type == "Relu":
        return 0.0, math.inf
    low, high = (_clip_bound(activation, index, float_view) for index in (1, 2))
    return (-math.inf if low is None else low), (math.inf if high is None else high)


def _clip_bound(clip: onnx.NodeProto, index: int, float_view: GraphView) -> float | None:
    """A Clip's min (index 1) or max (2): an input constant (opset >= 11) or an attribute (older opsets)."""
    if len(clip.input) > index and clip.input[index]:
        value = float_view.constant(clip.input[index])
        return None if value is None else float(value)
    return attribute(clip, "min" if index == 1 else "max", None)


def _range(scale: np.ndarray, zero: np.ndarray) -> tuple[float, float]:
    """The real values a per-tensor quantizer can hold."""
    step = float(scale)
    limits = np.iinfo(zero.dtype)
    return (limits.min - int(zero)) * step, (limits.max - int(zero)) * step
