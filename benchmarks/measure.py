"""One measurement in one fresh process: ``python -m smallnets.benchmarks.measure --spec JSON`` prints one JSON line.

A fresh interpreter per measurement keeps runs from polluting each other (allocator arenas, thread pools, peak
RSS). Only the standard library and numpy are imported at module level, so the ``bare`` kind measures what an
interpreter costs before any runtime is loaded; onnxruntime or torch are imported by the kind that needs them.
Runs unchanged on aarch64 (native or emulated).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from smallnets.benchmarks.loaded import TimedModel
from smallnets.core.targets import ONNXRUNTIME
from smallnets.core.timing import timed_calls, warm_up

KINDS = ("onnx", "torch", "openvino", "bare")


@dataclass(frozen=True)
class MeasureSpec:
    """What to measure and how long: the whole contract between the suite and the measuring process.

    ``input_path`` is an .npy batch of preprocessed photos shared by every variant of a model; rows are repeated
    cyclically up to ``batch``. Warm-up runs up to ``warmup`` iterations while the first run plus warm-up stay
    under ``warmup_s`` (a slow model is warm after its first run). The timed loop stops after ``iterations`` runs
    when given, otherwise once at least ``duration_s`` of inference was timed and ``min_iterations`` runs were made.
    """

    kind: str
    batch: int = 1
    threads: int = 1
    input_path: str | None = None
    model_path: str | None = None
    providers: tuple[str, ...] | None = None
    runtime: str = ONNXRUNTIME  # what runs an onnx measurement (core.targets.RUNTIMES): the server's choices
    model: str | None = None
    variant: dict[str, Any] = field(default_factory=dict)
    weights: str = "random"
    warmup: int = 2
    warmup_s: float = 0.25
    duration_s: float = 0.3
    min_iterations: int = 3
    iterations: int | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> MeasureSpec:
        data = json.loads(text)
        if data.get("providers") is not None:
            data["providers"] = tuple(data["providers"])
        return cls(**data)


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB.

    Linux: VmHWM of /proc/self/status, because ru_maxrss survives exec and would report the parent's peak when
    the suite spawns us. Elsewhere ru_maxrss (bytes on macOS).
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**10
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**20 if sys.platform == "darwin" else 2**10)


def load_onnx(spec: MeasureSpec) -> TimedModel:
    from smallnets.core.runtime import OnnxClassifier

    if not spec.model_path:
        raise ValueError("an onnx measurement needs model_path")
    classifier = OnnxClassifier(spec.model_path, providers=spec.providers, threads=spec.threads, runtime=spec.runtime)
    return TimedModel(
        classifier.run,
        provider=classifier.providers[0],
        size_bytes=os.path.getsize(spec.model_path),
        load_ms=classifier.load_ms,
    )


def load_model(spec: MeasureSpec, input_shape: tuple[int, ...]) -> TimedModel:
    if spec.kind == "onnx":
        return load_onnx(spec)
    if spec.kind == "openvino":
        from smallnets.benchmarks.openvino_peer import load_openvino

        if not spec.model_path:
            raise ValueError("an openvino measurement needs model_path (an OpenVINO IR .xml)")
        return load_openvino(spec.model_path, spec.threads, input_shape)
    if spec.kind == "torch":
        from smallnets.benchmarks.torch_eager import load_torch

        return load_torch(spec.model or "", spec.variant, spec.weights, spec.threads)
    raise ValueError(f"unknown measurement kind {spec.kind!r}; choose from {', '.join(KINDS)}")


def input_batch(path: str, batch: int) -> np.ndarray:
    """The shared input photos, repeated cyclically to ``batch`` rows (same data for every variant)."""
    photos = np.load(path)
    return np.ascontiguousarray(photos[np.arange(batch) % len(photos)])


def measure(spec: MeasureSpec) -> dict[str, Any]:
    """Load, time the first run, warm up, run the bounded loop; return raw numbers (summaries are the caller's)."""
    if spec.kind == "bare":
        return {"kind": "bare", "peak_rss_mb": peak_rss_mb()}
    if not spec.input_path:
        raise ValueError("a measurement needs input_path (an .npy batch of preprocessed photos)")
    batch = input_batch(spec.input_path, spec.batch)
    model = load_model(spec, batch.shape)
    prepared = model.prepare(batch)
    started = time.perf_counter()
    model.run(prepared)
    first_run_ms = (time.perf_counter() - started) * 1000.0
    run = functools.partial(model.run, prepared)
    # The first run counts towards the warm-up time: a model slower than warmup_s per call goes straight to timing.
    warm_up(run, spec.warmup, within_s=spec.warmup_s - first_run_ms / 1000.0)
    timings_ms = timed_calls(run, spec.iterations, spec.duration_s, spec.min_iterations)
    return {
        "kind": spec.kind,
        "provider": model.provider,
        "model_size_bytes": model.size_bytes,
        "load_ms": model.load_ms,
        "first_run_ms": first_run_ms,
        "timings_ms": timings_ms,
        "peak_rss_mb": peak_rss_mb(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m smallnets.benchmarks.measure", description=__doc__)
    parser.add_argument("--spec", required=True, help="MeasureSpec as JSON")
    args = parser.parse_args(argv)
    result = measure(MeasureSpec.from_json(args.spec))
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
