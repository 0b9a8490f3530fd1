"""Admission by predicted wait (serve/admission.py), without a server: what it learns, whom it takes, what it says."""

from __future__ import annotations

import pytest

from smallnets.serve.admission import (
    MAX_RETRY_AFTER_S,
    Admission,
    BatchTimes,
    Overloaded,
    ServiceRate,
    work_units,
)

MB = 1024 * 1024
LARGE = 8_000_000  # pixels past which a picture decodes on the restricted threads


def test_the_rate_is_learnt_from_busy_stretches_only() -> None:
    rate = ServiceRate(prior_s=0.1)
    rate.answered(1, now=0.0, still_busy=True)  # the first answer of a busy stretch starts the clock
    for step in range(1, 201):  # then one answer every 10 ms for 2 s while the worker stays busy
        rate.answered(1, now=step * 0.01, still_busy=True)
    assert rate.seconds_per_unit == pytest.approx(0.01, rel=0.2)
    learnt = rate.seconds_per_unit
    rate.answered(1, now=2.02, still_busy=False)  # ran dry: the idle gap before the next answer is not work
    rate.answered(1, now=60.0, still_busy=True)
    assert rate.seconds_per_unit == pytest.approx(learnt, rel=0.5)


def test_a_newcomer_is_taken_while_its_predicted_wait_is_within_the_target() -> None:
    admission = Admission(target_s=1.0, max_bytes=100 * MB, max_pixels=10**9, prior_s=0.01, large_pixels=LARGE)
    tickets = [admission.admit(1000) for _ in range(100)]  # (99 + 1) x 10 ms = 1 s: the last one just fits
    with pytest.raises(Overloaded) as refused:
        admission.admit(1000)
    assert "SMALLNETS_LATENCY_TARGET_S" in refused.value.refusal.message
    assert 1 <= refused.value.refusal.retry_after_s <= MAX_RETRY_AFTER_S
    admission.release(tickets.pop(), answered=False)
    admission.admit(1000)  # one left: room again
    assert admission.held == 100 and admission.units == 100 and admission.bytes == 100_000


def test_large_pictures_queue_in_their_own_lane_and_memory_stays_bounded() -> None:
    admission = Admission(target_s=0.2, max_bytes=10 * MB, max_pixels=50_000_000, prior_s=0.01, large_pixels=LARGE)
    heavy = admission.admit(2 * MB)
    admission.weigh(heavy, [9_000_000, 9_000_000])  # two 9 MP pictures: 18 units, on the large pictures' threads
    assert (heavy.units, heavy.large, admission.units) == (18, 18, 18) and work_units(500_000) == 1
    # Photos flow past large pictures: a newcomer photo waits for no one; another large picture for 18 + 9 units.
    assert admission.predicted_wait_s() == pytest.approx(0.01)
    assert admission.predicted_large_wait_s(9) == pytest.approx(0.27)
    photo = admission.admit(MB)
    admission.weigh(photo, [300_000])
    large = admission.admit(MB)
    with pytest.raises(Overloaded, match=r"large pictures: predicted wait 0\.3 s"):
        admission.weigh(large, [9_000_000])  # refused once its size is known, before any pixel is decoded
    admission.release(large, answered=False)
    with pytest.raises(Overloaded, match="SMALLNETS_MAX_QUEUED_MB"):
        admission.admit(8 * MB)  # the bodies held would pass 10 MB
    other = admission.admit(MB)
    with pytest.raises(Overloaded, match="SMALLNETS_MAX_QUEUED_PIXELS"):
        admission.weigh(other, [4_000_000] * 10)  # 18.3 + 40 MP waiting to be decoded > 50 MP
    admission.decoded(heavy, 9_000_000)
    assert admission.pixels == 9_300_000
    for ticket in (heavy, photo, other):
        admission.release(ticket, answered=True)
    assert (admission.held, admission.units, admission.large, admission.bytes, admission.pixels) == (0, 0, 0, 0, 0)


def test_the_first_request_is_always_taken_whatever_the_estimate() -> None:
    admission = Admission(target_s=0.001, max_bytes=1, max_pixels=1, prior_s=10.0, large_pixels=LARGE)
    ticket = admission.admit(5 * MB)  # nobody held: refusing would only leave the worker idle
    admission.weigh(ticket, [1_000_000])
    with pytest.raises(Overloaded):
        admission.admit(1)


def test_batch_times_are_shown_per_image_and_batch_size() -> None:
    times = BatchTimes()
    times.observe(1, 0.005)
    times.observe(16, 0.032)
    times.observe(1, 0.007)  # smoothed: half way
    assert times.describe() == {"1": 6.0, "16": 2.0}
