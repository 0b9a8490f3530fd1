"""Per-request time keeping: the deadline, and where the time went (queue, decode, preprocess, inference).

The phases feed /metrics and the ``Server-Timing`` response header (shown by browsers' network panels).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from smallnets.serve.batching import BatchedRows


@dataclass
class RequestClock:
    """Started when a request reaches the service; ``deadline`` is on ``time.monotonic()`` (= the event loop's clock).

    Queue is the time spent waiting, for a decode thread and for a batch. For a request of several images, decode,
    preprocess and the waits for decode threads add up over its images; the batch part of queue and inference are
    those of its slowest-to-start batch and its longest batch.
    """

    started: float
    deadline: float
    phases: dict[str, float] = field(default_factory=dict)  # seconds
    batch_size: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def start(cls, timeout_s: float) -> RequestClock:
        now = time.monotonic()
        return cls(started=now, deadline=now + timeout_s)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def expired(self) -> bool:
        return time.monotonic() >= self.deadline

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Add the time spent in the block to phase ``name`` (thread-safe: decode threads use it)."""
        begun = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - begun)

    def add(self, name: str, seconds: float) -> None:
        with self._lock:
            self.phases[name] = self.phases.get(name, 0.0) + seconds

    def merge(self, answers: Sequence[BatchedRows]) -> np.ndarray:
        """The outputs of a request's batches in order; records their queue and inference time and batch size."""
        self.add("queue", max(answer.queue_ms for answer in answers) / 1000.0)
        self.phases["inference"] = max(answer.inference_ms for answer in answers) / 1000.0
        self.batch_size = max(answer.batch_size for answer in answers)
        return np.concatenate([answer.outputs for answer in answers]) if len(answers) > 1 else answers[0].outputs

    def inference_ms(self) -> float:
        """The inference time of the request's longest batch, ms (what the answers report)."""
        return round(self.phases.get("inference", 0.0) * 1000.0, 3)

    def server_timing(self) -> str:
        """``Server-Timing`` header value: each phase and the total, in milliseconds."""
        parts = [f"{name};dur={seconds * 1000.0:.2f}" for name, seconds in self.phases.items()]
        return ", ".join([*parts, f"total;dur={self.elapsed() * 1000.0:.2f}"])
