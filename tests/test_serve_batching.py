"""The adaptive batcher alone: concurrent callers are merged, each gets its own rows back, big requests split."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import numpy as np
import pytest

from smallnets.serve.batching import AdaptiveBatcher, BatcherOverloaded


def tagged(tag: int, rows: int) -> np.ndarray:
    """A request whose every row says who sent it: (rows, 2) of [tag, row index]."""
    return np.stack([np.full(rows, tag, dtype=np.float32), np.arange(rows, dtype=np.float32)], axis=1)


def slow_identity(delay: float, seen: list[int]) -> Callable[[np.ndarray], np.ndarray]:
    def run(batch: np.ndarray) -> np.ndarray:
        seen.append(len(batch))
        time.sleep(delay)  # long enough for the other callers to queue up behind the running batch
        return batch * 1.0

    return run


def test_concurrent_requests_are_merged_and_answered_separately() -> None:
    seen: list[int] = []

    async def scenario() -> list:
        batcher = AdaptiveBatcher(slow_identity(0.02, seen), max_batch_size=8, max_latency_ms=10_000)
        try:
            return await asyncio.gather(*(batcher(tagged(tag, 1 + tag % 3)) for tag in range(24)))
        finally:
            batcher.shutdown()

    answers = asyncio.run(scenario())
    for tag, answer in enumerate(answers):
        np.testing.assert_array_equal(answer.outputs, tagged(tag, 1 + tag % 3))
        assert 1 <= answer.batch_size <= 8
    assert max(seen) > 1 and max(seen) <= 8
    assert sum(seen) == sum(1 + tag % 3 for tag in range(24))


def test_a_request_larger_than_a_batch_is_split_and_joined_in_order() -> None:
    seen: list[int] = []

    async def scenario():
        batcher = AdaptiveBatcher(slow_identity(0.0, seen), max_batch_size=4, max_latency_ms=10_000)
        try:
            return await batcher(tagged(7, 10))
        finally:
            batcher.shutdown()

    answer = asyncio.run(scenario())
    np.testing.assert_array_equal(answer.outputs, tagged(7, 10))
    assert max(seen) <= 4 and sum(seen) == 10


def test_requests_waiting_past_the_latency_budget_are_shed() -> None:
    release = threading.Event()

    def stuck(batch: np.ndarray) -> np.ndarray:
        release.wait(5)
        return batch

    async def scenario() -> list:
        batcher = AdaptiveBatcher(stuck, max_batch_size=1, max_latency_ms=50)
        asyncio.get_running_loop().call_later(0.5, release.set)  # unblock the first batch well after 50 ms
        try:
            return await asyncio.gather(*(batcher(tagged(tag, 1)) for tag in range(4)), return_exceptions=True)
        finally:
            release.set()
            batcher.shutdown()

    results = asyncio.run(scenario())
    shed = [result for result in results if isinstance(result, BatcherOverloaded)]
    assert shed and "overloaded" in str(shed[0])


@pytest.mark.parametrize("rows", [1, 5])
def test_run_time_and_batch_size_are_reported(rows: int) -> None:
    async def scenario():
        batcher = AdaptiveBatcher(slow_identity(0.01, []), max_batch_size=8, max_latency_ms=10_000)
        try:
            return await batcher(tagged(1, rows))
        finally:
            batcher.shutdown()

    answer = asyncio.run(scenario())
    assert answer.batch_size == rows and answer.inference_ms >= 10.0
