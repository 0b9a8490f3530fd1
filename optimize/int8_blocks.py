"""Graph rewrites that keep whole blocks in int8 where onnxruntime's quantizer leaves an op in float.

ORT's quantizer (QDQ and QOperator) already keeps Sigmoid (QLinearSigmoid, a 256-entry lookup table), Mul, Add and
GlobalAveragePool in int8. Two ops of the small CNN families are not on its list and cost a float round trip over
a feature map each (DequantizeLinear -> op -> QuantizeLinear):

- ``ReduceMean`` over H and W, how torch.onnx exports ``adaptive_avg_pool2d(x, 1)`` and ``x.mean((2, 3))`` (the
  squeeze-excite squeeze and the head pool of MobileNetV3 and EfficientNet). With ``keepdims`` it is exactly
  ``GlobalAveragePool`` (without, a Flatten follows), which ORT runs as QLinearGlobalAveragePool:
  :func:`spatial_mean_as_global_pool`, before quantization.
- ``HardSigmoid`` (MobileNetV3's gate, and half of its HardSwish = x * HardSigmoid(x)). On a quantized input it is
  an affine map then a clip to [0, 1]; the clip is the output quantizer's saturation (its range always holds 0 and
  lies within [0, 1]), so DQ -> HardSigmoid -> Q is one com.microsoft QLinearAdd of the input re-scaled by alpha and
  the constant beta: :func:`hard_sigmoid_as_qlinear_add`, after quantization.

SiLU (x * Sigmoid(x), EfficientNet) is int8 already (QLinearSigmoid, a lookup table, then QLinearMul). Where the
recipe search keeps it float instead, :func:`float_silu_as_quick_gelu` makes it one QuickGelu between the DQ and Q.
Which of the two forms is faster is measured per model by the search (the "activations" group).

Depthwise convs whose channel count MLAS's fast int8 kernels do not take, and on x86 the RGB input of the stem, are
padded with zero channels before quantization (optimize/channel_padding.py).
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from smallnets.core.targets import ARM_CHANNEL_PADDING, STEM_CHANNEL_PADDING, X86_CHANNEL_PADDING
from smallnets.optimize.channel_padding import pad_depthwise_channels, pad_quantized_input, pad_stem_channels
from smallnets.optimize.channel_shuffle import fold_channel_shuffles
from smallnets.optimize.concat_scales import concat_inputs_at_output_scale
from smallnets.optimize.groups import attribute, node_links

SPATIAL_AXES = ({2, 3}, {-2, -1})
MS_DOMAIN = "com.microsoft"


def _ints(model: onnx.ModelProto, node: onnx.NodeProto) -> list[int] | None:
    """ReduceMean's axes, from the attribute (opset < 18) or the constant second input (opset >= 18)."""
    if (axes := attribute(node, "axes", None)) is not None:
        return list(axes)
    if len(node.input) > 1 and node.input[1]:
        constant = next((init for init in model.graph.initializer if init.name == node.input[1]), None)
        return None if constant is None else numpy_helper.to_array(constant).astype(int).tolist()
    return None


def spatial_mean_as_global_pool(model: onnx.ModelProto) -> int:
    """Replace each ReduceMean over H, W of a 4-D tensor by GlobalAveragePool, in place; returns how many.

    Without keepdims (ShuffleNet's head, ``x.mean([2, 3])``) a Flatten follows the pool. Only 4-D inputs whose rank
    is known are rewritten (GlobalAveragePool pools every axis after the second).
    """
    ranks = {
        value.name: len(value.type.tensor_type.shape.dim)
        for value in (*model.graph.value_info, *model.graph.input, *model.graph.output)
        if value.type.tensor_type.HasField("shape")
    }
    rewritten = 0
    for index, node in reversed(list(enumerate(model.graph.node))):  # backwards: a Flatten inserted moves no one
        if node.op_type != "ReduceMean" or node.domain not in ("", "ai.onnx"):
            continue
        axes = _ints(model, node)
        if axes is None or set(axes) not in SPATIAL_AXES or ranks.get(node.input[0]) != 4:
            continue
        keepdims = attribute(node, "keepdims", 1)
        node.op_type = "GlobalAveragePool"
        del node.input[1:]
        del node.attribute[:]
        if not keepdims:
            flat = node.output[0]
            node.output[0] = f"{flat}_pooled"
            model.graph.node.insert(
                index + 1, helper.make_node("Flatten", [node.output[0]], [flat], f"{node.name}_flat")
            )
        rewritten += 1
    return rewritten


def average_pool_as_depthwise_conv(model: onnx.ModelProto) -> int:
    """Replace each 2-D AveragePool that counts its padding (or has none) by a depthwise Conv of constant weights
    1 / (kh * kw), in place; returns how many.

    onnxruntime's QLinearAveragePool is a generic kernel: ShuffleNet V1's three 3x3 stride-2 shortcut pools took 460 us
    of its 2470 us int8 run (19%, AVX-512 VNNI, 1 thread) against under 60 us in fp32. As a depthwise conv they run on
    MLAS's int8 depthwise kernels. Exact: with count_include_pad every window divides by kh * kw, as the conv does.
    """
    channels = {
        value.name: value.type.tensor_type.shape.dim[1].dim_value
        for value in (*model.graph.value_info, *model.graph.input)
        if len(value.type.tensor_type.shape.dim) == 4
    }
    rewritten = 0
    for node in model.graph.node:
        count = channels.get(node.input[0], 0) if node.op_type == "AveragePool" and node.input else 0
        if not count or not _is_plain_mean_window(node):
            continue
        kernel, pads = list(attribute(node, "kernel_shape", [])), list(attribute(node, "pads", [0, 0, 0, 0]))
        weight = numpy_helper.from_array(
            np.full((count, 1, *kernel), 1.0 / (kernel[0] * kernel[1]), np.float32), f"{node.name}_mean_weight"
        )
        model.graph.initializer.append(weight)
        strides = list(attribute(node, "strides", [1, 1]))
        node.op_type = "Conv"
        node.input.append(weight.name)
        del node.attribute[:]
        node.attribute.extend(
            helper.make_attribute(name, value)
            for name, value in (("group", count), ("kernel_shape", kernel), ("strides", strides), ("pads", pads))
        )
        rewritten += 1
    return rewritten


def _is_plain_mean_window(pool: onnx.NodeProto) -> bool:
    """A 2-D window whose every output divides by kh * kw: padding counted (or none), no ceil mode, auto-padding
    or dilation."""
    padded = any(attribute(pool, "pads", []))
    return (
        pool.domain in ("", "ai.onnx")
        and len(attribute(pool, "kernel_shape", [])) == 2
        and (bool(attribute(pool, "count_include_pad", 0)) or not padded)
        and not attribute(pool, "ceil_mode", 0)
        and attribute(pool, "auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET")
        and all(dilation == 1 for dilation in attribute(pool, "dilations", []))
    )


def hard_sigmoid_as_qlinear_add(model: onnx.ModelProto, keep_float: Collection[str] = ()) -> int:
    """Turn every DequantizeLinear -> HardSigmoid -> QuantizeLinear into one QLinearAdd, in place; returns how many.

    HardSigmoid(x) = clip(alpha * x + beta, 0, 1) and x = s * (q - z), so alpha * x = (alpha * s) * (q - z): the
    QLinearAdd reads the same integers with scale alpha * s and adds beta (a one-element constant). The clip is the
    output quantizer's saturation: ORT's calibration always includes 0 in the range and a HardSigmoid's output never
    leaves [0, 1], so the output range lies within [0, 1] and saturating to it is what the float graph then did.
    A DequantizeLinear whose output has other readers stays for them; HardSigmoids named in ``keep_float`` stay.
    """
    graph = model.graph
    producers, consumers = node_links(graph)
    constants = {init.name: init for init in graph.initializer}
    rewritten, dropped = 0, set()
    for node in list(graph.node):
        if node.op_type != "HardSigmoid" or node.name in keep_float:
            continue
        match = _quantized_hard_sigmoid(node, producers, consumers, constants)
        if match is None:
            continue
        dequantize, quantize = match
        graph.node.insert(list(graph.node).index(node), _qlinear_add(graph, node, dequantize, quantize, constants))
        graph.node.remove(node)
        graph.node.remove(quantize)
        consumers[dequantize.output[0]].remove(node)
        if not consumers[dequantize.output[0]] and dequantize.output[0] not in {o.name for o in graph.output}:
            dropped.add(dequantize.name)
        rewritten += 1
    for node in [node for node in graph.node if node.name in dropped]:
        graph.node.remove(node)
    if rewritten:
        _declare_ms_domain(model)
    return rewritten


def _quantized_hard_sigmoid(
    node: onnx.NodeProto,
    producers: dict[str, onnx.NodeProto],
    consumers: dict[str, list[onnx.NodeProto]],
    constants: dict[str, onnx.TensorProto],
) -> tuple[onnx.NodeProto, onnx.NodeProto] | None:
    """The DequantizeLinear and QuantizeLinear around a HardSigmoid, when it is their only reader and writer and
    the QLinearAdd can stand in: a one-element input scale and input and output zero points of one integer type."""
    dequantize, readers = producers.get(node.input[0]), consumers.get(node.output[0], [])
    if dequantize is None or dequantize.op_type != "DequantizeLinear" or len(readers) != 1:
        return None
    quantize = readers[0]
    if quantize.op_type != "QuantizeLinear" or len(dequantize.input) < 3 or len(quantize.input) < 3:
        return None
    scale, zero_point = constants.get(dequantize.input[1]), constants.get(dequantize.input[2])
    if scale is None or zero_point is None or numpy_helper.to_array(scale).size != 1:
        return None
    if numpy_helper.to_array(zero_point).dtype != numpy_helper.to_array(constants[quantize.input[2]]).dtype:
        return None
    return dequantize, quantize


def _qlinear_add(
    graph: onnx.GraphProto,
    node: onnx.NodeProto,
    dequantize: onnx.NodeProto,
    quantize: onnx.NodeProto,
    constants: dict[str, onnx.TensorProto],
) -> onnx.NodeProto:
    """The QLinearAdd computing the HardSigmoid on the integers, its constants (alpha * s, beta) added to GRAPH.

    beta is one integer over scale |beta|: (1 - 0) when positive, (0 - 1) when negative, and 0 (scale 1) when 0.
    """
    scale, zero = (numpy_helper.to_array(constants[name]) for name in dequantize.input[1:3])
    alpha, beta = float(attribute(node, "alpha", 0.2)), float(attribute(node, "beta", 0.5))
    prefix = f"{node.name}_qadd"
    beta_scale, beta_zero, beta_value = (abs(beta), 0, 1) if beta else (1.0, 0, 0)
    if beta < 0:
        beta_zero, beta_value = 1, 0
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array(float(scale) * alpha, np.float32), f"{prefix}_a_scale"),
            numpy_helper.from_array(np.array(beta_value, zero.dtype), f"{prefix}_b"),
            numpy_helper.from_array(np.array(beta_scale, np.float32), f"{prefix}_b_scale"),
            numpy_helper.from_array(np.array(beta_zero, zero.dtype), f"{prefix}_b_zero_point"),
        ]
    )
    return helper.make_node(
        "QLinearAdd",
        [
            dequantize.input[0],
            f"{prefix}_a_scale",
            dequantize.input[2],
            f"{prefix}_b",
            f"{prefix}_b_scale",
            f"{prefix}_b_zero_point",
            quantize.input[1],
            quantize.input[2],
        ],
        [quantize.output[0]],
        name=prefix,
        domain=MS_DOMAIN,
    )


def _declare_ms_domain(model: onnx.ModelProto) -> None:
    """Import the com.microsoft opset the contrib ops need, once."""
    if not any(opset.domain == MS_DOMAIN for opset in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))


def float_silu_as_quick_gelu(model: onnx.ModelProto, keep_float: Collection[str] = ()) -> int:
    """Fuse each float SiLU, Mul(x, Sigmoid(x)) on the same tensor, into one com.microsoft QuickGelu(x, alpha=1).

    A SiLU the recipe keeps float sits between a DequantizeLinear and a QuantizeLinear; onnxruntime fuses
    Sigmoid + Mul into QuickGelu in fp32 graphs but not there, so the float SiLU costs two passes (and a second
    DequantizeLinear) more than it needs. SiLUs whose Sigmoid is quantized are not matched (their Mul reads a
    DequantizeLinear, not the Sigmoid), so int8 SiLUs are left as they are; ``keep_float`` is not consulted.
    """
    graph = model.graph
    producers, consumers = node_links(graph)
    fused = 0
    for node in list(graph.node):
        if node.op_type != "Mul" or len(node.input) != 2:
            continue
        for value, gate_name in (node.input, tuple(reversed(node.input))):
            gate = producers.get(gate_name)
            if gate is None or gate.op_type != "Sigmoid" or gate.input[0] != value or consumers[gate_name] != [node]:
                continue
            quick = helper.make_node(
                "QuickGelu", [value], [node.output[0]], name=f"{node.name}_quickgelu", domain=MS_DOMAIN, alpha=1.0
            )
            graph.node.insert(list(graph.node).index(node), quick)
            graph.node.remove(node)
            graph.node.remove(gate)
            fused += 1
            break
    if fused:
        _declare_ms_domain(model)
    return fused


BEFORE_QUANTIZATION = {  # in this order: padding walks through the pools the second rewrite makes
    "fold-channel-shuffles": fold_channel_shuffles,
    "spatial-mean-as-global-pool": spatial_mean_as_global_pool,
    "average-pool-as-depthwise-conv": average_pool_as_depthwise_conv,
    X86_CHANNEL_PADDING: functools.partial(pad_depthwise_channels, multiple=16),
    ARM_CHANNEL_PADDING: functools.partial(pad_depthwise_channels, multiple=8),
    STEM_CHANNEL_PADDING: pad_stem_channels,
}
AFTER_QUANTIZATION = {  # in this order: the concat rewrite must meet HardSigmoids before their QLinearAdd clips
    "concat-inputs-at-output-scale": concat_inputs_at_output_scale,
    "hard-sigmoid-as-qlinear-add": hard_sigmoid_as_qlinear_add,
    "float-silu-as-quick-gelu": float_silu_as_quick_gelu,
    STEM_CHANNEL_PADDING: pad_quantized_input,  # the stem's Pad, now between two equal quantizers, onto the integers
}
READS_FLOAT_MODEL = frozenset({"concat-inputs-at-output-scale"})  # which activations the quantizer folded


def apply_before_quantization(model: onnx.ModelProto, rewrites: Sequence[str]) -> int:
    """The float-graph rewrites among ``rewrites`` (names as in ``QuantOptions.rewrites``), in place; nodes changed."""
    return sum(rewrite(model) for name, rewrite in BEFORE_QUANTIZATION.items() if name in rewrites)


def apply_after_quantization(
    model: onnx.ModelProto,
    rewrites: Sequence[str],
    keep_float: Collection[str] = (),
    reference: onnx.ModelProto | None = None,
) -> int:
    """The quantized-graph rewrites among ``rewrites``, in place, leaving the nodes in ``keep_float`` float;
    ``reference`` is the float model that was quantized."""
    changed = 0
    for name, rewrite in AFTER_QUANTIZATION.items():
        if name in rewrites:
            read = functools.partial(rewrite, reference=reference) if name in READS_FLOAT_MODEL else rewrite
            changed += read(model, keep_float)
    return changed
