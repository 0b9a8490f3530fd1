"""optimize_model: exported fp32 ONNX -> simplified + fused fp32 -> validated, target-tuned int8, with a report.

Everything is built in a temporary folder next to OUTDIR and renamed into place at the end, so an interrupted
or failed run never leaves a half-written artifact.
"""

from __future__ import annotations

import functools
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from smallnets.core.artifacts import FP32_NAME, INT8_NAME
from smallnets.core.evaluation import prepare, prepare_pictures
from smallnets.core.files import check_output_dir, replace_folder, write_manifest
from smallnets.core.labelled import provenance, read_labelled_folder
from smallnets.core.metadata import AccuracyStatus, ModelCard, write_card
from smallnets.core.openvino_runtime import import_openvino
from smallnets.core.split import split_folders
from smallnets.core.targets import OPENVINO, QuantOptions, Target, resolve_target, runs_here
from smallnets.optimize.calibration import (
    REPORT_PHOTOS,
    SELECTION_PHOTOS,
    ImageCalibrationReader,
    demo_calibration_set,
    demo_evaluation_set,
    folder_set,
    images_from,
)
from smallnets.optimize.card import resolve_card
from smallnets.optimize.float_ops import float_ops
from smallnets.optimize.fuse import fuse
from smallnets.optimize.groups import NodeGroup, find_groups
from smallnets.optimize.latency import SpeedGate, measure_latency, speed_gate
from smallnets.optimize.modelio import load_model, save_model
from smallnets.optimize.quantize import calibration_method, prepare_for_quantization, quantize_model
from smallnets.optimize.recipe import (
    CandidateBuilder,
    SearchResult,
    SearchSettings,
    Trial,
    choose_format,
    search_recipe,
    selection_summary,
)
from smallnets.optimize.report import OptimizeReport, Reason, Status, Verdict
from smallnets.optimize.run import EvaluationData, OptimizeConfig, OptimizeRun, make_report
from smallnets.optimize.sensitivity import layer_errors, report_entry
from smallnets.optimize.simplify import simplify
from smallnets.optimize.validate import Check, GateRules, Reference, final_verdict

# Calibration pictures used to rank group sensitivity in the repair step (never selection or report images).
PROBE_IMAGES = 16


def optimize_model(model: str | Path, outdir: str | Path, config: OptimizeConfig) -> OptimizeReport:
    """Simplify, fuse, quantize with a measured recipe, validate, and write OUTDIR (see module docstring)."""
    source, outdir = Path(model), Path(outdir)
    preset, target_reason = resolve_target(config.target)  # fail on a bad target before any heavy work
    if preset.runtime == OPENVINO:
        import_openvino()  # its candidates are timed and judged on OpenVINO: fail now if it is missing
    if config.calibration is not None:
        calibration_method(config.calibration)
    if config.max_drop < 0:
        raise ValueError(f"--max-drop must be >= 0, got {config.max_drop}")
    check_output_dir(outdir, config.force)
    exported = load_model(source)
    card, notes = resolve_card(exported, config.preprocessing, str(source))
    data = load_data(config, card)

    outdir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{outdir.name}.tmp-", dir=outdir.parent))
    try:
        report = make_report(build(exported, card, preset, target_reason, config, data, staging, notes))
        report.outdir = outdir
        report.write(staging / "final")
        write_manifest(staging / "final", "optimize")
        replace_folder(staging / "final", outdir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return report


def load_data(config: OptimizeConfig, card: ModelCard) -> EvaluationData:
    """The labelled folder split three ways, or (no folder) the demo photos, one disjoint group per use."""
    if config.eval_dir is not None:
        folder = read_labelled_folder(config.eval_dir, card.synsets)
        split = split_folders(folder, config.calib_dir, config.calib_images)
        return EvaluationData(
            calibration=images_from(split.calibration, split.calibration_source),
            selection=prepare(split.selection, card.preprocessing, f"{folder.root} (selection part)"),
            report=prepare(split.report, card.preprocessing, f"{folder.root} (report part)"),
            split=split.to_dict(),
        )
    calibration = (
        folder_set(config.calib_dir, limit=config.calib_images)
        if config.calib_dir
        else demo_calibration_set(config.calib_images)
    )
    selection = demo_evaluation_set(SELECTION_PHOTOS, config.eval_per_photo)
    report = demo_evaluation_set(REPORT_PHOTOS, config.eval_per_photo)
    counts = {"calibration": len(calibration), "selection": len(selection), "report": len(report)}
    return EvaluationData(
        calibration=calibration,
        selection=prepare_pictures(selection.images, card.preprocessing, selection.source),
        report=prepare_pictures(report.images, card.preprocessing, report.source),
        split={"method": "disjoint demo photos, one group per use", "counts": counts, "disjoint": True},
    )


def build(
    exported: onnx.ModelProto,
    card: ModelCard,
    preset: Target,
    target_reason: str,
    config: OptimizeConfig,
    data: EvaluationData,
    staging: Path,
    notes: list[str],
) -> OptimizeRun:
    """Simplify, fuse, search the recipe, judge it and write the artifacts into ``staging/final``; the report is
    made from the returned run by :func:`make_report`."""
    final, scratch = staging / "final", staging / "scratch"
    final.mkdir()
    scratch.mkdir()
    fp32_path, prepared_path = final / FP32_NAME, scratch / "prepared.onnx"
    graphs, groups = simplify_and_fuse(exported, card, fp32_path, prepared_path, preset.offline_fusion)
    cache = scratch / "calibration.json"
    reader = ImageCalibrationReader(data.calibration.images, card.preprocessing, exported.graph.input[0].name)
    settings = search_settings(preset, card, config)
    if not runs_here(preset):
        notes.append(
            f"target {preset.name} is for {preset.arch} CPUs and this machine is not: latencies here are host "
            "figures, not device ones, and int8 was not rejected for them"
        )
    elif not config.gate_on_speed:
        notes.append("speed gate off by request: int8 was judged on accuracy alone, its latencies are not a verdict")
    probe_images = prepare_pictures(data.calibration.images[:PROBE_IMAGES], card.preprocessing, "probe")
    references = (
        Reference(fp32_path, data.selection, "selection", preset.runtime),
        Reference(fp32_path, probe_images, "probe", preset.runtime),
    )
    options = {option.name: option for option in preset.candidates_for(card.family)}
    quantizers = {
        name: candidate_quantizer(prepared_path, option, config.calibration, cache, reader)
        for name, option in options.items()
    }
    builders = {name: CandidateBuilder(groups, quantize, scratch / name) for name, quantize in quantizers.items()}
    preset, result = search(fp32_path, preset, options, builders, *references, settings)

    report_part = Reference(fp32_path, data.report, "report", preset.runtime)
    final_check = report_part.check(result.closest.path) if result.closest else None
    verdict, speed = decide(result, final_check, settings.rules, settings, fp32_path, preset)
    timer = runtime_timer(preset)
    fp32_ms = result.chosen.fp32_ms if result.chosen else timer([fp32_path], config.latency_runs)[0]
    run = OptimizeRun(
        card,
        preset,
        target_reason,
        config,
        data,
        graphs,
        groups,
        settings,
        result,
        final_check,
        verdict,
        speed,
        artifact(fp32_path, fp32_ms),
        None,
        notes,
    )
    int8_entry = write_int8(run, result.chosen, final) if result.chosen and verdict.writes_int8 else None
    layers = probe_layer_errors(fp32_path, result.closest, references[1], groups)
    return replace(run, int8=int8_entry, layer_sensitivity=layers)


def simplify_and_fuse(
    exported: onnx.ModelProto, card: ModelCard, fp32: Path, prepared: Path, offline_fusion: bool = True
) -> tuple[tuple[onnx.ModelProto, onnx.ModelProto, onnx.ModelProto], dict[str, NodeGroup]]:
    """The export (its card written in), simplified and fused (saved as FP32; without ``offline_fusion`` the
    simplified graph, for a runtime that fuses its own way), and the fused graph's groups, named as in its copy
    prepared for the quantizer (saved as PREPARED)."""
    write_card(exported, card)
    simplified = simplify(exported)
    fused = fuse(simplified)[0] if offline_fusion else simplified
    save_model(fused, fp32)
    return (exported, simplified, fused), find_groups(prepare_for_quantization(fused, prepared))


def candidate_quantizer(
    prepared: Path, options: QuantOptions, calibration: str | None, cache: Path, reader: ImageCalibrationReader
) -> Callable[[Path, Sequence[str]], None]:
    """Quantize PREPARED in one int8 format, leaving the named nodes float: the first call of any format
    calibrates and caches the ranges, every later call reuses them."""

    def quantize(output: Path, exclude: Sequence[str]) -> None:
        quantize_model(prepared, output, options, calibration, cache, None if cache.exists() else reader, exclude)

    return quantize


def search_settings(preset: Target, card: ModelCard, config: OptimizeConfig) -> SearchSettings:
    """The gate's rules (random weights have their own cosine floor) and the search's bounds; the speed gate is
    on only where the target's CPU is this machine's."""
    random_weights = card.weights.startswith("random")
    min_cosine = preset.random_weights_min_cosine if random_weights else preset.int8_min_cosine
    return SearchSettings(
        GateRules(config.max_drop, min_cosine, random_weights=random_weights),
        config.max_candidates,
        config.max_formats,
        config.max_repair_steps,
        config.latency_runs,
        gate_on_speed=config.gate_on_speed and runs_here(preset),
    )


def search(
    fp32: Path,
    preset: Target,
    options: dict[str, QuantOptions],
    builders: dict[str, CandidateBuilder],
    selection: Reference,
    probe: Reference,
    settings: SearchSettings,
) -> tuple[Target, SearchResult]:
    """Choose the int8 format on the selection part, then search the recipe within it; the preset returned
    carries the chosen format."""
    for builder in builders.values():
        builder.workdir.mkdir()
    timer = runtime_timer(preset)
    chosen_format, formats = choose_format(fp32, builders, selection, settings, timer)
    preset = preset.with_quant(options[chosen_format])
    result = search_recipe(fp32, builders[chosen_format], selection, probe, settings, timer, formats=formats)
    return preset, result


def runtime_timer(preset: Target) -> Callable[[list[Path], int], list[float]]:
    """The search's latency timer on the runtime the target's int8 runs on."""
    return functools.partial(measure_latency, runtime=preset.runtime)


def write_int8(run: OptimizeRun, chosen: Trial, final: Path) -> dict[str, Any]:
    """Write model.int8.onnx with its own card (recipe, float ops, its accuracy status); its report.json entry."""
    quantized = onnx.load(str(chosen.path))
    kept = {name: run.groups[name].nodes for name in chosen.float_groups}
    crop = run.card.preprocessing.crop
    in_float = float_ops(chosen.path, (1, 3, crop, crop), kept)
    quantization = {
        **run.preset.to_dict(),
        "calibration": run.config.calibration or run.preset.quant.calibration,
        "calibration_images": len(run.data.calibration),
        "recipe": chosen.name,
        "float_groups": list(chosen.float_groups),
        "accuracy_status": run.verdict.status.value,
        "int8_mac_share": in_float["int8_mac_share"],
        "float_ops": in_float["float_ops"],
    }
    accuracy = int8_accuracy(run.settings.rules, run.final_check, run.verdict, run.data)
    write_card(quantized, run.card.with_updates(precision="int8", quantization=quantization, accuracy=accuracy))
    int8_path = save_model(quantized, final / INT8_NAME)
    return {**artifact(int8_path, chosen.int8_ms), "float_ops": in_float}


def probe_layer_errors(
    fp32: Path, closest: Trial | None, probe: Reference, groups: dict[str, NodeGroup]
) -> dict[str, Any] | None:
    """Where int8 loses the signal, layer by layer, on the probe photos (optimize/sensitivity.py)."""
    if not closest:
        return None
    errors = layer_errors(fp32, closest.path, np.concatenate(probe.data.batches), groups)
    return report_entry(errors, closest.name, len(probe.data), "probe photos")


def decide(
    result: SearchResult,
    final_check: Check | None,
    rules: GateRules,
    settings: SearchSettings,
    fp32: Path,
    preset: Target,
) -> tuple[Verdict, SpeedGate | None]:
    """The verdict: the gate's rule on the report part for the candidate the search took, then the speed gate.

    The search refuses only for speed (no candidate faster than fp32); accuracy, rejections included, is read on
    the report part (see smallnets.optimize.validate). The speed gate re-times the chosen file in fresh sessions
    at the target's thread counts, so a candidate that won the search on one noisy timing is not shipped unless
    it is faster by more than the noise.
    """
    if result.refusal is not None:
        return Verdict(Status.REJECTED, result.refusal.reason, result.refusal.detail), None
    assert result.chosen is not None and final_check is not None
    verdict = final_verdict(final_check, rules)
    if not result.chosen.passed:  # say what the selection part saw; the report part alone decides
        note = f"; on the selection part {selection_summary(result.chosen, rules)}, no candidate passed"
        verdict = Verdict(verdict.status, verdict.reason, verdict.detail + note)
    if not verdict.writes_int8 or not settings.gate_on_speed:
        return verdict, None
    speed = speed_gate(fp32, result.chosen.path, preset.threads, runtime=preset.runtime)
    if not speed.accepted:
        return Verdict(
            Status.REJECTED,
            Reason.NONE_FASTER,
            f"{result.chosen.name} is not faster than fp32 by more than the timing noise here ({speed.summary()})",
        ), speed
    return verdict, speed


def artifact(path: Path, latency_ms: float | None) -> dict[str, Any]:
    return {"path": path.name, "size_bytes": path.stat().st_size, "latency_ms_p50": latency_ms}


def int8_accuracy(rules: GateRules, check: Check | None, verdict: Verdict, data: EvaluationData) -> AccuracyStatus:
    """The int8 file's own accuracy status: its labelled figure where one was measured, never the fp32 quote."""
    if rules.random_weights:
        return AccuracyStatus()
    paired = check.paired if check else None
    if paired is None:
        return AccuracyStatus("unvalidated", source=f"optimize: {verdict.detail}")
    where = provenance(data.split.get("evaluation_source", ""), paired.images)
    return AccuracyStatus(
        "measured",
        top1=100 * paired.candidate.top1,
        source=f"optimize, report part of {where} ({verdict.status}): {verdict.detail}",
    )
