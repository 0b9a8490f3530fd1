"""optimize_model: exported fp32 ONNX -> simplified + fused fp32 -> validated, target-tuned int8, with a report.

Everything is built in a temporary folder next to OUTDIR and renamed into place at the end, so an interrupted
or failed run never leaves a half-written artifact.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import onnx
import onnxruntime as ort

from smallnets.core.artifacts import FP32_NAME, INT8_NAME
from smallnets.core.files import check_output_dir, replace_folder, write_manifest
from smallnets.core.hardware import detect_cpu
from smallnets.core.metadata import ModelCard
from smallnets.optimize.calibration import (
    ImageCalibrationReader,
    ImageSet,
    demo_calibration_set,
    demo_evaluation_set,
    folder_set,
)
from smallnets.optimize.card import PreprocessingFlags, resolve_card
from smallnets.optimize.fuse import count_diff, fuse, op_counts
from smallnets.optimize.groups import NodeGroup, find_groups
from smallnets.optimize.latency import measure_latency
from smallnets.optimize.modelio import load_model, save_model, write_card
from smallnets.optimize.presets import QuantPreset, resolve_target, runs_here
from smallnets.optimize.quantize import calibration_method, prepare_for_quantization, quantize_model
from smallnets.optimize.recipe import (
    LogitCache,
    SearchResult,
    SearchSettings,
    accuracy_loss,
    budget_metric,
    search_recipe,
)
from smallnets.optimize.report import OptimizeReport
from smallnets.optimize.simplify import simplify

# Bounds of the recipe search by name (`--effort`, the same words as `smallnets bench`): "full" is the default
# decision procedure; "bounded" cuts calibration images, timing runs and repair steps but keeps the whole evaluation
# set; "quick" is for smoke runs.
SEARCH_EFFORTS: dict[str, dict[str, int]] = {
    "full": {},
    "bounded": {"calib_images": 32, "latency_runs": 20, "max_repair_steps": 2},
    "quick": {"calib_images": 16, "eval_per_photo": 4, "max_candidates": 2, "max_repair_steps": 1, "latency_runs": 20},
}


@dataclass(frozen=True)
class OptimizeConfig:
    """Everything that decides the artifacts; saved in report.json.

    ``max_candidates``/``max_repair_steps``/``latency_runs`` bound the recipe search (tests shrink them; the
    defaults run the full procedure). ``calib_images`` caps the calibration set, ``eval_per_photo`` sizes the
    demo evaluation grid
    (32 views x 7 photos = 224 images, about half of them decisive for a trained model, so a 1% budget can
    tolerate one disagreement).
    """

    target: str = "auto"
    calibration: str = "minmax"
    max_drop: float = 1.0
    calib_dir: Path | None = None
    eval_dir: Path | None = None
    eval_labels: Path | None = None
    force: bool = False
    calib_images: int = 64
    eval_per_photo: int = 32
    preprocessing: PreprocessingFlags = field(default_factory=PreprocessingFlags)
    max_candidates: int | None = None
    max_repair_steps: int = 3
    latency_runs: int = 60

    def search_settings(self) -> SearchSettings:
        return SearchSettings(self.max_drop, self.max_candidates, self.max_repair_steps, self.latency_runs)

    def to_dict(self) -> dict[str, Any]:
        return {
            key: (str(value) if isinstance(value, Path) else value.__dict__ if key == "preprocessing" else value)
            for key, value in self.__dict__.items()
        }


def optimize_model(model: str | Path, outdir: str | Path, config: OptimizeConfig) -> OptimizeReport:
    """Simplify, fuse, quantize with a measured recipe, validate, and write OUTDIR (see module docstring)."""
    source, outdir = Path(model), Path(outdir)
    preset, target_reason = resolve_target(config.target)  # fail on a bad target before any heavy work
    calibration_method(config.calibration)
    if config.max_drop < 0:
        raise ValueError(f"--max-drop must be >= 0, got {config.max_drop}")
    check_output_dir(outdir, config.force)
    exported = load_model(source)
    card, notes = resolve_card(exported, config.preprocessing, str(source))
    calibration_set, evaluation_set = load_data(config, card)

    outdir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{outdir.name}.tmp-", dir=outdir.parent))
    try:
        report = build(exported, card, preset, target_reason, config, calibration_set, evaluation_set, staging, notes)
        report.outdir = outdir
        report.write(staging / "final")
        write_manifest(staging / "final", "optimize")
        replace_folder(staging / "final", outdir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return report


def load_data(config: OptimizeConfig, card: ModelCard) -> tuple[ImageSet, ImageSet]:
    if config.eval_labels and not config.eval_dir:
        raise ValueError("--eval-labels needs --eval-dir (the CSV names files relative to it)")
    calibration = (
        folder_set(config.calib_dir, "calib", limit=config.calib_images)
        if config.calib_dir
        else demo_calibration_set(config.calib_images)
    )
    evaluation = (
        folder_set(config.eval_dir, "eval", synsets=card.synsets, labels_csv=config.eval_labels)
        if config.eval_dir
        else demo_evaluation_set(config.eval_per_photo)
    )
    return calibration, evaluation


def build(
    exported: onnx.ModelProto,
    card: ModelCard,
    preset: QuantPreset,
    target_reason: str,
    config: OptimizeConfig,
    calibration_set: ImageSet,
    evaluation_set: ImageSet,
    staging: Path,
    notes: list[str],
) -> OptimizeReport:
    final, scratch = staging / "final", staging / "scratch"
    final.mkdir()
    scratch.mkdir()
    write_card(exported, card)
    simplified = simplify(exported)
    fused, _ = fuse(simplified)
    fp32_path = save_model(fused, final / FP32_NAME)
    prepared_path = scratch / "prepared.onnx"
    groups = find_groups(prepare_for_quantization(fused, prepared_path))

    cache = scratch / "calibration.json"
    reader = ImageCalibrationReader(calibration_set.images, card.preprocessing, exported.graph.input[0].name)

    def quantize(output: Path, exclude: list[str]) -> None:
        quantize_model(
            prepared_path, output, preset, config.calibration, cache, None if cache.exists() else reader, exclude
        )

    evaluation = LogitCache(fp32_path, evaluation_set.images, evaluation_set.labels, "evaluate")
    probe = LogitCache(fp32_path, calibration_set.images[: config.search_settings().probe_images], None, "probe")
    settings = replace(config.search_settings(), gate_on_speed=runs_here(preset))
    if not settings.gate_on_speed:
        notes.append(
            f"target {preset.name} is for {preset.arch} CPUs and this machine is not: latencies here are host "
            "figures, not device ones, and int8 was not rejected for them"
        )
    result = search_recipe(fp32_path, groups, quantize, evaluation, probe, scratch, settings)

    fp32_ms = result.chosen.fp32_ms if result.chosen else measure_latency([fp32_path], runs=config.latency_runs)[0]
    int8_entry = None
    if result.chosen:
        quantized = onnx.load(str(result.chosen.path))
        quantization = {
            **preset.to_dict(),
            "calibration": config.calibration,
            "calibration_images": len(calibration_set),
            "recipe": result.chosen.name,
            "float_groups": list(result.chosen.float_groups),
        }
        write_card(quantized, card.with_updates(precision="int8", quantization=quantization))
        int8_path = save_model(quantized, final / INT8_NAME)
        int8_entry = artifact(int8_path, result.chosen.int8_ms)
    return make_report(
        card,
        preset,
        target_reason,
        config,
        calibration_set,
        evaluation_set,
        groups,
        result,
        artifact(fp32_path, fp32_ms),
        int8_entry,
        exported,
        simplified,
        fused,
        notes,
    )


def artifact(path: Path, latency_ms: float | None) -> dict[str, Any]:
    return {"path": path.name, "size_bytes": path.stat().st_size, "latency_ms_p50": latency_ms}


def make_report(
    card: ModelCard,
    preset: QuantPreset,
    target_reason: str,
    config: OptimizeConfig,
    calibration_set: ImageSet,
    evaluation_set: ImageSet,
    groups: dict[str, NodeGroup],
    result: SearchResult,
    fp32: dict[str, Any],
    int8: dict[str, Any] | None,
    exported: onnx.ModelProto,
    simplified: onnx.ModelProto,
    fused: onnx.ModelProto,
    notes: list[str],
) -> OptimizeReport:
    chosen = result.chosen
    validation = chosen.validation if chosen else None
    kept = []
    if chosen:
        for name in chosen.float_groups:
            group = groups[name]
            repaired = next((note for note in chosen.notes if f"kept {name} " in note), None)
            reason = repaired or f"speed: part of the fastest in-budget candidate {chosen.name} ({group.description})"
            kept.append({"group": name, "op_types": list(group.op_types), "nodes": len(group.nodes), "reason": reason})
    return OptimizeReport(
        outdir=Path("."),
        status="accepted" if chosen else "rejected",
        reason=result.reason,
        output=INT8_NAME if chosen else FP32_NAME,
        target=preset.name,
        target_reason=target_reason,
        preset=preset.to_dict(),
        fp32=fp32,
        int8=int8,
        speedup=chosen.speedup if chosen else None,
        agreement_top1=validation.agreement_top1 if validation else None,
        top5_overlap=validation.top5_overlap if validation else None,
        cosine_mean=validation.cosine_mean if validation else None,
        accuracy=validation.to_dict() if validation else {},
        budget={
            "max_drop": config.max_drop,
            "metric": budget_metric(validation or result.trials[0].validation) if result.trials else None,
            "loss": accuracy_loss(validation) if validation else None,
        },
        kept_float=kept,
        calibration_images=len(calibration_set),
        calibration_source=calibration_set.source,
        calibration_method=config.calibration,
        eval_images=len(evaluation_set),
        eval_source=evaluation_set.source,
        node_counts={
            "export": op_counts(exported),
            "simplified": op_counts(simplified),
            "fused": op_counts(fused),
            "total": {"export": len(exported.graph.node), "fused": len(fused.graph.node)},
            "fusion": count_diff(op_counts(exported), op_counts(fused)),
        },
        search={
            "settings": config.search_settings().__dict__,
            "groups": {name: {"nodes": len(g.nodes), "op_types": list(g.op_types)} for name, g in groups.items()},
            "sensitivity_cosine_gain": result.sensitivity,
            "trials": [trial.to_dict() for trial in result.trials],
        },
        notes=notes,
        config=config.to_dict(),
        cpu=detect_cpu().to_dict(),
        versions={"onnxruntime": ort.__version__, "onnx": onnx.__version__},
    )
