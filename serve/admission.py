"""Admission by predicted wait: a worker takes a request while the wait it can predict for it stays within the
latency target, and refuses the rest at once (503 + Retry-After) before their bodies are read.

Counting requests (the policy before this one) refused work the worker could do in time: 64 clients at ~160
images/s wait ~0.4 s against a 10 s deadline, yet everything past two batches was refused and came straight back.
Here the worker learns how many seconds of its time one unit of work costs (an image of up to a megapixel; a
larger one counts one unit per started megapixel, since decoding grows with pixels), from the answers it gives
while busy: over a busy stretch, elapsed time / units answered is the cost under the current load, decode,
batching and other processes on the machine included. The wait predicted for a newcomer is then (units held +
its own) x that cost (Little's law), and it is admitted while that stays within the target. Large pictures are
decoded on restricted threads (serve/engine.py) while photos keep flowing through the others: they form a lane of
their own (see ``Admission``).

Hard bounds stay beside the prediction, for memory: bytes of bodies held (declared by Content-Length before the
body is read) and decoded pixels waiting for a decode thread. The estimate starts from a prior measured at start
(one warm inference) and only learns from successful answers, so fast refusals and errors do not skew it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

# One unit of work: an image decoding to at most this many pixels (a photo at its reduced JPEG scale).
UNIT_PIXELS = 1_000_000
# The rate is re-estimated after at least this much busy time, then smoothed over windows.
WINDOW_S = 0.2
SMOOTHING = 0.5
# Retry-After bounds: at least a second (HTTP's unit), at most what a client should be told to wait.
MIN_RETRY_AFTER_S = 1
MAX_RETRY_AFTER_S = 30


def work_units(pixels: int) -> int:
    """Units of work of one image decoding to ``pixels``: 1 up to a megapixel, one more per started megapixel."""
    return max(1, math.ceil(pixels / UNIT_PIXELS))


@dataclass(frozen=True)
class Refusal:
    """Why a request was not admitted and when to come back; ``message`` names the setting that bounds it."""

    message: str
    retry_after_s: int


class Overloaded(Exception):
    """Raised for a request refused by admission (HTTP 503, gRPC UNAVAILABLE)."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.message)
        self.refusal = refusal


@dataclass
class Ticket:
    """One admitted request's share of the worker: its units of work (``large`` of them from large pictures), body
    bytes and pixels not yet decoded."""

    units: int
    bytes: int
    large: int = 0
    pixels: int = 0


class ServiceRate:
    """Seconds of worker time per unit of work, learnt from answers given while the worker stayed busy."""

    def __init__(self, prior_s: float) -> None:
        self.seconds_per_unit = prior_s
        self._window_s = 0.0
        self._window_units = 0
        self._last: float | None = None  # when the previous answer left, if the worker stayed busy since

    def answered(self, units: int, now: float, still_busy: bool) -> None:
        """An answer of ``units`` left at ``now``; ``still_busy``: other work is still held after it."""
        if self._last is not None:
            self._window_s += now - self._last
            self._window_units += units
            if self._window_s >= WINDOW_S:
                sample = self._window_s / self._window_units
                self.seconds_per_unit += SMOOTHING * (sample - self.seconds_per_unit)
                self._window_s, self._window_units = 0.0, 0
        self._last = now if still_busy else None

    def idle(self) -> None:
        """The worker ran dry: the time until the next answer is not all work."""
        self._last = None
        self._window_s, self._window_units = 0.0, 0


class BatchTimes:
    """Inference seconds per batch, smoothed per batch size: how the model's own rate grows with batching (shown in
    /metadata beside the whole-request rate that admission uses, which also covers decoding and waiting)."""

    def __init__(self) -> None:
        self.seconds: dict[int, float] = {}

    def observe(self, batch_size: int, seconds: float) -> None:
        known = self.seconds.get(batch_size)
        self.seconds[batch_size] = seconds if known is None else known + SMOOTHING * (seconds - known)

    def describe(self) -> dict[str, float]:
        """Milliseconds per image at each batch size seen."""
        return {str(size): round(1000.0 * s / size, 3) for size, s in sorted(self.seconds.items())}


class Admission:
    """Admit while the predicted wait of a newcomer stays within ``target_s``, within the byte and pixel bounds.

    Two lanes, as the engine decodes: pictures over ``large_pixels`` take restricted decode threads (one at a time
    per thread, first come first served) while photos flow through the others. A newcomer, taken for a photo before
    its body is read, waits for the photos' units ahead of it; once its images are known, a request with large
    pictures also waits for the large units ahead (refused then, before any pixel is decoded, if that is too long).
    """

    def __init__(self, target_s: float, max_bytes: int, max_pixels: int, prior_s: float, large_pixels: int) -> None:
        self.target_s = target_s
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels
        self.large_pixels = large_pixels
        self.rate = ServiceRate(prior_s)
        self.batches = BatchTimes()
        self.held = 0
        self.units = 0
        self.large = 0
        self.bytes = 0
        self.pixels = 0

    def predicted_wait_s(self, units: int = 1) -> float:
        """Seconds until a newcomer of ``units`` photos would be answered, at the learnt rate."""
        return (self.units - self.large + units) * self.rate.seconds_per_unit

    def predicted_large_wait_s(self, units: int) -> float:
        """Seconds until a newcomer with ``units`` of large pictures would have them decoded."""
        return (self.large + units) * self.rate.seconds_per_unit

    def admit(self, declared_bytes: int) -> Ticket:
        """A ticket for a request whose body is ``declared_bytes`` long (its cap when unknown), or ``Overloaded``."""
        wait_s = self.predicted_wait_s()
        if self.held:
            self._check(wait_s, "")
            if self.bytes + declared_bytes > self.max_bytes:
                message = f"server busy: {self.bytes} bytes of requests held, bound SMALLNETS_MAX_QUEUED_MB"
                raise Overloaded(Refusal(message, self._retry_after(wait_s)))
        ticket = Ticket(units=1, bytes=declared_bytes)
        self.held += 1
        self.units += 1
        self.bytes += declared_bytes
        return ticket

    def weigh(self, ticket: Ticket, pixels_per_image: list[int]) -> None:
        """The request's images are known (their headers read): its units and pixels replace the guess of one
        photo; ``Overloaded`` if its lanes' predicted waits, or the pixels waiting, are now too much."""
        units = sum(work_units(pixels) for pixels in pixels_per_image)
        large = sum(work_units(pixels) for pixels in pixels_per_image if pixels > self.large_pixels)
        pixels = sum(pixels_per_image)
        if self.held > 1:  # others are held: this request may be the one too many
            if self.pixels + pixels > self.max_pixels:
                message = f"server busy: {self.pixels} pixels waiting to be decoded, bound SMALLNETS_MAX_QUEUED_PIXELS"
                raise Overloaded(Refusal(message, self._retry_after(self.predicted_large_wait_s(large))))
            if large:
                self._check(self.predicted_large_wait_s(large), "large pictures: ")
            if units - large > 1:
                self._check(self.predicted_wait_s(units - large) - self.rate.seconds_per_unit, "")
        self.units += units - ticket.units
        self.large += large - ticket.large
        self.pixels += pixels - ticket.pixels
        ticket.units, ticket.large, ticket.pixels = units, large, pixels

    def _check(self, wait_s: float, lane: str) -> None:
        if wait_s > self.target_s:
            message = (
                f"server busy: {lane}predicted wait {wait_s:.1f} s is over the latency target of {self.target_s:g} s "
                "(SMALLNETS_LATENCY_TARGET_S)"
            )
            raise Overloaded(Refusal(message, self._retry_after(wait_s - self.target_s)))

    def decoded(self, ticket: Ticket, pixels: int) -> None:
        """``pixels`` of the request have been decoded (freed): they no longer wait."""
        pixels = min(pixels, ticket.pixels)
        ticket.pixels -= pixels
        self.pixels -= pixels

    def release(self, ticket: Ticket, answered: bool) -> None:
        """The request left; ``answered``: with a computed answer (the only ones that teach the rate)."""
        self.held -= 1
        self.units -= ticket.units
        self.large -= ticket.large
        self.bytes -= ticket.bytes
        self.pixels -= ticket.pixels
        if answered:
            self.rate.answered(ticket.units, time.monotonic(), still_busy=self.held > 0)
        elif not self.held:
            self.rate.idle()

    def _retry_after(self, seconds: float) -> int:
        return int(min(MAX_RETRY_AFTER_S, max(MIN_RETRY_AFTER_S, math.ceil(seconds))))

    def describe(self) -> dict[str, Any]:
        """The admission state for /metadata."""
        return {
            "latency_target_s": self.target_s,
            "seconds_per_unit": round(self.rate.seconds_per_unit, 6),
            "predicted_wait_s": round(self.predicted_wait_s(), 4),
            "predicted_large_wait_s": round(self.predicted_large_wait_s(1), 4),
            "held_requests": self.held,
            "inference_ms_per_image_by_batch_size": self.batches.describe(),
        }
