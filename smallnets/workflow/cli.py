"""`smallnets pipeline`: export a registry model and optimize it in one go (smallnets.workflow.pipeline).

Only the standard library and the stages' own CLI helpers at module level: torch loads inside the handler.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from smallnets.export.cli import add_model_arguments, default_weights, variant_from_args, warn_if_random
from smallnets.optimize.cli import add_optimize_arguments, optimize_config


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this command."""
    pipeline = subparsers.add_parser(
        "pipeline",
        help="export a registry model and optimize it in one go",
        description="smallnets export NAME -> OUTDIR/model.export.onnx, then smallnets optimize into OUTDIR.",
    )
    add_model_arguments(pipeline)
    pipeline.add_argument("-o", "--output", type=Path, help="output folder (default: artifacts/NAME)")
    pipeline.add_argument(
        "--rebuild",
        action="store_true",
        help="rebuild even when OUTDIR was made from the same model, weights, settings, CPU target and code "
        "(default: such a folder is reused as it is)",
    )
    add_optimize_arguments(pipeline)
    pipeline.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from smallnets.export.registry import get_spec
    from smallnets.workflow.pipeline import PipelineConfig, run_pipeline

    outdir = args.output or Path("artifacts") / args.name
    variant = variant_from_args(args)
    weights = default_weights(args.name, variant, args.weights)
    config = PipelineConfig(args.name, optimize_config(args), variant, weights, args.rebuild)
    get_spec(args.name)  # an unknown name fails before the warning about its weights
    warn_if_random(weights)
    result = run_pipeline(
        config, outdir, on_exported=lambda e: print(f"exported {e.card.display_name} ({e.card.weights})")
    )
    if result.report is None:
        print(f"{outdir} is up to date (same model, weights, settings, CPU target and code): nothing to do")
    else:
        print(json.dumps(result.report.to_dict(), indent=2) if args.json else result.report.summary())
    return 0
