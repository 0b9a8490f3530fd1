"""`smallnets optimize` (ONNX -> fused fp32 + validated int8 + report) and `smallnets pipeline` (export + optimize).

Only the standard library at module level: onnx/onnxruntime (and torch for pipeline) load inside handlers.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from smallnets.core.artifacts import EXPORT_NAME
from smallnets.export.cli import add_model_arguments, variant_from_args

TARGET_CHOICES = ("auto", "x86-avx2", "x86-vnni", "arm64")
CALIBRATION_CHOICES = ("minmax", "entropy", "percentile")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this stage's subcommands."""
    optimize = subparsers.add_parser(
        "optimize",
        help="simplify, fuse and int8-quantize an ONNX classifier for a CPU target, with validation",
        description="Writes OUTDIR/model.fp32.onnx (simplified + fused), OUTDIR/model.int8.onnx and "
        "OUTDIR/report.json + report.md. If no int8 variant is both within --max-drop and faster than fp32, "
        "no int8 file is written and the report says why (the fp32 model is the output).",
    )
    optimize.add_argument("model", type=Path, metavar="MODEL.onnx", help="an exported ONNX classifier")
    optimize.add_argument("-o", "--output", type=Path, help="output folder (default: MODEL's name without .onnx)")
    add_optimize_arguments(optimize)
    add_preprocessing_arguments(optimize)
    optimize.set_defaults(handler=run_optimize)

    pipeline = subparsers.add_parser(
        "pipeline",
        help="export a registry model and optimize it in one go",
        description="smallnets export NAME -> OUTDIR/model.export.onnx, then smallnets optimize into OUTDIR.",
    )
    add_model_arguments(pipeline)
    pipeline.add_argument("-o", "--output", type=Path, help="output folder (default: artifacts/NAME)")
    add_optimize_arguments(pipeline)
    pipeline.set_defaults(handler=run_pipeline)


def add_optimize_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--target", default="auto", choices=TARGET_CHOICES, help="CPU preset; auto detects it (default)"
    )
    parser.add_argument("--calib-dir", type=Path, help="calibration images (jpg/png/webp/bmp, recursive)")
    parser.add_argument("--calib-images", type=int, help="max calibration images (default 64, quick search 16)")
    parser.add_argument(
        "--eval-dir", type=Path, help="evaluation images; synset sub-folders (n01440764/...) give labels"
    )
    parser.add_argument("--eval-labels", type=Path, help="CSV of file,class_id (files relative to --eval-dir)")
    parser.add_argument("--calibration", default="minmax", choices=CALIBRATION_CHOICES, help="range calibration")
    parser.add_argument(
        "--max-drop",
        type=float,
        default=1.0,
        help="accuracy budget: top-1 points lost with labels, else %% top-1 disagreement (default 1.0)",
    )
    parser.add_argument(
        "--search",
        default="full",
        choices=("full", "quick"),
        help="recipe search effort: full (default: all candidates, repair steps, 64 calibration and 224 "
        "evaluation images) or quick",
    )
    parser.add_argument("--force", action="store_true", help="replace a non-empty output folder")
    parser.add_argument("--json", action="store_true", help="print report.json instead of the summary")


def add_preprocessing_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("preprocessing (required for ONNX files without a smallnets model card)")
    group.add_argument("--resolution", type=int, help="input size (center crop) in pixels")
    group.add_argument("--resize", type=int, help="shorter side before cropping (default resolution / 0.875)")
    group.add_argument("--mean", type=_triple, help="per-channel mean, e.g. 0.485,0.456,0.406")
    group.add_argument("--std", type=_triple, help="per-channel std, e.g. 0.229,0.224,0.225")
    group.add_argument("--interpolation", choices=("bilinear", "bicubic", "nearest"), help="resize filter")


def _triple(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"expected three comma-separated numbers, got {text!r}")
    return values  # type: ignore[return-value]


def optimize_config(args: argparse.Namespace, **extra: Any) -> Any:
    from smallnets.optimize.pipeline import SEARCH_EFFORTS, OptimizeConfig

    settings: dict[str, Any] = {**SEARCH_EFFORTS[args.search], **extra}
    if args.calib_images is not None:
        settings["calib_images"] = args.calib_images
    return OptimizeConfig(
        target=args.target,
        calibration=args.calibration,
        max_drop=args.max_drop,
        calib_dir=args.calib_dir,
        eval_dir=args.eval_dir,
        eval_labels=args.eval_labels,
        force=args.force,
        **settings,
    )


def run_optimize(args: argparse.Namespace) -> int:
    from smallnets.optimize.card import PreprocessingFlags

    flags = PreprocessingFlags(args.resolution, args.resize, args.mean, args.std, args.interpolation)
    outdir = args.output or args.model.with_suffix("")
    return _optimize(args.model, outdir, optimize_config(args, preprocessing=flags), args.json)


def run_pipeline(args: argparse.Namespace) -> int:
    from smallnets.export.onnx_export import ExportConfig, export_model
    from smallnets.optimize.pipeline import check_outdir

    variant = variant_from_args(args)
    outdir = args.output or Path("artifacts") / args.name
    config = optimize_config(args)
    check_outdir(outdir, args.force)  # refuse before spending time on the export
    staging = outdir.parent / f".{outdir.name}.export"
    staging.mkdir(parents=True, exist_ok=True)
    try:
        exported = export_model(
            ExportConfig(model=args.name, variant=variant, weights=args.weights), staging / EXPORT_NAME
        )
        print(f"exported {exported.card.display_name} ({exported.card.weights})")
        status = _optimize(exported.path, outdir, config, args.json)
        for path in staging.iterdir():  # the export and the config/validation JSON written beside it
            path.replace(outdir / path.name)
    finally:
        import shutil

        shutil.rmtree(staging, ignore_errors=True)
    return status


def _optimize(model: Path, outdir: Path, config: Any, as_json: bool) -> int:
    from smallnets.optimize.pipeline import optimize_model

    report = optimize_model(model, outdir, config)
    print(json.dumps(report.to_dict(), indent=2) if as_json else report.summary())
    return 0
