"""Structural node groups of a classifier graph: the units the quantization recipe keeps in float or not.

Groups follow the known int8 trouble spots of small CNNs: the stem conv (raw pixels), the classifier,
depthwise and grouped convs, squeeze-excite branches, and smooth activations (SiLU, HardSwish) that ONNX
Runtime cannot fuse into an int8 conv and so pay a DequantizeLinear/QuantizeLinear pair each.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import onnx

COMPUTE_OPS = ("Conv", "Gemm", "MatMul")
GATE_OPS = ("Sigmoid", "HardSigmoid")
POOL_OPS = ("GlobalAveragePool", "ReduceMean")
SMOOTH_ACTIVATION_OPS = ("Sigmoid", "HardSigmoid", "HardSwish", "Mul", "Tanh", "Div")
FUSABLE_ACTIVATIONS = ("Relu", "Clip", "LeakyRelu")
RESHAPE_OPS = ("Flatten", "Reshape", "Squeeze", "Identity")


@dataclass(frozen=True)
class NodeGroup:
    name: str
    description: str
    nodes: tuple[str, ...]
    op_types: tuple[str, ...]


def name_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give every node a unique name (quantizer exclusions are by name)."""
    seen: set[str] = set()
    for index, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{index}"
        seen.add(node.name)
    return model


def find_groups(model: onnx.ModelProto) -> dict[str, NodeGroup]:
    """Non-empty groups of the graph, by name, in the order the recipe search considers them."""
    graph = model.graph
    producers = {output: node for node in graph.node for output in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)
    weights = {init.name: init for init in graph.initializer}
    graph_inputs = {value.name for value in graph.input} - set(weights)

    def conv_groups(node: onnx.NodeProto) -> int:
        return next((attr.i for attr in node.attribute if attr.name == "group"), 1)

    def depthwise(node: onnx.NodeProto) -> bool:
        weight = weights.get(node.input[1]) if len(node.input) > 1 else None
        return conv_groups(node) > 1 and weight is not None and list(weight.dims)[1] == 1

    stem = [n.name for n in graph.node if n.op_type == "Conv" and any(i in graph_inputs for i in n.input)]
    classifier: list[str] = []
    for output in graph.output:
        node = producers.get(output.name)
        while node is not None and node.op_type not in COMPUTE_OPS:
            passthrough = (*RESHAPE_OPS, *POOL_OPS, *FUSABLE_ACTIVATIONS, "AveragePool")
            node = producers.get(node.input[0]) if node.op_type in passthrough else None
        if node is not None:
            classifier.append(node.name)

    # A squeeze-excite scale is Mul(x, gate(pool(x))): the pool reads the very tensor the Mul scales. Without that
    # check a SiLU's Mul (x * Sigmoid(x)) walks back through the block into the previous block's pool.
    squeeze_excite: set[str] = set()
    for node in graph.node:
        if node.op_type != "Mul" or len(node.input) != 2:
            continue
        for name, other in (node.input, reversed(node.input)):
            gate = producers.get(name)
            branch = _branch_from_pool(gate, other, producers) if gate and gate.op_type in GATE_OPS else None
            if branch:
                squeeze_excite.update([*branch, node.name])

    activations = [
        n.name
        for n in graph.node
        if n.op_type in SMOOTH_ACTIVATION_OPS and n.name not in squeeze_excite and not _is_constant_scale(n, weights)
    ]
    by_op = [
        ("residual_add", "residual additions", "Add"),
        ("concat", "concatenations (channel shuffle, fire modules)", "Concat"),
    ]
    candidates = [
        ("stem", "first conv, sees raw normalized pixels", stem),
        ("classifier", "last Gemm/MatMul/Conv producing the logits", classifier),
        (
            "depthwise",
            "depthwise convs (one filter per channel: few weights per scale)",
            [n.name for n in graph.node if n.op_type == "Conv" and depthwise(n) and n.name not in stem],
        ),
        (
            "grouped",
            "grouped (non-depthwise) convs",
            [n.name for n in graph.node if n.op_type == "Conv" and conv_groups(n) > 1 and not depthwise(n)],
        ),
        ("squeeze_excite", "squeeze-excite branches (pool, 1x1 FCs, gate, scale)", sorted(squeeze_excite)),
        ("activations", "smooth activations (SiLU, HardSwish): unfusable into int8 conv, extra Q/DQ each", activations),
        *((name, text, [n.name for n in graph.node if n.op_type == op]) for name, text, op in by_op),
    ]
    op_of = {node.name: node.op_type for node in graph.node}
    by_name = {node.name: node for node in graph.node}

    def with_trailing_activation(nodes: list[str]) -> tuple[str, ...]:
        """A float conv keeps its trailing Relu/Clip float too: quantizing the clip's *input* would use the
        conv's raw (unclipped) range and waste most of the 256 levels."""
        result = list(nodes)
        for name in nodes:
            node = by_name[name]
            if node.op_type not in COMPUTE_OPS:
                continue
            followers = consumers.get(node.output[0], [])
            if len(followers) == 1 and followers[0].op_type in FUSABLE_ACTIVATIONS:
                result.append(followers[0].name)
        return tuple(dict.fromkeys(result))

    return {
        name: NodeGroup(name, text, members, tuple(sorted({op_of[node] for node in members})))
        for name, text, nodes in candidates
        if (members := with_trailing_activation(nodes))
    }


def _is_constant_scale(node: onnx.NodeProto, weights: dict[str, onnx.TensorProto]) -> bool:
    """A Mul/Div by a constant is a rescale, not an activation."""
    return node.op_type in ("Mul", "Div") and any(name in weights for name in node.input)


def _branch_from_pool(
    gate: onnx.NodeProto, pooled: str, producers: dict[str, onnx.NodeProto], limit: int = 12
) -> list[str] | None:
    """The nodes from a pool of ``pooled`` up to ``gate`` (every path back from the gate must end at that pool)."""
    branch: list[str] = []
    pending = [gate]
    while pending:
        node = pending.pop()
        if node.name in branch:
            continue
        branch.append(node.name)
        if len(branch) > limit:
            return None
        if node.op_type in POOL_OPS:
            if node.input[0] != pooled:
                return None
            continue
        feeding = [producers[name] for name in node.input if name in producers]
        if not feeding:
            return None  # reached the graph input without a pool
        pending.extend(feeding)
    return branch if len(branch) > 1 else None
