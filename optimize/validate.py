"""fp32 vs int8 on the same pictures, through the project's one runtime (smallnets.core.runtime.OnnxClassifier)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from smallnets.core.runtime import OnnxClassifier, softmax

EVAL_BATCH = 16
# fp32 must prefer its top-1 by this many softmax probability points for an image to count as "decisive".
DECISIVE_MARGIN = 0.10


@dataclass(frozen=True)
class ValidationReport:
    """Agreement of a candidate with its reference; accuracies only when labels were given."""

    images: int
    agreement_top1: float
    top5_overlap: float
    cosine_mean: float
    cosine_min: float
    decisive_images: int
    agreement_top1_decisive: float | None
    reference_top1: float | None = None
    reference_top5: float | None = None
    candidate_top1: float | None = None
    candidate_top5: float | None = None

    @property
    def top1_drop(self) -> float | None:
        """Lost top-1 accuracy in percentage points (None without labels)."""
        if self.reference_top1 is None or self.candidate_top1 is None:
            return None
        return 100.0 * (self.reference_top1 - self.candidate_top1)

    def to_dict(self) -> dict[str, float | int | None]:
        return {**asdict(self), "top1_drop_points": self.top1_drop}


def compare_logits(
    reference: np.ndarray, candidate: np.ndarray, labels: Sequence[int] | None = None
) -> ValidationReport:
    """Metrics from two (N, classes) logit arrays of the same inputs."""
    top5_ref = np.argsort(-reference, axis=1)[:, :5]
    top5_cand = np.argsort(-candidate, axis=1)[:, :5]
    agreement = float(np.mean(top5_ref[:, 0] == top5_cand[:, 0]))
    overlap = float(np.mean([len(set(a) & set(b)) / 5.0 for a, b in zip(top5_ref, top5_cand, strict=True)]))
    decisive = decisive_mask(reference)
    agreement_decisive = float(np.mean((top5_ref[:, 0] == top5_cand[:, 0])[decisive])) if decisive.any() else None
    norms = np.linalg.norm(reference, axis=1) * np.linalg.norm(candidate, axis=1)
    cosine = np.sum(reference * candidate, axis=1) / np.maximum(norms, 1e-12)
    accuracies: dict[str, float] = {}
    if labels is not None:
        truth = np.asarray(labels)[:, None]
        for name, top5 in (("reference", top5_ref), ("candidate", top5_cand)):
            accuracies[f"{name}_top1"] = float(np.mean(top5[:, :1] == truth))
            accuracies[f"{name}_top5"] = float(np.mean(np.any(top5 == truth, axis=1)))
    return ValidationReport(
        len(reference),
        agreement,
        overlap,
        float(cosine.mean()),
        float(cosine.min()),
        int(decisive.sum()),
        agreement_decisive,
        **accuracies,
    )


def decisive_mask(logits: np.ndarray, margin: float = DECISIVE_MARGIN) -> np.ndarray:
    """Images on which the reference actually decides: top-1 probability >= runner-up + ``margin``.

    On near-ties (an out-of-distribution crop, two similar classes) fp32's own top-1 flips under a one-pixel
    shift, so int8 "disagreeing" there says nothing about the quantization; the unlabeled accuracy budget
    is therefore judged on decisive images, and the raw agreement is reported beside it.
    """
    probabilities = softmax(logits)
    top2 = np.sort(probabilities, axis=1)[:, -2:]
    return (top2[:, 1] - top2[:, 0]) >= margin


def predict_logits(classifier: OnnxClassifier, batches: Sequence[np.ndarray], desc: str) -> np.ndarray:
    from tqdm.auto import tqdm

    return np.concatenate([classifier.run(batch) for batch in tqdm(batches, desc=desc, unit="batch", leave=False)])


def preprocess_batches(classifier: OnnxClassifier, images: Sequence[Image.Image]) -> list[np.ndarray]:
    """Preprocess once (the card's recipe) so both models see bit-identical inputs."""
    return [classifier.preprocess(images[i : i + EVAL_BATCH]) for i in range(0, len(images), EVAL_BATCH)]


def compare(
    reference: Path,
    candidate: Path,
    images: Sequence[Image.Image],
    labels: Sequence[int] | None = None,
    threads: int | None = None,
) -> ValidationReport:
    """Run both models on ``images`` and report top-1 agreement, top-5 overlap, logit cosine, accuracies."""
    if not images:
        raise ValueError("validation needs at least one image")
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"{len(labels)} labels for {len(images)} images")
    reference_model = OnnxClassifier(reference, threads=threads)
    batches = preprocess_batches(reference_model, images)
    reference_logits = predict_logits(reference_model, batches, "evaluate fp32")
    candidate_logits = predict_logits(OnnxClassifier(candidate, threads=threads), batches, "evaluate int8")
    return compare_logits(reference_logits, candidate_logits, labels)
