"""Structural node groups of a classifier graph: the units the quantization recipe keeps in float or not.

Groups follow the known int8 trouble spots of small CNNs: the stem conv (raw pixels), the classifier,
depthwise and grouped convs, squeeze-excite branches, and smooth activations (SiLU, HardSwish) that ONNX
Runtime cannot fuse into an int8 conv and so pay a DequantizeLinear/QuantizeLinear pair each.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

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


def node_links(graph: onnx.GraphProto) -> tuple[dict[str, onnx.NodeProto], defaultdict[str, list[onnx.NodeProto]]]:
    """Who writes each tensor and who reads it: the two lookups every walk over the graph's edges needs."""
    producers = {output: node for node in graph.node for output in node.output}
    consumers: defaultdict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)
    return producers, consumers


@dataclass(frozen=True)
class GraphView:
    """The lookups the group rules share, built once per graph."""

    graph: onnx.GraphProto
    producers: dict[str, onnx.NodeProto]
    consumers: dict[str, list[onnx.NodeProto]]
    weights: dict[str, onnx.TensorProto]
    by_name: dict[str, onnx.NodeProto]

    @classmethod
    def of(cls, model: onnx.ModelProto) -> GraphView:
        graph = model.graph
        producers, consumers = node_links(graph)
        weights = {init.name: init for init in graph.initializer}
        return cls(graph, producers, consumers, weights, {node.name: node for node in graph.node})

    @property
    def graph_inputs(self) -> set[str]:
        """The graph's real inputs (initializers listed as inputs are weights)."""
        return {value.name for value in self.graph.input} - set(self.weights)

    @property
    def graph_outputs(self) -> set[str]:
        """The graph's outputs: a rewrite must leave their values as they are."""
        return {value.name for value in self.graph.output}

    def constant(self, name: str) -> np.ndarray | None:
        """An initializer's values (None when ``name`` is not an initializer)."""
        tensor = self.weights.get(name)
        return None if tensor is None else numpy_helper.to_array(tensor)

    def depthwise(self, node: onnx.NodeProto) -> bool:
        """One filter per channel: grouped, with one input channel per filter."""
        weight = self.weights.get(node.input[1]) if len(node.input) > 1 else None
        return conv_groups(node) > 1 and weight is not None and list(weight.dims)[1] == 1

    def owns_weights(self, node: onnx.NodeProto) -> bool:
        """A Conv whose float weight (and bias) are initializers no other node reads and no graph input or output
        exposes: a rewrite may change them without touching anything else."""
        if node.op_type != "Conv" or len(node.input) < 2:
            return False
        names = [name for name in node.input[1:3] if name]
        exposed = {value.name for value in self.graph.input} | self.graph_outputs
        return not exposed & set(names) and all(
            name in self.weights
            and self.weights[name].data_type == onnx.TensorProto.FLOAT
            and len(self.consumers.get(name, [])) == 1
            for name in names
        )


def conv_groups(node: onnx.NodeProto) -> int:
    """A Conv's group count (1 when the attribute is absent)."""
    return attribute(node, "group", 1)


def attribute(node: onnx.NodeProto, name: str, default: Any) -> Any:
    """A node's attribute value (ints as a list, strings as bytes), or ``default`` when it has none of that name."""
    return next((helper.get_attribute_value(attr) for attr in node.attribute if attr.name == name), default)


def drop_unread_initializers(graph: onnx.GraphProto, names: Iterable[str]) -> None:
    """Remove the initializers among ``names`` no node reads any more (a rewrite left them behind)."""
    unread = set(names) - {name for node in graph.node for name in node.input}
    for tensor in [tensor for tensor in graph.initializer if tensor.name in unread]:
        graph.initializer.remove(tensor)


def _stem(view: GraphView) -> list[str]:
    """Convs reading a graph input: they see raw pixels, whose range int8 handles worst."""
    inputs = view.graph_inputs
    return [n.name for n in view.graph.node if n.op_type == "Conv" and any(i in inputs for i in n.input)]


def _classifier(view: GraphView) -> list[str]:
    """The compute node behind each output, walking back through reshapes, pools and fusable activations."""
    classifier: list[str] = []
    for output in view.graph.output:
        node = view.producers.get(output.name)
        while node is not None and node.op_type not in COMPUTE_OPS:
            passthrough = (*RESHAPE_OPS, *POOL_OPS, *FUSABLE_ACTIVATIONS, "AveragePool")
            node = view.producers.get(node.input[0]) if node.op_type in passthrough else None
        if node is not None:
            classifier.append(node.name)
    return classifier


def _depthwise(view: GraphView) -> list[str]:
    """Depthwise convs other than the stem (few weights per scale)."""
    stem = _stem(view)
    return [n.name for n in view.graph.node if n.op_type == "Conv" and view.depthwise(n) and n.name not in stem]


def _grouped(view: GraphView) -> list[str]:
    """Grouped convs that are not depthwise."""
    return [n.name for n in view.graph.node if n.op_type == "Conv" and conv_groups(n) > 1 and not view.depthwise(n)]


def _squeeze_excite(view: GraphView) -> list[str]:
    """Pool, FCs, gate and scale of each squeeze-excite branch, sorted.

    A squeeze-excite scale is Mul(x, gate(pool(x))): the pool reads the very tensor the Mul scales. Without that
    check a SiLU's Mul (x * Sigmoid(x)) walks back through the block into the previous block's pool.
    """
    squeeze_excite: set[str] = set()
    for node in view.graph.node:
        if node.op_type != "Mul" or len(node.input) != 2:
            continue
        for name, other in (node.input, reversed(node.input)):
            gate = view.producers.get(name)
            branch = _branch_from_pool(gate, other, view.producers) if gate and gate.op_type in GATE_OPS else None
            if branch:
                squeeze_excite.update([*branch, node.name])
    return sorted(squeeze_excite)


def _activations(view: GraphView) -> list[str]:
    """Smooth activations outside squeeze-excite branches (a Mul/Div by a constant is a rescale, not one)."""
    squeeze_excite = set(_squeeze_excite(view))
    return [
        n.name
        for n in view.graph.node
        if n.op_type in SMOOTH_ACTIVATION_OPS
        and n.name not in squeeze_excite
        and not _is_constant_scale(n, view.weights)
    ]


def _of_op(op_type: str) -> Callable[[GraphView], list[str]]:
    """Every node of one op type."""
    return lambda view: [n.name for n in view.graph.node if n.op_type == op_type]


# (name, description, rule): the groups in the order the recipe search considers them.
GROUP_RULES: tuple[tuple[str, str, Callable[[GraphView], list[str]]], ...] = (
    ("stem", "first conv, sees raw normalized pixels", _stem),
    ("classifier", "last Gemm/MatMul/Conv producing the logits", _classifier),
    ("depthwise", "depthwise convs (one filter per channel: few weights per scale)", _depthwise),
    ("grouped", "grouped (non-depthwise) convs", _grouped),
    ("squeeze_excite", "squeeze-excite branches (pool, 1x1 FCs, gate, scale)", _squeeze_excite),
    ("activations", "smooth activations (SiLU, HardSwish): unfusable into int8 conv, extra Q/DQ each", _activations),
    ("residual_add", "residual additions", _of_op("Add")),
    ("concat", "concatenations (channel shuffle, fire modules)", _of_op("Concat")),
)


def find_groups(model: onnx.ModelProto) -> dict[str, NodeGroup]:
    """Non-empty groups of the graph, by name, in the order the recipe search considers them."""
    view = GraphView.of(model)
    return {
        name: NodeGroup(name, text, members, tuple(sorted({view.by_name[node].op_type for node in members})))
        for name, text, rule in GROUP_RULES
        if (members := _with_trailing_activation(rule(view), view))
    }


def _with_trailing_activation(nodes: list[str], view: GraphView) -> tuple[str, ...]:
    """A float conv keeps its trailing Relu/Clip float too: quantizing the clip's *input* would use the
    conv's raw (unclipped) range and waste most of the 256 levels."""
    result = list(nodes)
    for name in nodes:
        node = view.by_name[name]
        if node.op_type not in COMPUTE_OPS:
            continue
        followers = view.consumers.get(node.output[0], [])
        if len(followers) == 1 and followers[0].op_type in FUSABLE_ACTIVATIONS:
            result.append(followers[0].name)
    return tuple(dict.fromkeys(result))


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
