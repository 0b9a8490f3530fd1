"""The recipe search: which node groups stay float so int8 is both accurate and faster than fp32 here.

Bounded and greedy, not a sweep:
1. Speed candidates, from most to least quantized: everything; smooth activations float; + squeeze-excite
   float; + grouped convs float; + depthwise float (the usual reasons int8 loses time on x86: Q/DQ pairs
   around unfusable ops, kernels without a fast int8 path). Groups absent from the model are skipped.
2. Each candidate is checked against the accuracy budget on the evaluation images. If it misses, groups are
   ranked by measured sensitivity (quantize with that group float, mean logit cosine vs fp32 on probe images)
   and the most sensitive are kept float one at a time until the budget holds or the step limit is reached.
3. Every candidate is timed against fp32 (batch 1, one thread, interleaved); the fastest within budget wins.
   If none beats fp32, or none meets the budget, int8 is rejected and fp32 remains the output. For a target
   CPU of another architecture (arm64 built on x86) timings are reported but not gated on.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from smallnets.core.runtime import OnnxClassifier
from smallnets.optimize.groups import NodeGroup
from smallnets.optimize.latency import measure_latency
from smallnets.optimize.validate import (
    DECISIVE_MARGIN,
    ValidationReport,
    compare_logits,
    predict_logits,
    preprocess_batches,
)

# Cumulative: each step keeps one more group float that costs int8 time on x86 (Q/DQ around unfusable
# activations, tiny 1x1 SE convs, grouped convs without a fast MLAS int8 path, depthwise convs).
SPEED_CANDIDATES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("all-int8", ()),
    ("float-activations", ("activations",)),
    ("float-activations-se", ("activations", "squeeze_excite")),
    ("float-activations-se-grouped", ("activations", "squeeze_excite", "grouped")),
    ("float-activations-se-grouped-depthwise", ("activations", "squeeze_excite", "grouped", "depthwise")),
)


@dataclass(frozen=True)
class SearchSettings:
    """Bounds of the search; tests shrink them, the CLI default is the full procedure."""

    max_drop: float = 1.0
    max_candidates: int | None = None
    max_repair_steps: int = 3
    latency_runs: int = 60
    probe_images: int = 16
    # False when the target CPU is not this machine's (e.g. arm64 built on x86): host timings of the target's
    # kernels say nothing about the device, so the most-quantized variant within budget is chosen instead.
    gate_on_speed: bool = True


@dataclass
class Trial:
    """One quantized variant that was built and measured."""

    name: str
    float_groups: tuple[str, ...]
    validation: ValidationReport
    within_budget: bool
    fp32_ms: float | None = None
    int8_ms: float | None = None
    path: Path | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def speedup(self) -> float | None:
        return self.fp32_ms / self.int8_ms if self.fp32_ms and self.int8_ms else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "float_groups": list(self.float_groups),
            "within_budget": self.within_budget,
            "agreement_top1": self.validation.agreement_top1,
            "agreement_top1_decisive": self.validation.agreement_top1_decisive,
            "accuracy_loss": accuracy_loss(self.validation),
            "cosine_mean": self.validation.cosine_mean,
            "top1_drop_points": self.validation.top1_drop,
            "fp32_ms": self.fp32_ms,
            "int8_ms": self.int8_ms,
            "speedup": self.speedup,
            "notes": self.notes,
        }


@dataclass
class SearchResult:
    chosen: Trial | None
    trials: list[Trial]
    sensitivity: dict[str, float]
    reason: str


def accuracy_loss(report: ValidationReport) -> float:
    """The budgeted number (see :func:`budget_metric`)."""
    if report.top1_drop is not None:
        return report.top1_drop
    if report.agreement_top1_decisive is not None:
        return 100.0 * (1.0 - report.agreement_top1_decisive)
    return 100.0 * (1.0 - report.cosine_mean)


def budget_metric(report: ValidationReport) -> str:
    """What ``--max-drop`` bounds for this evaluation set.

    Labels: top-1 points lost. Unlabeled: % top-1 disagreement on decisive images. If fp32 decides no image
    at all (random weights: every prediction is a near-tie), top-1 agreement measures nothing, so the
    budget falls back to the logit error, 100 * (1 - mean cosine).
    """
    if report.top1_drop is not None:
        return "top-1 accuracy points lost"
    if report.agreement_top1_decisive is not None:
        return (
            f"% top-1 disagreement on {report.decisive_images} decisive images (fp32 margin >= {DECISIVE_MARGIN:.0%})"
        )
    return "100 * (1 - mean logit cosine): fp32 makes no decisive prediction (random weights?)"


def within_budget(report: ValidationReport, max_drop: float) -> bool:
    return accuracy_loss(report) <= max_drop + 1e-9


class LogitCache:
    """fp32 logits of a fixed image set computed once; candidates are compared against them."""

    def __init__(self, fp32: Path, images: Sequence[Image.Image], labels: Sequence[int] | None, desc: str) -> None:
        classifier = OnnxClassifier(fp32)
        self.batches = preprocess_batches(classifier, images)
        self.labels = labels
        self.desc = desc
        self.reference = predict_logits(classifier, self.batches, f"{desc} fp32")

    def compare(self, candidate: Path) -> ValidationReport:
        logits = predict_logits(OnnxClassifier(candidate), self.batches, f"{self.desc} int8")
        return compare_logits(self.reference, logits, self.labels)


def search_recipe(
    fp32: Path,
    groups: dict[str, NodeGroup],
    quantize: Callable[[Path, Sequence[str]], None],
    evaluation: LogitCache,
    probe: LogitCache,
    workdir: Path,
    settings: SearchSettings,
) -> SearchResult:
    """Run the bounded search; ``quantize(output, excluded_nodes)`` builds one variant."""
    built: dict[tuple[str, ...], tuple[Path, ValidationReport]] = {}

    def build(float_groups: Sequence[str], against: LogitCache) -> tuple[Path, ValidationReport]:
        key = tuple(sorted(set(float_groups)))
        path = workdir / f"candidate-{len(built)}.onnx"
        if key in built and against is evaluation:
            return built[key]
        quantize(path, [node for name in key for node in groups[name].nodes])
        report = against.compare(path)
        if against is evaluation:
            built[key] = (path, report)
        return path, report

    candidates: list[tuple[str, tuple[str, ...]]] = []
    for _, wanted in SPEED_CANDIDATES:
        present = tuple(group for group in wanted if group in groups)
        if all(present != existing for _, existing in candidates):
            candidates.append(("float-" + "+".join(present) if present else "all-int8", present))
    candidates = candidates[: settings.max_candidates]

    sensitivity: dict[str, float] = {}
    trials: list[Trial] = []
    for name, float_groups in candidates:
        path, report = build(float_groups, evaluation)
        trial = Trial(name, float_groups, report, within_budget(report, settings.max_drop), path=path)
        steps = 0
        while not trial.within_budget and steps < settings.max_repair_steps:
            if not sensitivity:
                sensitivity = rank_sensitivity(groups, float_groups, build, probe)
            remaining = [
                g for g in sorted(sensitivity, key=sensitivity.get, reverse=True) if g not in trial.float_groups
            ]
            if not remaining:
                break
            steps += 1
            float_groups = (*trial.float_groups, remaining[0])
            path, report = build(float_groups, evaluation)
            notes = [
                *trial.notes,
                f"kept {remaining[0]} float for accuracy (sensitivity {sensitivity[remaining[0]]:+.4f})",
            ]
            trial = Trial(
                f"{name}+{remaining[0]}",
                float_groups,
                report,
                within_budget(report, settings.max_drop),
                path=path,
                notes=notes,
            )
        # Timed even when over budget: the report then shows what speed the accuracy budget cost.
        trial.fp32_ms, trial.int8_ms = measure_latency([fp32, path], runs=settings.latency_runs)
        trials.append(trial)

    passing = [trial for trial in trials if trial.within_budget]
    if not passing:
        best = min(trials, key=lambda t: (accuracy_loss(t.validation), -t.validation.cosine_mean))
        return SearchResult(
            None,
            trials,
            sensitivity,
            f"no int8 variant met the accuracy budget (max drop {settings.max_drop}); best was {best.name} with "
            f"accuracy loss {accuracy_loss(best.validation):.2f} "
            f"(top-1 agreement {best.validation.agreement_top1:.1%})",
        )
    if not settings.gate_on_speed:
        chosen = passing[0]  # candidates run from most to least quantized
        final = workdir / "chosen.onnx"
        shutil.copyfile(chosen.path, final)
        chosen.path = final
        return SearchResult(
            chosen,
            trials,
            sensitivity,
            f"{chosen.name}: most-quantized variant within the accuracy budget; speed not gated because the "
            "target CPU is not this machine's (host timings are reported, measure on the device with "
            "`smallnets bench`)",
        )
    fastest = max(passing, key=lambda t: t.speedup or 0.0)
    if (fastest.speedup or 0.0) < 1.0:
        return SearchResult(
            None,
            trials,
            sensitivity,
            f"every int8 variant within the accuracy budget is slower than fp32 here (best {fastest.name}: "
            f"{fastest.speedup:.2f}x at batch 1, 1 thread)",
        )
    final = workdir / "chosen.onnx"
    shutil.copyfile(fastest.path, final)
    fastest.path = final
    return SearchResult(fastest, trials, sensitivity, f"{fastest.name}: fastest variant within the accuracy budget")


def rank_sensitivity(
    groups: dict[str, NodeGroup],
    base: Sequence[str],
    build: Callable[[Sequence[str], LogitCache], tuple[Path, ValidationReport]],
    probe: LogitCache,
) -> dict[str, float]:
    """Gain in mean logit cosine (vs fp32, probe images) from keeping each group float on top of ``base``."""
    _, reference = build(base, probe)
    gains = {}
    for name in groups:
        if name not in base:
            _, report = build((*base, name), probe)
            gains[name] = report.cosine_mean - reference.cosine_mean
    return gains
