"""One optimize run as records: what it was given (OptimizeConfig), the photos it used (EvaluationData), what it
built, decided and measured (OptimizeRun), and the report written from them (:func:`make_report`).

Kept apart from the pipeline that fills them, so the report is written from one run object and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
import onnxruntime as ort

from smallnets.core.artifacts import FP32_NAME, INT8_NAME
from smallnets.core.evaluation import PreparedImages
from smallnets.core.hardware import detect_cpu
from smallnets.core.labelled import provenance
from smallnets.core.metadata import ModelCard
from smallnets.core.targets import Target
from smallnets.core.version import code_digest
from smallnets.optimize.calibration import ImageSet
from smallnets.optimize.card import PreprocessingFlags
from smallnets.optimize.fuse import count_diff, op_counts
from smallnets.optimize.groups import NodeGroup
from smallnets.optimize.latency import SpeedGate
from smallnets.optimize.recipe import SearchResult, SearchSettings, Trial
from smallnets.optimize.report import OptimizeReport, Verdict
from smallnets.optimize.validate import Check, GateRules


@dataclass(frozen=True)
class OptimizeConfig:
    """Everything that decides the artifacts; saved in report.json.

    ``eval_dir`` is a labelled ImageFolder (SYNSET/photo.JPEG): it is split by content hash into calibration,
    selection and report parts (``calib_dir``, when given, supplies the calibration photos instead; photos in
    both are kept on one side). Without it the unlabelled demo photos stand in and int8 is never "validated".
    ``max_candidates``/``max_formats``/``max_repair_steps``/``latency_runs`` bound the recipe search (tests
    shrink them; the defaults run the full procedure). ``calib_images`` caps the calibration part,
    ``eval_per_photo`` sizes the demo grid (crops per demo photo). ``gate_on_speed=False`` judges int8 on accuracy
    alone: for a build host too busy to time (its timings cannot show int8 faster), the report says speed was
    not gated.
    """

    target: str = "auto"
    calibration: str | None = None  # None: each candidate's own (QuantOptions.calibration)
    max_drop: float = 1.0
    calib_dir: Path | None = None
    eval_dir: Path | None = None
    force: bool = False
    calib_images: int = 64
    eval_per_photo: int = 32
    preprocessing: PreprocessingFlags = field(default_factory=PreprocessingFlags)
    max_candidates: int | None = None
    max_formats: int | None = None
    max_repair_steps: int = 3
    latency_runs: int = 60
    gate_on_speed: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {
            key: (str(value) if isinstance(value, Path) else value.__dict__ if key == "preprocessing" else value)
            for key, value in self.__dict__.items()
        }


@dataclass(frozen=True)
class EvaluationData:
    """Calibration pictures and the two evaluation parts, disjoint; ``split`` records how (for report.json)."""

    calibration: ImageSet
    selection: PreparedImages
    report: PreparedImages
    split: dict[str, Any]

    @property
    def labelled(self) -> bool:
        return self.report.labels is not None


@dataclass(frozen=True)
class OptimizeRun:
    """What one run built, decided and measured, in the order it happened; :func:`make_report` writes it up."""

    card: ModelCard
    preset: Target
    target_reason: str
    config: OptimizeConfig
    data: EvaluationData
    graphs: tuple[onnx.ModelProto, onnx.ModelProto, onnx.ModelProto]  # export, simplified, fused
    groups: dict[str, NodeGroup]
    settings: SearchSettings
    result: SearchResult
    final_check: Check | None  # the report part, for the candidate the search took (or the closest)
    verdict: Verdict
    speed: SpeedGate | None
    fp32: dict[str, Any]  # artifact entries of report.json
    int8: dict[str, Any] | None
    notes: list[str]
    layer_sensitivity: dict[str, Any] | None = None


def accuracy_status(rules: GateRules, check: Check | None, data: EvaluationData) -> str:
    """The one line to show beside any accuracy figure of this build."""
    if rules.random_weights:
        return "unvalidated (random weights)"
    paired = check.paired if check else None
    if paired is None:
        return "not validated on labelled photos: demo photos only (set SMALLNETS_EVAL_DIR or --eval-dir)"
    low, high = paired.drop_interval_points.to_list()
    return (
        f"measured on the labelled report part of {provenance(data.split.get('evaluation_source', ''), paired.images)}"
        f": fp32 top-1 {paired.reference.top1:.1%}, int8 top-1 {paired.candidate.top1:.1%}, drop "
        f"{paired.drop_points:+.2f} points (95% CI {low:+.2f} to {high:+.2f})"
    )


def kept_float(trial: Trial | None, groups: dict[str, NodeGroup]) -> list[dict[str, Any]]:
    """Each float group of the chosen trial with why: accuracy (a repair step) or speed (the candidate's base)."""
    if trial is None:
        return []
    return [
        {
            "group": name,
            "op_types": list(groups[name].op_types),
            "nodes": len(groups[name].nodes),
            "reason": trial.repairs.get(name)
            or f"speed: part of the fastest in-budget candidate {trial.name} ({groups[name].description})",
        }
        for name in trial.float_groups
    ]


def make_report(run: OptimizeRun) -> OptimizeReport:
    """report.json / report.md of one run (see :class:`OptimizeReport`)."""
    written = run.result.chosen if run.int8 else None
    measured = run.final_check.agreement if run.final_check else None
    return OptimizeReport(
        outdir=Path("."),
        status=run.verdict.status,
        reason=run.verdict.reason,
        detail=run.verdict.detail,
        output=INT8_NAME if run.int8 else FP32_NAME,
        target=run.preset.name,
        target_reason=run.target_reason,
        preset=run.preset.to_dict(),
        fp32=run.fp32,
        int8=run.int8,
        speedup=written.speedup if written else None,
        speed_gated=run.settings.gate_on_speed,
        accuracy_status=accuracy_status(run.settings.rules, run.final_check, run.data),
        agreement_top1=measured.agreement_top1 if measured else None,
        top5_overlap=measured.top5_overlap if measured else None,
        cosine_mean=measured.cosine_mean if measured else None,
        evaluation=report_part_entry(run),
        gate=run.settings.rules.to_dict(),
        split=run.data.split,
        budget=budget_entry(run),
        kept_float=kept_float(written, run.groups),
        calibration_images=len(run.data.calibration),
        calibration_source=run.data.calibration.source,
        calibration_method=run.config.calibration or run.preset.quant.calibration,
        eval_images=len(run.data.report),
        eval_source=run.data.report.source,
        node_counts=node_counts(*run.graphs),
        search=search_entry(run),
        notes=run.notes,
        config=run.config.to_dict(),
        cpu=detect_cpu().to_dict(),
        versions={"onnxruntime": ort.__version__, "onnx": onnx.__version__, "code": code_digest()},
    )


def report_part_entry(run: OptimizeRun) -> dict[str, Any]:
    """What the report part measured for the candidate the search took (or the closest one)."""
    measured = run.final_check.agreement if run.final_check else None
    return {
        "part": "report",
        "candidate": run.result.closest.name if run.result.closest else None,
        "candidate_speedup": run.result.closest.speedup if run.result.closest else None,
        "agreement": measured.to_dict() if measured else None,
        "labelled": run.final_check.paired.to_dict() if run.final_check and run.final_check.paired else None,
    }


def budget_entry(run: OptimizeRun) -> dict[str, Any]:
    """The accuracy budget and the figure it is read on (the paired drop with labels, floors without)."""
    return {
        "max_drop": run.config.max_drop,
        "metric": "upper end of the 95% interval of the paired top-1 drop (points), labelled report part"
        if run.data.labelled and not run.settings.rules.random_weights
        else "none without labels: top-1 agreement over all images and logit cosine floors",
    }


def node_counts(exported: onnx.ModelProto, simplified: onnx.ModelProto, fused: onnx.ModelProto) -> dict[str, Any]:
    """Ops per type after each graph step, and what fusion changed."""
    return {
        "export": op_counts(exported),
        "simplified": op_counts(simplified),
        "fused": op_counts(fused),
        "total": {"export": len(exported.graph.node), "fused": len(fused.graph.node)},
        "fusion": count_diff(op_counts(exported), op_counts(fused)),
    }


def search_entry(run: OptimizeRun) -> dict[str, Any]:
    """The recipe search: its bounds, the groups it could keep float, every trial, and the speed gate."""
    settings = run.settings
    return {
        "settings": {
            "max_candidates": settings.max_candidates,
            "max_formats": settings.max_formats,
            "max_repair_steps": settings.max_repair_steps,
            "latency_runs": settings.latency_runs,
            "gate_on_speed": settings.gate_on_speed,
        },
        "selection_images": len(run.data.selection),
        "groups": {name: {"nodes": len(g.nodes), "op_types": list(g.op_types)} for name, g in run.groups.items()},
        "sensitivity_cosine_gain": run.result.sensitivity,
        "formats": [trial.to_dict() for trial in run.result.formats],
        "quant": run.preset.quant.name,
        "trials": [trial.to_dict() for trial in run.result.trials],
        "speed_gate": run.speed.to_dict() if run.speed else None,
        **({"layer_sensitivity": run.layer_sensitivity} if run.layer_sensitivity else {}),
    }
