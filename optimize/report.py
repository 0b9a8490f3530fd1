"""The optimize report: one JSON for machines (report.json) and one Markdown page for people (report.md)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smallnets.core.artifacts import REPORT_JSON, REPORT_MARKDOWN


@dataclass
class OptimizeReport:
    """What ``optimize_model`` did and measured; ``to_dict`` is the report.json schema.

    ``status`` is "accepted" (model.int8.onnx written) or "rejected" (no int8 variant was both within the
    accuracy budget and faster than fp32; ``int8`` is null and ``output`` names model.fp32.onnx).
    """

    outdir: Path
    status: str
    reason: str
    output: str
    target: str
    target_reason: str
    preset: dict[str, Any]
    fp32: dict[str, Any]
    int8: dict[str, Any] | None
    speedup: float | None
    agreement_top1: float | None
    top5_overlap: float | None
    cosine_mean: float | None
    accuracy: dict[str, Any]
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
        return self.status == "accepted"

    def to_dict(self) -> dict[str, Any]:
        return {key: value for key, value in self.__dict__.items() if key != "outdir"}

    def write(self, folder: Path) -> None:
        (folder / REPORT_JSON).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n")
        (folder / REPORT_MARKDOWN).write_text(self.to_markdown())

    def summary(self) -> str:
        """The lines the CLI prints."""
        fp32 = self.fp32
        if not self.accepted:
            return (
                f"int8 REJECTED: {self.reason}.\nThe output is the fp32 model {self.outdir / self.output} "
                f"({fp32['latency_ms_p50']:.2f} ms p50 at batch 1); see {self.outdir / REPORT_MARKDOWN}"
            )
        int8 = self.int8 or {}
        return (
            f"{self.outdir / self.output}: target {self.target}, {self.speedup:.2f}x faster than fp32 "
            f"({fp32['latency_ms_p50']:.2f} -> {int8['latency_ms_p50']:.2f} ms p50, batch 1, 1 thread), "
            f"top-1 agreement {self.agreement_top1:.1%} "
            f"({self._decisive_text()}), top-5 overlap {self.top5_overlap:.1%}, "
            f"cosine {self.cosine_mean:.4f} on {self.eval_images} images; "
            f"kept float: {', '.join(k['group'] for k in self.kept_float) or 'nothing'}"
        )

    def _decisive_text(self) -> str:
        agreement = self.accuracy.get("agreement_top1_decisive")
        if agreement is None:
            return "no decisive image: budget judged on logit cosine"
        return f"{agreement:.1%} on {self.accuracy.get('decisive_images')} decisive"

    def to_markdown(self) -> str:
        def number(value: Any, fmt: str) -> str:
            return "-" if value is None else format(value, fmt)

        lines = [
            f"# Optimize report: {self.status}",
            "",
            f"- output: `{self.output}` ({self.reason})",
            f"- target: **{self.target}** ({self.target_reason})",
            f"- preset: {self.preset.get('signature')} reduce_range={self.preset.get('reduce_range')} "
            f"per_channel={self.preset.get('per_channel')} format={self.preset.get('quant_format')}",
            f"- calibration: {self.calibration_images} images, {self.calibration_method} ({self.calibration_source})",
            f"- evaluation: {self.eval_images} images ({self.eval_source})",
            f"- accuracy budget: {self.budget['metric'] or 'see candidates'} <= {self.budget['max_drop']} "
            f"(measured: {number(self.budget['loss'], '.2f')})",
            "",
            "| model | size (bytes) | p50 ms (batch 1, 1 thread) |",
            "|---|---:|---:|",
            f"| fp32 | {self.fp32['size_bytes']} | {number(self.fp32['latency_ms_p50'], '.3f')} |",
        ]
        if self.int8:
            lines.append(f"| int8 | {self.int8['size_bytes']} | {number(self.int8['latency_ms_p50'], '.3f')} |")
        lines += [
            "",
            f"speedup {number(self.speedup, '.2f')}x, top-1 agreement {number(self.agreement_top1, '.2%')} "
            f"({self._decisive_text()}), "
            f"top-5 overlap {number(self.top5_overlap, '.2%')}, logit cosine {number(self.cosine_mean, '.4f')}",
            "",
            "## Kept in float",
            "",
        ]
        lines += [
            f"- {k['group']} ({k['nodes']} nodes: {', '.join(k['op_types'])}): {k['reason']}" for k in self.kept_float
        ]
        lines += [*([] if self.kept_float else ["- nothing"]), "", "## Candidates tried", ""]
        lines += [
            "| candidate | float groups | agreement | decisive agreement | cosine | within budget | speedup |",
            "|---|---|---:|---:|---:|---|---:|",
        ]
        for trial in self.search.get("trials", []):
            lines.append(
                f"| {trial['name']} | {', '.join(trial['float_groups']) or '-'} | {trial['agreement_top1']:.2%} | "
                f"{number(trial['agreement_top1_decisive'], '.2%')} | "
                f"{trial['cosine_mean']:.4f} | {trial['within_budget']} | {number(trial['speedup'], '.2f')} |"
            )
        lines += ["", "## Node counts (export -> fused fp32)", "", "| op | before | after |", "|---|---:|---:|"]
        for op, counts in self.node_counts.get("fusion", {}).items():
            lines.append(f"| {op} | {counts['before']} | {counts['after']} |")
        if self.notes:
            lines += ["", "## Notes", "", *(f"- {note}" for note in self.notes)]
        return "\n".join(lines) + "\n"
