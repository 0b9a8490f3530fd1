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
