"""Batch-1 latency of ONNX models, and a speed gate that the noise of a shared machine cannot fool.

Every timing here is interleaved: the models take turns, so a burst of load from other processes hits all of
them alike and the ratio of their times (the speedup) stays meaningful when the absolute numbers are noisy.
"""

from __future__ import annotations

import enum
import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from smallnets.core.runtime import OnnxClassifier
from smallnets.core.targets import ONNXRUNTIME
from smallnets.core.timing import timed_calls, warm_up

LATENCY_THREADS = 1
# Below this the gate does not call a candidate faster even on a quiet machine: a 2% win is not worth int8's
# accuracy risk, and ratios of medians wobble by about that much between fresh sessions of the same model.
MIN_MARGIN = 0.02


def random_input(classifier: OnnxClassifier) -> np.ndarray:
    size = classifier.card.preprocessing.crop
    return np.random.default_rng(0).standard_normal((1, 3, size, size), dtype=np.float32)


def warmed_runs(classifiers: Sequence[OnnxClassifier], warmup: int) -> list[Callable[[], object]]:
    """One batch-1 inference per session (on a fixed random input), each run ``warmup`` times first."""
    runs = [functools.partial(classifier.run, random_input(classifier)) for classifier in classifiers]
    for run in runs:
        warm_up(run, warmup)
    return runs


def measure_latency(
    paths: Sequence[Path],
    runs: int = 60,
    warmup: int = 5,
    threads: int = LATENCY_THREADS,
    runtime: str = ONNXRUNTIME,
) -> list[float]:
    """p50 milliseconds per model at batch 1 on ``threads`` of ``runtime``; the models take turns run by run."""
    sessions = warmed_runs([OnnxClassifier(path, threads=threads, runtime=runtime) for path in paths], warmup)
    timings: list[list[float]] = [[] for _ in paths]
    for _ in range(runs):
        for index, run in enumerate(sessions):
            timings[index] += timed_calls(run, runs=1)
    return [float(np.median(values)) for values in timings]


def median_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float] | None:
    """A distribution-free interval for the median: order statistics whose binomial coverage reaches ``confidence``.

    Round-to-round timing noise on a shared machine is skewed and bursty, so no normal approximation. None when
    there are too few values for any interval to reach ``confidence`` (even min..max covers less): three rounds
    bound the median only 75% of the time, and a gate that trusted them called a file faster than itself in CI.
    """
    ordered = np.sort(np.asarray(values, dtype=float))
    count = len(ordered)
    # P(X_(k) <= median <= X_(n-k+1)) = 1 - 2 * P(Binomial(n, 1/2) <= k - 1); take the largest k that keeps it.
    tail = np.cumsum([math.comb(count, i) for i in range(count + 1)]) / 2.0**count
    inner = 0
    for k in range(1, count // 2 + 1):
        if 1.0 - 2.0 * tail[k - 1] >= confidence:
            inner = k
    if inner == 0:
        return None
    return float(ordered[inner - 1]), float(ordered[count - inner])


class Pace(enum.Enum):
    """What the rounds so far say about the candidate against the baseline."""

    FASTER = "faster"  # the whole interval of the speedup is above 1 + margin
    NOT_FASTER = "not_faster"  # the whole interval is at or below 1 + margin: no worthwhile gain
    UNDECIDED = "undecided"  # the interval straddles 1 + margin: more rounds could tell


@dataclass(frozen=True)
class SpeedCheck:
    """Candidate against baseline at one thread count: the median speedup and its interval.

    ``speedup`` is the median over rounds of (baseline p50 / candidate p50) within the round; ``low``/``high`` bound
    that median with ``confidence`` (distribution-free, see `median_interval`); ``faster`` means ``low`` exceeds
    1 + ``margin``.
    """

    threads: int
    baseline_ms: float
    candidate_ms: float
    speedup: float
    low: float
    high: float
    margin: float
    confidence: float
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
            f"{c.threads} thread(s): {c.speedup:.2f}x ({c.confidence:.0%} {c.low:.2f}-{c.high:.2f}, {c.rounds} rounds, "
            f"{c.pace.value}; {c.baseline_ms:.2f} -> {c.candidate_ms:.2f} ms)"
            for c in self.checks
        )

    def to_dict(self) -> dict[str, object]:
        return {"accepted": self.accepted, "checks": [check.to_dict() for check in self.checks]}


def judge(
    threads: int,
    baseline_rounds: Sequence[float],
    candidate_rounds: Sequence[float],
    min_margin: float = MIN_MARGIN,
    confidence: float = 0.95,
) -> SpeedCheck:
    """The verdict from per-round p50s of baseline and candidate (same rounds, same order).

    Too few rounds for a ``confidence`` interval is undecided, whatever the ratios say; ``low``/``high`` are then
    the whole range, for the record.
    """
    if len(baseline_rounds) != len(candidate_rounds) or not baseline_rounds:
        raise ValueError("judge needs the same positive number of rounds for baseline and candidate")
    ratios = np.asarray(baseline_rounds) / np.asarray(candidate_rounds)
    interval = median_interval(ratios, confidence)
    low, high = interval or (float(ratios.min()), float(ratios.max()))
    bar = 1.0 + min_margin
    if interval is None:
        pace = Pace.UNDECIDED
    else:
        pace = Pace.FASTER if low > bar else Pace.NOT_FASTER if high <= bar else Pace.UNDECIDED
    return SpeedCheck(
        threads=threads,
        baseline_ms=float(np.median(baseline_rounds)),
        candidate_ms=float(np.median(candidate_rounds)),
        speedup=float(np.median(ratios)),
        low=low,
        high=high,
        margin=min_margin,
        confidence=confidence,
        rounds=len(ratios),
        pace=pace,
    )


def timed_round(
    baseline: Path,
    candidate: Path,
    threads: int,
    runs: int,
    baseline_first: bool,
    warmup: int = 3,
    runtime: str = ONNXRUNTIME,
) -> tuple[float, float]:
    """p50 ms of both models over ``runs`` runs each, in sessions made for this round alone.

    Fresh sessions every round make the rounds independent, as the median interval assumes: two sessions of the
    same file can differ by several percent for as long as they live (where their buffers landed in memory).
    They are the server's sessions (`OnnxClassifier.for_serving`): what is timed is what will be served, and no
    spinning pool thread of one model steals the cores while the other is timed.
    """
    pair = warmed_runs(
        [OnnxClassifier.for_serving(path, threads=threads, runtime=runtime) for path in (baseline, candidate)], warmup
    )
    medians = [0.0, 0.0]
    for index in (0, 1) if baseline_first else (1, 0):
        medians[index] = float(np.median(timed_calls(pair[index], runs=runs)))
    return medians[0], medians[1]


def speed_gate(
    baseline: Path,
    candidate: Path,
    threads: Sequence[int] = (LATENCY_THREADS,),
    rounds: int = 9,
    max_rounds: int = 45,
    runs_per_round: int = 10,
    min_margin: float = MIN_MARGIN,
    confidence: float = 0.95,
    runtime: str = ONNXRUNTIME,
) -> SpeedGate:
    """Is ``candidate`` faster than ``baseline`` by more than the noise, at every thread count in ``threads``?

    Pass the target's thread counts (1 and the serving count, `Target.threads`). Rounds come in blocks of
    ``rounds``; while the interval of the speedup straddles the bar another block is timed, up to ``max_rounds``,
    so a burst of load from other processes widens the interval and buys more rounds instead of flipping the
    verdict. Each look at the data spends a share of ``1 - confidence`` (Bonferroni), so looking again and again
    does not make a lucky "faster" likelier. The order of the two models alternates round by round.
    """
    looks = math.ceil(max_rounds / rounds)
    per_look = 1.0 - (1.0 - confidence) / looks
    checks = []
    for count in dict.fromkeys(threads):
        baseline_rounds: list[float] = []
        candidate_rounds: list[float] = []
        while True:
            for _ in range(rounds):
                first = len(baseline_rounds) % 2 == 0
                baseline_ms, candidate_ms = timed_round(
                    baseline, candidate, count, runs_per_round, first, runtime=runtime
                )
                baseline_rounds.append(baseline_ms)
                candidate_rounds.append(candidate_ms)
            check = judge(count, baseline_rounds, candidate_rounds, min_margin, per_look)
            if check.pace is not Pace.UNDECIDED or len(baseline_rounds) + rounds > max_rounds:
                break
        checks.append(check)
    return SpeedGate(tuple(checks))
