"""The floor an HTTP server is measured against: the same uploads decoded, preprocessed and classified in this
process, with the server's own model file, runtime, thread count and session options, and no HTTP in between.

`smallnets bench-http --in-process` reads the model file, runtime and threads from the server's /metadata (the load tool
only drives servers on this machine), so "HTTP costs X ms" is measured, not assumed.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from smallnets.benchmarks.http_load import Payload
from smallnets.core.images import finish_decode, open_image
from smallnets.core.preprocess import decode_min_side
from smallnets.core.runtime import OnnxClassifier
from smallnets.core.targets import ONNXRUNTIME
from smallnets.core.timing import timed_calls


@dataclass(frozen=True)
class InProcessFloor:
    """One image end to end at batch 1, and batches of ``batch`` images end to end, on ``threads`` threads."""

    model_file: str
    runtime: str
    threads: int
    single_p50_ms: float
    single_p99_ms: float
    single_runs: int
    batch: int
    batched_images_per_s: float
    batched_runs: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Pipeline:
    """decode -> preprocess -> run, as the server does it (decode shrunk to the preprocessing's reducing size)."""

    def __init__(self, model_file: Path, threads: int, runtime: str = ONNXRUNTIME) -> None:
        self.classifier = OnnxClassifier.for_serving(model_file, threads=threads, runtime=runtime)
        self.min_side = decode_min_side(self.classifier.card.preprocessing)

    def rows(self, payloads: Sequence[Payload]) -> np.ndarray:
        pictures = [
            finish_decode(open_image(payload.data, min_side=self.min_side), self.min_side) for payload in payloads
        ]
        return self.classifier.preprocess(pictures)

    def classify(self, payloads: Sequence[Payload]) -> np.ndarray:
        return self.classifier.run(self.rows(payloads))


def time_batches(pipeline: Pipeline, payloads: Sequence[Payload], batch: int, duration_s: float) -> list[float]:
    """Milliseconds per call of ``batch`` images (cycling through ``payloads``) for ``duration_s`` (>= 3 calls)."""
    cycle = itertools.cycle(payloads)
    return timed_calls(lambda: pipeline.classify([next(cycle) for _ in range(batch)]), None, duration_s, min_runs=3)


def measure_floor(
    model_file: Path,
    payloads: Sequence[Payload],
    threads: int,
    duration_s: float,
    batch: int = 16,
    runtime: str = ONNXRUNTIME,
) -> InProcessFloor:
    """The in-process floor: ``duration_s`` of single images, then ``duration_s`` of ``batch``-image batches."""
    pipeline = Pipeline(model_file, threads, runtime)
    pipeline.classify(payloads[:1])  # first run (allocations, kernel selection) is not the steady state
    single = np.asarray(time_batches(pipeline, payloads, 1, duration_s))
    batched = time_batches(pipeline, payloads, batch, duration_s)
    return InProcessFloor(
        model_file=str(model_file),
        runtime=runtime,
        threads=threads,
        single_p50_ms=float(np.percentile(single, 50)),
        single_p99_ms=float(np.percentile(single, 99)),
        single_runs=len(single),
        batch=batch,
        batched_images_per_s=batch * len(batched) / (sum(batched) / 1000.0),
        batched_runs=len(batched),
    )
