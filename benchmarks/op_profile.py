"""Where the time goes inside one model: onnxruntime's own profiler, summed per op type of the optimized graph.

Each op type gets its share of the kernel time of a run, and the compute ops (convolutions, GEMMs) their
multiply-accumulates and the MAC/s they achieved against the CPU's peak (benchmarks/roofline.py). The first
``warmup`` runs are profiled too and dropped, so one-off allocation and packing is not counted.

    python -m smallnets.benchmarks.op_profile artifacts/efficientnet_lite0/model.int8.onnx --threads 1
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from smallnets.benchmarks.roofline import PeakCompute, peak_compute
from smallnets.core.hardware import detect_cpu

# Op types (as the profiler names the kernels of the optimized graph) whose MACs are counted, by precision.
CONV_OPS = {"Conv": "fp32", "FusedConv": "fp32", "QLinearConv": "int8", "ConvInteger": "int8"}
GEMM_OPS = {"Gemm": "fp32", "MatMul": "fp32", "FusedGemm": "fp32", "QGemm": "int8", "QLinearMatMul": "int8"}
WEIGHT_INPUT = {"QLinearConv": 3, "QGemm": 3, "QLinearMatMul": 3, "ConvInteger": 1}


@dataclass
class OpTypeTime:
    """One op type's kernel time per run (microseconds), node count and MACs per run."""

    op_type: str
    us_per_run: float = 0.0
    nodes: int = 0
    macs: float = 0.0
    precision: str = ""

    def to_dict(self, total_us: float, peak: PeakCompute, threads: int) -> dict[str, Any]:
        achieved = self.macs / (self.us_per_run / 1e6) if self.macs and self.us_per_run else None
        peak_rate = peak.peak_macs_per_s(threads, self.precision) if self.precision else None
        return {
            "op_type": self.op_type,
            "us_per_run": round(self.us_per_run, 1),
            "share": self.us_per_run / total_us if total_us else 0.0,
            "nodes": self.nodes,
            "mmacs": self.macs / 1e6 if self.macs else None,
            "precision": self.precision or None,
            "gmacs_per_s": achieved / 1e9 if achieved else None,
            "fraction_of_peak": achieved / peak_rate if achieved and peak_rate else None,
        }


@dataclass
class OpProfile:
    """A model's per-op-type profile at one thread count."""

    model: str
    threads: int
    runs: int
    run_us: float  # median wall time of a profiled run
    ops: list[OpTypeTime] = field(default_factory=list)

    @property
    def kernel_us(self) -> float:
        return sum(op.us_per_run for op in self.ops)

    def to_dict(self, peak: PeakCompute) -> dict[str, Any]:
        return {
            "model": self.model,
            "threads": self.threads,
            "runs": self.runs,
            "run_ms_p50": self.run_us / 1000.0,
            "kernel_ms": self.kernel_us / 1000.0,
            "peak": {
                "basis": peak.basis,
                "int8_gmacs_per_s": peak.peak_macs_per_s(self.threads, "int8") / 1e9,
                "fp32_gmacs_per_s": peak.peak_macs_per_s(self.threads, "fp32") / 1e9,
            },
            "ops": [op.to_dict(self.kernel_us, peak, self.threads) for op in self.ops],
        }


def _shapes(arg: list[dict[str, list[int]]] | None) -> list[list[int]]:
    return [next(iter(item.values())) for item in arg or []]


def weight_shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    """Node name -> shape of its weight initializer, for the conv/GEMM nodes of the graph the session runs.

    The profiler does not list a pre-packed weight among a kernel's inputs, so the shape is read from the
    session's optimized graph, whose node names the profiler's events carry.
    """
    dims = {init.name: list(init.dims) for init in model.graph.initializer}
    shapes = {}
    for node in model.graph.node:
        index = WEIGHT_INPUT.get(node.op_type, 1)
        compute = node.op_type in CONV_OPS or node.op_type in GEMM_OPS
        if compute and len(node.input) > index and node.input[index] in dims:
            shapes[node.name] = dims[node.input[index]]
    return shapes


def node_macs(op_type: str, weight: Sequence[int] | None, output: Sequence[int] | None) -> float:
    """Multiply-accumulates of one conv/GEMM kernel call (0 for other ops or unknown shapes).

    Conv: output elements x (input channels per group x kernel area), read off the weight [M, C/g, kh, kw].
    GEMM: output elements x the inner dimension (the weight's first axis, or its second for QGemm/Gemm with
    transposed B, whichever is not the output width). NCHWc-blocked outputs count padding channels: an upper bound.
    """
    if not weight or not output or (op_type not in CONV_OPS and op_type not in GEMM_OPS):
        return 0.0
    out = math.prod(output)
    if op_type in CONV_OPS:
        return float(out * math.prod(weight[1:])) if len(weight) >= 3 else 0.0
    inner = weight[1] if len(weight) == 2 and weight[0] == output[-1] else weight[0]
    return float(out * inner)


def conv_kind(weight: Sequence[int]) -> str:
    """depthwise (one input channel per filter), 1x1 (pointwise) or kxk (a full spatial conv), from [M, C/g, kh, kw]."""
    if len(weight) >= 3 and weight[1] == 1 and math.prod(weight[2:]) > 1:
        return "depthwise"
    return "1x1" if math.prod(weight[2:]) == 1 else "kxk"


def summarize(
    events: list[dict[str, Any]], warmup: int, weights: dict[str, list[int]]
) -> tuple[list[OpTypeTime], int, float]:
    """Per op type time and MACs per run from a profiler trace, the first ``warmup`` runs left out.

    ``weights`` maps node names to weight shapes (:func:`weight_shapes`) for the MAC counts.
    """
    runs = sorted((event["ts"], event["ts"] + event["dur"]) for event in events if event.get("name") == "model_run")
    kept = runs[warmup:]
    if not kept:
        raise ValueError(f"the profile holds {len(runs)} runs, none after the {warmup} warm-up runs")
    start = kept[0][0]
    totals: dict[str, OpTypeTime] = {}
    per_run_nodes: dict[str, set[str]] = defaultdict(set)
    for event in events:
        if event.get("cat") != "Node" or not event.get("name", "").endswith("_kernel_time") or event["ts"] < start:
            continue
        args = event.get("args", {})
        op_type = args.get("op_name", "?")
        node = event["name"].removesuffix("_kernel_time")
        label = f"{op_type} ({conv_kind(weights[node])})" if op_type in CONV_OPS and node in weights else op_type
        entry = totals.setdefault(label, OpTypeTime(label))
        entry.us_per_run += event["dur"]
        outputs = _shapes(args.get("output_type_shape"))
        entry.macs += node_macs(op_type, weights.get(node), outputs[0] if outputs else None)
        entry.precision = CONV_OPS.get(op_type) or GEMM_OPS.get(op_type) or ""
        per_run_nodes[label].add(event["name"])
    for entry in totals.values():
        entry.us_per_run /= len(kept)
        entry.macs /= len(kept)
        entry.nodes = len(per_run_nodes[entry.op_type])
    ordered = sorted(totals.values(), key=lambda op: op.us_per_run, reverse=True)
    return ordered, len(kept), float(np.median([end - begin for begin, end in kept]))


def profile_model(model: Path, threads: int, runs: int = 200, warmup: int = 20) -> OpProfile:
    """Run ``model`` ``warmup + runs`` times on a random input with onnxruntime's profiler on, and summarize."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.enable_profiling = True
    with tempfile.TemporaryDirectory(prefix="smallnets-profile-") as folder:
        options.profile_file_prefix = str(Path(folder) / "profile")
        options.optimized_model_filepath = str(Path(folder) / "optimized.onnx")
        session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        weights = weight_shapes(onnx.load(options.optimized_model_filepath))
        spec = session.get_inputs()[0]
        shape = [dim if isinstance(dim, int) and dim > 0 else 1 for dim in spec.shape]
        batch = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        for _ in range(warmup + runs):
            session.run(None, {spec.name: batch})
        trace = Path(session.end_profiling())
        events = json.loads(trace.read_text())
    ops, kept, run_us = summarize(events, warmup, weights)
    return OpProfile(str(model), threads, kept, run_us, ops)


def markdown(profile: OpProfile, peak: PeakCompute) -> str:
    """The profile as a table: op type, nodes, time per run, share, MMACs, GMAC/s and % of peak."""
    data = profile.to_dict(peak)
    lines = [
        f"Model `{profile.model}`, {profile.threads} thread(s), {profile.runs} profiled runs: median run "
        f"{data['run_ms_p50']:.2f} ms, kernels {data['kernel_ms']:.2f} ms. Peak: {peak.basis} -> "
        f"{data['peak']['int8_gmacs_per_s']:.0f} int8 / {data['peak']['fp32_gmacs_per_s']:.0f} fp32 GMAC/s.",
        "",
        "| op type | nodes | us/run | share | MMACs | GMAC/s | of peak |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for op in data["ops"]:
        mmacs = f"{op['mmacs']:.1f}" if op["mmacs"] else ""
        rate = f"{op['gmacs_per_s']:.1f}" if op["gmacs_per_s"] else ""
        fraction = f"{op['fraction_of_peak']:.0%}" if op["fraction_of_peak"] else ""
        lines.append(
            f"| {op['op_type']} | {op['nodes']} | {op['us_per_run']:.0f} | {op['share']:.1%} | {mmacs} | {rate} "
            f"| {fraction} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m smallnets.benchmarks.op_profile", description=__doc__)
    parser.add_argument("models", nargs="+", type=Path, help="ONNX files to profile")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (default: 1)")
    parser.add_argument("--runs", type=int, default=200, help="profiled runs after the warm-up (default: 200)")
    parser.add_argument("--warmup", type=int, default=20, help="runs profiled and dropped (default: 20)")
    parser.add_argument("--json", type=Path, help="also write every profile's figures to this file")
    args = parser.parse_args(argv)
    missing = [str(path) for path in args.models if not path.is_file()]
    if missing:
        parser.error(f"no such model file: {', '.join(missing)} (build one with `smallnets pipeline NAME`)")
    cpu = detect_cpu()
    peak = peak_compute(cpu.features, cpu.model)
    results = []
    for path in args.models:
        profile = profile_model(path, args.threads, args.runs, args.warmup)
        sys.stdout.write(markdown(profile, peak) + "\n")
        results.append(profile.to_dict(peak))
    if args.json:
        context = {"cpu": cpu.to_dict(), "onnxruntime": ort.__version__, "python": platform.python_version()}
        args.json.write_text(json.dumps({"context": context, "profiles": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
