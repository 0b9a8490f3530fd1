"""Batching of concurrent requests inside one worker: a small queue in front of one inference thread.

Policy ("run what is waiting"): when the model is idle, the next batch starts at once with every row that is
waiting, up to ``max_batch_size``; rows that arrive while a batch runs wait for the next one. At low load every
request runs alone with no added delay, at high load batches fill up by themselves. There is no latency model to
learn, so one pathological batch (a 50 s run) cannot skew the scheduling of later ones, which is what BentoML's
private ``CorkDispatcher`` (used here before) risked; nothing here imports BentoML.

Rows whose caller gave up (its future was cancelled: client gone, request timed out) or whose deadline passed
before their batch started are dropped without running, so abandoned work costs no inference time.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np


class DeadlineExceeded(TimeoutError):
    """The rows waited past their deadline before a batch could take them (HTTP 504)."""


class BatcherStopped(RuntimeError):
    """The batcher is shutting down and takes no new rows (HTTP 503)."""


@dataclass(frozen=True)
class BatchedRows:
    """The model outputs of one submission's rows, and how their batch looked."""

    outputs: np.ndarray  # (rows, classes)
    queue_ms: float  # from submission to the start of its batch
    inference_ms: float
    batch_size: int


@dataclass
class _Waiting:
    rows: np.ndarray
    deadline: float  # time.monotonic()
    submitted: float
    future: asyncio.Future[BatchedRows]


class Batcher:
    """``await batcher.submit(rows, deadline)`` runs ``run`` on ``rows`` merged with whatever else is waiting.

    ``run`` maps an (N, ...) float32 array to (N, classes) outputs; one call at a time, always on the same
    thread: ONNX Runtime's buffers then come from one malloc arena instead of one per pool thread, which keeps
    the server's resident memory near one batch's worth. ``observe(batch_size, seconds)`` is called per batch.
    """

    def __init__(
        self,
        run: Callable[[np.ndarray], np.ndarray],
        max_batch_size: int,
        observe: Callable[[int, float], None] | None = None,
    ) -> None:
        self.max_batch_size = max_batch_size
        self._run = run
        self._observe = observe
        self._waiting: deque[_Waiting] = deque()
        self._wakeup = asyncio.Event()
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._busy = False

    @property
    def waiting_rows(self) -> int:
        """Rows queued for a batch (not counting the batch that is running)."""
        return sum(len(item.rows) for item in self._waiting)

    async def submit(self, rows: np.ndarray, deadline: float) -> BatchedRows:
        """Queue ``rows`` (at most ``max_batch_size``) and wait for their outputs.

        Raises ``DeadlineExceeded`` if no batch took them before ``deadline`` (``time.monotonic()``), and
        ``BatcherStopped`` after ``shutdown``. Cancelling the caller withdraws the rows if they have not started.
        """
        if len(rows) > self.max_batch_size:
            raise ValueError(f"{len(rows)} rows in one submission; split requests into at most {self.max_batch_size}")
        if self._stopping:
            raise BatcherStopped("server is shutting down")
        loop = asyncio.get_running_loop()
        if self._loop_task is None:
            self._loop_task = loop.create_task(self._dispatch_forever(), name="batcher")
        future: asyncio.Future[BatchedRows] = loop.create_future()
        self._waiting.append(_Waiting(rows, deadline, time.monotonic(), future))
        self._wakeup.set()
        return await future

    async def drain(self) -> None:
        """Stop taking rows, let queued and running batches finish, then release the inference thread."""
        self._stopping = True
        while self._waiting or self._busy:
            await asyncio.sleep(0.01)
        if self._loop_task is not None:
            self._loop_task.cancel()
        self._thread.shutdown(wait=True)

    async def _dispatch_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while batch := self._next_batch():
                self._busy = True
                try:
                    await self._run_batch(loop, batch)
                finally:
                    self._busy = False

    def _next_batch(self) -> list[_Waiting]:
        """Whole submissions, oldest first, up to ``max_batch_size`` rows; abandoned and late ones removed."""
        batch: list[_Waiting] = []
        rows = 0
        now = time.monotonic()
        while self._waiting:
            item = self._waiting[0]
            if item.future.done():  # cancelled by its caller
                self._waiting.popleft()
                continue
            if item.deadline <= now:
                self._waiting.popleft()
                waited_ms = (now - item.submitted) * 1000.0
                item.future.set_exception(DeadlineExceeded(f"waited {waited_ms:.0f} ms for a batch, past the deadline"))
                continue
            if rows + len(item.rows) > self.max_batch_size:
                break
            batch.append(self._waiting.popleft())
            rows += len(item.rows)
        return batch

    async def _run_batch(self, loop: asyncio.AbstractEventLoop, batch: list[_Waiting]) -> None:
        merged = np.concatenate([item.rows for item in batch]) if len(batch) > 1 else batch[0].rows
        started = time.monotonic()
        try:
            outputs = await loop.run_in_executor(self._thread, self._run, merged)
        except Exception as error:  # the model failed: every caller of this batch gets the error
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(error)
            return
        seconds = time.monotonic() - started
        if self._observe is not None:
            self._observe(len(merged), seconds)
        offset = 0
        for item in batch:
            count = len(item.rows)
            if not item.future.done():
                queue_ms = (started - item.submitted) * 1000.0
                item.future.set_result(
                    BatchedRows(outputs[offset : offset + count], queue_ms, seconds * 1000.0, len(merged))
                )
            offset += count
