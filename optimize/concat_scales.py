"""Quantize what a Concat joins at the Concat's own output scale, so onnxruntime's QLinearConcat only copies.

QLinearConcat requantizes every input whose scale or zero point differs from its output's through a lookup, byte
by byte, on one thread: ~43 us per 55x55x64 input against ~3.5 us for an input already at the output's scale
(AVX-512 VNNI x86, 1 thread). SqueezeNet's eight concats were 16% of its int8 time at 1 thread and 23% at 2.

Where an input's only reader is the Concat, the op that writes it may as well write it at the Concat's scale and
zero point: the Concat's output holds the same integers or closer ones (one rounding instead of two, and no value
the output could hold is clipped sooner). Inputs read elsewhere too, or written by an op that must keep its input's
scale (a Split, a Transpose, a MaxPool: onnxruntime keeps those on the integers only while the scales agree), stay.
Both quantized forms are handled: QDQ (the input's QuantizeLinear and DequantizeLinear) and QOperator (the writing
QLinear op's output scale and the QLinearConcat's input scale).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import onnx

from smallnets.optimize.groups import node_links

# Float ops whose output quantizer requantizes (so it may take any scale), and QLinear ops by where their output
# scale and zero point sit among their inputs.
REQUANTIZING_FLOAT_OPS = frozenset(
    {"Conv", "ConvTranspose", "Gemm", "MatMul", "Relu", "Clip", "Add", "Mul", "Sigmoid", "HardSwish", "LeakyRelu"}
)
Producers = Mapping[str, onnx.NodeProto]
Consumers = Mapping[str, Sequence[onnx.NodeProto]]
QLINEAR_OUTPUT_SCALE = {"QLinearConv": 6, "QLinearMatMul": 6, "QLinearAdd": 6, "QLinearMul": 6}


def concat_inputs_at_output_scale(model: onnx.ModelProto, keep_float: Collection[str] = ()) -> int:
    """Point each Concat input's quantizer at the Concat's output scale and zero point, in place; returns how many
    inputs moved. Concats named in ``keep_float`` stay."""
    producers, consumers = node_links(model.graph)
    moved = 0
    for node in model.graph.node:
        if node.name in keep_float:
            continue
        if node.op_type == "Concat":
            moved += _move_qdq_inputs(node, producers, consumers)
        elif node.op_type == "QLinearConcat":
            moved += _move_qlinear_inputs(node, producers, consumers)
    if moved:
        _drop_unread_initializers(model.graph)
    return moved


def _drop_unread_initializers(graph: onnx.GraphProto) -> None:
    """The scales and zero points no quantizer reads any more (onnxruntime would warn about each at every load)."""
    read = {name for node in graph.node for name in node.input} | {value.name for value in graph.output}
    for tensor in [tensor for tensor in graph.initializer if tensor.name not in read]:
        graph.initializer.remove(tensor)


def _move_qdq_inputs(concat: onnx.NodeProto, producers: Producers, consumers: Consumers) -> int:
    """DQ -> Concat -> Q: each input's Q and its DQs take the output Q's scale and zero point."""
    readers = consumers.get(concat.output[0], [])
    if len(readers) != 1 or readers[0].op_type != "QuantizeLinear" or len(readers[0].input) < 3:
        return 0
    scale, zero_point = readers[0].input[1:3]
    moved = 0
    for name in concat.input:
        dequantize = producers.get(name)
        if dequantize is None or dequantize.op_type != "DequantizeLinear" or len(dequantize.input) < 3:
            continue
        quantize = producers.get(dequantize.input[0])
        if quantize is None or quantize.op_type != "QuantizeLinear" or len(quantize.input) < 3:
            continue
        writer = producers.get(quantize.input[0])
        dequantizers = consumers.get(quantize.output[0], [])
        if writer is None or writer.op_type not in REQUANTIZING_FLOAT_OPS:
            continue
        if any(d.op_type != "DequantizeLinear" or consumers.get(d.output[0]) != [concat] for d in dequantizers):
            continue
        if list(quantize.input[1:3]) == [scale, zero_point]:
            continue
        for quantizer in (quantize, *dequantizers):
            quantizer.input[1], quantizer.input[2] = scale, zero_point
        moved += 1
    return moved


def _move_qlinear_inputs(concat: onnx.NodeProto, producers: Producers, consumers: Consumers) -> int:
    """QLinearConcat(Y scale, Y zero point, (X, X scale, X zero point)...): each X's writer and the X's triple take
    the Y scale and zero point."""
    scale, zero_point = concat.input[0:2]
    moved = 0
    for index in range(2, len(concat.input), 3):
        writer = producers.get(concat.input[index])
        at = QLINEAR_OUTPUT_SCALE.get(writer.op_type) if writer is not None else None
        if at is None or consumers.get(concat.input[index]) != [concat]:
            continue
        if list(concat.input[index + 1 : index + 3]) == [scale, zero_point]:
            continue
        writer.input[at], writer.input[at + 1] = scale, zero_point
        concat.input[index + 1], concat.input[index + 2] = scale, zero_point
        moved += 1
    return moved
