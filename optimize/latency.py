"""Batch-1 latency of ONNX models, and a speed gate that the noise of a shared machine cannot fool.

Every timing here is interleaved: the models take turns, so a burst of load from other processes hits all of
them alike and the ratio of their times (the speedup) stays meaningful when the absolute numbers are noisy.
"""

from __future__ import annotations

import enum
import math
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


def median_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """A distribution-free interval for the median: order statistics whose binomial coverage reaches ``confidence``.

    Round-to-round timing noise on a shared machine is skewed and bursty, so no normal approximation; with fewer
    rounds than the coverage needs, the interval is the whole range (min to max), as wide as it honestly can be.
    """
    ordered = np.sort(np.asarray(values, dtype=float))
    count = len(ordered)
    # P(X_(k) <= median <= X_(n-k+1)) = 1 - 2 * P(Binomial(n, 1/2) <= k - 1); take the largest k that keeps it.
    tail = np.cumsum([math.comb(count, i) for i in range(count + 1)]) / 2.0**count
    inner = 1
    for k in range(1, count // 2 + 1):
        if 1.0 - 2.0 * tail[k - 1] >= confidence:
            inner = k
    return float(ordered[inner - 1]), float(ordered[count - inner])


class Pace(enum.Enum):
    """What the rounds so far say about the candidate against the baseline."""

    FASTER = "faster"  # the whole interval of the speedup is above 1 + margin
    NOT_FASTER = "not_faster"  # the whole interval is at or below 1 + margin: no worthwhile gain
    UNDECIDED = "undecided"  # the interval straddles 1 + margin: more rounds could tell


@dataclass(frozen=True)
class SpeedCheck:
    """Candidate against baseline at one thread count: the median speedup and its 95% interval.

    ``speedup`` is the median over rounds of (baseline p50 / candidate p50) within the round; ``low``/``high`` bound
    that median (distribution-free, see `median_interval`); ``faster`` means ``low`` exceeds 1 + ``margin``.
    """

    threads: int
    baseline_ms: float
    candidate_ms: float
    speedup: float
    low: float
    high: float
    margin: float
    rounds: int
    pace: Pace

    @property
    def faster(self) -> bool:
        return self.pace is Pace.FASTER

    def to_dict(self) -> dict[str, float | int | bool | str]:
        return {**asdict(self), "pace": self.pace.value, "faster": self.faster}


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
        return min(self.checks, key=lambda check: check.low)

    def summary(self) -> str:
        return "; ".join(
            f"{c.threads} thread(s): {c.speedup:.2f}x (95% {c.low:.2f}-{c.high:.2f}, {c.rounds} rounds, "
            f"{c.pace.value}; {c.baseline_ms:.2f} -> {c.candidate_ms:.2f} ms)"
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
    low, high = median_interval(ratios)
    bar = 1.0 + min_margin
    pace = Pace.FASTER if low > bar else Pace.NOT_FASTER if high <= bar else Pace.UNDECIDED
    return SpeedCheck(
        threads=threads,
        baseline_ms=float(np.median(baseline_rounds)),
        candidate_ms=float(np.median(candidate_rounds)),
        speedup=float(np.median(ratios)),
        low=low,
        high=high,
        margin=min_margin,
        rounds=len(ratios),
        pace=pace,
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
    max_rounds: int = 45,
    runs_per_round: int = 10,
    min_margin: float = MIN_MARGIN,
) -> SpeedGate:
    """Is ``candidate`` faster than ``baseline`` by more than the noise, at every thread count in ``threads``?

    Pass the target's thread counts (1 and the serving count, `Target.threads`). Rounds come in blocks of
    ``rounds``; while the interval of the speedup straddles the bar another block is timed, up to ``max_rounds``,
    so a burst of load from other processes widens the interval and buys more rounds instead of flipping the
    verdict. Sessions are created fresh here, so a candidate chosen from earlier timings is re-timed independently.
    """
    checks = []
    for count in dict.fromkeys(threads):
        baseline_rounds: list[float] = []
        candidate_rounds: list[float] = []
        while True:
            more_baseline, more_candidate = timed_rounds(baseline, candidate, count, rounds, runs_per_round)
            baseline_rounds += more_baseline
            candidate_rounds += more_candidate
            check = judge(count, baseline_rounds, candidate_rounds, min_margin)
            if check.pace is not Pace.UNDECIDED or len(baseline_rounds) + rounds > max_rounds:
                break
        checks.append(check)
    return SpeedGate(tuple(checks))
