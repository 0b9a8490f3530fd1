"""fp32 vs int8 on the same pictures, and the int8 gate: labelled photos decide, agreement and cosine guard.

The gate (see :func:`final_verdict`), on images neither calibration nor the recipe choice has seen:
- labelled photos, >= ``MIN_LABELLED_IMAGES``: int8 is accepted only if the upper end of the 95% interval of its
  paired top-1 drop (Tango's score interval, smallnets.core.evaluation) is <= ``--max-drop`` points AND its raw
  top-1 agreement with fp32 is >= ``LABELLED_AGREEMENT_FLOOR``;
- fewer labelled photos, none, or random weights: int8 may still be written, as "unvalidated", when it keeps
  top-1 agreement over ALL images and the target's logit-cosine floor; it is never called validated.
Every rule can fail: a broken graph (a zeroed weight) has near-zero agreement and a low cosine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
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
from smallnets.core.runtime import OnnxClassifier
from smallnets.optimize.report import Reason, Status, Verdict

# Below 200 paired photos even zero flips leave a 95% upper bound near 2 points (z^2 / (n + z^2)): too wide for
# any budget a user would set, so the verdict is "unvalidated" rather than a number that cannot be trusted.
MIN_LABELLED_IMAGES = 200
# The drop cannot see an int8 model that breaks as many photos as it fixes, nor one that changes wrong answers
# into other wrong answers; agreement can. A faithful int8 changes few top-1 predictions: Lite0 all-int8 keeps
# 97.9% (x86-vnni) and 96.1% (x86-avx2, 7-bit weights) on 436 imagenet-dev photos, while onnxruntime's naive
# static int8 that loses 10.4 points on an AVX2 CPU (issue 11) changes far more than one prediction in ten.
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

    def __init__(self, fp32: Path, data: PreparedImages, desc: str) -> None:
        self.data = data
        self.desc = desc
        self.fp32 = self._run(fp32, "fp32")

    def _run(self, model: Path, precision: str) -> np.ndarray:
        classifier = OnnxClassifier(model)
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
            "min_labelled_images": MIN_LABELLED_IMAGES,
            "labelled_agreement_floor": LABELLED_AGREEMENT_FLOOR,
            "unlabelled_agreement_floor": UNLABELLED_AGREEMENT_FLOOR,
        }


def labels_decide(check: Check, rules: GateRules) -> bool:
    """Whether labelled figures can judge this check: trained weights and enough labelled photos."""
    return check.paired is not None and not rules.random_weights and check.paired.images >= MIN_LABELLED_IMAGES


def within_budget(check: Check, rules: GateRules) -> bool:
    """The recipe search's test on the selection part: point estimates (the interval is the final gate's job).

    With labels (trained weights): top-1 drop <= max_drop and agreement >= the labelled floor, whatever the
    count (the selection part is smaller than the report part). Otherwise the unlabelled rules.
    """
    if check.paired is not None and not rules.random_weights:
        return check.paired.drop_points <= rules.max_drop + 1e-9 and check.paired.agreement >= LABELLED_AGREEMENT_FLOOR
    return unlabelled_failure(check, rules) is None


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
    if labels_decide(check, rules):
        return labelled_verdict(check, rules)
    failure = unlabelled_failure(check, rules)
    if failure is not None:
        return failure
    measured = check.agreement
    figures = f"top-1 agreement {measured.agreement_top1:.1%} over all {measured.images} images, cosine "
    figures += f"{measured.cosine_mean:.4f}"
    if rules.random_weights:
        return Verdict(Status.UNVALIDATED, Reason.RANDOM_WEIGHTS, f"unvalidated (random weights): {figures}")
    if check.paired is not None:
        return Verdict(
            Status.UNVALIDATED,
            Reason.TOO_FEW_LABELS,
            f"only {check.paired.images} labelled report images (< {MIN_LABELLED_IMAGES}): accuracy not validated; "
            f"{figures}",
        )
    return Verdict(
        Status.UNVALIDATED,
        Reason.NO_LABELS,
        f"accuracy not validated on labelled photos (none given: set SMALLNETS_EVAL_DIR or --eval-dir); {figures}",
    )


def labelled_verdict(check: Check, rules: GateRules) -> Verdict:
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
    if paired.drop_points > rules.max_drop + 1e-9:
        return Verdict(
            Status.REJECTED,
            Reason.DROP_OVER_BUDGET,
            f"the measured drop ({paired.drop_points:+.2f}) exceeds --max-drop {rules.max_drop}: {figures}",
        )
    if high > rules.max_drop + 1e-9:
        # Inconclusive, not evidence against int8: the photos cannot bound the drop that tightly (248 photos with
        # no flip at all still leave an upper end near 1.5 points). Say so; do not call it validated.
        return Verdict(
            Status.UNVALIDATED,
            Reason.INTERVAL_TOO_WIDE,
            f"not validated: the upper end of the drop's 95% interval ({high:.2f}) exceeds --max-drop "
            f"{rules.max_drop}; more labelled photos (e.g. an ImageNet val folder) narrow it: {figures}",
        )
    return Verdict(Status.ACCEPTED, Reason.VALIDATED_ON_LABELS, f"validated: {figures}")


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
