"""Batch-1 latency of ONNX models, and a speed gate that the noise of a shared machine cannot fool.

Every timing here is interleaved: the models take turns, so a burst of load from other processes hits all of
them alike and the ratio of their times (the speedup) stays meaningful when the absolute numbers are noisy.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from smallnets.core.runtime import OnnxClassifier

LATENCY_THREADS = 1
# Below this the gate does not call a candidate faster even on a quiet machine: a 2% win is not worth int8's
# accuracy risk, and ratios of medians wobble by about that much between fresh sessions of the same model.
MIN_MARGIN = 0.02


def random_input(classifier: OnnxClassifier) -> np.ndarray:
    size = classifier.card.preprocessing.crop
    return np.random.default_rng(0).standard_normal((1, 3, size, size), dtype=np.float32)


def measure_latency(
    paths: Sequence[Path], runs: int = 60, warmup: int = 5, threads: int = LATENCY_THREADS
) -> list[float]:
    """p50 milliseconds per model at batch 1 on ``threads``; the models take turns run by run."""
    classifiers = [OnnxClassifier(path, threads=threads) for path in paths]
    inputs = [random_input(classifier) for classifier in classifiers]
    for classifier, batch in zip(classifiers, inputs, strict=True):
        for _ in range(warmup):
            classifier.run(batch)
    timings: list[list[float]] = [[] for _ in paths]
    for _ in range(runs):
        for index, classifier in enumerate(classifiers):
            started = time.perf_counter()
            classifier.run(inputs[index])
            timings[index].append((time.perf_counter() - started) * 1000.0)
    return [float(np.median(values)) for values in timings]


@dataclass(frozen=True)
class SpeedCheck:
    """Candidate against baseline at one thread count: median speedup, its noise, and whether it clears both.

    ``speedup`` is the median over rounds of (baseline p50 / candidate p50) within the round; ``noise`` is half
    the interquartile range of those per-round ratios (how much the ratio itself moves on this machine now);
    ``faster`` means the speedup exceeds 1 by more than ``margin`` = max(noise, MIN_MARGIN).
    """

    threads: int
    baseline_ms: float
    candidate_ms: float
    speedup: float
    noise: float
    margin: float
    rounds: int
    faster: bool

    def to_dict(self) -> dict[str, float | int | bool]:
        return asdict(self)


@dataclass(frozen=True)
class SpeedGate:
    """The gate's verdict at every thread count it timed (1 thread and the serving count)."""

    checks: tuple[SpeedCheck, ...]

    @property
    def accepted(self) -> bool:
        return bool(self.checks) and all(check.faster for check in self.checks)

    @property
    def worst(self) -> SpeedCheck:
        """The thread count where the candidate gains least (what a refusal should name)."""
        return min(self.checks, key=lambda check: check.speedup - check.margin)

    def summary(self) -> str:
        return "; ".join(
            f"{c.threads} thread(s): {c.speedup:.2f}x ± {c.noise:.2f} ({c.baseline_ms:.2f} -> {c.candidate_ms:.2f} ms)"
            for c in self.checks
        )

    def to_dict(self) -> dict[str, object]:
        return {"accepted": self.accepted, "checks": [check.to_dict() for check in self.checks]}


def judge(
    threads: int, baseline_rounds: Sequence[float], candidate_rounds: Sequence[float], min_margin: float = MIN_MARGIN
) -> SpeedCheck:
    """The verdict from per-round p50s of baseline and candidate (same rounds, same order)."""
    if len(baseline_rounds) != len(candidate_rounds) or not baseline_rounds:
        raise ValueError("judge needs the same positive number of rounds for baseline and candidate")
    ratios = np.asarray(baseline_rounds) / np.asarray(candidate_rounds)
    speedup = float(np.median(ratios))
    low, high = np.percentile(ratios, [25, 75])
    noise = float(high - low) / 2.0
    margin = max(noise, min_margin)
    return SpeedCheck(
        threads=threads,
        baseline_ms=float(np.median(baseline_rounds)),
        candidate_ms=float(np.median(candidate_rounds)),
        speedup=speedup,
        noise=noise,
        margin=margin,
        rounds=len(ratios),
        faster=speedup - 1.0 > margin,
    )


def timed_rounds(
    baseline: Path, candidate: Path, threads: int, rounds: int, runs_per_round: int, warmup: int = 5
) -> tuple[list[float], list[float]]:
    """Per-round p50 ms of both models in fresh sessions; the order alternates (AB, BA, ...) round by round."""
    pair = [OnnxClassifier(path, threads=threads) for path in (baseline, candidate)]
    inputs = [random_input(classifier) for classifier in pair]
    for classifier, batch in zip(pair, inputs, strict=True):
        for _ in range(warmup):
            classifier.run(batch)
    medians: list[list[float]] = [[], []]
    for round_index in range(rounds):
        order = (0, 1) if round_index % 2 == 0 else (1, 0)
        for index in order:
            times = []
            for _ in range(runs_per_round):
                started = time.perf_counter()
                pair[index].run(inputs[index])
                times.append((time.perf_counter() - started) * 1000.0)
            medians[index].append(float(np.median(times)))
    return medians[0], medians[1]


def speed_gate(
    baseline: Path,
    candidate: Path,
    threads: Sequence[int] = (LATENCY_THREADS,),
    rounds: int = 9,
    runs_per_round: int = 10,
    min_margin: float = MIN_MARGIN,
) -> SpeedGate:
    """Is ``candidate`` faster than ``baseline`` by more than the noise, at every thread count in ``threads``?

    Pass the target's thread counts (1 and the serving count, `Target.threads`). Sessions are created fresh
    here, so a candidate chosen from earlier timings is re-timed independently of them.
    """
    checks = []
    for count in dict.fromkeys(threads):
        baseline_rounds, candidate_rounds = timed_rounds(baseline, candidate, count, rounds, runs_per_round)
        checks.append(judge(count, baseline_rounds, candidate_rounds, min_margin))
    return SpeedGate(tuple(checks))
