"""Run one measurement in a fresh interpreter and turn its raw timings into the figures the report shows."""

from __future__ import annotations

import errno
import json
import os
import shlex
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from smallnets.benchmarks.measure import MeasureSpec

# A hung session (or a swapping machine) must not stall the suite forever.
BASE_TIMEOUT_S = 300.0


class MeasurementError(RuntimeError):
    """The measuring process failed; the message carries the tail of its stderr."""


@dataclass(frozen=True)
class Measurement:
    """The raw result of one (or several pooled) measuring processes of the same configuration."""

    spec: MeasureSpec
    provider: str
    model_size_bytes: int
    load_ms: float
    first_run_ms: float
    timings_ms: tuple[float, ...]
    peak_rss_mb: float

    @property
    def iterations(self) -> int:
        return len(self.timings_ms)

    @property
    def timed_s(self) -> float:
        """Total time spent inside the timed inference calls."""
        return sum(self.timings_ms) / 1000.0

    @property
    def throughput_ips(self) -> float:
        """Images per second: batch x iterations / time inside inference (MLPerf Offline style)."""
        return self.spec.batch * self.iterations / self.timed_s

    def summary(self) -> dict[str, float]:
        """Latency percentiles (outliers kept: no trimming) and throughput."""
        timings = np.asarray(self.timings_ms)
        p50, p90, p99 = np.percentile(timings, [50, 90, 99])
        return {
            "p50_ms": float(p50),
            "p90_ms": float(p90),
            "p99_ms": float(p99),
            "mean_ms": float(timings.mean()),
            "throughput_ips": self.throughput_ips,
        }


def measurement_env(threads: int) -> dict[str, str]:
    """The child's environment: thread pools of libraries that do read these variables match ``threads``."""
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[name] = str(threads)
    return env


def interpreter() -> list[str]:
    """The command that starts a measuring Python: this one, unless ``SMALLNETS_MEASURE_PYTHON`` says otherwise.

    Under qemu user-mode emulation without binfmt the guest cannot exec its own aarch64 binary; the arm64
    harness then sets it to ``qemu-aarch64 -L ROOT ROOT/usr/bin/python3.11`` (a host program the guest can exec).
    """
    override = os.environ.get("SMALLNETS_MEASURE_PYTHON", "").strip()
    return shlex.split(override) if override else [sys.executable]


def run_process(spec: MeasureSpec, timeout_s: float | None = None) -> dict[str, Any]:
    """``python -m smallnets.benchmarks.measure --spec JSON`` in a fresh interpreter; prints one result line."""
    timeout_s = timeout_s or BASE_TIMEOUT_S + 20 * spec.duration_s
    command = [*interpreter(), "-m", "smallnets.benchmarks.measure", "--spec", spec.to_json()]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout_s, env=measurement_env(spec.threads)
        )
    except subprocess.TimeoutExpired as error:
        raise MeasurementError(f"measurement timed out after {timeout_s:.0f} s: {spec.to_json()}") from error
    except OSError as error:
        if error.errno != errno.ENOEXEC:
            raise
        raise MeasurementError(
            f"cannot start the measuring interpreter {command[0]} ({error.strerror}); under qemu user-mode emulation "
            "without binfmt, set SMALLNETS_MEASURE_PYTHON='qemu-aarch64 -L ROOT ROOT/usr/bin/python3.11'"
        ) from error
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        raise MeasurementError(f"measurement failed (exit {done.returncode}) for {spec.to_json()}:\n{tail}")
    lines = done.stdout.strip().splitlines()
    if not lines:
        raise MeasurementError(f"measurement printed no result for {spec.to_json()}")
    return json.loads(lines[-1])


def run_measurement(spec: MeasureSpec, timeout_s: float | None = None) -> Measurement:
    raw = run_process(spec, timeout_s)
    return Measurement(
        spec=spec,
        provider=raw["provider"],
        model_size_bytes=raw["model_size_bytes"],
        load_ms=raw["load_ms"],
        first_run_ms=raw["first_run_ms"],
        timings_ms=tuple(raw["timings_ms"]),
        peak_rss_mb=raw["peak_rss_mb"],
    )


def bare_interpreter_rss_mb(timeout_s: float = 120.0) -> float:
    """Peak RSS of the measuring process with nothing loaded: the baseline memory increases are relative to."""
    return float(run_process(MeasureSpec(kind="bare"), timeout_s)["peak_rss_mb"])


def pool(measurements: Sequence[Measurement]) -> Measurement:
    """Combine interleaved repeats of one configuration: all timings kept, medians of one-off costs, peak of peaks."""
    if not measurements:
        raise ValueError("nothing to pool")
    first = measurements[0]
    return Measurement(
        spec=first.spec,
        provider=first.provider,
        model_size_bytes=first.model_size_bytes,
        load_ms=float(np.median([m.load_ms for m in measurements])),
        first_run_ms=float(np.median([m.first_run_ms for m in measurements])),
        timings_ms=tuple(t for m in measurements for t in m.timings_ms),
        peak_rss_mb=max(m.peak_rss_mb for m in measurements),
    )
