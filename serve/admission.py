"""Admission by predicted wait: a worker takes a request while the wait it can predict for it stays within the
latency target, and refuses the rest at once (503 + Retry-After) before their bodies are read.

Counting requests (the policy before this one) refused work the worker could do in time: 64 clients at ~160
images/s wait ~0.4 s against a 10 s deadline, yet everything past two batches was refused and came straight back.
Here the worker learns how many seconds of its time one unit of work costs (an image of up to a megapixel; a
larger one counts one unit per started megapixel, since decoding grows with pixels), from the answers it gives
while busy: over a busy stretch, elapsed time / units answered is the cost under the current load, decode,
batching and other processes on the machine included. The wait predicted for a newcomer is then (units held +
its own) x that cost (Little's law), and it is admitted while that stays within the target.

Hard bounds stay beside the prediction, for memory: bytes of bodies held (declared by Content-Length before the
body is read) and decoded pixels waiting for a decode thread. The estimate starts from a prior measured at start
(one warm inference) and only learns from successful answers, so fast refusals and errors do not skew it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

# One unit of work: an image decoding to at most this many pixels (a photo at its reduced JPEG scale).
UNIT_PIXELS = 1_000_000
# The rate is re-estimated after at least this much busy time, then smoothed over windows.
WINDOW_S = 0.25
SMOOTHING = 0.3
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
    """One admitted request's share of the worker: its units of work, body bytes and pixels not yet decoded."""

    units: int
    bytes: int
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


class Admission:
    """Admit while the predicted wait of a newcomer stays within ``target_s``, within the byte and pixel bounds."""

    def __init__(self, target_s: float, max_bytes: int, max_pixels: int, prior_s: float) -> None:
        self.target_s = target_s
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels
        self.rate = ServiceRate(prior_s)
        self.held = 0
        self.units = 0
        self.bytes = 0
        self.pixels = 0

    def predicted_wait_s(self, units: int = 1) -> float:
        """Seconds until a newcomer of ``units`` would be answered, at the learnt rate."""
        return (self.units + units) * self.rate.seconds_per_unit

    def admit(self, declared_bytes: int) -> Ticket:
        """A ticket for a request whose body is ``declared_bytes`` long (its cap when unknown), or ``Overloaded``."""
        wait_s = self.predicted_wait_s()
        if self.held and wait_s > self.target_s:
            raise Overloaded(
                Refusal(
                    f"server busy: predicted wait {wait_s:.1f} s is over the latency target of {self.target_s:g} s "
                    "(SMALLNETS_LATENCY_TARGET_S)",
                    self._retry_after(wait_s - self.target_s),
                )
            )
        if self.held and self.bytes + declared_bytes > self.max_bytes:
            raise Overloaded(
                Refusal(
                    f"server busy: {self.bytes} bytes of requests held, bound SMALLNETS_MAX_QUEUED_MB",
                    self._retry_after(wait_s),
                )
            )
        ticket = Ticket(units=1, bytes=declared_bytes)
        self.held += 1
        self.units += 1
        self.bytes += declared_bytes
        return ticket

    def weigh(self, ticket: Ticket, pixels_per_image: list[int]) -> None:
        """The request's images are known (their headers read): its units and pixels replace the guess of one."""
        units = sum(work_units(pixels) for pixels in pixels_per_image)
        pixels = sum(pixels_per_image)
        if self.pixels and self.pixels + pixels > self.max_pixels:
            raise Overloaded(
                Refusal(
                    f"server busy: {self.pixels} decoded pixels already waiting, bound SMALLNETS_MAX_QUEUED_PIXELS",
                    self._retry_after(self.predicted_wait_s(units)),
                )
            )
        self.units += units - ticket.units
        self.pixels += pixels - ticket.pixels
        ticket.units, ticket.pixels = units, pixels

    def decoded(self, ticket: Ticket, pixels: int) -> None:
        """``pixels`` of the request have been decoded (freed): they no longer wait."""
        pixels = min(pixels, ticket.pixels)
        ticket.pixels -= pixels
        self.pixels -= pixels

    def release(self, ticket: Ticket, answered: bool) -> None:
        """The request left; ``answered``: with a computed answer (the only ones that teach the rate)."""
        self.held -= 1
        self.units -= ticket.units
        self.bytes -= ticket.bytes
        self.pixels -= ticket.pixels
        if answered:
            self.rate.answered(ticket.units, time.monotonic(), still_busy=self.held > 0)
        elif not self.held:
            self.rate.idle()

    def _retry_after(self, seconds: float) -> int:
        return int(min(MAX_RETRY_AFTER_S, max(MIN_RETRY_AFTER_S, math.ceil(seconds))))

    def describe(self) -> dict[str, float | int]:
        """The admission state for /metadata."""
        return {
            "latency_target_s": self.target_s,
            "seconds_per_unit": round(self.rate.seconds_per_unit, 6),
            "predicted_wait_s": round(self.predicted_wait_s(), 4),
            "held_requests": self.held,
        }
