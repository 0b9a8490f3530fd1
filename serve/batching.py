"""Adaptive batching of concurrent requests inside one worker, driven by BentoML's own CORK dispatcher.

BentoML 1.4 batches an API marked ``batchable=True`` only when that API is called over HTTP. Calling it from the
public endpoints of the same service goes through BentoML's in-process proxy, which measured ~15-20 ms per call
here (JSON encoding, aiohttp over an ASGI connector, the middleware stack) against a 3 ms budget, and which fails
requests under concurrency: it recycles its aiohttp session every 100 calls and closes the old one while calls are
still in flight ("Cannot write to closing transport" -> HTTP 500). So the service drives the same engine directly:
``CorkDispatcher`` (the dispatcher behind ``batchable=True``), with the same adaptive window and batch size, and
the preprocessed tensors never leave the process.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from bentoml._internal.marshal.dispatcher import CorkDispatcher

# Every row of a dispatched batch carries its batch's run time and size in two extra columns, because the
# dispatcher may split one request across two batches and re-joins the halves with np.concatenate.
_STATS_COLUMNS = 2


class BatcherOverloaded(RuntimeError):
    """A request waited longer than the latency budget: shed it (HTTP 503) rather than queue forever."""


@dataclass(frozen=True)
class BatchedRows:
    """The model outputs of one request's images, and how the batch they ran in looked."""

    outputs: np.ndarray  # (images, classes)
    inference_ms: float
    batch_size: int


class AdaptiveBatcher:
    """``await batcher(batch)`` runs ``run`` on that batch merged with whatever else is waiting.

    ``run`` maps an (N, ...) float32 array to (N, classes) outputs; one call at a time, always on the same
    thread: ONNX Runtime's buffers then come from one malloc arena instead of one per pool thread, which keeps
    the server's resident memory near one batch's worth.
    ``observe(batch_size, seconds)`` is called once per merged batch (metrics).
    """

    def __init__(
        self,
        run: Callable[[np.ndarray], np.ndarray],
        max_batch_size: int,
        max_latency_ms: int,
        observe: Callable[[int, float], None] | None = None,
    ) -> None:
        self._run = run
        self._observe = observe
        self._dispatcher: CorkDispatcher[np.ndarray, np.ndarray] = CorkDispatcher(
            max_latency_in_ms=max_latency_ms,
            max_batch_size=max_batch_size,
            fallback=self._overloaded,
            get_batch_size=len,
            batch_dim=(0, 0),
        )
        self._submit = self._dispatcher(self._run_merged)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="onnxruntime")
        self.max_latency_ms = max_latency_ms

    async def __call__(self, batch: np.ndarray) -> BatchedRows:
        rows = await self._submit(batch)
        outputs, stats = rows[:, :-_STATS_COLUMNS], rows[:, -_STATS_COLUMNS:]
        return BatchedRows(outputs.astype(np.float32), float(stats[:, 0].max()), int(stats[:, 1].max()))

    def shutdown(self) -> None:
        self._dispatcher.shutdown()
        self._thread.shutdown(wait=False)

    def _overloaded(self) -> np.ndarray:
        raise BatcherOverloaded(f"server overloaded: request waited more than {self.max_latency_ms} ms for a batch")

    async def _run_merged(self, batches: Sequence[np.ndarray]) -> list[np.ndarray]:
        sizes = [len(batch) for batch in batches]
        merged = np.concatenate(batches) if len(batches) > 1 else batches[0]
        started = time.perf_counter()
        outputs = await asyncio.get_running_loop().run_in_executor(self._thread, self._run, merged)
        seconds = time.perf_counter() - started
        if self._observe is not None:
            self._observe(len(merged), seconds)
        stats = np.tile(np.array([seconds * 1000.0, len(merged)], dtype=np.float64), (len(merged), 1))
        rows = np.concatenate([outputs.astype(np.float64), stats], axis=1)
        return np.split(rows, np.cumsum(sizes)[:-1])
