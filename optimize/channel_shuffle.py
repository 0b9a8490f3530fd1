"""Fold a channel shuffle into the weights of the convs after it, so no Transpose is left to run.

ShuffleNet V1 mixes its groups with Reshape -> Transpose -> Reshape between a grouped 1x1 conv and a depthwise conv.
onnxruntime's int8 convs run channels-last, so each shuffle becomes three Transposes on the integers (to NCHW, the
shuffle, back), and its uint8 Transpose slows down with more threads: ShuffleNet V1's int8 spent 185 us of 1.87 ms
in Transposes at 1 thread and 540 us of 1.87 ms at 2 (AVX-512 VNNI x86).

A shuffle is a fixed channel permutation. A depthwise conv works channel by channel, so it can run on the unshuffled
channels with its filters permuted; the conv that then reads them takes the permutation in its input weights. That
conv is grouped (its groups would no longer line up with the permuted channels), so it becomes a plain conv with zero
weights between groups: 3x the MACs of a g=3 conv, which onnxruntime's int8 grouped kernels run about as fast anyway
(60 -> 240 channels at 28x28: grouped 48 us, plain 33 us; 240 -> 960 at 7x7: 20 and 30 us). Exact: the same sums.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from smallnets.optimize.groups import GraphView, attribute, conv_groups, drop_unread_initializers

SHUFFLE_PERM = [0, 2, 1, 3, 4]  # (N, groups, C/groups, H, W) -> (N, C/groups, groups, H, W)


def fold_channel_shuffles(model: onnx.ModelProto) -> int:
    """Fold each Reshape -> Transpose -> Reshape channel shuffle followed by depthwise convs and Relu/Clip and then
    a conv into that conv's weights, in place; returns how many shuffles went."""
    view = GraphView.of(model)
    folded = 0
    for transpose in [node for node in model.graph.node if node.op_type == "Transpose"]:
        match = _shuffle_around(transpose, view)
        path = _path_to_reader(match[1].output[0], view) if match else None
        if match is None or path is None or not _fits(path, match[2], view):
            continue
        split, merge, (groups, per_group) = match
        order = np.array([(j % groups) * per_group + j // groups for j in range(groups * per_group)])
        for node in path[:-1]:
            if node.op_type == "Conv":
                _permute_filters(view, node, order)
        _permute_input_weights(view, path[-1], order)
        path[0].input[0] = split.input[0]
        for node in (split, transpose, merge):
            model.graph.node.remove(node)
        drop_unread_initializers(model.graph, (split.input[1], merge.input[1]))
        folded += 1
    return folded


def _shuffle_around(
    transpose: onnx.NodeProto, view: GraphView
) -> tuple[onnx.NodeProto, onnx.NodeProto, tuple[int, int]] | None:
    """The Reshapes before and after a shuffle Transpose and (groups, channels per group), when the three form one:
    (N, C, H, W) -> (N, g, C/g, H, W) -> transposed -> (N, C, H, W), no tensor between them read elsewhere."""
    perm = attribute(transpose, "perm", None)
    split, readers = view.producers.get(transpose.input[0]), view.consumers.get(transpose.output[0], [])
    if perm != SHUFFLE_PERM or split is None or split.op_type != "Reshape" or len(readers) != 1:
        return None
    merge = readers[0]
    if merge.op_type != "Reshape" or len(view.consumers.get(split.output[0], [])) != 1:
        return None
    if {split.output[0], transpose.output[0]} & view.graph_outputs:
        return None
    shape, merged = view.constant(split.input[1]), view.constant(merge.input[1])
    if shape is None or merged is None or shape.shape != (5,) or merged.shape != (4,):
        return None
    shape, merged = shape.astype(int).tolist(), merged.astype(int).tolist()
    groups, per_group = shape[1], shape[2]
    if groups < 2 or per_group < 1 or merged[1] not in (-1, groups * per_group) or merged[2:] != shape[3:]:
        return None
    return split, merge, (groups, per_group)


def _fits(path: list[onnx.NodeProto], grouping: tuple[int, int], view: GraphView) -> bool:
    """Every conv on the path takes the shuffled channel count: depthwise ones one filter each, the reader in all."""
    channels = grouping[0] * grouping[1]
    depthwise = [view.weights[node.input[1]].dims for node in path[:-1] if node.op_type == "Conv"]
    reader = view.weights[path[-1].input[1]].dims
    return all(list(dims[:2]) == [channels, 1] for dims in depthwise) and reader[1] * conv_groups(path[-1]) == channels


def _path_to_reader(tensor: str, view: GraphView) -> list[onnx.NodeProto] | None:
    """The single-reader chain from ``tensor`` through depthwise convs and Relu/Clip to the first other conv (all
    owning their weights), or None when the channels go anywhere else first."""
    path: list[onnx.NodeProto] = []
    outputs = view.graph_outputs
    while True:
        readers = view.consumers.get(tensor, [])
        if len(readers) != 1 or tensor in outputs or readers[0].input[0] != tensor:
            return None
        node = readers[0]
        path.append(node)
        if node.op_type == "Conv" and view.owns_weights(node):
            if not view.depthwise(node):
                return path
        elif node.op_type not in ("Relu", "Clip"):
            return None
        tensor = node.output[0]


def _permute_filters(view: GraphView, conv: onnx.NodeProto, order: np.ndarray) -> None:
    """A depthwise conv run on unshuffled channels: filter ``order[j]`` is the one that met channel j."""
    for name in [name for name in conv.input[1:3] if name]:
        array = numpy_helper.to_array(view.weights[name])
        moved = np.empty_like(array)
        moved[order] = array
        view.weights[name].CopyFrom(numpy_helper.from_array(moved, name))


def _permute_input_weights(view: GraphView, conv: onnx.NodeProto, order: np.ndarray) -> None:
    """The reading conv made plain (zero weights between its groups) with input column ``order[j]`` taking column j."""
    weight = numpy_helper.to_array(view.weights[conv.input[1]])
    groups = conv_groups(conv)
    per_group_out, per_group_in = weight.shape[0] // groups, weight.shape[1]
    plain = np.zeros((weight.shape[0], per_group_in * groups, *weight.shape[2:]), weight.dtype)
    for group in range(groups):
        rows = slice(group * per_group_out, (group + 1) * per_group_out)
        plain[rows, group * per_group_in : (group + 1) * per_group_in] = weight[rows]
    moved = np.empty_like(plain)
    moved[:, order] = plain
    view.weights[conv.input[1]].CopyFrom(numpy_helper.from_array(moved, conv.input[1]))
    for attr in [attr for attr in conv.attribute if attr.name == "group"]:
        conv.attribute.remove(attr)
    conv.attribute.append(helper.make_attribute("group", 1))
