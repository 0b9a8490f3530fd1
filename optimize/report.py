"""The optimize report: typed results (status and reason are enums), one JSON for machines (report.json) and one
Markdown page for people (report.md). Decisions are taken on the enums, never on the text of a note."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from smallnets.core.artifacts import REPORT_JSON, REPORT_MARKDOWN


class Status(StrEnum):
    """What optimize concluded about int8."""

    ACCEPTED = "accepted"  # model.int8.onnx written, its top-1 drop validated on labelled photos
    UNVALIDATED = "unvalidated"  # model.int8.onnx written, faithful to fp32, but its accuracy is not validated
    REJECTED = "rejected"  # no int8 file: fp32 is the output


class Reason(StrEnum):
    """Why: one value per rule of the gate and per refusal of the recipe search."""

    VALIDATED_ON_LABELS = "validated_on_labels"
    NO_LABELS = "no_labels"
    TOO_FEW_LABELS = "too_few_labels"
    RANDOM_WEIGHTS = "random_weights"
    DROP_OVER_BUDGET = "drop_over_budget"
    INTERVAL_TOO_WIDE = "interval_too_wide"
    AGREEMENT_BELOW_FLOOR = "agreement_below_floor"
    COSINE_BELOW_FLOOR = "cosine_below_floor"
    NONE_FASTER = "none_faster"


@dataclass(frozen=True)
class Verdict:
    status: Status
    reason: Reason
    detail: str

    @property
    def writes_int8(self) -> bool:
        return self.status is not Status.REJECTED


@dataclass
class OptimizeReport:
    """What ``optimize_model`` did and measured; ``to_dict`` is the report.json schema.

    ``status``/``reason`` are the verdict (enums, serialised as their values); ``detail`` says it in words.
    ``evaluation`` holds the final figures, measured on the report part only; ``split`` how the images were
    divided (counts, overlap check); ``accuracy_status`` is the one line to show beside any accuracy figure.
    """

    outdir: Path
    status: Status
    reason: Reason
    detail: str
    output: str
    target: str
    target_reason: str
    preset: dict[str, Any]
    fp32: dict[str, Any]
    int8: dict[str, Any] | None
    speedup: float | None
    speed_gated: bool
    accuracy_status: str
    agreement_top1: float | None
    top5_overlap: float | None
    cosine_mean: float | None
    evaluation: dict[str, Any]
    gate: dict[str, Any]
    split: dict[str, Any]
    budget: dict[str, Any]
    kept_float: list[dict[str, Any]]
    calibration_images: int
    calibration_source: str
    calibration_method: str
    eval_images: int
    eval_source: str
    node_counts: dict[str, Any]
    search: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    cpu: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)

    @property
    def accepted(self) -> bool:
        return self.status is Status.ACCEPTED

    @property
    def labelled(self) -> dict[str, Any] | None:
        """The paired fp32-vs-int8 figures on labelled report images, when there were labels."""
        return self.evaluation.get("labelled")

    def to_dict(self) -> dict[str, Any]:
        data = {key: value for key, value in self.__dict__.items() if key != "outdir"}
        return {**data, "status": self.status.value, "reason": self.reason.value}

    def write(self, folder: Path) -> None:
        (folder / REPORT_JSON).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n")
        (folder / REPORT_MARKDOWN).write_text(self.to_markdown())

    def summary(self) -> str:
        """The lines the CLI prints."""
        fp32 = self.fp32
        if self.status is Status.REJECTED:
            return (
                f"int8 REJECTED ({self.reason.value}): {self.detail}.\nThe output is the fp32 model "
                f"{self.outdir / self.output} ({fp32['latency_ms_p50']:.2f} ms p50 at batch 1); "
                f"see {self.outdir / REPORT_MARKDOWN}"
            )
        int8 = self.int8 or {}
        return (
            f"{self.outdir / self.output}: int8 {self.status.value.upper()} for target {self.target}, "
            f"{self.speedup:.2f}x faster than fp32 ({fp32['latency_ms_p50']:.2f} -> {int8['latency_ms_p50']:.2f} ms "
            f"p50, batch 1, 1 thread); {self.detail}; kept float: "
            f"{', '.join(k['group'] for k in self.kept_float) or 'nothing'}; {float_op_summary(int8.get('float_ops'))}"
        )

    def to_markdown(self) -> str:
        lines = [
            f"# Optimize report: {self.status.value}",
            "",
            f"- verdict: **{self.status.value}** ({self.reason.value}): {self.detail}",
            f"- accuracy: {self.accuracy_status}",
            f"- output: `{self.output}`",
            f"- target: **{self.target}** ({self.target_reason})"
            + ("" if self.speed_gated else "; speed not gated (see notes)"),
            f"- preset: {self.preset.get('signature')} reduce_range={self.preset.get('reduce_range')} "
            f"per_channel={self.preset.get('per_channel')} format={self.preset.get('quant_format')}",
            f"- calibration: {self.calibration_images} images, {self.calibration_method} ({self.calibration_source})",
            f"- evaluation: {self.eval_source}",
            *split_lines(self.split),
            "",
            "| model | size (bytes) | p50 ms (batch 1, 1 thread) |",
            "|---|---:|---:|",
            f"| fp32 | {self.fp32['size_bytes']} | {number(self.fp32['latency_ms_p50'], '.3f')} |",
        ]
        if self.int8:
            lines.append(f"| int8 | {self.int8['size_bytes']} | {number(self.int8['latency_ms_p50'], '.3f')} |")
        lines += ["", *figure_lines(self.evaluation), "", "## Kept in float", ""]
        lines += [
            f"- {k['group']} ({k['nodes']} nodes: {', '.join(k['op_types'])}): {k['reason']}" for k in self.kept_float
        ]
        lines += [*([] if self.kept_float else ["- nothing"]), *float_op_lines((self.int8 or {}).get("float_ops"))]
        from smallnets.optimize.sensitivity import report_lines  # imports onnx: not at module level (aarch64 guest)

        lines += report_lines(self.search.get("layer_sensitivity"))
        lines += ["", "## Candidates tried (selection part)", ""]
        if self.search.get("formats"):
            lines += [
                f"Quantization options, all-int8 each, first: {self.search['quant']} carried on to the group search.",
                "",
            ]
        lines += [
            "A candidate passes unless it is significantly over the budget (its interval's lower end above "
            "--max-drop) or below the agreement floor; the fastest passing one goes to the report part.",
            "",
            "| candidate | float groups | top-1 drop (points) | 95% CI | agreement | cosine | passed | speedup |",
            "|---|---|---:|---:|---:|---:|---|---:|",
        ]
        for trial in [*self.search.get("formats", []), *self.search.get("trials", [])]:
            check = trial["check"]
            labelled = check.get("labelled") or {}
            drop = labelled.get("drop_points")
            interval = "{:+.2f} to {:+.2f}".format(*labelled["drop_interval_points"]) if labelled else "-"
            quant = f" ({trial['quant']})" if trial.get("quant") else ""
            lines.append(
                f"| {trial['name']}{quant} | {', '.join(trial['float_groups']) or '-'} | {number(drop, '+.2f')} | "
                f"{interval} | {check['agreement_top1']:.2%} | {check['cosine_mean']:.4f} | "
                f"{'yes' if trial['passed_selection'] else 'no'} | {number(trial['speedup'], '.2f')} |"
            )
        lines += ["", "## Node counts (export -> fused fp32)", "", "| op | before | after |", "|---|---:|---:|"]
        for op, counts in self.node_counts.get("fusion", {}).items():
            lines.append(f"| {op} | {counts['before']} | {counts['after']} |")
        if self.notes:
            lines += ["", "## Notes", "", *(f"- {note}" for note in self.notes)]
        return "\n".join(lines) + "\n"


def float_op_summary(listing: dict[str, Any] | None) -> str:
    """One line for the CLI: the int8 MAC share and the ops left in float (optimize/float_ops.py measures them)."""
    if not listing:
        return "float ops not measured"
    share = listing["int8_mac_share"]
    ops = ", ".join(f"{row['op']} x{row['count']} ({row['by']})" for row in listing["float_ops"]) or "none"
    measured = f"int8 share of MACs {share:.1%}" if share is not None else "no MACs counted"
    return f"{measured}; ops in float: {ops}"


def float_op_lines(listing: dict[str, Any] | None) -> list[str]:
    """What the int8 file still computes in float, as onnxruntime runs it, and the int8 share of its MACs."""
    if not listing:
        return []
    share = listing["int8_mac_share"]
    lines = [
        "",
        "## Ops left in float (as onnxruntime runs the int8 file)",
        "",
        f"int8 share of the multiply-accumulates: {'-' if share is None else format(share, '.1%')} "
        f"({listing['macs']['int8']:,} int8, {listing['macs']['float']:,} float; {listing['measured_by']})",
        "",
    ]
    lines += [f"- {row['op']} x{row['count']}: {row['macs']:,} MACs, {row['by']}" for row in listing["float_ops"]]
    if listing.get("uncounted_kernels"):
        lines.append(f"- MACs not counted (no matching graph node): {', '.join(listing['uncounted_kernels'])}")
    return lines if listing["float_ops"] else [*lines, "- none: every compute op runs in int8"]


def number(value: Any, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def split_lines(split: dict[str, Any]) -> list[str]:
    counts = split.get("counts")
    if not counts:
        return []
    return [
        f"- split ({split.get('method')}): {counts['calibration']} calibration, {counts['selection']} selection, "
        f"{counts['report']} report images; disjoint: {split.get('disjoint')} "
        f"(photos in both --calib-dir and --eval-dir: {split.get('shared_between_folders', 0)}, "
        f"duplicates removed: {split.get('duplicates_removed', 0)})"
    ]


def figure_lines(evaluation: dict[str, Any]) -> list[str]:
    """The final figures of the report part: labelled paired comparison when there is one, agreement always."""
    agreement = evaluation.get("agreement") or {}
    speedup = number(evaluation.get("candidate_speedup"), ".2f")
    lines = [f"Report part, candidate `{evaluation.get('candidate', '-')}` vs fp32 (speedup {speedup}x in the search)"]
    labelled = evaluation.get("labelled")
    if labelled:
        reference, candidate = labelled["reference"], labelled["candidate"]
        low, high = labelled["drop_interval_points"]
        lines += [
            "",
            "| | top-1 | 95% CI | top-5 |",
            "|---|---:|---:|---:|",
            accuracy_row("fp32", reference),
            accuracy_row("int8", candidate),
            "",
            f"top-1 drop {labelled['drop_points']:+.2f} points (95% CI {low:+.2f} to {high:+.2f}, "
            f"{labelled['drop_interval']}), {labelled['broken']} broken / {labelled['fixed']} fixed "
            f"of {labelled['images']} labelled images",
        ]
    if agreement:
        lines.append(
            f"top-1 agreement {agreement['agreement_top1']:.2%} over all {agreement['images']} images, "
            f"top-5 overlap {agreement['top5_overlap']:.2%}, logit cosine {agreement['cosine_mean']:.4f} "
            f"(min {agreement['cosine_min']:.4f})"
        )
    return lines


def accuracy_row(name: str, figures: dict[str, Any]) -> str:
    low, high = figures["top1_interval"]
    return f"| {name} | {figures['top1']:.2%} | {low:.1%}-{high:.1%} | {figures['top5']:.2%} |"
