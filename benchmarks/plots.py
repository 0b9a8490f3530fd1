"""PNG figures of the results (matplotlib, Agg backend: no display needed, works on servers and CI)."""

from __future__ import annotations

import io
import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot is imported: no display on servers and CI
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
from matplotlib.transforms import Bbox

from smallnets.benchmarks.machine import cpu_kind
from smallnets.benchmarks.roofline import PeakCompute, achieved_fraction, peak_compute
from smallnets.benchmarks.selection import VARIANTS
from smallnets.core.files import atomic_write
from smallnets.core.hardware import detect_cpu

MARKERS = dict(zip(VARIANTS, itertools.cycle(("o", "s", "^", "D", "v", "X", "P")), strict=False))  # any count


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


INT8_VARIANTS = ("onnx-int8", "openvino-nncf-int8", "openvino-smallnets-int8")
# Where a point's name may go, in points from the point (x, y, horizontal alignment), tried in this order.
LABEL_OFFSETS = ((4, 4, "left"), (4, -11, "left"), (-4, 4, "right"), (-4, -11, "right"), (4, 13, "left"),
                 (4, -20, "left"), (-4, 13, "right"), (-4, -20, "right"))  # fmt: skip
# The int8 goal the speedup figure draws: 2x the fused fp32 model at batch 1 on an x86-vnni CPU.
SPEEDUP_GOAL = 2.0


def ms_per_gmac(macs: Sequence[float], latency_ms: Sequence[float]) -> float:
    """Median milliseconds per billion MACs over the models: a cost per unit of compute, with no line drawn
    between architectures that share nothing but a runtime."""
    return float(np.median([ms / (m / 1e9) for m, ms in zip(macs, latency_ms, strict=True)]))


def readable_log_axis(axis: Any) -> None:
    """Ticks at 1, 2 and 5 of each decade, written as plain numbers (matplotlib's default reads "6x10^0")."""
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_minor_formatter(NullFormatter())


def place_labels(axes: Any, points: Sequence[tuple[str, float, float]], fontsize: float = 7) -> list[Any]:
    """Name each point next to it, at the first of LABEL_OFFSETS where the name covers no earlier name and no
    marker of the axes."""
    figure = axes.figure
    figure.canvas.draw()  # final limits and transforms: boxes measured now are the ones saved
    renderer = figure.canvas.get_renderer()
    markers = np.concatenate([collection.get_offsets() for collection in axes.collections] or [np.empty((0, 2))])
    pixels = axes.transData.transform(markers) if len(markers) else np.empty((0, 2))
    obstacles = [Bbox.from_bounds(x - 3, y - 3, 6, 6) for x, y in pixels]
    placed: list[Any] = []
    for text, x, y in points:
        label = None
        for dx, dy, align in LABEL_OFFSETS:
            candidate = axes.annotate(
                text, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=fontsize, ha=align
            )
            box = candidate.get_window_extent(renderer)
            if not any(box.overlaps(other) for other in obstacles):
                label = candidate
                break
            candidate.remove()
        if label is None:  # crowded everywhere: the first place rather than no name
            dx, dy, align = LABEL_OFFSETS[0]
            label = axes.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=fontsize)
            box = label.get_window_extent(renderer)
        placed.append(label)
        obstacles.append(box)
    return placed


def latency_vs_macs(rows: Sequence[dict[str, Any]], path: Path, peak: PeakCompute | None = None) -> Path:
    """Cost vs compute across architectures, log-log: see latency_vs_macs_figure."""
    return save(latency_vs_macs_figure(rows, peak), path)


def latency_vs_macs_figure(rows: Sequence[dict[str, Any]], peak: PeakCompute | None = None) -> Figure:
    """One marker per model and variant; the legend gives each variant's median ms per GMAC and, with ``peak``,
    the median fraction of the CPU's peak MAC/s it achieves."""
    selected = reference_setting(rows)
    threads = selected[0]["threads"]
    figure, axes = plt.subplots(figsize=(9, 6.5))
    for variant in VARIANTS:
        points = [row for row in selected if row["variant"] == variant and row["macs"]]
        if not points:
            continue
        macs = [row["macs"] for row in points]
        latency = [row["p50_ms"] for row in points]
        label = f"{variant}: {ms_per_gmac(macs, latency):.1f} ms/GMAC (median)"
        if peak:
            precision = "int8" if variant in INT8_VARIANTS else "fp32"
            shares = [achieved_fraction(m, t, peak, threads, precision) for m, t in zip(macs, latency, strict=True)]
            label += f", {np.median(shares):.0%} of {precision} peak"
        axes.scatter([m / 1e6 for m in macs], latency, marker=MARKERS[variant], label=label, alpha=0.8)
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.margins(0.15)  # room for the model names at the edges
    readable_log_axis(axes.xaxis)
    readable_log_axis(axes.yaxis)
    axes.set_xlabel("MACs per image (millions)")
    axes.set_ylabel("p50 latency (ms)")
    setting = f"batch {selected[0]['batch']}, {threads} thread(s)"
    axes.set_title(f"Latency vs MACs, {setting}{emulated_suffix(rows)}")
    note = None
    if peak:
        note = (
            f"peak per core: {peak.fp32_macs_per_cycle} fp32 / {peak.int8_macs_per_cycle} int8 MAC/cycle\n"
            f"({peak.basis})"
        )
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0, -0.1), ncols=2, title=note, title_fontsize=7)
    slowest: dict[str, dict[str, Any]] = {}  # each model named once, at its slowest point (the top of its column)
    for row in selected:
        if row["macs"] and row["p50_ms"] >= slowest.get(row["model"], row)["p50_ms"]:
            slowest[row["model"]] = row
    place_labels(axes, [(model, row["macs"] / 1e6, row["p50_ms"]) for model, row in slowest.items()])
    return figure


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (latency, accuracy) points no other point beats on both: faster and at least as accurate."""
    front: list[tuple[float, float]] = []
    for latency, accuracy in sorted(points, key=lambda point: (point[0], -point[1])):
        if not front or accuracy > front[-1][1]:
            front.append((latency, accuracy))
    return front


def latency_vs_labelled_top1(rows: Sequence[dict[str, Any]], path: Path) -> Path | None:
    """Every measured variant and peer with a labelled top-1: see latency_vs_labelled_top1_figure."""
    figure = latency_vs_labelled_top1_figure(rows)
    return None if figure is None else save(figure, path)


def latency_vs_labelled_top1_figure(rows: Sequence[dict[str, Any]]) -> Figure | None:
    """Every measured variant and peer with a labelled top-1 and the Pareto front of them (at the first setting);
    each model named once, at its fastest point."""
    selected = [row for row in reference_setting(rows) if row.get("labelled_top1") is not None]
    if not selected:
        return None
    figure, axes = plt.subplots(figsize=(9, 6))
    for variant in VARIANTS:
        points = [row for row in selected if row["variant"] == variant]
        if points:
            axes.scatter(
                [row["p50_ms"] for row in points],
                [100 * row["labelled_top1"] for row in points],
                marker=MARKERS[variant],
                label=variant,
            )
    front = pareto_front([(row["p50_ms"], 100 * row["labelled_top1"]) for row in selected])
    axes.step(
        [p[0] for p in front], [p[1] for p in front], where="post", color="black", linewidth=0.8, label="Pareto front"
    )
    axes.set_xscale("log")
    axes.margins(0.12)
    readable_log_axis(axes.xaxis)
    axes.set_xlabel("p50 latency (ms)")
    images = selected[0].get("labelled_images")
    axes.set_ylabel(f"labelled top-1 (%) on {images} photos")
    setting = f"batch {selected[0]['batch']}, {selected[0]['threads']} thread(s)"
    axes.set_title(f"Latency vs labelled top-1, {setting}{emulated_suffix(rows)}")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    fastest: dict[str, dict[str, Any]] = {}
    for model in models_in_order(selected):  # one model's variants, joined by a dotted line and named once
        points = sorted((row for row in selected if row["model"] == model), key=lambda row: row["p50_ms"])
        fastest[model] = points[0]
        axes.plot(
            [row["p50_ms"] for row in points],
            [100 * row["labelled_top1"] for row in points],
            color="grey",
            linestyle=":",
            linewidth=0.7,
            zorder=0,
            gid=f"model:{model}",
        )
    place_labels(axes, [(model, row["p50_ms"], 100 * row["labelled_top1"]) for model, row in fastest.items()])
    return figure


def int8_speedup(rows: Sequence[dict[str, Any]], path: Path) -> Path | None:
    """int8 p50 speedup per architecture: see int8_speedup_figure."""
    figure = int8_speedup_figure(rows)
    return None if figure is None else save(figure, path)


def int8_speedup_figure(rows: Sequence[dict[str, Any]]) -> Figure | None:
    """int8 p50 speedup per architecture against the exported and the optimized fp32 models, each bar labelled;
    the legend sits outside the bars."""
    selected = reference_setting(rows)
    p50 = {(row["model"], row["variant"]): row["p50_ms"] for row in selected}
    models = [model for model in models_in_order(selected) if (model, "onnx-int8") in p50]
    references = [variant for variant in ("onnx-fp32", "onnx-opt") if any((m, variant) in p50 for m in models)]
    if not models or not references:
        return None
    figure, axes = plt.subplots(figsize=(max(7, 0.9 * len(models) + 4), 5))
    width = 0.8 / len(references)
    positions = np.arange(len(models))
    for index, reference in enumerate(references):
        speedups = [p50.get((model, reference), np.nan) / p50[(model, "onnx-int8")] for model in models]
        bars = axes.bar(positions + index * width, speedups, width, label=f"int8 vs {reference}")
        axes.bar_label(bars, fmt="%.2fx", fontsize=7, padding=2)
    axes.axhline(1.0, color="black", linewidth=0.8, label="1x: as fast as fp32")
    axes.axhline(
        SPEEDUP_GOAL,
        color="grey",
        linestyle="--",
        linewidth=0.8,
        label=f"{SPEEDUP_GOAL:g}x: the int8 goal\n(vs onnx-opt, batch 1,\nx86-vnni)",
    )
    axes.set_xticks(positions + width * (len(references) - 1) / 2, models, rotation=30, ha="right")
    without = [model for model in models_in_order(selected) if model not in models]
    if without:
        axes.set_xlabel(f"no onnx-int8 measured for {', '.join(without)}", fontsize=8)
    axes.set_ylabel("speedup (p50, higher is better)")
    axes.set_ylim(
        0, max(SPEEDUP_GOAL, *(bar.get_height() for bar in axes.patches if np.isfinite(bar.get_height()))) * 1.15
    )
    setting = f"batch {selected[0]['batch']}, {selected[0]['threads']} thread(s)"
    axes.set_title(f"int8 speedup per architecture, {setting}{emulated_suffix(rows)}")
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    return figure


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
        for position, height in zip(positions + index * width, heights, strict=True):
            if np.isnan(height):  # a gap is a variant not measured for that model, not a zero
                axes.text(position, 0, "n/a", rotation=90, ha="center", va="bottom", fontsize=7, color="dimgrey")
    axes.set_xticks(positions + width * (len(variants) - 1) / 2, models, rotation=30, ha="right")
    axes.set_ylabel("peak RSS increase over bare interpreter (MiB)")
    setting = f"batch {selected[0]['batch']}, {selected[0]['threads']} thread(s)"
    axes.set_title(f"Memory per architecture and variant, {setting}{emulated_suffix(rows)}")
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    return save(figure, path)


def write_suite_plots(
    outdir: str | Path, rows: Sequence[dict[str, Any]], machine: dict[str, Any] | None = None
) -> list[Path]:
    """Every suite figure the rows support, named with the machine's CPU kind; returns the files written."""
    if not rows:
        return []
    outdir = Path(outdir)
    cpu = (machine or {}).get("cpu") or detect_cpu().to_dict()
    kind = cpu_kind(cpu["features"], cpu["arch"])
    peak = None if (machine or {}).get("emulated") else peak_compute(cpu["features"], cpu["model"])
    written = [
        latency_vs_macs(rows, outdir / f"latency_vs_macs_{kind}.png", peak),
        int8_speedup(rows, outdir / f"int8_speedup_{kind}.png"),
        memory(rows, outdir / f"memory_{kind}.png"),
        latency_vs_labelled_top1(rows, outdir / f"latency_vs_labelled_top1_{kind}.png"),
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
