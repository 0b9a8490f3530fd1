"""PNG figures of the results (matplotlib, Agg backend: no display needed, works on servers and CI)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot is imported: no display on servers and CI
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from smallnets.benchmarks.selection import VARIANTS
from smallnets.core.files import atomic_write

MARKERS = dict(zip(VARIANTS, ("o", "s", "^", "D", "v", "P"), strict=True))


def save(figure: Figure, path: Path) -> Path:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(figure)
    return atomic_write(path, buffer.getvalue())


def reference_setting(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows at batch 1 (or the smallest batch) and the fewest threads: the single-stream comparison."""
    batch = min(row["batch"] for row in rows)
    threads = min(row["threads"] for row in rows)
    return [row for row in rows if row["batch"] == batch and row["threads"] == threads]


def emulated_suffix(rows: Sequence[dict[str, Any]]) -> str:
    return " [EMULATED]" if any(row.get("emulated") for row in rows) else ""


def models_in_order(rows: Sequence[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(row["model"] for row in rows))


def latency_vs_macs(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """Cost vs compute across architectures, log-log, one marker per variant (does fewer MACs mean faster?)."""
    selected = reference_setting(rows)
    figure, axes = plt.subplots(figsize=(8, 5.5))
    for variant in VARIANTS:
        points = [row for row in selected if row["variant"] == variant and row["macs"]]
        if points:
            axes.scatter(
                [row["macs"] / 1e6 for row in points],
                [row["p50_ms"] for row in points],
                marker=MARKERS[variant],
                label=variant,
                alpha=0.8,
            )
    labelled = {}
    for row in selected:
        labelled.setdefault(row["model"], row)
    for model, row in labelled.items():
        if row["macs"]:
            axes.annotate(
                model, (row["macs"] / 1e6, row["p50_ms"]), fontsize=7, xytext=(4, 4), textcoords="offset points"
            )
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.margins(0.12)  # room for the model names at the edges
    axes.set_xlabel("MACs per image (millions)")
    axes.set_ylabel("p50 latency (ms)")
    setting = f"batch {selected[0]['batch']}, {selected[0]['threads']} thread(s)"
    axes.set_title(f"Latency vs MACs, {setting}{emulated_suffix(rows)}")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    return save(figure, path)


def int8_speedup(rows: Sequence[dict[str, Any]], path: Path) -> Path | None:
    """int8 p50 speedup per architecture against the exported and the optimized fp32 models."""
    selected = reference_setting(rows)
    p50 = {(row["model"], row["variant"]): row["p50_ms"] for row in selected}
    models = [model for model in models_in_order(selected) if (model, "onnx-int8") in p50]
    references = [variant for variant in ("onnx-fp32", "onnx-opt") if any((m, variant) in p50 for m in models)]
    if not models or not references:
        return None
    figure, axes = plt.subplots(figsize=(max(6, 0.9 * len(models) + 2), 5))
    width = 0.8 / len(references)
    positions = np.arange(len(models))
    for index, reference in enumerate(references):
        speedups = [p50.get((model, reference), np.nan) / p50[(model, "onnx-int8")] for model in models]
        axes.bar(positions + index * width, speedups, width, label=f"int8 vs {reference}")
    axes.axhline(1.0, color="black", linewidth=0.8)
    axes.axhline(2.0, color="grey", linestyle="--", linewidth=0.8, label="2x target")
    axes.set_xticks(positions + width * (len(references) - 1) / 2, models, rotation=30, ha="right")
    axes.set_ylabel("speedup (p50, higher is better)")
    setting = f"batch {selected[0]['batch']}, {selected[0]['threads']} thread(s)"
    axes.set_title(f"int8 speedup per architecture, {setting}{emulated_suffix(rows)}")
    axes.legend()
    return save(figure, path)


def memory(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """Peak RSS increase over a bare interpreter, per architecture and variant."""
    selected = reference_setting(rows)
    models = models_in_order(selected)
    variants = [variant for variant in VARIANTS if any(row["variant"] == variant for row in selected)]
    values = {(row["model"], row["variant"]): row["rss_increase_mb"] for row in selected}
    figure, axes = plt.subplots(figsize=(max(6, 0.9 * len(models) + 2), 5))
    width = 0.8 / len(variants)
    positions = np.arange(len(models))
    for index, variant in enumerate(variants):
        heights = [values.get((model, variant), np.nan) for model in models]
        axes.bar(positions + index * width, heights, width, label=variant)
    axes.set_xticks(positions + width * (len(variants) - 1) / 2, models, rotation=30, ha="right")
    axes.set_ylabel("peak RSS increase over bare interpreter (MiB)")
    setting = f"batch {selected[0]['batch']}, {selected[0]['threads']} thread(s)"
    axes.set_title(f"Memory per architecture and variant, {setting}{emulated_suffix(rows)}")
    axes.legend()
    return save(figure, path)


def accuracy_vs_latency(rows: Sequence[dict[str, Any]], path: Path) -> Path | None:
    """The EfficientNet paper's kind of figure, for the rows whose top-1 accuracy was measured."""
    selected = [row for row in reference_setting(rows) if row.get("top1_accuracy") is not None]
    if not selected:
        return None
    figure, axes = plt.subplots(figsize=(7, 5))
    for variant in VARIANTS:
        points = [row for row in selected if row["variant"] == variant]
        if points:
            axes.scatter(
                [row["p50_ms"] for row in points],
                [row["top1_accuracy"] for row in points],
                marker=MARKERS[variant],
                label=variant,
            )
    for row in selected:
        axes.annotate(
            row["model"], (row["p50_ms"], row["top1_accuracy"]), fontsize=7, xytext=(4, 4), textcoords="offset points"
        )
    axes.set_xscale("log")
    axes.margins(0.12)
    axes.set_xlabel("p50 latency (ms)")
    axes.set_ylabel("top-1 accuracy")
    axes.set_title(f"Accuracy vs latency{emulated_suffix(rows)}")
    axes.grid(True, alpha=0.3)
    axes.legend()
    return save(figure, path)


def write_suite_plots(outdir: str | Path, rows: Sequence[dict[str, Any]]) -> list[Path]:
    """Every suite figure the rows support; returns the files written."""
    if not rows:
        return []
    outdir = Path(outdir)
    written = [
        latency_vs_macs(rows, outdir / "latency_vs_macs.png"),
        int8_speedup(rows, outdir / "int8_speedup.png"),
        memory(rows, outdir / "memory.png"),
        accuracy_vs_latency(rows, outdir / "accuracy_vs_latency.png"),
    ]
    return [path for path in written if path is not None]


def http_throughput_vs_p99(levels: Sequence[dict[str, Any]], path: Path, emulated: bool = False) -> Path:
    """Served requests/s against p99 latency, one point per concurrency level (the knee is the useful load)."""
    figure, axes = plt.subplots(figsize=(7, 5))
    p99 = [level["p99_ms"] for level in levels]
    throughput = [level["requests_per_s"] for level in levels]
    axes.plot(p99, throughput, marker="o")
    for level in levels:
        axes.annotate(
            f"c={level['concurrency']}",
            (level["p99_ms"], level["requests_per_s"]),
            xytext=(4, 4),
            textcoords="offset points",
        )
    axes.set_xlabel("p99 latency (ms)")
    axes.set_ylabel("throughput (requests/s)")
    axes.set_title("HTTP throughput vs p99 latency per concurrency" + (" [EMULATED]" if emulated else ""))
    axes.grid(True, alpha=0.3)
    return save(figure, path)
