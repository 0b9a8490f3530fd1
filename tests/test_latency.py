"""optimize/latency.py: the speed gate's statistics on known numbers, and the gate on real sessions of real models."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from smallnets.optimize.latency import MIN_MARGIN, SpeedGate, judge, speed_gate


def test_a_clear_speedup_with_little_noise_passes() -> None:
    check = judge(1, [10.0, 10.2, 9.9, 10.1, 10.0], [5.0, 5.1, 5.0, 4.9, 5.0])
    assert check.faster and check.speedup == pytest.approx(2.0, rel=0.02)
    assert check.noise < 0.1 and check.margin == max(check.noise, MIN_MARGIN)


def test_a_speedup_inside_the_noise_is_refused() -> None:
    """Median ratio 1.10, but the ratios swing between 0.8 and 1.4: not faster by more than the noise."""
    baseline = [8.0, 14.0, 11.0, 9.0, 13.0, 11.0]
    candidate = [10.0, 10.0, 10.0, 10.0, 10.0, 10.0]
    check = judge(2, baseline, candidate)
    assert check.speedup == pytest.approx(1.1) and check.noise > 0.1 and not check.faster


def test_no_gain_is_refused_even_without_noise() -> None:
    assert not judge(1, [10.0] * 5, [9.95] * 5).faster  # 0.5% < MIN_MARGIN


def test_gate_needs_every_thread_count() -> None:
    fast, slow = judge(1, [10.0] * 3, [5.0] * 3), judge(2, [10.0] * 3, [10.0] * 3)
    assert SpeedGate((fast,)).accepted and not SpeedGate((fast, slow)).accepted
    assert SpeedGate((fast, slow)).worst is slow and not SpeedGate(()).accepted
    assert "2 thread(s): 1.00x" in SpeedGate((fast, slow)).summary()


def test_mismatched_rounds_are_an_error() -> None:
    with pytest.raises(ValueError, match="same positive number of rounds"):
        judge(1, [1.0, 2.0], [1.0])


def test_gate_on_real_sessions_tells_a_small_model_from_a_large_one(exported: Callable[..., Path]) -> None:
    """~14M vs ~570M MACs (40x): the small one must pass as faster, the large one must not, at 1 and 2 threads."""
    small = exported("mobilenet_v1", width=0.25, resolution=128)
    large = exported("mobilenet_v1")
    forward = speed_gate(large, small, threads=(1, 2), rounds=3, runs_per_round=3)
    backward = speed_gate(small, large, threads=(1,), rounds=3, runs_per_round=3)
    assert forward.accepted and [check.threads for check in forward.checks] == [1, 2]
    assert forward.worst.speedup > 3 and not backward.accepted and backward.checks[0].speedup < 1
