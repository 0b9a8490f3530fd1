"""Portable graph fusion: ONNX Runtime's *basic* optimizations, applied once offline and saved.

Basic level (constant folding, Conv+BatchNorm / Conv+Add / Conv+Mul folding, redundant node elimination) only
rewrites into standard ONNX ops, so the file stays valid on every CPU. Extended/layout levels emit
hardware-specific contrib ops (NCHWc, fused activations) and are left to the session at load time.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path

import onnx
import onnxruntime as ort

from smallnets.optimize.modelio import check_model, copy_metadata, load_model, save_model
from smallnets.optimize.simplify import assert_same_outputs, restore_batch_axis


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    """Nodes per op type, most frequent first."""
    return dict(Counter(node.op_type for node in model.graph.node).most_common())


def count_diff(before: dict[str, int], after: dict[str, int]) -> dict[str, dict[str, int]]:
    """Per op type: count before, after, and the change (only types that exist on either side)."""
    return {
        op: {"before": before.get(op, 0), "after": after.get(op, 0), "change": after.get(op, 0) - before.get(op, 0)}
        for op in sorted(set(before) | set(after))
    }


def fuse(model: onnx.ModelProto | Path, output: Path | None = None, atol: float = 1e-4) -> tuple[onnx.ModelProto, dict]:
    """Fold BatchNorm into Conv and apply ORT's basic (hardware-independent) fusions offline.

    Returns the fused model and a per-op-type count diff. ORT's optimized-model writer drops
    ``metadata_props``, so the card is copied back.
    """
    original = load_model(model) if isinstance(model, Path | str) else model
    with tempfile.TemporaryDirectory(prefix="smallnets-fuse-") as folder:
        fused_path = Path(folder) / "fused.onnx"
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(fused_path)
        ort.InferenceSession(original.SerializeToString(), options, providers=["CPUExecutionProvider"])
        fused = onnx.load(str(fused_path))
    restore_batch_axis(original, fused)
    copy_metadata(original, fused)
    check_model(fused, "fused model")
    assert_same_outputs(original, fused, atol, what="fuse")
    if output is not None:
        save_model(fused, output)
    return fused, count_diff(op_counts(original), op_counts(fused))
