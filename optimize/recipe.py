"""The recipe search: which node groups stay float so int8 is both accurate and faster than fp32 here.

Bounded and greedy, not a sweep, in named steps, all judged on the SELECTION part of the images (never on
the report part, whose figures would otherwise be the best of many tries: the winner's curse):
0. :func:`choose_format` -- the target's quantization options (e.g. QDQ and QOperator) each quantize everything;
   the fastest passing one carries on (the most faithful where speed is not gated); ties keep the default.
1. :func:`speed_candidates` -- from most to least quantized: everything; smooth activations float; the stem conv
   float; smooth activations + squeeze-excite float; + grouped convs float; + depthwise float (the usual reasons int8
   loses time on x86: Q/DQ pairs around unfusable ops, kernels without a fast int8 path). Groups absent from the
   model are skipped.
2. :func:`evaluate_candidate` / :func:`repair` -- build and check a candidate with the gate's rule on the
   selection part (:func:`passes_selection`: not significantly over the budget); if it is significantly over,
   keep the most sensitive groups (measured on probe images) float one at a time until it passes or the step
   limit is reached. Every candidate is timed.
3. :func:`choose` -- the fastest passing candidate that beats fp32 (the most quantized passing one when speed is
   not gated, e.g. an arm64 target built on x86). When none passes, the most faithful one goes on: the search
   refuses nothing on accuracy, the verdict (rejections included) is read on the report part only.
4. :func:`refusal` -- otherwise why not: no candidate faster than fp32.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smallnets.optimize.groups import NodeGroup
from smallnets.optimize.latency import MIN_MARGIN, measure_latency
from smallnets.optimize.report import Reason
from smallnets.optimize.validate import Check, GateRules, Reference, drop_finding, labels_count, passes_selection

# Cumulative but for the stem: each step keeps one more group float that costs int8 time on x86 (Q/DQ around
# unfusable activations, tiny 1x1 SE convs, grouped convs without a fast MLAS int8 path, depthwise convs).
SPEED_STEPS: tuple[tuple[str, ...], ...] = (
    (),
    ("activations",),
    # The stem alone: MLAS's int8 conv on 3 input channels was slower than fp32's (Lite0 0.66 vs 0.42 ms at 1 thread).
    # x86 now pads the stem's input to 4 channels (docs/decisions.md); all-int8 won on every model of the AVX-512
    # VNNI bench but Xception (3.15x vs 3.12x, a tie); the step stays for ARM64, whose stem gets no padding.
    ("stem",),
    ("activations", "squeeze_excite"),
    ("activations", "squeeze_excite", "grouped"),
    ("activations", "squeeze_excite", "grouped", "depthwise"),
)


@dataclass(frozen=True)
class SearchSettings:
    """Bounds of the search; tests shrink them, the CLI default is the full procedure."""

    rules: GateRules
    max_candidates: int | None = None
    max_formats: int | None = None  # how many of the target's quantization options step 0 tries (None: all)
    max_repair_steps: int = 3
    latency_runs: int = 60
    # False when the target CPU is not this machine's (e.g. arm64 built on x86): host timings of the target's
    # kernels say nothing about the device, so the most-quantized passing variant is chosen instead.
    gate_on_speed: bool = True


@dataclass
class Trial:
    """One quantized variant that was built, checked on the selection part and timed."""

    float_groups: tuple[str, ...]
    check: Check
    passed: bool  # not significantly over the budget on the selection part (the gate's rule, see validate.py)
    path: Path
    fp32_ms: float | None = None
    int8_ms: float | None = None
    # group kept float for accuracy -> why (its measured sensitivity); the other float groups are for speed
    repairs: dict[str, str] = field(default_factory=dict)
    quant: str = ""  # the quantization options' name (Target candidates), when several were tried

    @property
    def name(self) -> str:
        return candidate_name(self.float_groups)

    @property
    def speedup(self) -> float | None:
        return self.fp32_ms / self.int8_ms if self.fp32_ms and self.int8_ms else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "float_groups": list(self.float_groups),
            "passed_selection": self.passed,
            "check": self.check.to_dict(),
            "fp32_ms": self.fp32_ms,
            "int8_ms": self.int8_ms,
            "speedup": self.speedup,
            "repairs": self.repairs,
            "quant": self.quant,
        }


@dataclass(frozen=True)
class Refusal:
    """Why the search returns no int8 candidate."""

    reason: Reason
    detail: str


@dataclass
class SearchResult:
    """The chosen trial, or a refusal plus the closest trial (still reported on, never written)."""

    chosen: Trial | None
    closest: Trial | None
    refusal: Refusal | None
    trials: list[Trial]
    sensitivity: dict[str, float]
    formats: list[Trial] = field(default_factory=list)  # step 0's trials, when the target offered several


def candidate_name(float_groups: Sequence[str]) -> str:
    """Names say what is kept float: "all-int8", or "float-" and the float groups in the order they were kept."""
    return "float-" + "+".join(float_groups) if float_groups else "all-int8"


def speed_candidates(groups: dict[str, NodeGroup], max_candidates: int | None = None) -> list[tuple[str, ...]]:
    """Distinct float-group sets of :data:`SPEED_STEPS` restricted to the groups the model has, most int8 first."""
    candidates: list[tuple[str, ...]] = []
    for step in SPEED_STEPS:
        present = tuple(group for group in step if group in groups)
        if present not in candidates:
            candidates.append(present)
    return candidates[:max_candidates]


class CandidateBuilder:
    """Builds a variant with some groups float and checks it; each distinct set is built once per image set."""

    def __init__(
        self,
        groups: dict[str, NodeGroup],
        quantize: Callable[[Path, Sequence[str]], None],
        workdir: Path,
    ) -> None:
        self.groups = groups
        self.quantize = quantize
        self.workdir = workdir
        self.built: dict[tuple[str, ...], Path] = {}
        self.checked: dict[tuple[tuple[str, ...], int], Check] = {}

    def path(self, float_groups: Sequence[str]) -> Path:
        key = tuple(sorted(float_groups))
        if key not in self.built:
            path = self.workdir / f"{candidate_name(key)}.onnx"  # the name shows in progress bars
            self.quantize(path, [node for name in key for node in self.groups[name].nodes])
            self.built[key] = path
        return self.built[key]

    def check(self, float_groups: Sequence[str], against: Reference) -> tuple[Path, Check]:
        path = self.path(float_groups)
        key = (tuple(sorted(float_groups)), id(against))
        if key not in self.checked:
            self.checked[key] = against.check(path)
        return path, self.checked[key]


def evaluate_candidate(
    float_groups: tuple[str, ...], builder: CandidateBuilder, selection: Reference, rules: GateRules
) -> Trial:
    """Build one candidate and check it on the selection part with the gate's rule."""
    path, check = builder.check(float_groups, selection)
    return Trial(float_groups, check, passes_selection(check, rules), path)


def rank_sensitivity(builder: CandidateBuilder, base: Sequence[str], probe: Reference) -> dict[str, float]:
    """Gain in mean logit cosine (vs fp32, probe images) from keeping each group float on top of ``base``."""
    _, reference = builder.check(base, probe)
    gains = {}
    for name in builder.groups:
        if name not in base:
            _, check = builder.check((*base, name), probe)
            gains[name] = check.agreement.cosine_mean - reference.agreement.cosine_mean
    return gains


def repair(
    trial: Trial,
    builder: CandidateBuilder,
    selection: Reference,
    sensitivity: Callable[[], dict[str, float]],
    settings: SearchSettings,
) -> Trial:
    """Keep the most sensitive groups float, one per step, until the trial passes or steps run out."""
    for _ in range(settings.max_repair_steps):
        if trial.passed:
            break
        gains = sensitivity()
        remaining = [
            group for group in sorted(gains, key=gains.__getitem__, reverse=True) if group not in trial.float_groups
        ]
        if not remaining:
            break
        added = remaining[0]
        repaired = evaluate_candidate((*trial.float_groups, added), builder, selection, settings.rules)
        repaired.repairs = {**trial.repairs, added: f"accuracy: sensitivity {gains[added]:+.4f} (logit cosine gain)"}
        trial = repaired
    return trial


def choose(trials: Sequence[Trial], gate_on_speed: bool) -> Trial | None:
    """The trial the report part will judge: the fastest passing one that beats fp32, else the most faithful one
    that beats fp32 (never a refusal on selection figures); None only when none beats fp32. Without a speed gate:
    the most quantized passing trial, else the most faithful."""
    passing = [trial for trial in trials if trial.passed]
    if not gate_on_speed:
        return passing[0] if passing else max(trials, key=fidelity, default=None)  # most to least quantized
    faster = [trial for trial in trials if (trial.speedup or 0.0) > 1.0]
    faster_passing = [trial for trial in faster if trial.passed]
    if faster_passing:
        return max(faster_passing, key=lambda trial: trial.speedup or 0.0)
    return max(faster, key=fidelity, default=None)


def fidelity(trial: Trial) -> tuple[float, float]:
    """How closely a trial follows fp32 on the selection part: top-1 agreement, then mean logit cosine."""
    return trial.check.agreement.agreement_top1, trial.check.agreement.cosine_mean


def closest(trials: Sequence[Trial]) -> Trial:
    """The trial nearest to shipping when none beats fp32: the fastest passing one, else the most faithful."""
    passing = [trial for trial in trials if trial.passed]
    if passing:
        return max(passing, key=lambda trial: trial.speedup or 0.0)
    return max(trials, key=fidelity)


def selection_summary(trial: Trial, rules: GateRules) -> str:
    """One line on the chosen trial's selection figures, with the rule's finding."""
    paired = trial.check.paired
    if paired is None or not labels_count(trial.check, rules):
        measured = trial.check.agreement
        return f"{trial.name}: agreement {measured.agreement_top1:.1%}, cosine {measured.cosine_mean:.4f}"
    low, high = paired.drop_interval_points.to_list()
    return (
        f"{trial.name}: drop {paired.drop_points:+.2f} points (95% CI {low:+.2f} to {high:+.2f}, "
        f"{drop_finding(paired, rules.max_drop).value}) on {paired.images} selection photos, agreement "
        f"{paired.agreement:.1%}"
    )


def choose_format(
    fp32: Path,
    builders: dict[str, CandidateBuilder],
    selection: Reference,
    settings: SearchSettings,
    timer: Callable[[list[Path], int], list[float]] = measure_latency,
) -> tuple[str, list[Trial]]:
    """Step 0: which quantization options (``builders`` by options name, the target's default first) to search.

    Each builds its all-int8 variant, checked on the selection part and timed. With the speed gate on, the
    fastest passing one wins, but only by more than MIN_MARGIN over the default (a tie is noise, not a reason
    to leave the default); without it, or with none passing, the most faithful. One option: no trial.
    """
    names = list(builders)[: settings.max_formats]
    if len(names) == 1:
        return names[0], []
    trials = []
    for name in names:
        trial = evaluate_candidate((), builders[name], selection, settings.rules)
        trial.quant = name
        trial.fp32_ms, trial.int8_ms = timer([fp32, trial.path], settings.latency_runs)
        trials.append(trial)
    passing = [trial for trial in trials if trial.passed]
    if not settings.gate_on_speed or not passing:
        return max(passing or trials, key=fidelity).quant, trials
    default, bar = trials[0], (trials[0].speedup or 0.0) * (1.0 + MIN_MARGIN)
    faster = [trial for trial in passing if (trial.speedup or 0.0) > bar]
    if default.passed and not faster:
        return default.quant, trials
    return max(faster or passing, key=lambda trial: trial.speedup or 0.0).quant, trials


def refusal(trials: Sequence[Trial]) -> Refusal:
    """Why :func:`choose` found nothing: no candidate faster than fp32 (accuracy alone never refuses here)."""
    best = closest(trials)
    return Refusal(
        Reason.NONE_FASTER,
        f"every int8 variant tried is slower than fp32 here (best {best.name}: {best.speedup or 0.0:.2f}x at "
        "batch 1, 1 thread)",
    )


def search_recipe(
    fp32: Path,
    builder: CandidateBuilder,
    selection: Reference,
    probe: Reference,
    settings: SearchSettings,
    timer: Callable[[list[Path], int], list[float]] = measure_latency,
    formats: Sequence[Trial] = (),
) -> SearchResult:
    """Run steps 1-4 (see the module docstring) with ``builder``'s quantization options (step 0's choice, whose
    ``formats`` trials are kept in the result); the chosen file is copied to ``chosen.onnx``.

    ``timer(paths, runs)`` gives the p50 ms of each path (interleaved); tests pass a fake one.
    """
    ranked: dict[str, float] = {}

    def sensitivity() -> dict[str, float]:
        if not ranked:
            ranked.update(rank_sensitivity(builder, (), probe))
        return ranked

    trials = []
    for float_groups in speed_candidates(builder.groups, settings.max_candidates):
        trial = evaluate_candidate(float_groups, builder, selection, settings.rules)
        trial = repair(trial, builder, selection, sensitivity, settings)
        # Timed even when over budget: the report then shows what speed the accuracy budget cost.
        trial.fp32_ms, trial.int8_ms = timer([fp32, trial.path], settings.latency_runs)
        trials.append(trial)
    chosen = choose(trials, settings.gate_on_speed)
    if chosen is None:
        return SearchResult(None, closest(trials), refusal(trials), trials, ranked, list(formats))
    final = builder.workdir / "chosen.onnx"
    shutil.copyfile(chosen.path, final)
    chosen.path = final
    return SearchResult(chosen, chosen, None, trials, ranked, list(formats))
