"""The `smallnets` command: a thin dispatcher over the stages' own CLI modules.

Stage CLI modules import only the standard library at module level, so `smallnets classify` or
`smallnets serve` never pays for (or needs) torch.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from smallnets import __version__

STAGE_CLIS = ("smallnets.export.cli", "smallnets.optimize.cli", "smallnets.serve.cli", "smallnets.benchmarks.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smallnets",
        description="Small CNNs from PyTorch to validated int8 ONNX, served with BentoML and benchmarked.",
    )
    parser.add_argument("--version", action="version", version=f"smallnets {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in STAGE_CLIS:
        importlib.import_module(module).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; user errors become one clear line on stderr and exit code 2.

    Set SMALLNETS_DEBUG=1 to see the full traceback instead.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("smallnets: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `smallnets models | head`: the reader left; silence the flush at exit too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (ValueError, LookupError, OSError, RuntimeError) as error:
        if os.environ.get("SMALLNETS_DEBUG"):
            raise
        print(f"smallnets {args.command}: error: {error}", file=sys.stderr)
        return 2
