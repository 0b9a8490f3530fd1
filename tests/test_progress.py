"""core/progress.py: long jobs say how far they are, as a bar on a terminal and as plain lines in a log."""

from __future__ import annotations

import io

from smallnets.core.progress import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_plain_lines_for_the_first_and_last_step_and_when_due() -> None:
    log = io.StringIO()
    progress = Progress(["a", "b", "c", "d"], "measure", every_s=3600.0, stream=log)
    seen = []
    for item in progress:
        progress.note(f"model {item}")
        seen.append(item)
    lines = log.getvalue().splitlines()
    assert seen == ["a", "b", "c", "d"]
    assert [line.split(" (")[0] for line in lines] == ["measure 1/4: model a", "measure 4/4: model d"]
    assert "\r" not in log.getvalue() and "\x1b" not in log.getvalue()


def test_every_step_is_logged_when_asked_and_unsized_items_have_no_total() -> None:
    log = io.StringIO()
    progress = Progress(iter(["x", "y"]), "artifacts", every_s=0.0, stream=log)
    for item in progress:
        progress.note(item)
    assert [line.split(" (")[0] for line in log.getvalue().splitlines()] == ["artifacts 1: x", "artifacts 2: y"]


def test_a_terminal_gets_a_bar_named_by_the_step() -> None:
    screen = Terminal()
    progress = Progress(["a", "b"], "measure", stream=screen)
    for item in progress:
        progress.note(f"model {item}")
    shown = screen.getvalue()
    assert "measure model b" in shown and "2/2" in shown and "\r" in shown


def test_a_loop_that_notes_nothing_is_silent_in_a_log_and_its_bar_can_go_away() -> None:
    log, screen = io.StringIO(), Terminal()
    assert list(Progress(range(3), "decode", stream=log)) == [0, 1, 2] and log.getvalue() == ""
    assert list(Progress(range(3), "decode", stream=screen, leave=False)) == [0, 1, 2]
    shown = screen.getvalue()
    assert "decode" in shown and shown.endswith(" \r") and "\n" not in shown  # drawn, then blanked out
    kept = Terminal()
    list(Progress(range(3), "decode", stream=kept))
    assert "3/3" in kept.getvalue() and kept.getvalue().endswith("\n")  # the finished bar stays on screen
