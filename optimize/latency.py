"""Batch-1, single-thread latency of ONNX models, measured interleaved so machine noise hits all alike."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from smallnets.core.runtime import OnnxClassifier

LATENCY_THREADS = 1


def measure_latency(paths: Sequence[Path], runs: int = 60, warmup: int = 5) -> list[float]:
    """p50 milliseconds per model at batch 1 on one thread; the models take turns run by run.

    One thread and batch 1 is the edge/serving case the int8 target is defined for. Strict alternation means
    a burst of load from other processes on a shared machine hits every model alike, so the ratio of p50s
    (the speedup) stays meaningful even when the absolute numbers are noisy.
    """
    classifiers = [OnnxClassifier(path, threads=LATENCY_THREADS) for path in paths]
    inputs = []
    for classifier in classifiers:
        size = classifier.card.preprocessing.crop
        inputs.append(np.random.default_rng(0).standard_normal((1, 3, size, size), dtype=np.float32))
        for _ in range(warmup):
            classifier.run(inputs[-1])
    timings: list[list[float]] = [[] for _ in paths]
    for _ in range(runs):
        for index, classifier in enumerate(classifiers):
            started = time.perf_counter()
            classifier.run(inputs[index])
            timings[index].append((time.perf_counter() - started) * 1000.0)
    return [float(np.median(values)) for values in timings]
