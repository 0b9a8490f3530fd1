"""fp32 vs int8 on the same pictures, and the one three-way rule that judges int8 (search and final gate alike).

The rule, on labelled photos (trained weights), from the 95% Tango interval of the paired top-1 drop:
- ACCEPTED when the interval's upper end is <= ``--max-drop`` (on >= ``MIN_LABELLED_IMAGES`` photos);
- REJECTED only on evidence: its lower end > ``--max-drop`` (significantly worse), or top-1 agreement with fp32
  below ``LABELLED_AGREEMENT_FLOOR``; otherwise UNVALIDATED (int8 written, labelled so, with what would validate it).
Labelled photos always count: a significant drop is rejected whatever their number.

The recipe search applies the same rule to each candidate on the selection part (:func:`passes_selection`: not
significantly over budget) and takes the fastest that passes; the verdict, rejections included, is read once, on
the report part, for that one candidate (:func:`final_verdict`). The report part never informs the choice, so the
many candidates looked at do not multiply its error: a candidate whose true drop is within the budget is rejected
with probability <= 2.5% (the interval's lower tail), one whose true drop is over it is accepted with probability
<= 2.5% (the upper tail), whatever the search did. tests/test_gate_simulation.py checks both by simulation.

Without labels, or with random weights, int8 may still be written, as "unvalidated", when it keeps top-1
agreement over ALL images and the target's logit-cosine floor; it is never called validated. Every rule can
fail: a broken graph (a zeroed weight) has near-zero agreement and a low cosine.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from smallnets.core.evaluation import (
    PairedComparison,
    PreparedImages,
    compare_paired,
    evaluate,
    predict,
    prepare_pictures,
)
from smallnets.core.intervals import paired_difference_interval
from smallnets.core.runtime import OnnxClassifier
from smallnets.core.targets import ONNXRUNTIME
from smallnets.optimize.report import Reason, Status, Verdict

# Acceptance needs this many labelled report photos: below 200 even zero flips leave a 95% upper end near 2 points
# (z^2 / (n + z^2)), and the agreement floor needs enough photos to mean something. Rejection needs no minimum.
MIN_LABELLED_IMAGES = 200
# The largest count of labelled photos :func:`photos_needed` will name (beyond it: "no feasible number").
MAX_PHOTOS_NAMED = 10_000_000
# The drop cannot see an int8 model that breaks as many photos as it fixes, nor one that changes wrong answers
# into other wrong answers; agreement can (why 90%: docs/decisions.md#labelled-agreement-floor).
LABELLED_AGREEMENT_FLOOR = 0.90
# Without labels agreement is a sanity check, not an accuracy figure: the demo crops are full of near-ties that any
# perturbation flips (faithful Lite0 int8, cosine >= 0.97, agrees on 69-100% of a demo photo group's crops), so the
# floor only catches int8 that changes predictions wholesale (a broken graph agrees on a few percent).
UNLABELLED_AGREEMENT_FLOOR = 0.50


@dataclass(frozen=True)
class Agreement:
    """How closely a candidate follows its reference on the same inputs (no labels needed)."""

    images: int
    agreement_top1: float
    top5_overlap: float
    cosine_mean: float
    cosine_min: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare_logits(reference: np.ndarray, candidate: np.ndarray) -> Agreement:
    """Top-1 agreement and top-5 overlap over ALL images, and the logit cosine, of two (N, classes) arrays."""
    # Stable sort: on tied logits (int8 outputs are quantized) the first class wins, as with argmax everywhere else.
    top5_reference = np.argsort(-reference, axis=1, kind="stable")[:, :5]
    top5_candidate = np.argsort(-candidate, axis=1, kind="stable")[:, :5]
    overlap = [len(set(a) & set(b)) / 5.0 for a, b in zip(top5_reference, top5_candidate, strict=True)]
    norms = np.linalg.norm(reference, axis=1) * np.linalg.norm(candidate, axis=1)
    cosine = np.sum(reference * candidate, axis=1) / np.maximum(norms, 1e-12)
    return Agreement(
        len(reference),
        float(np.mean(top5_reference[:, 0] == top5_candidate[:, 0])),
        float(np.mean(overlap)),
        float(cosine.mean()),
        float(cosine.min()),
    )


@dataclass(frozen=True)
class Check:
    """A candidate measured against fp32 on one part of the images; ``paired`` only with labels."""

    agreement: Agreement
    paired: PairedComparison | None = None

    def to_dict(self) -> dict[str, Any]:
        return {**self.agreement.to_dict(), "labelled": self.paired.to_dict() if self.paired else None}


class Reference:
    """fp32 logits of one prepared image set, computed once; candidates are checked against them."""

    def __init__(self, fp32: Path, data: PreparedImages, desc: str, runtime: str = ONNXRUNTIME) -> None:
        self.data = data
        self.desc = desc
        self.runtime = runtime  # the target's: candidates are judged on what will run them
        self.fp32 = self._run(fp32, "fp32")

    def _run(self, model: Path, precision: str) -> np.ndarray:
        classifier = OnnxClassifier(model, runtime=self.runtime)
        if self.data.labels is None:
            return predict(classifier, self.data, f"{self.desc} {precision}")
        return evaluate(classifier, self.data, desc=f"{self.desc} {precision}").logits

    def check(self, candidate: Path) -> Check:
        logits = self._run(candidate, f"int8 {candidate.stem}")
        paired = compare_paired(self.fp32, logits, self.data.labels) if self.data.labels is not None else None
        return Check(compare_logits(self.fp32, logits), paired)


@dataclass(frozen=True)
class GateRules:
    """What int8 must keep: ``max_drop`` top-1 points (labels), the target's cosine floor, and what is known."""

    max_drop: float
    min_cosine: float
    random_weights: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "rule": "accepted: upper end of the 95% Tango interval of the top-1 drop <= max_drop (on >= "
            f"{MIN_LABELLED_IMAGES} labelled report photos); rejected: lower end > max_drop, or agreement below "
            "the floor; else unvalidated. The search keeps candidates not significantly over max_drop on the "
            "selection part; the verdict is read on the report part only",
            "min_labelled_images": MIN_LABELLED_IMAGES,
            "labelled_agreement_floor": LABELLED_AGREEMENT_FLOOR,
            "unlabelled_agreement_floor": UNLABELLED_AGREEMENT_FLOOR,
        }


class Finding(StrEnum):
    """Where the 95% interval of a paired top-1 drop lies against the budget."""

    WITHIN = "within"  # upper end <= max_drop: the drop is shown to be within the budget
    OVER = "over"  # lower end > max_drop: significantly over the budget (evidence against int8)
    UNDECIDED = "undecided"  # the interval straddles the budget: these photos cannot tell


def judge_drop(broken: float, fixed: float, images: float, max_drop: float) -> Finding:
    """The three-way rule on counts of broken/fixed photos among ``images`` (fractional counts allowed)."""
    low, high = paired_difference_interval(broken, fixed, images).scaled(100.0).to_list()
    if low > max_drop + 1e-9:
        return Finding.OVER
    return Finding.WITHIN if high <= max_drop + 1e-9 else Finding.UNDECIDED


def drop_finding(paired: PairedComparison, max_drop: float) -> Finding:
    return judge_drop(paired.broken, paired.fixed, paired.images, max_drop)


def labels_count(check: Check, rules: GateRules) -> bool:
    """Whether labelled figures judge this check: trained weights and any labelled photos (whatever their number)."""
    return check.paired is not None and not rules.random_weights


def passes_selection(check: Check, rules: GateRules) -> bool:
    """The search's test of one candidate on the selection part: the rule's "not rejected" side.

    With labels (trained weights): not significantly over the budget and agreement >= the labelled floor; a wide
    interval passes (the report part decides). Otherwise the unlabelled rules.
    """
    if labels_count(check, rules):
        paired = check.paired
        assert paired is not None
        return drop_finding(paired, rules.max_drop) is not Finding.OVER and paired.agreement >= LABELLED_AGREEMENT_FLOOR
    return unlabelled_failure(check, rules) is None


def photos_needed(broken: int, fixed: int, images: int, max_drop: float) -> int | None:
    """Labelled photos that would put the interval's upper end within ``max_drop`` at the observed rates of broken
    and fixed photos; None when no number can (the observed drop is at or over the budget)."""
    if images <= 0 or 100.0 * (broken - fixed) / images >= max_drop:
        return None

    def fits(count: int) -> bool:
        scale = count / images
        return judge_drop(broken * scale, fixed * scale, count, max_drop) is Finding.WITHIN

    low, high = images, MAX_PHOTOS_NAMED
    if not fits(high):
        return None
    while high - low > 1:  # the upper end falls as photos are added at fixed rates: bisection on the count
        middle = (low + high) // 2
        low, high = (low, middle) if fits(middle) else (middle, high)
    return max(high, MIN_LABELLED_IMAGES)


def what_would_validate(paired: PairedComparison, max_drop: float) -> str:
    """For an undecided verdict: the budget these photos can show, and the photos the asked budget needs."""
    _, high = paired.drop_interval_points.to_list()
    provable = math.ceil(high * 10 - 1e-9) / 10
    shown = (
        f"these {paired.images} photos can validate --max-drop {provable:.1f}"
        if paired.images >= MIN_LABELLED_IMAGES
        else f"acceptance needs at least {MIN_LABELLED_IMAGES} labelled report photos"
    )
    needed = photos_needed(paired.broken, paired.fixed, paired.images, max_drop)
    if needed is None:
        return f"{shown}; at the observed drop no number of photos validates --max-drop {max_drop}"
    return (
        f"{shown}; --max-drop {max_drop} needs about {needed} labelled report photos at the observed "
        f"{paired.broken} broken / {paired.fixed} fixed per {paired.images} (the report part is about half of a "
        "single --eval-dir)"
    )


def unlabelled_failure(check: Check, rules: GateRules) -> Verdict | None:
    """Why int8 fails the label-free rules (agreement over all images, logit cosine), or None if it passes.

    Random weights: top-1 of an untrained net is a near-tie on most photos, so only the cosine is judged.
    """
    measured = check.agreement
    if not rules.random_weights and measured.agreement_top1 < UNLABELLED_AGREEMENT_FLOOR:
        return Verdict(
            Status.REJECTED,
            Reason.AGREEMENT_BELOW_FLOOR,
            f"top-1 agreement with fp32 {measured.agreement_top1:.1%} over all {measured.images} images is below "
            f"the floor {UNLABELLED_AGREEMENT_FLOOR:.0%}",
        )
    if measured.cosine_mean < rules.min_cosine:
        return Verdict(
            Status.REJECTED,
            Reason.COSINE_BELOW_FLOOR,
            f"mean logit cosine with fp32 {measured.cosine_mean:.4f} is below the target's floor {rules.min_cosine}",
        )
    return None


def final_verdict(check: Check, rules: GateRules) -> Verdict:
    """The gate on the report part (see the module docstring)."""
    if labels_count(check, rules):
        return labelled_verdict(check, rules)
    failure = unlabelled_failure(check, rules)
    if failure is not None:
        return failure
    measured = check.agreement
    figures = f"top-1 agreement {measured.agreement_top1:.1%} over all {measured.images} images, cosine "
    figures += f"{measured.cosine_mean:.4f}"
    if rules.random_weights:
        return Verdict(Status.UNVALIDATED, Reason.RANDOM_WEIGHTS, f"unvalidated (random weights): {figures}")
    return Verdict(
        Status.UNVALIDATED,
        Reason.NO_LABELS,
        f"accuracy not validated on labelled photos (none given: set SMALLNETS_EVAL_DIR or --eval-dir); {figures}",
    )


def labelled_verdict(check: Check, rules: GateRules) -> Verdict:
    """The three-way rule on the report part's labelled figures."""
    paired = check.paired
    assert paired is not None
    low, high = paired.drop_interval_points.to_list()
    figures = (
        f"top-1 {100 * paired.reference.top1:.1f}% -> {100 * paired.candidate.top1:.1f}% on {paired.images} "
        f"labelled report images, drop {paired.drop_points:+.2f} points (95% CI {low:+.2f} to {high:+.2f}; "
        f"{paired.broken} broken, {paired.fixed} fixed), agreement {paired.agreement:.1%}"
    )
    if paired.agreement < LABELLED_AGREEMENT_FLOOR:
        return Verdict(
            Status.REJECTED,
            Reason.AGREEMENT_BELOW_FLOOR,
            f"agreement below the floor {LABELLED_AGREEMENT_FLOOR:.0%}: {figures}",
        )
    finding = drop_finding(paired, rules.max_drop)
    if finding is Finding.OVER:
        return Verdict(
            Status.REJECTED,
            Reason.DROP_OVER_BUDGET,
            f"significantly worse: the drop's 95% interval lies above --max-drop {rules.max_drop}: {figures}",
        )
    if finding is Finding.WITHIN and paired.images >= MIN_LABELLED_IMAGES:
        return Verdict(Status.ACCEPTED, Reason.VALIDATED_ON_LABELS, f"validated: {figures}")
    # Inconclusive, not evidence against int8: say so, and what would settle it; never call it validated.
    reason = Reason.TOO_FEW_LABELS if finding is Finding.WITHIN else Reason.INTERVAL_TOO_WIDE
    why = (
        f"only {paired.images} labelled report images"
        if reason is Reason.TOO_FEW_LABELS
        else f"the upper end of the drop's 95% interval ({high:.2f}) exceeds --max-drop {rules.max_drop}"
    )
    return Verdict(
        Status.UNVALIDATED,
        reason,
        f"not validated ({why}; {what_would_validate(paired, rules.max_drop)}): {figures}",
    )


def compare(
    reference: Path,
    candidate: Path,
    images: Sequence[Image.Image],
    threads: int | None = None,
) -> Agreement:
    """Agreement of ``candidate`` with ``reference`` on unlabelled pictures (tests, ad-hoc checks)."""
    if not images:
        raise ValueError("validation needs at least one image")
    reference_model = OnnxClassifier(reference, threads=threads)
    data = prepare_pictures(images, reference_model.card.preprocessing, "pictures")
    return compare_logits(predict(reference_model, data), predict(OnnxClassifier(candidate, threads=threads), data))
