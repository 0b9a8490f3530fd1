"""One error style: an expected failure is one line naming the problem and the fix, with its own exit code."""

from __future__ import annotations

import errno
import subprocess
import sys

import pytest

from smallnets import cli
from smallnets.core.files import OutputExistsError
from smallnets.export.registry import UnknownModelError


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (ValueError("bad value"), cli.EXIT_USAGE),
        (FileNotFoundError("no such file"), cli.EXIT_NOT_FOUND),
        (UnknownModelError("unknown model 'x'"), cli.EXIT_NOT_FOUND),
        (OutputExistsError("refusing"), cli.EXIT_OUTPUT_REFUSED),
        (OSError(errno.EADDRINUSE, "port 3000 is in use"), cli.EXIT_PORT_IN_USE),
        (PermissionError(errno.EACCES, "Permission denied", "/root/x"), cli.EXIT_SYSTEM),
        (RuntimeError("weights unavailable"), cli.EXIT_FAILED),
        (KeyError("a bug"), cli.EXIT_INTERNAL),
        (TypeError("a bug"), cli.EXIT_INTERNAL),
    ],
)
def test_each_kind_of_failure_has_its_exit_code(error: BaseException, code: int) -> None:
    assert cli.exit_code(error) == code


def test_messages_are_one_line_without_errno_or_quotes() -> None:
    assert cli.one_line(ValueError("first\n  second")) == "first second"
    assert cli.one_line(UnknownModelError("unknown model 'x'")) == "unknown model 'x'"
    assert cli.one_line(OSError(errno.EADDRINUSE, "port 3000 is in use")) == "port 3000 is in use"
    assert cli.one_line(PermissionError(errno.EACCES, "Permission denied", "/x")) == "Permission denied: /x"


@pytest.mark.parametrize("command", [["export", "nosuch"], ["pipeline", "nosuch"], ["bench", "--models", "nosuch"]])
def test_an_unknown_model_is_one_line_and_not_found(command: list[str], tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "smallnets", *command, "-o", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    errors = result.stderr.splitlines()  # the one error, no random-weights warning about a model that is not there
    assert result.returncode == cli.EXIT_NOT_FOUND, result.stderr
    assert len(errors) == 1 and "unknown model 'nosuch'" in errors[0] and "smallnets models" in errors[0]
    assert not (tmp_path / "out").exists()


def test_an_unexpected_failure_is_one_line_unless_debug(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    def broken(args: object) -> int:
        raise TypeError("unsupported operand")

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    parser._subparsers._group_actions[0].choices["models"].set_defaults(handler=broken)
    assert cli.main(["models"]) == cli.EXIT_INTERNAL
    error = capsys.readouterr().err
    assert len(error.splitlines()) == 1 and "internal error" in error and "--debug" in error
    with pytest.raises(TypeError):
        cli.main(["models", "--debug"])
