"""The one timed loop: milliseconds per call, the clock around the call only, after an untimed warm-up.

The bench's measurements, its in-process serving floor and optimize's latency checks all time with it, so a
"p50 ms" means the same thing in every report.
"""

from __future__ import annotations

import time
from collections.abc import Callable


def warm_up(call: Callable[[], object], count: int, within_s: float = float("inf")) -> None:
    """Up to ``count`` untimed calls, stopping once ``within_s`` seconds have passed (allocations, caches)."""
    started = time.perf_counter()
    for _ in range(count):
        if time.perf_counter() - started >= within_s:
            return
        call()


def timed_calls(
    call: Callable[[], object], runs: int | None = None, duration_s: float = 0.0, min_runs: int = 1
) -> list[float]:
    """Milliseconds of each call: ``runs`` calls when given, else calls until their summed time reaches
    ``duration_s`` and at least ``min_runs`` were made."""
    timings: list[float] = []
    timed_ns = 0
    budget_ns = int(duration_s * 1e9)
    while True:
        started = time.perf_counter_ns()
        call()
        elapsed = time.perf_counter_ns() - started
        timings.append(elapsed / 1e6)
        timed_ns += elapsed
        if runs is not None:
            if len(timings) >= runs:
                return timings
        elif timed_ns >= budget_ns and len(timings) >= min_runs:
            return timings
