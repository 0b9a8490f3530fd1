"""One help style: every command has a description, every option says its default the same way."""

from __future__ import annotations

import argparse

import pytest

from smallnets.cli import EXIT_CODES, build_parser


def subcommands() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


@pytest.mark.parametrize("name", sorted(subcommands()))
def test_every_command_describes_itself_and_its_defaults(name: str) -> None:
    parser = subcommands()[name]
    assert parser.description, f"`smallnets {name}` has no description"
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or not action.option_strings or action.required:
            continue
        if isinstance(action, argparse._HelpAction):
            continue
        option = "/".join(action.option_strings)
        assert action.help, f"`smallnets {name} {option}` has no help"
        assert "(default: " in action.help and "[default" not in action.help, f"{name} {option}: {action.help!r}"


def test_one_vocabulary_for_effort_weights_threads() -> None:
    commands = subcommands()
    options = {name: {o for a in p._actions for o in a.option_strings} for name, p in commands.items()}
    assert {"--effort", "--weights", "--threads"} <= options["bench"]
    assert "--effort" in options["optimize"] and "--effort" in options["pipeline"]
    assert "--weights" in options["export"] and "--weights" in options["pipeline"]
    threads = next(a for a in commands["classify"]._actions if "--threads" in a.option_strings)
    assert "worker" not in threads.help


def test_old_effort_spellings_still_parse() -> None:
    parser = build_parser()
    assert parser.parse_args(["optimize", "m.onnx", "--search", "quick"]).effort == "quick"
    assert parser.parse_args(["bench", "--optimize-effort", "full"]).effort == "full"


def test_exit_codes_are_distinct_and_in_the_help() -> None:
    codes = [code for code, _ in EXIT_CODES]
    assert len(codes) == len(set(codes))
    epilog = build_parser().format_help()
    assert all(f"{code:>3}  {meaning}" in epilog for code, meaning in EXIT_CODES)
