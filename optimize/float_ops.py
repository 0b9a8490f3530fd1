"""Which ops of an int8 model still compute in float, and the int8 share of its multiply-accumulates.

Read from what onnxruntime actually runs, not from the quantizer's plan: one profiled batch-1 run lists every
executed kernel with its input types and shapes, after ORT's own fusions. An op whose activation input is float
computes in float, whether the recipe kept it float (its node is in a kept-float group) or ORT had no int8
kernel or fusion for it (a QDQ pair around it is then dequantized and requantized). Q/DQ conversions at the
edges are not counted as float ops.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

# Kernels that count multiply-accumulates; anything else counts zero (element-wise, pooling and data movement are
# small next to them).
CONV_OPS = frozenset({"Conv", "FusedConv", "NhwcFusedConv", "ConvInteger", "QLinearConv"})
ACTIVATIONS = frozenset({"Relu", "Clip", "HardSigmoid", "HardSwish", "Sigmoid", "LeakyRelu", "Tanh"})
MATMUL_OPS = frozenset({"Gemm", "MatMul", "FusedMatMul", "FusedGemm", "QGemm", "QLinearMatMul", "MatMulInteger"})
INT8_TYPES = frozenset({"uint8", "int8"})
CONVERSIONS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})


@dataclass(frozen=True)
class Kernel:
    """One executed kernel: its name, op, the types of its inputs, and the graph node it runs (if found)."""

    name: str
    op: str
    input_types: tuple[str, ...]
    node: GraphNode | None

    @property
    def is_float(self) -> bool:
        """No int8 input: QLinearConcat's first input is a float scale, its tensors come after."""
        return self.op not in CONVERSIONS and not INT8_TYPES & set(self.input_types)

    @property
    def macs(self) -> int | None:
        """Its graph node's MACs (0 for ops other than conv/matmul); None for a conv/matmul kernel not found."""
        if self.op not in CONV_OPS | MATMUL_OPS:
            return 0
        return self.node.macs if self.node is not None else None


@dataclass(frozen=True)
class GraphNode:
    """A node of the saved graph as a kernel name may refer to it: its name and its MACs at batch 1."""

    name: str
    macs: int


def graph_nodes(model: onnx.ModelProto) -> dict[str, GraphNode]:
    """Every node of the saved graph with its MACs at batch 1 (conv and matmul kinds; from ONNX shape inference).

    Keyed by the node's name and by its output's name, and a conv/matmul also by the output of an activation
    right after it: ORT names the kernels it rewrites after either (``node_Conv_12_token_4``, ``hardtanh_nchwc``).
    """
    graph = onnx.shape_inference.infer_shapes(model).graph
    dims = {
        info.name: [dim.dim_value or 1 for dim in info.type.tensor_type.shape.dim]
        for info in (*graph.value_info, *graph.input, *graph.output)
    }
    dims.update({init.name: list(init.dims) for init in graph.initializer})
    dequantized = {node.output[0]: node.input[0] for node in graph.node if node.op_type == "DequantizeLinear"}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    nodes: dict[str, GraphNode] = {}
    for node in graph.node:
        out = dims.get(node.output[0], [])
        macs, keys = 0, [node.name, node.output[0]]
        if node.op_type in CONV_OPS:
            weight = node.input[3 if node.op_type == "QLinearConv" else 1]
            shape = dims.get(dequantized.get(weight, weight), [])
            macs = int(np.prod(out[1:])) * int(np.prod(shape[1:])) if out and shape else 0
        elif node.op_type in MATMUL_OPS:
            left = dims.get(dequantized.get(node.input[0], node.input[0]), [])
            macs = int(np.prod(out[1:])) * int(left[-1]) if out and left else 0
        following = consumers.get(node.output[0], [])
        if macs and len(following) == 1 and following[0].op_type in ACTIVATIONS:
            keys.append(following[0].output[0])
        for key in keys:
            if key and (key not in nodes or macs):  # an activation's output names its conv, not itself
                nodes[key] = GraphNode(node.name, macs)
    return nodes


def node_of(kernel: str, nodes: dict[str, GraphNode]) -> GraphNode | None:
    """The graph node a kernel runs: the longest key its name starts with (ORT adds suffixes to what it rewrites)."""
    key = max((key for key in nodes if kernel.startswith(key)), key=len, default=None)
    return nodes[key] if key is not None else None


def profile_kernels(model: Path, input_shape: Sequence[int]) -> list[Kernel]:
    """Every kernel one batch-1 run of ``model`` executes on this CPU (CPUExecutionProvider, 1 thread).

    MACs come from the saved graph, not the profiled shapes: ORT pre-packs int8 weights (the profile omits them)
    and pads float channels to its blocked layout."""
    nodes = graph_nodes(onnx.load(str(model)))
    with tempfile.TemporaryDirectory() as folder:
        options = ort.SessionOptions()
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(folder) / "profile")
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        session.run(None, {session.get_inputs()[0].name: np.zeros(tuple(input_shape), np.float32)})
        events = json.loads(Path(session.end_profiling()).read_text())
    kernels = []
    for event in events:
        if event.get("cat") != "Node" or not event.get("name", "").endswith("_kernel_time"):
            continue
        inputs = event["args"].get("input_type_shape", [])
        name = event["name"].removesuffix("_kernel_time")
        types = tuple(next(iter(value)) for value in inputs)
        kernels.append(Kernel(name, event["args"]["op_name"], types, node_of(name, nodes)))
    return kernels


def float_ops(model: Path, input_shape: Sequence[int], kept_float: dict[str, Sequence[str]]) -> dict[str, Any]:
    """The ops left in float, by op type and by whom (the recipe's ``kept_float`` groups -> node names, or ORT),
    and the int8 share of the MACs; the dict goes into report.json and the int8 model card."""
    owner = {node: group for group, nodes in kept_float.items() for node in nodes}
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    int8_macs = float_macs = 0
    uncounted = []
    for kernel in profile_kernels(model, input_shape):
        if kernel.macs is None:
            uncounted.append(f"{kernel.name} ({kernel.op})")
        if not kernel.is_float:
            int8_macs += kernel.macs or 0
            continue
        float_macs += kernel.macs or 0
        group = owner.get(kernel.node.name) if kernel.node is not None else None
        by = f"recipe (kept float: {group})" if group else "onnxruntime (no int8 kernel or fusion here)"
        row = rows.setdefault((kernel.op, by), {"op": kernel.op, "by": by, "count": 0, "macs": 0})
        row["count"] += 1
        row["macs"] += kernel.macs or 0
    total = int8_macs + float_macs
    return {
        "int8_mac_share": int8_macs / total if total else None,
        "macs": {"int8": int(int8_macs), "float": int(float_macs)},
        "float_ops": sorted(rows.values(), key=lambda row: (-row["macs"], row["op"])),
        "uncounted_kernels": uncounted,
        "measured_by": "onnxruntime's profile of one batch-1 run on the building CPU (kernels after ORT fusions)",
    }
