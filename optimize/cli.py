"""`smallnets optimize` (ONNX -> fused fp32 + validated int8 + report) and `smallnets evaluate`.

Only the standard library at module level: onnx/onnxruntime load inside handlers. `smallnets pipeline` (export +
optimize) is a workflow above the stages: smallnets.workflow.cli, which reuses this stage's arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from smallnets.core.artifacts import EXPORT_NAME
from smallnets.core.targets import CALIBRATION_METHODS, RUNTIME_HELP, RUNTIMES, TARGET_CHOICES
from smallnets.optimize.efforts import SEARCH_EFFORTS

CALIBRATION_CHOICES = tuple(CALIBRATION_METHODS)
EFFORT_CHOICES = tuple(SEARCH_EFFORTS)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this stage's subcommands."""
    optimize = subparsers.add_parser(
        "optimize",
        help="simplify, fuse and int8-quantize an ONNX classifier for a CPU target, with validation",
        description="Writes OUTDIR/model.fp32.onnx (simplified + fused; x86-openvino: simplified), "
        "OUTDIR/model.int8.onnx and OUTDIR/report.json + report.md. If no int8 variant is both within --max-drop "
        "and faster than fp32, no int8 file is written and the report says why (the fp32 model is the output). Given a "
        "`smallnets pipeline` folder, optimizes its model.export.onnx again, in place (with --force).",
    )
    optimize.add_argument(
        "model",
        type=Path,
        metavar="MODEL.onnx|DIR",
        help="an exported ONNX classifier, or a `smallnets pipeline` output folder (its model.export.onnx)",
    )
    optimize.add_argument(
        "-o", "--output", type=Path, help="output folder (default: MODEL's name without .onnx; DIR itself for DIR)"
    )
    add_optimize_arguments(optimize)
    add_preprocessing_arguments(optimize)
    optimize.set_defaults(handler=run_optimize)

    evaluate = subparsers.add_parser(
        "evaluate",
        help="top-1/top-5 of an ONNX classifier on labelled photos, with 95%% intervals",
        description="Reads a labelled ImageFolder (DIR/SYNSET/photo.JPEG, class index = the synset's position in "
        "the model card's class list) and prints top-1/top-5 with Wilson 95% intervals.",
    )
    evaluate.add_argument(
        "model", type=Path, metavar="MODEL.onnx|DIR", help="an ONNX classifier, or an optimize/pipeline output folder"
    )
    evaluate.add_argument(
        "--eval-dir", type=Path, help="labelled photos, DIR/SYNSET/photo.JPEG (default: $SMALLNETS_EVAL_DIR)"
    )
    evaluate.add_argument(
        "--limit",
        type=int,
        help="evaluate N photos evenly spaced in content-hash order, from the model's report part when DIR is the "
        "folder it was optimized on (default: all)",
    )
    evaluate.add_argument("--runtime", choices=RUNTIMES, default=None, help=RUNTIME_HELP)
    evaluate.add_argument("--json", action="store_true", help="print JSON instead of one line (default: off)")
    evaluate.set_defaults(handler=run_evaluate)


def add_optimize_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--target", default="auto", choices=TARGET_CHOICES, help="CPU target; auto detects this CPU (default: auto)"
    )
    parser.add_argument(
        "--calib-dir", type=Path, help="calibration images, jpg/png/webp/bmp, recursive (default: sample photos)"
    )
    parser.add_argument(
        "--calib-images", type=int, help="max calibration images (default: 64; 32 with --effort bounded, 16 quick)"
    )
    parser.add_argument(
        "--eval-dir",
        type=Path,
        help="labelled photos, DIR/SYNSET/photo.JPEG, split by content hash into calibration, selection and report "
        "parts (default: $SMALLNETS_EVAL_DIR, else unlabelled sample photos and int8 is not validated)",
    )
    parser.add_argument(
        "--calibration",
        choices=CALIBRATION_CHOICES,
        help="int8 range calibration of every candidate (default: each candidate's own method)",
    )
    parser.add_argument(
        "--max-drop",
        type=float,
        default=1.0,
        help="accuracy budget in top-1 points: int8 is accepted only if the upper end of the 95%% interval of its "
        "top-1 drop on the labelled report part is within it (default: 1.0)",
    )
    parser.add_argument(
        "--effort",
        default="full",
        choices=EFFORT_CHOICES,
        help="int8 recipe search: full (all candidates and repair steps, 64 calibration images), bounded (32 "
        "calibration images, fewer timing runs, same evaluation) or quick (smoke runs) "
        "(default: full)",
    )
    parser.add_argument("--search", dest="effort", choices=EFFORT_CHOICES, help=argparse.SUPPRESS)  # old name
    parser.add_argument(
        "--no-speed-gate",
        dest="gate_on_speed",
        action="store_false",
        help="judge int8 on accuracy alone, for a build host too busy to time; the report says so "
        "(default: int8 must be faster than fp32 by more than the timing noise where the target is this CPU)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace an earlier smallnets output folder; a folder with files smallnets did not write is never "
        "replaced (default: refuse any non-empty folder)",
    )
    parser.add_argument("--json", action="store_true", help="print report.json instead of the summary (default: off)")


def add_preprocessing_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("preprocessing (required for ONNX files without a smallnets model card)")
    group.add_argument("--resolution", type=int, help="input size (center crop) in pixels (default: the card's)")
    group.add_argument("--resize", type=int, help="shorter side before cropping (default: resolution / 0.875)")
    group.add_argument(
        "--mean", type=_triple, help="per-channel mean, e.g. 0.485,0.456,0.406 (default: the card's, else ImageNet)"
    )
    group.add_argument(
        "--std", type=_triple, help="per-channel std, e.g. 0.229,0.224,0.225 (default: the card's, else ImageNet)"
    )
    group.add_argument(
        "--interpolation",
        choices=("bilinear", "bicubic", "nearest"),
        help="resize filter (default: the card's, else bilinear)",
    )


def _triple(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"expected three comma-separated numbers, got {text!r}")
    return values  # type: ignore[return-value]


def optimize_config(args: argparse.Namespace, **extra: Any) -> Any:
    from smallnets.core.labelled import eval_dir_setting
    from smallnets.optimize.pipeline import OptimizeConfig

    settings: dict[str, Any] = {**SEARCH_EFFORTS[args.effort], **extra}
    if args.calib_images is not None:
        settings["calib_images"] = args.calib_images
    return OptimizeConfig(
        target=args.target,
        calibration=args.calibration,
        max_drop=args.max_drop,
        calib_dir=args.calib_dir,
        eval_dir=eval_dir_setting(args.eval_dir),
        force=args.force,
        gate_on_speed=args.gate_on_speed,
        **settings,
    )


def run_optimize(args: argparse.Namespace) -> int:
    from smallnets.core.files import check_output_dir

    if args.model.is_dir() and not (args.model / EXPORT_NAME).is_file():
        raise FileNotFoundError(
            f"{args.model} is a folder without {EXPORT_NAME}: pass an exported .onnx file "
            "(`smallnets export NAME -o FILE.onnx`) or a `smallnets pipeline` output folder"
        )
    outdir = args.output or (args.model if args.model.is_dir() else args.model.with_suffix(""))
    check_output_dir(outdir, args.force)  # before onnx loads and any time is spent
    from smallnets.optimize.card import PreprocessingFlags

    flags = PreprocessingFlags(args.resolution, args.resize, args.mean, args.std, args.interpolation)
    config = optimize_config(args, preprocessing=flags)
    if args.model.is_dir():
        from smallnets.optimize.folder import reoptimize_folder

        report = reoptimize_folder(args.model, outdir, config)
    else:
        from smallnets.optimize.pipeline import optimize_model

        report = optimize_model(args.model, outdir, config)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.summary())
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from smallnets.core.artifacts import resolve_model_file
    from smallnets.core.evaluation import evaluate
    from smallnets.core.labelled import EVAL_DIR_ENV, eval_dir_setting
    from smallnets.core.runtime import OnnxClassifier, resolve_runtime

    folder = eval_dir_setting(args.eval_dir)
    if folder is None:
        raise ValueError(f"no labelled photos: pass --eval-dir DIR or set {EVAL_DIR_ENV} (DIR/SYNSET/photo.JPEG)")
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be at least 1, got {args.limit}")
    model = resolve_model_file(args.model)
    classifier = OnnxClassifier(model, runtime=resolve_runtime(model, args.runtime))
    if classifier.cpu_note:  # the figures below are this CPU's, not those of the CPU kind the card speaks for
        print(f"warning: {classifier.cpu_note}", file=sys.stderr)
    result = evaluate(classifier, folder, limit=args.limit)
    figures = {**result.to_dict(), "runtime": classifier.runtime}
    print(json.dumps(figures, indent=2) if args.json else f"{model} ({classifier.runtime}): {result.summary()}")
    return 0
