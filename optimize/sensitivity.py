"""Per-layer evidence: how far each quantized layer's output is from fp32 on calibration pictures, and where it drops.

Both models run on the same inputs with every Conv/Gemm/MatMul output of the fp32 graph exposed. ORT's quantizer
keeps those tensor names: in a QDQ model the named tensor is the float result of the layer computed from
quantized inputs and weights, i.e. everything int8 did to the network up to and including that layer. The
signal-to-quantization-noise ratio (SQNR, dB) along the depth shows where the error comes from: a layer whose SQNR
falls far below its input's is where int8 loses the signal, whatever the weights are (random weights included).
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from smallnets.optimize.groups import COMPUTE_OPS, NodeGroup


@dataclass(frozen=True)
class LayerError:
    """One compute layer's output against fp32: SQNR in dB, mean cosine over images, and the SQNR drop it adds.

    ``drop_db`` is the SQNR of the layer's input layer (the closest compute layer upstream) minus its own: how much
    signal-to-noise this layer lost by itself. ``group`` is the recipe group the layer belongs to, if any.
    """

    node: str
    op_type: str
    output: str
    sqnr_db: float | None
    cosine: float
    drop_db: float | None
    group: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON: an infinite SQNR (bit-exact layer) or drop is written as null."""
        return {key: None if isinstance(v, float) and math.isinf(v) else v for key, v in asdict(self).items()}


def sqnr_db(reference: np.ndarray, candidate: np.ndarray) -> float:
    """10 log10(signal power / error power): infinite for an exact match, 0 dB when the error is as large as the
    signal, negative when larger."""
    noise = float(np.sum((reference.astype(np.float64) - candidate) ** 2))
    signal = float(np.sum(reference.astype(np.float64) ** 2))
    if noise == 0.0:
        return math.inf
    return 10.0 * math.log10(signal / noise) if signal > 0 else -math.inf


def mean_cosine(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Cosine of each image's flattened tensor, averaged (an all-zero pair counts as 1, one-sided zero as 0)."""
    ref = reference.reshape(len(reference), -1).astype(np.float64)
    cand = candidate.reshape(len(candidate), -1).astype(np.float64)
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1)
    dots = np.sum(ref * cand, axis=1)
    both_zero = (np.linalg.norm(ref, axis=1) == 0) & (np.linalg.norm(cand, axis=1) == 0)
    cosines = np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), np.where(both_zero, 1.0, 0.0))
    return float(np.mean(cosines))


def compute_layers(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [node for node in model.graph.node if node.op_type in COMPUTE_OPS]


def _upstream_layer(model: onnx.ModelProto) -> dict[str, str]:
    """Each compute layer's output -> the output of the nearest compute layer feeding its first input."""
    producers = {output: node for node in model.graph.node for output in node.output}
    upstream = {}
    for node in compute_layers(model):
        current = producers.get(node.input[0])
        seen = 0
        while current is not None and current.op_type not in COMPUTE_OPS and seen < 64:
            current = producers.get(current.input[0]) if current.input else None
            seen += 1
        if current is not None and current.op_type in COMPUTE_OPS:
            upstream[node.output[0]] = current.output[0]
    return upstream


def _with_outputs(path: Path, names: Sequence[str], folder: Path) -> Path:
    """A copy of ``path`` that also outputs the tensors ``names`` (type left to ORT's inference)."""
    model = onnx.load(str(path))
    present = {output.name for output in model.graph.output}
    model.graph.output.extend(onnx.ValueInfoProto(name=name) for name in names if name not in present)
    exposed = folder / path.name
    onnx.save(model, str(exposed))
    return exposed


def _run(path: Path, names: Sequence[str], inputs: np.ndarray) -> dict[str, np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC  # keep every named tensor
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed_name = session.get_inputs()[0].name
    per_image = [session.run(list(names), {feed_name: inputs[i : i + 1]}) for i in range(len(inputs))]
    return {name: np.concatenate([values[k] for values in per_image]) for k, name in enumerate(names)}


def layer_errors(
    fp32: Path, int8: Path, inputs: np.ndarray, groups: Mapping[str, NodeGroup] | None = None
) -> list[LayerError]:
    """SQNR and cosine of every compute layer's output of ``int8`` against ``fp32`` on ``inputs`` (N, C, H, W).

    Layers are matched by node name, and both sides compare the layer's own output (before any activation): where
    the quantizer folded a Relu/Clip into a conv, the int8 conv writes the activation's tensor name but still holds
    pre-activation values. Layers the int8 graph has no node of (e.g. renamed QOperator kernels) are skipped.
    """
    reference = onnx.load(str(fp32), load_external_data=False)
    int8_output = {node.name: node.output[0] for node in onnx.load(str(int8)).graph.node if node.op_type in COMPUTE_OPS}
    layers = [node for node in compute_layers(reference) if node.name in int8_output]
    if not layers:
        return []
    fp32_names = [node.output[0] for node in layers]
    int8_names = [int8_output[node.name] for node in layers]
    group_of = {node: name for name, group in (groups or {}).items() for node in group.nodes}
    with tempfile.TemporaryDirectory(prefix="smallnets-sensitivity-") as folder:
        (Path(folder) / "fp32").mkdir()
        (Path(folder) / "int8").mkdir()
        ref = _run(_with_outputs(fp32, fp32_names, Path(folder) / "fp32"), fp32_names, inputs)
        cand = _run(_with_outputs(int8, int8_names, Path(folder) / "int8"), int8_names, inputs)
    for node in layers:  # compared on the fp32 channels: padding's zero channels are not the model's
        cand[int8_output[node.name]] = _real_channels(cand[int8_output[node.name]], ref[node.output[0]])
    upstream = _upstream_layer(reference)
    sqnr = {node.output[0]: sqnr_db(ref[node.output[0]], cand[int8_output[node.name]]) for node in layers}
    return [
        LayerError(
            node=node.name,
            op_type=node.op_type,
            output=node.output[0],
            sqnr_db=sqnr[node.output[0]],
            cosine=mean_cosine(ref[node.output[0]], cand[int8_output[node.name]]),
            drop_db=_drop(sqnr.get(upstream.get(node.output[0], "")), sqnr[node.output[0]]),
            group=group_of.get(node.name, ""),
        )
        for node in layers
    ]


def _real_channels(candidate: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """The candidate's channels the reference has: channel padding (optimize/channel_padding.py) appends zero ones."""
    return candidate[:, : reference.shape[1]] if candidate.ndim > 1 and reference.ndim > 1 else candidate


def _drop(upstream: float | None, own: float) -> float:
    """SQNR lost at a layer: its input layer's minus its own (0 without an upstream layer or both exact)."""
    if upstream is None or (math.isinf(upstream) and math.isinf(own)):
        return 0.0
    return upstream - own


def worst(errors: Sequence[LayerError], count: int = 5) -> list[LayerError]:
    """The layers that lose the most SQNR by themselves, largest drop first."""
    return sorted(errors, key=lambda error: math.inf if error.drop_db is None else error.drop_db, reverse=True)[:count]


def report_entry(
    errors: Sequence[LayerError], candidate: str, images: int, source: str, count: int = 8
) -> dict[str, Any]:
    """What report.json carries: every layer in graph order and the ``count`` that lose the most by themselves."""
    return {
        "candidate": candidate,
        "images": images,
        "source": source,
        "final_sqnr_db": errors[-1].to_dict()["sqnr_db"] if errors else None,
        "worst": [error.to_dict() for error in worst(errors, count)],
        "layers": [error.to_dict() for error in errors],
    }


def report_lines(entry: Mapping[str, Any] | None) -> list[str]:
    """report.md's section: the final layer's SQNR and the layers that lose the most signal by themselves."""
    if not entry or not entry.get("layers"):
        return []
    worst_layers = [LayerError(**layer) for layer in entry["worst"]]
    return [
        "",
        f"## Per-layer int8 error ({entry['candidate']}, {entry['images']} {entry['source']})",
        "",
        f"SQNR of each compute layer's output against fp32 (report.json has all {len(entry['layers'])}); the last "
        f"layer keeps {_db(entry['final_sqnr_db'], '.1f')} dB. The layers that lose the most by themselves:",
        "",
        markdown(worst_layers).rstrip("\n"),
    ]


def _db(value: float | None, fmt: str) -> str:
    return "exact" if value is None or math.isinf(value) else format(value, fmt)


def markdown(errors: Sequence[LayerError], limit: int | None = None) -> str:
    """A table in graph order: layer, op, group, SQNR (dB), drop from its input layer (dB), cosine."""
    lines = ["| layer | op | group | SQNR dB | drop dB | cosine |", "|---|---|---|---:|---:|---:|"]
    for error in list(errors)[:limit]:
        lines.append(
            f"| {error.node} | {error.op_type} | {error.group or '-'} | {_db(error.sqnr_db, '.1f')} | "
            f"{_db(error.drop_db, '+.1f')} | {error.cosine:.4f} |"
        )
    return "\n".join(lines) + "\n"
