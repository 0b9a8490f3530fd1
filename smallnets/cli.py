"""The `smallnets` command: a thin dispatcher over the stages' own CLI modules.

Stage CLI modules import only the standard library at module level, so `smallnets classify` or
`smallnets serve` never pays for (or needs) torch. Every expected failure becomes one line naming the problem
and the fix, with an exit code per kind of failure (EXIT_CODES); the traceback only with --debug.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys
import warnings
from collections.abc import Sequence

from smallnets import __version__
from smallnets.core.metadata import RandomWeightsWarning

STAGE_CLIS = ("smallnets.export.cli", "smallnets.optimize.cli", "smallnets.serve.cli", "smallnets.benchmarks.cli")
DEBUG_ENV = "SMALLNETS_DEBUG"

EXIT_USAGE = 2  # argparse uses 2 for a bad command line; a bad value is the same kind of mistake
EXIT_NOT_FOUND = 3
EXIT_OUTPUT_REFUSED = 4
EXIT_PORT_IN_USE = 5
EXIT_SYSTEM = 6
EXIT_FAILED = 7
EXIT_PARTIAL = 8
EXIT_INTERNAL = 1
EXIT_INTERRUPTED = 130
# A bare KeyError/IndexError is a bug; the project's LookupErrors (unknown model, target, stored model) are not.
BUILTIN_LOOKUPS = (KeyError, IndexError)
EXIT_CODES = (
    (0, "success"),
    (EXIT_INTERNAL, "internal error (a bug: rerun with --debug and report the traceback)"),
    (EXIT_USAGE, "bad command line or value (e.g. a file that is not an image or an ONNX model)"),
    (EXIT_NOT_FOUND, "not found: an input file or folder, a stored model, a registry name"),
    (EXIT_OUTPUT_REFUSED, "the output folder may not be written (not empty, or holds files smallnets did not write)"),
    (EXIT_PORT_IN_USE, "the port is already in use"),
    (EXIT_SYSTEM, "the system refused (permissions, disk full, network)"),
    (EXIT_FAILED, "a stage failed its own check (weights unavailable, export mismatch, ...)"),
    (EXIT_PARTIAL, "classify: some images could not be classified (the others were)"),
    (EXIT_INTERRUPTED, "interrupted (Ctrl-C)"),
)


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


def exit_code(error: BaseException) -> int:
    """The documented exit code of an expected failure (EXIT_CODES)."""
    if isinstance(error, FileExistsError):
        return EXIT_OUTPUT_REFUSED
    if isinstance(error, FileNotFoundError) or (isinstance(error, LookupError) and type(error) not in BUILTIN_LOOKUPS):
        return EXIT_NOT_FOUND
    if isinstance(error, OSError):
        return EXIT_PORT_IN_USE if error.errno == errno.EADDRINUSE else EXIT_SYSTEM
    if isinstance(error, ValueError):
        return EXIT_USAGE
    if isinstance(error, RuntimeError):
        return EXIT_FAILED
    return EXIT_INTERNAL


def one_line(error: BaseException) -> str:
    """The error's message on one line (library messages can span many)."""
    if isinstance(error, OSError) and error.strerror:  # OSError(errno, text[, filename]): drop the "[Errno N]"
        text = f"{error.strerror}: {error.filename}" if error.filename else error.strerror
    elif isinstance(error, KeyError) and error.args:  # str(KeyError) quotes its message
        text = str(error.args[0])
    else:
        text = str(error) or type(error).__name__
    return " ".join(text.split())


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
