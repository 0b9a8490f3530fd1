"""Pad depthwise convolutions, and the stem's RGB input on x86, to channel counts onnxruntime's fast int8 kernels take.

MLAS runs an int8 depthwise QLinearConv with its symmetric kernels only when the channel count is a multiple of 16
(8 on ARM64); otherwise a generic kernel takes 2.5-3x longer per channel (AVX-512 VNNI x86, 3x3 at 56x56: 72
channels 153 us, 80 channels 62 us). MobileNet V3 (72, 120, 200, 184 channels) and ShuffleNet V2 (58, 116, 232)
fall on the slow side. Padding a depthwise conv with zero channels, together with the conv that writes its input
(zero output channels) and the convs that read its output (zero input weights), leaves the function unchanged: no
value of a padded channel reaches anything but a zero weight. The padded channels pass through what lies between
(activations, squeeze-excite pool, gate and scale), which work channel by channel.

The rewrites run on the float graph before quantization (``QuantOptions.rewrites``: ``pad-depthwise-channels-16`` on
x86, ``-8`` on ARM64, ``pad-stem-channels-4`` on x86); after it, in QDQ files, the stem's Pad moves onto the
integers (in QOperator ones onnxruntime's quantizer leaves the first node's Pad in float before the input's Q).
A region whose channels meet anything else (a residual Add, a Concat, a reshape, a graph output, a shared or
per-channel constant) is left as it is.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from smallnets.optimize.groups import GraphView, attribute, conv_groups

CHANNEL_MULTIPLE = 16  # MLAS's symmetric depthwise kernels: x86 groups of 16 (ARM64: 8, so 16 serves both)
PER_CHANNEL_OPS = frozenset(
    {"Relu", "Clip", "HardSwish", "HardSigmoid", "Sigmoid", "Tanh", "LeakyRelu", "Identity", "GlobalAveragePool"}
)
ELEMENTWISE_BINARY_OPS = frozenset({"Mul", "Add"})


class OutsideRegion(Exception):
    """The channels reach an op this rewrite cannot pad through."""


@dataclass
class Region:
    """The tensors carrying one depthwise conv's channels, and the convs to pad around them."""

    tensors: set[str] = field(default_factory=set)
    depthwise: set[str] = field(default_factory=set)  # pad every dimension that counts channels
    writers: set[str] = field(default_factory=set)  # pad output channels (weight dim 0, bias)
    readers: set[str] = field(default_factory=set)  # pad input channels (weight dim 1)


def pad_depthwise_channels(model: onnx.ModelProto, multiple: int = CHANNEL_MULTIPLE) -> int:
    """Pad every depthwise conv whose channel count is not a multiple of ``multiple``, in place, where the region
    around it allows (see the module docstring); returns how many depthwise convs were padded.

    One view serves the whole walk: padding rewrites initializers and attributes in place, never the graph's edges,
    and a padded region's depthwise convs then have a multiple of channels."""
    view = GraphView.of(model)
    padded = 0
    for node in [node for node in model.graph.node if node.op_type == "Conv"]:
        channels = _channels(node, view)
        if not view.depthwise(node) or channels % multiple == 0:
            continue
        try:
            region = find_region(node, view)
        except OutsideRegion:
            continue
        _pad(model, view, region, channels, -(-channels // multiple) * multiple)
        padded += len(region.depthwise)
    return padded


def _channels(node: onnx.NodeProto, view: GraphView) -> int:
    weight = view.weights.get(node.input[1])
    return int(weight.dims[0]) if weight is not None else 0


def find_region(depthwise: onnx.NodeProto, view: GraphView) -> Region:
    """Walk from ``depthwise`` over every tensor with its channels; raises OutsideRegion where padding must stop."""
    region = Region(depthwise={depthwise.name})
    pending = deque([depthwise.input[0], depthwise.output[0]])
    outputs = view.graph_outputs
    while pending:
        tensor = pending.popleft()
        if tensor in region.tensors:
            continue
        if tensor in outputs or tensor in view.graph_inputs:
            raise OutsideRegion(f"{tensor} is a graph input or output")
        region.tensors.add(tensor)
        writer = view.producers.get(tensor)
        if writer is None:
            raise OutsideRegion(f"{tensor} has no writer")
        pending.extend(_visit(writer, tensor, view, region, written=True))
        for reader in view.consumers.get(tensor, []):
            pending.extend(_visit(reader, tensor, view, region, written=False))
    return region


def _visit(node: onnx.NodeProto, tensor: str, view: GraphView, region: Region, written: bool) -> list[str]:
    """Record how ``node`` touches the region through ``tensor``; the further tensors that carry its channels."""
    if node.op_type == "Conv":
        return _visit_conv(node, view, region, written)
    if node.op_type in PER_CHANNEL_OPS:
        return [node.input[0], node.output[0]]
    if node.op_type == "ReduceMean" and _keeps_channels(node, view):
        return [node.input[0], node.output[0]]
    if node.op_type in ELEMENTWISE_BINARY_OPS:
        others = [name for name in node.input if name != tensor]
        constants = [name for name in others if name in view.weights]
        if any(numpy_helper.to_array(view.weights[name]).size != 1 for name in constants):
            raise OutsideRegion(f"{node.name}: a per-channel constant")
        return [name for name in (*node.input, node.output[0]) if name not in constants]
    raise OutsideRegion(f"{node.name}: {node.op_type} does not keep channels apart")


def _visit_conv(node: onnx.NodeProto, view: GraphView, region: Region, written: bool) -> list[str]:
    if not view.owns_weights(node):
        raise OutsideRegion(f"{node.name}: its weights are not its own float initializers")
    if view.depthwise(node):
        region.depthwise.add(node.name)
        return [node.input[0], node.output[0]]
    if conv_groups(node) != 1:
        raise OutsideRegion(f"{node.name}: a grouped conv")
    (region.writers if written else region.readers).add(node.name)
    return []


def _keeps_channels(node: onnx.NodeProto, view: GraphView) -> bool:
    """A ReduceMean over some of H, W only (axes from the attribute, or the constant second input)."""
    axes = next((list(attr.ints) for attr in node.attribute if attr.name == "axes"), None)
    if axes is None and len(node.input) > 1 and node.input[1] in view.weights:
        axes = numpy_helper.to_array(view.weights[node.input[1]]).tolist()
    return bool(axes) and all(axis in (2, 3, -1, -2) for axis in axes)


def _pad(model: onnx.ModelProto, view: GraphView, region: Region, channels: int, padded: int) -> None:
    """Zero-pad the region's weights and biases from ``channels`` to ``padded`` and say so in the tensor shapes."""
    extra = padded - channels
    for name in region.depthwise | region.writers:
        node = view.by_name[name]
        _pad_initializer(view, node.input[1], axis=0, extra=extra)
        if len(node.input) > 2 and node.input[2]:
            _pad_initializer(view, node.input[2], axis=0, extra=extra)
        if name in region.depthwise:
            next(attr for attr in node.attribute if attr.name == "group").i = padded
    for name in region.readers:
        _pad_initializer(view, view.by_name[name].input[1], axis=1, extra=extra)
    for value in model.graph.value_info:
        if value.name in region.tensors and len(value.type.tensor_type.shape.dim) > 1:
            value.type.tensor_type.shape.dim[1].dim_value = padded


def _pad_initializer(view: GraphView, name: str, axis: int, extra: int) -> None:
    """Zero-pad the initializer ``name`` by ``extra`` along ``axis``, in place (the view holds the graph's own)."""
    array = numpy_helper.to_array(view.weights[name])
    widths = [(0, extra if index == axis else 0) for index in range(array.ndim)]
    view.weights[name].CopyFrom(numpy_helper.from_array(np.pad(array, widths), name))


STEM_CHANNEL_MULTIPLE = 4  # MLAS's x86 symmetric int8 conv takes input channels in fours (KernelInputChannelAlignment)


def pad_stem_channels(model: onnx.ModelProto, multiple: int = STEM_CHANNEL_MULTIPLE) -> int:
    """Give convs that read an RGB graph input a zero fourth input channel (a Pad on the input), in place.

    MLAS's x86 int8 conv kernels want input channels in fours; with three, QLinearConv falls back to im2col and a
    generic GEMM, 2x slower (3x3 stride-2 stem to 32 channels at 224 px: 241 us with 3 input channels, 118 us with 4;
    AVX-512 VNNI, 1 thread). The padded channel is zero and meets zero weights: the function is unchanged.
    Returns how many convs were padded.
    """
    view = GraphView.of(model)
    padded = 0
    for value in model.graph.input:
        if value.name in view.weights or len(value.type.tensor_type.shape.dim) != 4:
            continue
        channels = value.type.tensor_type.shape.dim[1].dim_value
        readers = view.consumers.get(value.name, [])
        extra = -channels % multiple if channels else 0
        plain = all(view.owns_weights(node) and conv_groups(node) == 1 for node in readers)
        if not extra or not readers or not plain:
            continue
        wide = f"{value.name}_channels_padded"
        pads = numpy_helper.from_array(np.array([0, 0, 0, 0, 0, extra, 0, 0], np.int64), f"{wide}_pads")
        model.graph.initializer.append(pads)
        model.graph.node.insert(0, onnx.helper.make_node("Pad", [value.name, pads.name], [wide], f"{wide}_pad"))
        for node in readers:
            _pad_initializer(view, node.input[1], axis=1, extra=extra)
            node.input[0] = wide
            padded += 1
    return padded


def pad_quantized_input(model: onnx.ModelProto, keep_float: Collection[str] = ()) -> int:
    """Move each stem Pad (:func:`pad_stem_channels`) from float to the integers, in place; returns how many moved.

    After quantization the padding runs in float on the whole input, before the stem's QuantizeLinear: between two
    quantizers of one scale and zero point in QDQ files (Q -> DQ -> Pad -> Q -> DQ -> Conv; with its extra Q and DQ
    ~4% of Lite0's int8 time at 1 thread), on the graph input in QOperator ones (Pad -> Q -> QLinearConv). A zero pad
    is the zero point on the integers, so Q -> Pad(zero point) computes the same values on a quarter of the bytes, and
    in QDQ files with one quantizer pair less. Pads named in ``keep_float`` stay.
    """
    view = GraphView.of(model)
    moved = 0
    for pad in [node for node in model.graph.node if node.op_type == "Pad" and node.name not in keep_float]:
        quantize = _zero_pad_quantizer(pad, view)
        if quantize is None:
            continue
        dequantize, padded = _same_dequantizer(pad, quantize, view), quantize.output[0]
        if dequantize is not None:  # Q -> DQ -> Pad -> Q: the first Q's integers are the second's
            integers = dequantize.input[0]
            if len(view.consumers[dequantize.output[0]]) == 1:
                model.graph.node.remove(dequantize)
            model.graph.node.remove(quantize)
        else:  # Pad -> Q becomes Q -> Pad
            integers = f"{pad.input[0]}_quantized_unpadded"
            quantize.input[0], quantize.output[0] = pad.input[0], integers
            model.graph.node.remove(quantize)
            model.graph.node.insert(list(model.graph.node).index(pad), quantize)
        pad.input[:] = [integers, pad.input[1], quantize.input[2]]
        pad.output[0] = padded
        moved += 1
    return moved


def _zero_pad_quantizer(pad: onnx.NodeProto, view: GraphView) -> onnx.NodeProto | None:
    """The QuantizeLinear that alone reads a Pad of zeros (one-element scale and zero point), when neither the Pad's
    output nor its input's is a graph output."""
    readers = view.consumers.get(pad.output[0], [])
    if len(readers) != 1 or readers[0].op_type != "QuantizeLinear" or len(pad.input) < 2:
        return None
    quantize = readers[0]
    mode = attribute(pad, "mode", b"constant")
    constant = pad.input[2] if len(pad.input) > 2 else ""
    if mode != b"constant" or (constant and _value(view, constant) != [0.0]) or pad.input[3:]:
        return None
    if view.graph_outputs & {pad.output[0], pad.input[0]} or len(quantize.input) < 3:
        return None
    params = [_value(view, name) for name in quantize.input[1:3]]
    return quantize if all(value is not None and len(value) == 1 for value in params) else None


def _same_dequantizer(pad: onnx.NodeProto, quantize: onnx.NodeProto, view: GraphView) -> onnx.NodeProto | None:
    """The DequantizeLinear feeding the Pad with the QuantizeLinear's own scale and zero point (value and type): the
    quantizer gives a Pad its input's, and only then are the two quantizers one."""
    dequantize = view.producers.get(pad.input[0])
    if dequantize is None or dequantize.op_type != "DequantizeLinear" or len(dequantize.input) < 3:
        return None
    pairs = zip(dequantize.input[1:3], quantize.input[1:3], strict=True)
    if any(_value(view, ds) != _value(view, qs) for ds, qs in pairs):
        return None
    same_type = view.weights[dequantize.input[2]].data_type == view.weights[quantize.input[2]].data_type
    return dequantize if same_type else None


def _value(view: GraphView, name: str) -> list[float] | None:
    """An initializer's values as a flat list of floats, comparable across dtypes (None when not an initializer)."""
    array = view.constant(name)
    return None if array is None else array.astype(np.float64).ravel().tolist()
