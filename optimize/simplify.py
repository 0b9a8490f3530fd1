"""onnxsim simplification that keeps the dynamic batch axis, verified to run (and agree) at batch 1 and 7."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from smallnets.optimize.modelio import InvalidModelError, check_model, copy_metadata, load_model, save_model

CHECK_BATCH_SIZES = (1, 7)


class SimplifyError(RuntimeError):
    """onnxsim failed or changed the model's numerics or its dynamic batch axis."""


def simplify(model: onnx.ModelProto | Path, output: Path | None = None, atol: float = 1e-4) -> onnx.ModelProto:
    """Constant-fold and clean the graph with onnxsim (which also folds BatchNorm into Conv).

    onnxsim is given no input shapes so it keeps symbolic dims; we still restore the batch dim if a pass
    pinned it, then prove the result matches the original at batch 1 and 7.
    """
    from onnxsim import simplify as onnxsim_simplify

    original = load_model(model) if isinstance(model, Path | str) else model
    try:
        simplified, ok = onnxsim_simplify(original, check_n=0)
    except Exception as error:  # onnxsim raises bare RuntimeError/onnx errors from its C++ core
        raise SimplifyError(f"onnxsim could not simplify the model: {error}") from error
    if not ok:
        raise SimplifyError("onnxsim produced a model that failed its own check")
    restore_batch_axis(original, simplified)
    copy_metadata(original, simplified)
    check_model(simplified, "simplified model")
    assert_same_outputs(original, simplified, atol, what="simplify")
    if output is not None:
        save_model(simplified, output)
    return simplified


def restore_batch_axis(reference: onnx.ModelProto, model: onnx.ModelProto) -> None:
    """Copy the symbolic first dim of graph inputs/outputs back where a tool replaced it with a number."""
    for ours, theirs in ((model.graph.input, reference.graph.input), (model.graph.output, reference.graph.output)):
        dims = {value.name: value.type.tensor_type.shape.dim for value in theirs}
        for value in ours:
            if value.name in dims and dims[value.name] and dims[value.name][0].dim_param:
                first = value.type.tensor_type.shape.dim[0]
                first.Clear()
                first.dim_param = dims[value.name][0].dim_param


def assert_same_outputs(
    reference: onnx.ModelProto, candidate: onnx.ModelProto, atol: float, what: str, seed: int = 0
) -> float:
    """Run both models on the same random batches of size 1 and 7; raise if they differ by more than atol."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    sessions = [
        ort.InferenceSession(m.SerializeToString(), options, providers=["CPUExecutionProvider"])
        for m in (reference, candidate)
    ]
    graph_input = sessions[0].get_inputs()[0]
    shape = graph_input.shape[1:]
    if not all(isinstance(dim, int) for dim in shape):
        raise InvalidModelError(f"input {graph_input.name!r} needs static C, H, W dims, got {graph_input.shape}")
    rng = np.random.default_rng(seed)
    worst = 0.0
    for batch in CHECK_BATCH_SIZES:
        data = rng.standard_normal((batch, *shape), dtype=np.float32)
        try:
            expected, actual = (s.run(None, {graph_input.name: data})[0] for s in sessions)
        except Exception as error:  # onnxruntime raises its own exception types (Fail, InvalidArgument, ...)
            raise SimplifyError(f"{what}: the model no longer runs at batch {batch}: {error}") from error
        # Random-weight nets can have logits in the hundreds: compare relative to their scale.
        worst = max(worst, float(np.abs(expected - actual).max() / max(1.0, np.abs(expected).max())))
    if worst > atol:
        raise SimplifyError(f"{what} changed the outputs: max relative diff {worst:.2e} > {atol:.0e}")
    return worst
