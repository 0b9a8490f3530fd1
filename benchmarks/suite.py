"""The benchmark suite: build artifacts, measure every variant interleaved in fresh processes, write the results.

Order matters for honest numbers: for each model and setting the variants run A B C D A B C D ... over the
repeats, so slow drift of a shared machine (thermal, neighbours) is spread over all variants instead of
favouring the one that ran first.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smallnets.benchmarks.artifacts import (
    DEFAULT_EFFORT,
    ArtifactCache,
    ModelArtifacts,
    check_choice,
    default_cache_dir,
    resolve_target_name,
)
from smallnets.benchmarks.labelled import split_labelled
from smallnets.benchmarks.machine import machine_block
from smallnets.benchmarks.measure import MeasureSpec
from smallnets.benchmarks.runner import Measurement, bare_interpreter_rss_mb, pool, run_measurement
from smallnets.benchmarks.selection import (
    DEFAULT_VARIANTS,
    OPTIMIZED_VARIANTS,
    PEER_VARIANTS,
    SMALLNETS_INT8_ON_OPENVINO,
    ModelChoice,
)
from smallnets.core.files import ensure_writable_dir
from smallnets.core.hardware import detect_cpu
from smallnets.core.progress import Progress
from smallnets.core.runtime import resolve_providers, resolve_runtime
from smallnets.core.targets import ONNXRUNTIME, OPENVINO

MIB = 2**20


@dataclass(frozen=True)
class BenchConfig:
    """One suite run. ``iterations`` (count-bounded) overrides ``duration_s`` (time-bounded) when given."""

    models: tuple[ModelChoice, ...]
    variants: tuple[str, ...] = DEFAULT_VARIANTS
    batches: tuple[int, ...] = (1, 8)
    threads: tuple[int, ...] = (1, 2)
    target: str = "auto"
    weights: str | None = None  # None: each model's default (imagenet where it ships with smallnets, else random)
    duration_s: float = 0.3
    iterations: int | None = None
    warmup: int = 2
    warmup_s: float = 0.25
    min_iterations: int = 3
    repeats: int = 2
    providers: tuple[str, ...] | None = None
    cache_dir: Path = field(default_factory=default_cache_dir)
    rebuild: bool = False
    optimize_effort: str = DEFAULT_EFFORT
    eval_dir: Path | None = None  # labelled photos: calibration part + reported top-1 (benchmarks.labelled)
    max_drop: float | None = None  # optimize's accuracy budget when building int8; None: optimize's default


@dataclass(frozen=True)
class SuiteResult:
    rows: list[dict[str, Any]]
    machine: dict[str, Any]
    measurements: list[Measurement]
    files: list[Path] = field(default_factory=list)  # what was written: the bench manifest lists these only


def spec_for(artifacts: ModelArtifacts, variant: str, batch: int, threads: int, config: BenchConfig) -> MeasureSpec:
    common = {
        "batch": batch,
        "threads": threads,
        "input_path": str(artifacts.input_path),
        "warmup": config.warmup,
        "warmup_s": config.warmup_s,
        "duration_s": config.duration_s,
        "min_iterations": config.min_iterations,
        "iterations": config.iterations,
    }
    if variant == "torch":
        return MeasureSpec(
            kind="torch",
            model=artifacts.choice.name,
            variant=dict(artifacts.choice.overrides),
            weights=artifacts.weights,
            **common,
        )
    if variant == SMALLNETS_INT8_ON_OPENVINO:  # what `smallnets serve --runtime openvino` runs
        return MeasureSpec(kind="onnx", model_path=str(artifacts.path(variant)), runtime=OPENVINO, **common)
    if variant in PEER_VARIANTS:
        return MeasureSpec(kind="openvino", model_path=str(artifacts.path(variant)), **common)
    path = artifacts.path(variant)
    # optimize's files on the runtime their card names (an x86-openvino int8: OpenVINO), as serving runs them.
    runtime = resolve_runtime(path) if path and variant in OPTIMIZED_VARIANTS else ONNXRUNTIME
    return MeasureSpec(kind="onnx", model_path=str(path), providers=config.providers, runtime=runtime, **common)


def make_row(
    artifacts: ModelArtifacts, variant: str, measurement: Measurement, baseline_rss_mb: float, machine: dict[str, Any]
) -> dict[str, Any]:
    """One results.json row: the issue's keys first, then context (weights, target, iterations, quality)."""
    card = artifacts.card
    spec = measurement.spec
    return {
        "model": artifacts.choice.label,
        "family": card.family,
        "variant": variant,
        "provider": measurement.provider,
        "threads": spec.threads,
        "batch": spec.batch,
        **measurement.summary(),
        "first_run_ms": measurement.first_run_ms,
        "peak_rss_mb": measurement.peak_rss_mb,
        "rss_increase_mb": measurement.peak_rss_mb - baseline_rss_mb,
        "model_size_mb": measurement.model_size_bytes / MIB,
        "load_ms": measurement.load_ms,
        "params": card.params,
        "macs": card.macs,
        "resolution": card.resolution,
        "weights": artifacts.weights,
        "target": artifacts.target if variant in OPTIMIZED_VARIANTS else None,
        "iterations": measurement.iterations,
        "timed_s": measurement.timed_s,
        "emulated": machine["emulated"],
        **quality_fields(variant, artifacts.optimize_report()),
    }


def quality_fields(variant: str, report: dict[str, Any] | None) -> dict[str, Any]:
    """What optimize measured about this variant's answers (its report.json), None where it measured nothing.

    Agreement over all of optimize's report images, the logit cosine, and (with labels) the paired top-1 drop of
    int8 against fp32 with its 95% interval and optimize's verdict.
    """
    if variant != "onnx-int8" or not report:
        return {}
    labelled = (report.get("evaluation") or {}).get("labelled") or {}  # report.json's evaluation on labels
    return {
        "agreement_top1": report.get("agreement_top1"),
        "eval_images": report.get("eval_images"),
        "top5_overlap": report.get("top5_overlap"),
        "cosine_mean": report.get("cosine_mean"),
        "int8_drop_points": labelled.get("drop_points"),
        "int8_drop_interval": labelled.get("drop_interval_points"),
        "int8_verdict": report.get("status"),
    }


def plan(models: Sequence[ModelArtifacts], config: BenchConfig) -> list[tuple[ModelArtifacts, str, int, int]]:
    """Measurement order: per model and (batch, threads) setting, all variants once per repeat (A B A B ...).

    Variants without an artifact (optimize rejected int8 for that model) are left out; ``skipped`` says why.
    """
    return [
        (artifacts, variant, batch, threads)
        for artifacts in models
        for batch in config.batches
        for threads in config.threads
        for _ in range(config.repeats)
        for variant in config.variants
        if artifacts.unavailable(variant) is None
    ]


def skipped(models: Sequence[ModelArtifacts], variants: Sequence[str]) -> list[str]:
    return [reason for artifacts in models for variant in variants if (reason := artifacts.unavailable(variant))]


def raw_timings(rows: Sequence[dict[str, Any]], measurements: Sequence[Measurement]) -> list[dict[str, Any]]:
    """Every per-iteration time (ms, to 0.1 us) behind each row, so anyone can recompute the summaries."""
    return [
        {key: row[key] for key in ("model", "variant", "batch", "threads")}
        | {"timings_ms": [round(t, 4) for t in m.timings_ms]}
        for row, m in zip(rows, measurements, strict=True)
    ]


def loop_settings(config: BenchConfig) -> dict[str, Any]:
    """How each measurement was bounded, for the machine block (numbers mean little without it)."""
    return {
        "warmup": config.warmup,
        "warmup_s": config.warmup_s,
        "duration_s": config.duration_s if config.iterations is None else None,
        "min_iterations": config.min_iterations,
        "iterations": config.iterations,
        "repeats": config.repeats,
        "weights": config.weights or "default (imagenet where it ships, else random)",
        "optimize_effort": config.optimize_effort,
        "max_drop": config.max_drop,
    }


def build_all(config: BenchConfig, target: str | None) -> list[ModelArtifacts]:
    cache = ArtifactCache(
        config.cache_dir, config.weights, config.rebuild, config.optimize_effort, config.eval_dir, config.max_drop
    )
    built = []
    progress = Progress(config.models, "artifacts", unit="model", every_s=0.0)  # a line per model: builds take minutes
    for choice in progress:
        progress.note(choice.label)
        built.append(cache.prepare(choice, config.variants, target))
    return built


def measure_all(built: Sequence[ModelArtifacts], config: BenchConfig) -> dict[tuple[str, str, int, int], Measurement]:
    """Run the interleaved plan; repeats of one (model, variant, batch, threads) are pooled into one result."""
    runs: dict[tuple[str, str, int, int], list[Measurement]] = {}
    progress = Progress(plan(built, config), "measure", unit="run")
    for artifacts, variant, batch, threads in progress:
        progress.note(f"{artifacts.choice.label} {variant} b{batch} t{threads}")
        spec = spec_for(artifacts, variant, batch, threads, config)
        runs.setdefault((artifacts.choice.label, variant, batch, threads), []).append(run_measurement(spec))
    return {key: pool(measurements) for key, measurements in runs.items()}


def run_suite(config: BenchConfig, outdir: str | Path) -> SuiteResult:
    """Check inputs, build what is missing, measure, and write results.json/csv, report.md and plots to outdir."""
    from smallnets.benchmarks.report import write_results

    for choice in config.models:
        check_choice(choice)
    providers, provider_notes = resolve_providers(config.providers)  # an unknown provider fails here, not later
    optimized = set(config.variants) & set(OPTIMIZED_VARIANTS)
    target, target_reason = resolve_target_name(config.target) if optimized else (None, None)
    outdir = ensure_writable_dir(outdir)
    ensure_writable_dir(config.cache_dir, "artifact cache folder")
    machine = machine_block(config.threads, target, target_reason) | {
        "measurement": loop_settings(config),
        "providers": providers,
        "provider_notes": provider_notes,
    }

    start_load = busy_warning(config.threads)
    baseline_rss_mb = bare_interpreter_rss_mb()  # also proves a measuring interpreter starts, before any build
    machine["bare_interpreter_rss_mb"] = baseline_rss_mb
    started = time.perf_counter()
    built = build_all(config, target)
    build_s = time.perf_counter() - started
    machine["skipped"] = skipped(built, config.variants)
    for reason in machine["skipped"]:
        print(f"note: {reason}")
    pooled = measure_all(built, config)
    machine["suite_seconds"] = {"build": build_s, "measure": time.perf_counter() - started - build_s}
    machine["load_average"] = load_average_block(start_load)

    by_label = {artifacts.choice.label: artifacts for artifacts in built}
    measurements = list(pooled.values())
    rows = [
        make_row(by_label[label], variant, measurement, baseline_rss_mb, machine)
        for (label, variant, _, _), measurement in pooled.items()
    ]
    rows, machine["labelled"] = with_accuracy(rows, built, config)
    written = write_results(outdir, rows, machine, raw_timings(rows, measurements))
    return SuiteResult(rows, machine, measurements, written)


# A 1-minute load average above this share of the usable cores means other work competes for the timed cores.
BUSY_LOAD_PER_CORE = 0.5


def busy_warning(threads: Sequence[int]) -> float:
    """The 1-minute load average now; a warning when other work already keeps the cores busy (timings then come
    out slower and noisier: 2 threads can time slower than 1)."""
    load = os.getloadavg()[0]
    cores = detect_cpu().usable_cores
    if load > BUSY_LOAD_PER_CORE * cores:
        print(
            f"warning: the machine is busy (load average {load:.2f} on {cores} cores) before measuring "
            f"{max(threads)} thread(s): timings will be slower and noisier than on an idle machine; the report "
            "records it",
            flush=True,
        )
    return load


def load_average_block(start: float) -> dict[str, Any]:
    """What results.json and report.md record about the machine's load during the run."""
    end = os.getloadavg()[0]
    cores = detect_cpu().usable_cores
    return {"start": start, "end": end, "cores": cores, "busy": max(start, end) > BUSY_LOAD_PER_CORE * cores}


def with_accuracy(
    rows: Sequence[dict[str, Any]], built: Sequence[ModelArtifacts], config: BenchConfig
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Rows plus labelled top-1 per (model, variant) on the report part, and where the figures come from."""
    from smallnets.benchmarks.accuracy import accuracy_fields, score_variants

    scores: dict[tuple[str, str], float] = {}
    source = None
    for artifacts in built:
        if artifacts.eval_dir is None:
            continue
        split = split_labelled(artifacts.eval_dir, artifacts.card, artifacts.calib_images())
        source = split.to_dict()
        variants = [variant for variant in config.variants if artifacts.unavailable(variant) is None]
        specs = [(variant, spec_for(artifacts, variant, 1, 1, config)) for variant in variants]
        for variant, score in score_variants(split, artifacts.card, specs).items():
            scores[artifacts.choice.label, variant] = score
    by_label = {artifacts.choice.label: artifacts for artifacts in built}
    labelled = [
        row
        | accuracy_fields(
            by_label[row["model"]].weights,
            scores.get((row["model"], row["variant"])),
            source["report"] if source else None,
        )
        for row in rows
    ]
    return labelled, source
