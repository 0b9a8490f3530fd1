"""The `smallnets` command: a thin dispatcher over the stages' own CLI modules.

Stage CLI modules import only the standard library at module level, so `smallnets classify` or
`smallnets serve` never pays for (or needs) torch. Every expected failure becomes one line naming the problem
and the fix, with an exit code per kind of failure (EXIT_CODES); the traceback only with --debug.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings
from collections.abc import Sequence

from smallnets.core.errors import EXIT_CODES, EXIT_INTERNAL, EXIT_INTERRUPTED, exit_code, one_line
from smallnets.core.errors import EXIT_FAILED as EXIT_FAILED  # the documented codes, re-exported
from smallnets.core.errors import EXIT_NOT_FOUND as EXIT_NOT_FOUND
from smallnets.core.errors import EXIT_OUTPUT_REFUSED as EXIT_OUTPUT_REFUSED
from smallnets.core.errors import EXIT_PARTIAL as EXIT_PARTIAL
from smallnets.core.errors import EXIT_PORT_IN_USE as EXIT_PORT_IN_USE
from smallnets.core.errors import EXIT_SYSTEM as EXIT_SYSTEM
from smallnets.core.errors import EXIT_USAGE as EXIT_USAGE
from smallnets.core.metadata import RandomWeightsWarning
from smallnets.core.version import __version__

STAGE_CLIS = (
    "smallnets.export.cli",
    "smallnets.optimize.cli",
    "smallnets.workflow.cli",
    "smallnets.serve.cli",
    "smallnets.benchmarks.cli",
)
DEBUG_ENV = "SMALLNETS_DEBUG"


def build_parser() -> argparse.ArgumentParser:
    codes = "\n".join(f"  {code:>3}  {meaning}" for code, meaning in EXIT_CODES)
    parser = argparse.ArgumentParser(
        prog="smallnets",
        description="Small CNNs from PyTorch to validated int8 ONNX, served with BentoML and benchmarked.",
        epilog=f"exit codes:\n{codes}\n\nErrors are one line naming the problem and the fix; --debug (or "
        f"{DEBUG_ENV}=1) shows the traceback.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"smallnets {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help=f"show tracebacks instead of one-line errors (default: off; {DEBUG_ENV})"
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in STAGE_CLIS:
        importlib.import_module(module).register(subparsers)
    for command in subparsers.choices.values():  # `smallnets classify ... --debug` works too
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; an expected failure becomes one line on stderr and its exit code (EXIT_CODES)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = args.debug or bool(os.environ.get(DEBUG_ENV))
    warnings.simplefilter("ignore", RandomWeightsWarning)  # the commands print their own one-line warning
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("smallnets: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # `smallnets models | head`: the reader left; silence the flush at exit too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as error:
        if debug:
            raise
        code = exit_code(error)
        if code == EXIT_INTERNAL:
            print(
                f"smallnets {args.command}: internal error: {type(error).__name__}: {one_line(error)} "
                "(rerun with --debug and report the traceback)",
                file=sys.stderr,
            )
        else:
            print(f"smallnets {args.command}: error: {one_line(error)}", file=sys.stderr)
        return code
