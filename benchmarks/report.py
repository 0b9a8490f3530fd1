"""Results files: results.json (rows + machine block), results.csv, timings.json (raw) and a readable report.md."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from smallnets.benchmarks.machine import EMULATED_WARNING
from smallnets.benchmarks.selection import VARIANTS
from smallnets.core.evaluation import wilson_interval
from smallnets.core.files import atomic_write

TABLE_COLUMNS = (
    ("model", "model"),
    ("variant", "variant"),
    ("p50_ms", "p50 ms"),
    ("p90_ms", "p90 ms"),
    ("p99_ms", "p99 ms"),
    ("mean_ms", "mean ms"),
    ("first_run_ms", "first run ms"),
    ("throughput_ips", "images/s"),
    ("load_ms", "load ms"),
    ("peak_rss_mb", "peak RSS MiB"),
    ("rss_increase_mb", "+RSS MiB"),
    ("model_size_mb", "size MiB"),
    ("speedup_vs_torch", "x torch"),
    ("speedup_vs_onnx_fp32", "x onnx-fp32"),
    ("int8_quality", "int8 vs fp32"),
    ("labelled_top1", "labelled top-1"),
)


def setting_key(row: dict[str, Any]) -> tuple[int, int]:
    return row["batch"], row["threads"]


def with_speedups(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows plus p50 speedups against ``torch`` and ``onnx-fp32`` of the same model, batch and threads."""
    p50 = {(row["model"], row["variant"], *setting_key(row)): row["p50_ms"] for row in rows}
    result = []
    for row in rows:
        torch_p50 = p50.get((row["model"], "torch", *setting_key(row)))
        fp32_p50 = p50.get((row["model"], "onnx-fp32", *setting_key(row)))
        result.append(
            {
                **row,
                "speedup_vs_torch": torch_p50 / row["p50_ms"] if torch_p50 else None,
                "speedup_vs_onnx_fp32": fp32_p50 / row["p50_ms"] if fp32_p50 else None,
            }
        )
    return result


def int8_quality(row: dict[str, Any]) -> str | None:
    """How close int8 answers fp32, in optimize's own terms: the labelled drop with its interval, else agreement
    over all report images and the logit cosine."""
    if row.get("int8_drop_points") is not None:
        low, high = row["int8_drop_interval"]
        return f"drop {row['int8_drop_points']:+.2f} pts (95% CI {low:+.2f}..{high:+.2f}), {row['int8_verdict']}"
    if row.get("cosine_mean") is not None:
        return f"agreement {row['agreement_top1']:.1%} of {row['eval_images']}, cosine {row['cosine_mean']:.4f}"
    return None


def labelled_top1(row: dict[str, Any]) -> str:
    """Top-1 with its 95% Wilson interval: a figure on a few hundred photos is a range, not a point."""
    images = row.get("labelled_images") or 0
    interval = wilson_interval(round(row["labelled_top1"] * images), images)
    return f"{row['labelled_top1']:.1%} [{interval.low:.1%}-{interval.high:.1%}]"


def format_value(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key.startswith("speedup"):
        return f"{value:.2f}x"
    if isinstance(value, float):
        return f"{value:.2f}" if value < 100 else f"{value:.0f}"
    return str(value)


def cell(row: dict[str, Any], key: str) -> str:
    if key == "int8_quality":
        return int8_quality(row) or "-"
    if key == "labelled_top1":
        return labelled_top1(row) if row.get("labelled_top1") is not None else row.get("accuracy_note") or "-"
    return format_value(key, row.get(key))


def side_by_side(rows: Sequence[dict[str, Any]]) -> str:
    """One line per model, one column per variant: p50 ms, with labelled top-1 where there is one."""
    variants = [variant for variant in VARIANTS if any(row["variant"] == variant for row in rows)]
    found = {(row["model"], row["variant"]): row for row in rows}
    lines = ["| model | " + " | ".join(variants) + " |", "|---|" + "---:|" * len(variants)]
    for model in dict.fromkeys(row["model"] for row in rows):
        cells = []
        for variant in variants:
            row = found.get((model, variant))
            if row is None:
                cells.append("not built")
                continue
            top1 = f" ({labelled_top1(row)})" if row.get("labelled_top1") is not None else ""
            cells.append(f"{row['p50_ms']:.2f}{top1}")
        unvalidated = any(
            row.get("accuracy_note") == "unvalidated (random weights)" for row in rows if row["model"] == model
        )
        lines.append(f"| {model}{' (random weights)' if unvalidated else ''} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    lines = [
        "| " + " | ".join(title for _, title in TABLE_COLUMNS) + " |",
        "|" + "|".join("---" if key in ("model", "variant") else "---:" for key, _ in TABLE_COLUMNS) + "|",
    ]
    for row in rows:
        cells = [cell(row, key) for key, _ in TABLE_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ordered(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows in model order of first appearance, then in the canonical variant order."""
    model_order = {model: index for index, model in enumerate(dict.fromkeys(row["model"] for row in rows))}
    variant_order = {variant: index for index, variant in enumerate(VARIANTS)}
    return sorted(rows, key=lambda row: (model_order[row["model"]], variant_order.get(row["variant"], 99)))


def machine_lines(machine: dict[str, Any]) -> list[str]:
    cpu = machine["cpu"]
    libraries = ", ".join(f"{name} {version}" for name, version in machine["libraries"].items() if version)
    lines = [
        f"- CPU: {cpu['model']} ({cpu['arch']}), {cpu['usable_cores']} usable of {cpu['logical_cores']} logical cores",
        f"- ISA features: {', '.join(cpu['features']) or 'none detected'}",
        f"- Platform: {machine['platform']}, Python {machine['python']}",
        f"- Libraries: {libraries}",
        f"- Code: commit {machine.get('commit') or 'unknown'}; CPU kind {machine.get('cpu_kind') or 'unknown'}",
    ]
    if machine.get("threads"):
        threads = machine["threads"]
        lines.append(
            f"- Threads: intra-op {threads['intra_op']}, inter-op {threads['inter_op']}, "
            f"{threads['execution_mode']} execution"
        )
    if machine.get("providers"):
        notes = "; ".join(machine.get("provider_notes") or [])
        lines.append(f"- onnxruntime providers: {', '.join(machine['providers'])}" + (f" ({notes})" if notes else ""))
    if machine.get("target"):
        lines.append(f"- int8 target: {machine['target']} ({machine.get('target_reason') or 'given'})")
    if machine.get("bare_interpreter_rss_mb") is not None:
        lines.append(f"- Bare measuring interpreter: {machine['bare_interpreter_rss_mb']:.1f} MiB peak RSS")
    if machine.get("measurement"):
        loop = machine["measurement"]
        bound = (
            f"{loop['iterations']} timed iterations"
            if loop["iterations"]
            else f">= {loop['duration_s']} s and >= {loop['min_iterations']} timed iterations"
        )
        lines.append(
            f"- Loop: up to {loop['warmup']} warm-up iterations (within {loop['warmup_s']} s), then {bound}; "
            f"{loop['repeats']} interleaved repeat(s); weights {loop['weights']}"
        )
    if machine.get("target") and machine.get("measurement", {}).get("optimize_effort"):
        lines.append(f"- int8 recipe search: {machine['measurement']['optimize_effort']} (see --effort)")
    if machine.get("load_average"):
        load = machine["load_average"]
        lines.append(
            f"- Load average (1 min) at start {load['start']:.2f}, at end {load['end']:.2f}, on {load['cores']} "
            f"usable cores{' (BUSY: timings slower and noisier than on an idle machine)' if load['busy'] else ''}"
        )
    if machine.get("suite_seconds"):
        seconds = machine["suite_seconds"]
        lines.append(f"- Suite time: {seconds['build']:.0f} s building artifacts, {seconds['measure']:.0f} s measuring")
    if machine.get("merged_from"):
        lines.append(f"- Merged from: {', '.join(machine['merged_from'])}")
    lines.append(f"- Date: {machine['date']}")
    return lines


def render_markdown(rows: Sequence[dict[str, Any]], machine: dict[str, Any], plots: Sequence[str] = ()) -> str:
    """report.md: the machine, how it was measured, then one table per (batch, threads) setting."""
    rows = ordered(with_speedups(rows))
    parts = ["# smallnets benchmark", ""]
    if machine.get("emulated"):
        parts += [f"> **{EMULATED_WARNING}**", ""]
    parts += ["## Machine", "", *machine_lines(machine), ""]
    parts += [
        "Each measurement is a fresh process: session load (`load ms`), one first run (`first run ms`), warm-up, "
        "then a bounded loop with the clock around inference only; repeats of all variants are interleaved and "
        "pooled, outliers kept. Speedups compare p50 latency with `torch` and `onnx-fp32` at the same batch and "
        "threads. `+RSS` is peak RSS minus that of a bare measuring interpreter; `size` is the ONNX file (the state "
        "dict for torch). `int8 vs fp32` is optimize's check on its report images: the labelled top-1 drop with its "
        "95% interval and verdict, else top-1 agreement over all images and the mean logit cosine. MiB = 2^20 bytes.",
        "",
    ]
    parts += side_by_side_sections(rows, machine)
    for batch, threads in sorted({setting_key(row) for row in rows}):
        selected = [row for row in rows if setting_key(row) == (batch, threads)]
        title = f"## Batch {batch}, {threads} thread{'s' if threads > 1 else ''}"
        parts += [title + (" (EMULATED)" if machine.get("emulated") else ""), "", markdown_table(selected), ""]
    if machine.get("skipped"):
        parts += ["## Not measured", "", *(f"- {reason}" for reason in machine["skipped"]), ""]
    if plots:
        parts += ["## Plots", ""] + [f"![{Path(plot).stem}]({Path(plot).name})" for plot in plots] + [""]
    return "\n".join(parts)


def side_by_side_sections(rows: Sequence[dict[str, Any]], machine: dict[str, Any]) -> list[str]:
    """p50 ms per model x variant for each setting, labelled top-1 in brackets, the CPU kind in the title."""
    labelled = machine.get("labelled")
    source = (
        f"labelled top-1 in brackets, on the {labelled['report']} photos of {labelled['folder']}'s report part "
        f"(content-hash split: {labelled['calibration']} calibrated ours and NNCF's int8, {labelled['selection']} "
        "chose optimize's recipe, none of them is reported on)"
        if labelled
        else "no labelled photos given (--eval-dir / SMALLNETS_EVAL_DIR): no top-1"
    )
    cpu = machine["cpu"]
    kind = (
        ", ".join(flag for flag in cpu["features"] if flag.startswith(("avx", "amx", "asimd", "i8mm"))) or cpu["arch"]
    )
    parts = ["## Side by side", "", f"p50 ms per variant on {cpu['model']} ({kind}); {source}.", ""]
    for batch, threads in sorted({setting_key(row) for row in rows}):
        selected = [row for row in rows if setting_key(row) == (batch, threads)]
        parts += [f"### Batch {batch}, {threads} thread{'s' if threads > 1 else ''}", "", side_by_side(selected), ""]
    return parts


def render_csv(rows: Sequence[dict[str, Any]]) -> str:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def draw_plots(outdir: Path, rows: Sequence[dict[str, Any]], machine: dict[str, Any]) -> tuple[list[Path], str | None]:
    """The suite's PNGs, or a note saying how to draw them later where matplotlib is missing (e.g. an ARM box)."""
    try:
        from smallnets.benchmarks.plots import write_suite_plots
    except ImportError as error:
        return [], (
            f"Plots not drawn here ({error}): install the bench extra (`pip install 'smallnets[bench]'`) and run "
            f"`smallnets bench --from-results {outdir / 'results.json'} -o {outdir}`."
        )
    return write_suite_plots(outdir, rows, machine), None


def write_results(
    outdir: str | Path,
    rows: Sequence[dict[str, Any]],
    machine: dict[str, Any],
    timings: Sequence[dict[str, Any]] | None = None,
) -> list[Path]:
    """Plots, results.json, results.csv, report.md and (when given) timings.json, the raw per-iteration times."""
    outdir = Path(outdir)
    rows = with_speedups(rows)
    plots, note = draw_plots(outdir, rows, machine)
    written = [
        atomic_write(outdir / "results.json", json.dumps({"machine": machine, "results": rows}, indent=2) + "\n"),
        atomic_write(outdir / "results.csv", render_csv(rows)),
    ]
    if timings is not None:
        written.append(atomic_write(outdir / "timings.json", json.dumps(list(timings)) + "\n"))
    report = render_markdown(rows, machine, [plot.name for plot in plots])
    written.append(atomic_write(outdir / "report.md", report + (f"\n{note}\n" if note else "")))
    return written + plots


def load_results(path: str | Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(rows, machine) of a results.json, to re-render reports and plots without measuring again."""
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict) or not {"results", "machine"} <= data.keys():
        raise ValueError(f"{path} is not a results.json of `smallnets bench` (it needs 'machine' and 'results')")
    return data["results"], data["machine"]


def merge_results(paths: Sequence[str | Path]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows of several runs on one machine as one report (e.g. real-weight and random-weight models run apart).

    The machine block is the first run's, with the sources listed; runs from different CPUs are refused. A row
    measured again by a later run (same model, variant, weights, batch and threads) replaces the earlier one.
    """
    loaded = [load_results(path) for path in paths]
    machine = dict(loaded[0][1])
    for path, (_, other) in zip(paths, loaded, strict=True):
        if other["cpu"]["model"] != machine["cpu"]["model"] or other["cpu"]["features"] != machine["cpu"]["features"]:
            raise ValueError(f"{path} was measured on another CPU ({other['cpu']['model']}); merge runs of one machine")
        machine["labelled"] = machine.get("labelled") or other.get("labelled")
    if len(paths) > 1:
        machine["merged_from"] = [str(path) for path in paths]
    latest = {_measurement(row): row for rows, _ in loaded for row in rows}
    return list(latest.values()), machine


def _measurement(row: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(row.get(key) for key in ("model", "variant", "weights", "batch", "threads"))


HTTP_COLUMNS = (
    ("concurrency", "concurrency"),
    ("requests_per_s", "answered/s"),
    ("refused_per_s", "refused/s"),
    ("failed", "failed"),
    ("p50_ms", "p50 ms"),
    ("p90_ms", "p90 ms"),
    ("p99_ms", "p99 ms"),
    ("mean_ms", "mean ms"),
    ("refused_p99_ms", "refusal p99 ms"),
    ("ok", "ok"),
    ("requests", "requests"),
    ("errors", "errors"),
    ("client_cpu_share", "client CPU"),
)


CLIENT_BUSY_SHARE = 0.8  # benchmarks/http_load.py's mark of a client that may limit the level
BODY_NAMES = {"multipart": "multipart uploads", "raw": "raw bodies (Content-Type image/*)"}


@dataclass(frozen=True)
class HttpRun:
    """What an HTTP load run was pointed at, beside its levels: the target, the uploads, the server, the floor."""

    url: str
    images: str
    body: str = "multipart"
    server: dict[str, Any] | None = None  # the server's /metadata
    floor: dict[str, Any] | None = None  # benchmarks/in_process.py InProcessFloor, when measured

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def floor_lines(levels: Sequence[dict[str, Any]], floor: dict[str, Any]) -> list[str]:
    """The in-process floor and each level against it: what HTTP adds at c=1, what share of throughput it keeps."""
    lines = [
        f"In-process floor (same model file, on {floor.get('runtime', 'onnxruntime')}, {floor['threads']} thread(s), "
        "the server's session options, no HTTP): "
        f"one image decoded, preprocessed and classified p50 {floor['single_p50_ms']:.2f} ms "
        f"(p99 {floor['single_p99_ms']:.2f}); batches of {floor['batch']} end to end "
        f"{floor['batched_images_per_s']:.1f} images/s.",
        "",
        "| concurrency | p50 ms minus floor p50 | requests/s as a share of the batched floor |",
        "|---:|---:|---:|",
    ]
    for level in levels:
        over = "-" if level["p50_ms"] is None else f"{level['p50_ms'] - floor['single_p50_ms']:+.2f}"
        share = level["requests_per_s"] / floor["batched_images_per_s"]
        lines.append(f"| {level['concurrency']} | {over} | {share:.0%} |")
    return [*lines, ""]


def render_http_markdown(run: HttpRun, levels: Sequence[dict[str, Any]], machine: dict[str, Any]) -> str:
    header = "| " + " | ".join(title for _, title in HTTP_COLUMNS) + " |"
    lines = [header, "|" + "|".join("---:" for _ in HTTP_COLUMNS) + "|"]
    for level in levels:
        cells = [
            ", ".join(f"{key}: {count}" for key, count in level["errors"].items()) or "none"
            if key == "errors"
            else format_value(key, level[key])
            for key, _ in HTTP_COLUMNS
        ]
        lines.append("| " + " | ".join(cells) + " |")
    parts = ["# smallnets HTTP load", ""]
    if machine.get("emulated"):
        parts += [f"> **{EMULATED_WARNING}**", ""]
    parts += [
        f"Target `{run.url}`, images: {run.images} sent as {BODY_NAMES[run.body]}, closed-loop clients, "
        f"{levels[0]['duration_s']:.1f} s per level. Goodput apart from shedding: answered (200) requests/s and "
        "their latencies; refused (503/429, the client waits its Retry-After) per second and how fast refusals came "
        "back; failed = every other outcome. Client CPU: the load loop's CPU time over the level, of one core.",
        "",
    ]
    if run.server:
        described = ", ".join(
            f"{key} {run.server[key]}"
            for key in ("model", "precision", "providers", "threads", "workers")
            if key in run.server
        )
        parts += [f"Server: {described}", ""]
    parts += [*lines, ""]
    if any((level.get("client_cpu_share") or 0) > CLIENT_BUSY_SHARE for level in levels):
        note = f"The client used over {CLIENT_BUSY_SHARE:.0%} of a core at some level: it may be the bottleneck."
        parts += [f"> {note}", ""]
    if run.floor:
        parts += floor_lines(levels, run.floor)
    parts += [
        "## Machine",
        "",
        *machine_lines(machine),
        "",
        "![HTTP throughput vs p99](http_throughput_vs_p99.png)",
        "",
    ]
    return "\n".join(parts)


def write_http_results(outdir: str | Path, run: HttpRun, results: Sequence[Any]) -> Path:
    """http_results.json, http_report.md and the throughput-vs-p99 plot; returns the report's path."""
    from smallnets.benchmarks.machine import machine_block
    from smallnets.benchmarks.plots import http_throughput_vs_p99

    outdir = Path(outdir)
    machine = machine_block()
    levels = [result.to_dict() for result in results]
    payload = {"machine": machine, **run.to_dict(), "levels": levels}
    atomic_write(outdir / "http_results.json", json.dumps(payload, indent=2) + "\n")
    served = [level for level in levels if level["p99_ms"] is not None]
    if served:
        http_throughput_vs_p99(served, outdir / "http_throughput_vs_p99.png", machine["emulated"])
    return atomic_write(outdir / "http_report.md", render_http_markdown(run, levels, machine))
