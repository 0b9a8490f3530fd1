"""Progress of long jobs: a tqdm bar on a terminal, plain lines in a log (CI, pipes, `> file`), where a bar
would print either nothing or escape codes and a 15-minute benchmark would look hung.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator, Sized
from typing import Any, TextIO, TypeVar

Item = TypeVar("Item")


class Progress:
    """``for item in Progress(items, "measure", total)``, naming each step with ``note(label)``.

    On a terminal: a tqdm bar whose description is the label. Elsewhere: one line ``desc i/total: label (N s)``
    when a noted step starts, at most every ``every_s`` seconds, and always for the first and the last step; a
    loop that notes nothing (a short inner step) stays silent in logs.
    """

    def __init__(
        self,
        items: Iterable[Item],
        desc: str,
        total: int | None = None,
        unit: str = "it",
        every_s: float = 30.0,
        stream: TextIO | None = None,
        leave: bool = True,
    ) -> None:
        self.items = items
        self.desc = desc
        self.total = total if total is not None else (len(items) if isinstance(items, Sized) else None)
        self.unit = unit
        self.every_s = every_s
        self.stream = stream or sys.stderr
        self.leave = leave  # keep the finished bar on screen (False for short inner steps)
        self.started = time.monotonic()
        self.last_line = float("-inf")
        self.index = 0
        self._bar: Any = None

    def __iter__(self) -> Iterator[Item]:
        if self.stream.isatty():
            from tqdm import tqdm

            bar_options = {"desc": self.desc, "total": self.total, "unit": self.unit, "leave": self.leave}
            with tqdm(self.items, file=self.stream, **bar_options) as bar:
                self._bar = bar
                yield from bar
            return
        for index, item in enumerate(self.items, start=1):
            self.index = index
            yield item

    def note(self, label: str) -> None:
        """Name the step that is starting (the bar's description, or a log line when one is due)."""
        if self._bar is not None:
            self._bar.set_description(f"{self.desc} {label}")
            return
        now = time.monotonic()
        if self.index in (1, self.total) or now - self.last_line >= self.every_s:
            self.last_line = now
            of = f"/{self.total}" if self.total else ""
            print(f"{self.desc} {self.index}{of}: {label} ({now - self.started:.0f} s)", file=self.stream, flush=True)
