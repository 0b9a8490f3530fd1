"""Cross-layer equalization (CLE) of conv pairs before int8 quantization (Nagel et al. 2019, "Data-Free Quantization
Through Weight Equalization and Bias Correction"; NNCF and AIMET implement it).

Why: one int8 scale per weight tensor (per_channel=False), or one per output channel of the next conv, must cover the
widest channel; a channel whose weights span 1/100 of that keeps a handful of levels. Folding BatchNorm into the
convs makes such spreads common. For Conv A -> f -> Conv B with f positively homogeneous (f(s x) = s f(x) for s > 0:
no activation, or Relu), dividing output channel c of A (and its bias) by s_c and multiplying input channel c of B by
s_c leaves the network's function exactly as it was; s_c = sqrt(r1_c r2_c) / r2_c gives both the range sqrt(r1_c r2_c)
(r1_c: range of A's output channel c, r2_c: of B's input channel c). A rescaled channel feeds nothing else: A's output
(and the Relu's) must be read by Convs only, so a residual Add, a Concat or a second branch refuses the pair.
Clip (Relu6), HardSwish, SiLU and Sigmoid are not homogeneous (Clip(0, 6)(x / s) * s clips at 6 s, not 6): refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from smallnets.optimize.groups import GraphView, conv_groups

HOMOGENEOUS_ACTIVATIONS = ("Relu",)  # f(s x) = s f(x) for every s > 0
PASSES = 4  # the paper iterates to convergence; chains of 2-3 convs settle within a few passes
CONVERGED = 1e-4  # a pass whose largest |log s| is below this changed nothing worth another


@dataclass(frozen=True)
class ConvPair:
    """A conv whose output channels CLE may rescale, the Relu between (or none) and the convs that read them."""

    producer: str
    activation: str | None
    consumers: tuple[str, ...]


@dataclass(frozen=True)
class EqualizationResult:
    """What :func:`equalize` did: the pairs, the passes run, and how unbalanced the producers' weights were.

    The range ratio is max / min of a producer conv's per-output-channel weight ranges (dead channels left out),
    geometric mean over the pairs: 1 is perfectly balanced.
    """

    pairs: tuple[ConvPair, ...]
    passes: int
    range_ratio_before: float
    range_ratio_after: float


def _sole_readers(view: GraphView, tensor: str) -> list[onnx.NodeProto]:
    """The nodes reading ``tensor``; empty when the graph also outputs it (then its values must stay as they are)."""
    if tensor in view.graph_outputs:
        return []
    return view.consumers.get(tensor, [])


def _consumer_convs(view: GraphView, tensor: str, channels: int) -> list[onnx.NodeProto] | None:
    """The Convs reading ``tensor`` as their data input with ``channels`` input channels; None if anything else
    reads it (or reads it as a weight)."""
    readers = _sole_readers(view, tensor)
    if not readers or any(list(node.input).count(tensor) != 1 or node.input[0] != tensor for node in readers):
        return None
    if not all(view.owns_weights(node) for node in readers):
        return None
    widths = [conv_groups(node) * int(view.weights[node.input[1]].dims[1]) for node in readers]
    return readers if all(width == channels for width in widths) else None


def _pair_of(view: GraphView, producer: onnx.NodeProto) -> ConvPair | None:
    """The pair ``producer`` starts, through at most one homogeneous activation, or None."""
    if not view.owns_weights(producer):
        return None
    channels = int(view.weights[producer.input[1]].dims[0])
    readers = _sole_readers(view, producer.output[0])
    activation = readers[0] if len(readers) == 1 and readers[0].op_type in HOMOGENEOUS_ACTIVATIONS else None
    tensor = activation.output[0] if activation is not None else producer.output[0]
    consumers = _consumer_convs(view, tensor, channels)
    if consumers is None:
        return None
    return ConvPair(producer.name, activation.name if activation else None, tuple(node.name for node in consumers))


def equalization_pairs(model: onnx.ModelProto) -> list[ConvPair]:
    """Every conv pair CLE can rescale without changing the model's function, in graph order."""
    view = GraphView.of(model)
    pairs = (_pair_of(view, node) for node in model.graph.node if node.op_type == "Conv")
    return [pair for pair in pairs if pair is not None]


def output_channel_ranges(weight: np.ndarray) -> np.ndarray:
    """max |w| per output channel (axis 0) of a conv weight."""
    return np.abs(weight).reshape(weight.shape[0], -1).max(axis=1)


def input_channel_ranges(weight: np.ndarray, groups: int) -> np.ndarray:
    """max |w| per input channel of a (grouped, depthwise) conv weight (O, I / groups, kh, kw).

    Input channel c = g * (I / groups) + j is column j of the O / groups filters of group g.
    """
    out, per_group = weight.shape[0], weight.shape[1]
    grouped = np.abs(weight).reshape(groups, out // groups, per_group, -1)
    return grouped.max(axis=(1, 3)).reshape(groups * per_group)


def scale_input_channels(weight: np.ndarray, groups: int, scale: np.ndarray) -> np.ndarray:
    """``weight`` with input channel c multiplied by ``scale[c]`` (layout as in :func:`input_channel_ranges`)."""
    out, per_group = weight.shape[0], weight.shape[1]
    grouped = weight.reshape(groups, out // groups, per_group, -1) * scale.reshape(groups, 1, per_group, 1)
    return grouped.reshape(weight.shape)


def balancing_scale(producer_ranges: np.ndarray, consumer_ranges: np.ndarray) -> np.ndarray:
    """s_c = sqrt(r1_c r2_c) / r2_c, which gives both sides the range sqrt(r1_c r2_c); 1 for a dead channel."""
    alive = (producer_ranges > 0) & (consumer_ranges > 0)
    safe = np.where(alive, consumer_ranges, 1.0)
    return np.where(alive, np.sqrt(producer_ranges * safe) / safe, 1.0)


def _equalize_once(pair: ConvPair, view: GraphView, arrays: dict[str, np.ndarray]) -> float:
    """Balance one pair in ``arrays`` (initializer name -> float64 array); returns the largest |log s_c| applied."""
    producer = view.by_name[pair.producer]
    consumers = [view.by_name[name] for name in pair.consumers]
    weight = producer.input[1]
    incoming = np.max([input_channel_ranges(arrays[node.input[1]], conv_groups(node)) for node in consumers], axis=0)
    scale = balancing_scale(output_channel_ranges(arrays[weight]), incoming)
    arrays[weight] = arrays[weight] / scale.reshape(-1, *[1] * (arrays[weight].ndim - 1))
    if len(producer.input) > 2 and producer.input[2]:
        arrays[producer.input[2]] = arrays[producer.input[2]] / scale
    for node in consumers:
        arrays[node.input[1]] = scale_input_channels(arrays[node.input[1]], conv_groups(node), scale)
    return float(np.abs(np.log(scale)).max(initial=0.0))


def _range_ratio(weights: list[np.ndarray]) -> float:
    """Geometric mean of max / min per-output-channel range over ``weights`` (dead channels left out); 1 if none."""
    logs = []
    for weight in weights:
        ranges = output_channel_ranges(weight)
        ranges = ranges[ranges > 0]
        if len(ranges):
            logs.append(math.log(float(ranges.max() / ranges.min())))
    return math.exp(sum(logs) / len(logs)) if logs else 1.0


def equalize(model: onnx.ModelProto, passes: int = PASSES) -> EqualizationResult:
    """Equalize every pair of :func:`equalization_pairs` in place, up to ``passes`` sweeps in graph order (a conv
    in the middle of a chain is balanced against both neighbours; sweeps stop early once nothing moves)."""
    view = GraphView.of(model)
    pairs = equalization_pairs(model)
    touched = {
        name
        for pair in pairs
        for node in (view.by_name[pair.producer], *(view.by_name[c] for c in pair.consumers))
        for name in node.input[1:3]
        if name
    }
    arrays = {name: numpy_helper.to_array(view.weights[name]).astype(np.float64) for name in touched}
    before = _range_ratio([arrays[view.by_name[pair.producer].input[1]] for pair in pairs])
    sweeps = 0
    while pairs and sweeps < passes:
        sweeps += 1
        if max(_equalize_once(pair, view, arrays) for pair in pairs) < CONVERGED:
            break
    for name, array in arrays.items():
        view.weights[name].CopyFrom(numpy_helper.from_array(array.astype(np.float32), name))
    after = _range_ratio([arrays[view.by_name[pair.producer].input[1]] for pair in pairs])
    return EqualizationResult(tuple(pairs), sweeps, before, after)
