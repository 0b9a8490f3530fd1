"""optimize/groups.py: a squeeze-excite branch is only what lies between a pool of x and the Mul that scales x."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from smallnets.optimize.groups import find_groups


def conv(name: str, source: str, output: str, channels: int = 4) -> tuple[onnx.NodeProto, onnx.TensorProto]:
    weight = numpy_helper.from_array(np.ones((channels, channels, 1, 1), np.float32), f"{name}_w")
    return helper.make_node("Conv", [source, weight.name], [output], name=name), weight


def silu(name: str, source: str, output: str) -> list[onnx.NodeProto]:
    return [
        helper.make_node("Sigmoid", [source], [f"{name}_s"], name=f"{name}_sigmoid"),
        helper.make_node("Mul", [source, f"{name}_s"], [output], name=f"{name}_mul"),
    ]


def efficientnet_like() -> onnx.ModelProto:
    """stem conv -> SiLU -> SE (pool, fc1, SiLU, fc2, gate, scale) -> project conv -> expand conv -> SiLU -> head."""
    nodes, weights = [], []
    for name, source, output in (("stem", "input", "a"),):
        node, weight = conv(name, source, output)
        nodes.append(node)
        weights.append(weight)
    nodes += silu("act1", "a", "b")
    nodes.append(helper.make_node("GlobalAveragePool", ["b"], ["p"], name="se_pool"))
    for name, source, output in (("se_fc1", "p", "f1"), ("se_fc2", "f1s", "f2")):
        node, weight = conv(name, source, output)
        nodes.append(node)
        weights.append(weight)
        if name == "se_fc1":
            nodes += silu("se_act", "f1", "f1s")
    nodes.append(helper.make_node("Sigmoid", ["f2"], ["g"], name="se_gate"))
    nodes.append(helper.make_node("Mul", ["g", "b"], ["c"], name="se_scale"))  # torchvision: scale * input
    for name, source, output in (("project", "c", "d"), ("expand", "d", "e")):
        node, weight = conv(name, source, output)
        nodes.append(node)
        weights.append(weight)
    nodes += silu("act2", "e", "f")
    node, weight = conv("head", "f", "logits")
    nodes.append(node)
    weights.append(weight)
    graph = helper.make_graph(
        nodes,
        "b0ish",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)],
        weights,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_squeeze_excite_is_the_branch_not_the_silus_around_it() -> None:
    groups = find_groups(efficientnet_like())
    assert set(groups["squeeze_excite"].nodes) == {
        "se_pool",
        "se_fc1",
        "se_act_sigmoid",
        "se_act_mul",
        "se_fc2",
        "se_gate",
        "se_scale",
    }
    # The SiLU after the expand conv walks back to the SE's pool through project and scale: not SE, an activation.
    assert {"act1_sigmoid", "act1_mul", "act2_sigmoid", "act2_mul"} <= set(groups["activations"].nodes)
    assert "expand" not in groups["squeeze_excite"].nodes and "project" not in groups["squeeze_excite"].nodes


def conv_chain(layers: list[tuple[str, int, int, int]], residual_on: str | None = None) -> onnx.ModelProto:
    """input (3 channels) -> each (name, out channels, group, stride) as Conv -> Clip(0, 6); optionally an Add that
    also reads ``residual_on``'s clipped output."""
    nodes, weights, source, channels = [], [], "input", 3
    for name, out, group, stride in layers:
        weight = numpy_helper.from_array(np.ones((out, channels // group, 3, 3), np.float32), f"{name}_w")
        nodes += [
            helper.make_node(
                "Conv", [source, weight.name], [f"{name}_y"], name=name, group=group, strides=[stride] * 2
            ),
            helper.make_node("Relu", [f"{name}_y"], [f"{name}_a"], name=f"{name}_act"),
        ]
        weights.append(weight)
        source, channels = f"{name}_a", out
    if residual_on:
        nodes.append(helper.make_node("Add", [f"{residual_on}_a", f"{residual_on}_a"], ["extra"], name="residual"))
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info(source, TensorProto.FLOAT, None)],
        weights,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


LITE_START = [("stem", 8, 1, 2), ("dw1", 8, 8, 1), ("project1", 4, 1, 1), ("expand2", 16, 1, 1), ("dw2", 16, 16, 2)]


def test_stem_block_runs_from_the_stem_while_the_map_keeps_its_size_and_width() -> None:
    """Lite0's start: stem, its depthwise and the narrowing projection; the widening expand conv ends it."""
    block = find_groups(conv_chain(LITE_START))["stem_block"].nodes
    assert set(block) == {"stem", "stem_act", "dw1", "dw1_act", "project1", "project1_act"}


def test_stem_block_stops_at_a_stride_a_wider_conv_or_a_second_reader() -> None:
    strided = [("stem", 8, 1, 2), ("dw1", 8, 8, 2), ("project1", 4, 1, 1)]
    wider = [("stem", 8, 1, 2), ("pw1", 16, 1, 1)]
    for layers, residual_on in ((strided, None), (wider, None), (LITE_START, "stem")):
        groups = find_groups(conv_chain(layers, residual_on))
        assert "stem" in groups and "stem_block" not in groups, (layers, residual_on)
    assert set(find_groups(conv_chain(LITE_START, "dw1"))["stem_block"].nodes) == {"stem", "stem_act", "dw1", "dw1_act"}
