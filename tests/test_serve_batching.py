"""The batcher alone: concurrent callers are merged, each gets its own rows back, abandoned or late rows never run,
and one pathological batch leaves later scheduling as it was."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import numpy as np
import pytest

from smallnets.serve.batching import Batcher, BatcherStopped, DeadlineExceeded

T = TypeVar("T")
FAR = 3600.0  # a deadline that never passes in these tests


def tagged(tag: int, rows: int) -> np.ndarray:
    """A submission whose every row says who sent it: (rows, 2) of [tag, row index]."""
    return np.stack([np.full(rows, tag, dtype=np.float32), np.arange(rows, dtype=np.float32)], axis=1)


class Model:
    """Identity 'model' that records each batch it ran and can be held inside a run."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.batches: list[np.ndarray] = []
        self.release = threading.Event()
        self.release.set()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.batches.append(batch.copy())
        self.release.wait(30)
        time.sleep(self.delay)
        return batch * 1.0

    def tags_run(self) -> set[int]:
        return {int(tag) for batch in self.batches for tag in batch[:, 0]}


def deadline(seconds: float = FAR) -> float:
    return time.monotonic() + seconds


def run_with(model: Model, max_batch_size: int, scenario: Callable[[Batcher], Awaitable[T]]) -> T:
    async def main() -> T:
        batcher = Batcher(model, max_batch_size)
        try:
            return await scenario(batcher)
        finally:
            model.release.set()
            await batcher.drain()

    return asyncio.run(main())


def test_concurrent_submissions_are_merged_and_answered_separately() -> None:
    model = Model(delay=0.02)  # long enough for the other callers to queue up behind the running batch

    async def scenario(batcher: Batcher) -> list:
        return await asyncio.gather(*(batcher.submit(tagged(tag, 1 + tag % 3), deadline()) for tag in range(24)))

    answers = run_with(model, 8, scenario)
    for tag, answer in enumerate(answers):
        np.testing.assert_array_equal(answer.outputs, tagged(tag, 1 + tag % 3))
        assert 1 <= answer.batch_size <= 8
    sizes = [len(batch) for batch in model.batches]
    assert max(sizes) > 1 and max(sizes) <= 8
    assert sum(sizes) == sum(1 + tag % 3 for tag in range(24))


def test_a_lone_submission_runs_at_once_alone() -> None:
    model = Model()
    answer = run_with(model, 8, lambda batcher: batcher.submit(tagged(1, 2), deadline()))
    assert answer.batch_size == 2 and [len(batch) for batch in model.batches] == [2]


def test_a_submission_larger_than_a_batch_is_refused() -> None:
    with pytest.raises(ValueError, match="at most 4"):
        run_with(Model(), 4, lambda batcher: batcher.submit(tagged(1, 5), deadline()))


def test_rows_past_their_deadline_are_answered_504_and_never_run() -> None:
    model = Model()
    model.release.clear()  # the first batch blocks; the others wait behind it

    async def scenario(batcher: Batcher) -> list:
        first = asyncio.ensure_future(batcher.submit(tagged(0, 1), deadline()))
        await asyncio.sleep(0.05)
        late = [asyncio.ensure_future(batcher.submit(tagged(tag, 1), deadline(0.1))) for tag in (1, 2)]
        patient = asyncio.ensure_future(batcher.submit(tagged(3, 1), deadline()))
        await asyncio.sleep(0.3)  # past the short deadlines while the first batch still runs
        model.release.set()
        return await asyncio.gather(first, *late, patient, return_exceptions=True)

    _, late_a, late_b, patient = run_with(model, 1, scenario)
    assert isinstance(late_a, DeadlineExceeded) and isinstance(late_b, DeadlineExceeded)
    assert "deadline" in str(late_a)
    np.testing.assert_array_equal(patient.outputs, tagged(3, 1))
    assert model.tags_run() == {0, 3}


def test_cancelled_callers_rows_are_dropped_without_running() -> None:
    model = Model()
    model.release.clear()

    async def scenario(batcher: Batcher) -> list:
        first = asyncio.ensure_future(batcher.submit(tagged(0, 1), deadline()))
        await asyncio.sleep(0.05)
        gone = [asyncio.ensure_future(batcher.submit(tagged(tag, 1), deadline())) for tag in (1, 2, 3)]
        kept = asyncio.ensure_future(batcher.submit(tagged(4, 1), deadline()))
        await asyncio.sleep(0.05)
        for task in gone:
            task.cancel()  # what a disconnected client or a timed-out request does
        await asyncio.sleep(0.05)
        assert batcher.waiting_rows == 4  # withdrawn rows are skipped when a batch is formed, not before
        model.release.set()
        return await asyncio.gather(first, kept)

    run_with(model, 8, scenario)
    assert model.tags_run() == {0, 4}


def test_a_pathological_batch_does_not_change_later_scheduling() -> None:
    """One very slow batch (a stand-in for a 50 s one) must leave later lone requests running at once, alone."""
    slow_s = 1.0
    model = Model()

    async def scenario(batcher: Batcher) -> tuple[list, list]:
        before = [await batcher.submit(tagged(tag, 1), deadline()) for tag in range(5)]
        model.delay = slow_s
        await batcher.submit(tagged(99, 8), deadline())
        model.delay = 0.0
        after = [await batcher.submit(tagged(tag, 1), deadline()) for tag in range(5)]
        return before, after

    before, after = run_with(model, 8, scenario)
    assert all(answer.batch_size == 1 for answer in before + after)
    worst_queue_after = max(answer.queue_ms for answer in after)
    assert worst_queue_after < slow_s * 1000.0 / 20, worst_queue_after


def test_a_failing_batch_fails_its_callers_and_the_batcher_goes_on() -> None:
    calls = []

    def flaky(batch: np.ndarray) -> np.ndarray:
        calls.append(len(batch))
        if len(calls) == 1:
            raise RuntimeError("onnxruntime exploded")
        return batch * 1.0

    async def main() -> tuple:
        batcher = Batcher(flaky, 4)
        try:
            failed = await asyncio.gather(batcher.submit(tagged(1, 1), deadline()), return_exceptions=True)
            ok = await batcher.submit(tagged(2, 1), deadline())
            return failed[0], ok
        finally:
            await batcher.drain()

    failed, ok = asyncio.run(main())
    assert isinstance(failed, RuntimeError) and "exploded" in str(failed)
    np.testing.assert_array_equal(ok.outputs, tagged(2, 1))


def test_drain_finishes_queued_work_and_refuses_new_rows() -> None:
    model = Model(delay=0.05)

    async def main() -> tuple:
        batcher = Batcher(model, 1)
        queued = [asyncio.ensure_future(batcher.submit(tagged(tag, 1), deadline())) for tag in range(4)]
        await asyncio.sleep(0.01)
        await batcher.drain()
        with pytest.raises(BatcherStopped):
            await batcher.submit(tagged(9, 1), deadline())
        return tuple(task.result() for task in queued)

    answers = asyncio.run(main())
    assert [int(answer.outputs[0, 0]) for answer in answers] == [0, 1, 2, 3]


@pytest.mark.parametrize("rows", [1, 5])
def test_run_time_queue_time_and_batch_size_are_reported(rows: int) -> None:
    answer = run_with(Model(delay=0.01), 8, lambda batcher: batcher.submit(tagged(1, rows), deadline()))
    assert answer.batch_size == rows and answer.inference_ms >= 10.0 and answer.queue_ms >= 0.0
