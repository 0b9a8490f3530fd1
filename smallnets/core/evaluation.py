"""Labelled evaluation: photos -> top-1/top-5 with 95% intervals, and fp32 vs int8 on the same photos.

The one implementation that ``smallnets evaluate``, optimize's int8 gate and the benchmarks call. Folders are read
by smallnets.core.labelled, split and sampled by smallnets.core.split; intervals come from smallnets.core.intervals.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from smallnets.core.images import load_image
from smallnets.core.intervals import Interval, paired_difference_interval, wilson_interval
from smallnets.core.labelled import (
    EvaluationDataError,
    LabelledFolder,
    LabelledImage,
    provenance,
    read_labelled_folder,
)
from smallnets.core.metadata import Preprocessing
from smallnets.core.preprocess import preprocess
from smallnets.core.progress import Progress
from smallnets.core.runtime import OnnxClassifier
from smallnets.core.split import PhotoChoice, choose_photos, model_split

BATCH_SIZE = 16


# --- accuracy ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Accuracy:
    """Top-1/top-5 on labelled photos, with Wilson 95% intervals."""

    images: int
    top1_correct: int
    top5_correct: int

    @property
    def top1(self) -> float:
        return self.top1_correct / self.images if self.images else 0.0

    @property
    def top5(self) -> float:
        return self.top5_correct / self.images if self.images else 0.0

    @property
    def top1_interval(self) -> Interval:
        return wilson_interval(self.top1_correct, self.images)

    @property
    def top5_interval(self) -> Interval:
        return wilson_interval(self.top5_correct, self.images)

    def to_dict(self) -> dict[str, Any]:
        return {
            "images": self.images,
            "top1": self.top1,
            "top1_interval": self.top1_interval.to_list(),
            "top5": self.top5,
            "top5_interval": self.top5_interval.to_list(),
            "interval": "95% Wilson score",
        }

    def summary(self) -> str:
        low1, high1 = self.top1_interval.to_list()
        low5, high5 = self.top5_interval.to_list()
        return (
            f"top-1 {self.top1:.1%} (95% CI {low1:.1%}-{high1:.1%}), top-5 {self.top5:.1%} "
            f"(95% CI {low5:.1%}-{high5:.1%}) on {self.images} labelled images"
        )


def accuracy(logits: np.ndarray, labels: Sequence[int]) -> Accuracy:
    truth = np.asarray(labels)[:, None]
    top5 = np.argsort(-logits, axis=1, kind="stable")[:, :5]  # ties (quantized logits): first class, as argmax
    return Accuracy(len(truth), int(np.sum(top5[:, 0] == truth[:, 0])), int(np.sum(np.any(top5 == truth, axis=1))))


@dataclass(frozen=True)
class PairedComparison:
    """fp32 (reference) vs int8 (candidate) on the same labelled photos.

    ``drop_points`` = reference top-1 - candidate top-1 in percentage points; its interval is Tango's score
    interval on the paired difference (see :func:`paired_difference_interval`).
    """

    images: int
    broken: int  # reference right, candidate wrong
    fixed: int  # reference wrong, candidate right
    agreeing: int  # same top-1 class, right or wrong
    reference: Accuracy
    candidate: Accuracy

    @property
    def drop_points(self) -> float:
        return 100.0 * (self.broken - self.fixed) / self.images if self.images else 0.0

    @property
    def drop_interval_points(self) -> Interval:
        return paired_difference_interval(self.broken, self.fixed, self.images).scaled(100.0)

    @property
    def agreement(self) -> float:
        return self.agreeing / self.images if self.images else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "images": self.images,
            "reference": self.reference.to_dict(),
            "candidate": self.candidate.to_dict(),
            "broken": self.broken,
            "fixed": self.fixed,
            "agreement_top1": self.agreement,
            "drop_points": self.drop_points,
            "drop_interval_points": self.drop_interval_points.to_list(),
            "drop_interval": "95% Tango score interval for paired proportions",
        }


def compare_paired(reference: np.ndarray, candidate: np.ndarray, labels: Sequence[int]) -> PairedComparison:
    """Paired comparison of two (N, classes) logit arrays of the same labelled photos."""
    truth = np.asarray(labels)
    reference_top1, candidate_top1 = reference.argmax(axis=1), candidate.argmax(axis=1)
    reference_right, candidate_right = reference_top1 == truth, candidate_top1 == truth
    return PairedComparison(
        images=len(truth),
        broken=int(np.sum(reference_right & ~candidate_right)),
        fixed=int(np.sum(~reference_right & candidate_right)),
        agreeing=int(np.sum(reference_top1 == candidate_top1)),
        reference=accuracy(reference, labels),
        candidate=accuracy(candidate, labels),
    )


# --- running a model -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PreparedImages:
    """Photos preprocessed once for one preprocessing recipe, so every model sees identical inputs.

    ``labels`` is None for unlabelled pictures (optimize's demo set without an evaluation folder).
    """

    batches: tuple[np.ndarray, ...]
    labels: tuple[int, ...] | None
    preprocessing: Preprocessing
    source: str

    def __len__(self) -> int:
        return sum(len(batch) for batch in self.batches)


def progress(iterable: Iterable[Any], total: int, desc: str, unit: str = "img") -> Progress:
    """A bar on a terminal that goes away when done; silent in logs (CI, pipes)."""
    return Progress(iterable, desc, total, unit, leave=False)


def prepare(images: Sequence[LabelledImage], preprocessing: Preprocessing, source: str = "") -> PreparedImages:
    """Decode and preprocess photos in batches (decoded pictures are dropped right away: memory stays bounded)."""
    batches = []
    starts = range(0, len(images), BATCH_SIZE)
    for start in progress(starts, len(starts), "decode", unit="batch"):
        chunk = images[start : start + BATCH_SIZE]
        batches.append(preprocess([load_image(image.path) for image in chunk], preprocessing))
    return PreparedImages(tuple(batches), tuple(image.label for image in images), preprocessing, source)


def prepare_pictures(pictures: Sequence[Image.Image], preprocessing: Preprocessing, source: str) -> PreparedImages:
    """Unlabelled, already decoded pictures (the demo set) in the same form."""
    batches = tuple(
        preprocess(pictures[start : start + BATCH_SIZE], preprocessing) for start in range(0, len(pictures), BATCH_SIZE)
    )
    return PreparedImages(batches, None, preprocessing, source)


def predict(classifier: OnnxClassifier, prepared: PreparedImages, desc: str = "evaluate") -> np.ndarray:
    """Logits of every prepared photo, in order."""
    if prepared.preprocessing != classifier.card.preprocessing:
        raise ValueError(f"{classifier.path}: images were preprocessed for another recipe than the model's card")
    outputs = [classifier.run(batch) for batch in progress(prepared.batches, len(prepared.batches), desc, "batch")]
    return np.concatenate(outputs) if outputs else np.zeros((0, classifier.card.num_classes), np.float32)


@dataclass(frozen=True)
class Evaluation:
    """A model's accuracy on labelled photos, with the logits it produced (for paired comparisons)."""

    model: str
    weights: str
    source: str
    accuracy: Accuracy
    logits: np.ndarray = field(repr=False)
    labels: tuple[int, ...] = field(repr=False)
    photos: PhotoChoice | None = field(default=None, repr=False)  # which photos, when read from a folder

    @property
    def random_weights(self) -> bool:
        return self.weights.startswith("random")

    def __repr__(self) -> str:  # percentages with their intervals, not the counts behind them
        return f"Evaluation({self.model}: {self.summary()})"

    def to_dict(self) -> dict[str, Any]:
        status = "unvalidated (random weights)" if self.random_weights else "measured on labelled photos"
        photos = self.photos
        return {
            "model": self.model,
            "weights": self.weights,
            "source": self.source,
            "provenance": provenance(self.source, self.accuracy.images),
            "status": status,
            **self.accuracy.to_dict(),
            **({"photos": photos.description, "notes": list(photos.notes)} if photos else {}),
            **(
                {"files": [str(image.path.relative_to(self.source)) for image in photos.images]}
                if photos and photos.subset
                else {}
            ),
        }

    def summary(self) -> str:
        note = " -- unvalidated (random weights): no accuracy to speak of" if self.random_weights else ""
        photos = f" ({self.photos.description})" if self.photos else ""
        notes = "".join(f"\nnote: {line}" for line in self.photos.notes) if self.photos else ""
        return f"{self.accuracy.summary()} in {provenance(self.source, self.accuracy.images)}{photos}{note}{notes}"

    def compare(self, candidate: Evaluation) -> PairedComparison:
        """This (the reference) against ``candidate`` on the same photos."""
        if self.labels != candidate.labels:
            raise ValueError("paired comparison needs both models evaluated on the same photos")
        return compare_paired(self.logits, candidate.logits, self.labels)


def evaluate(
    model: str | Path | OnnxClassifier,
    data: str | Path | LabelledFolder | Sequence[LabelledImage] | PreparedImages,
    limit: int | None = None,
    desc: str = "evaluate",
) -> Evaluation:
    """Top-1/top-5 (95% Wilson intervals) of an ONNX classifier on labelled photos.

    ``data`` is an ImageFolder path, a read folder, some of its images (a split part), or images already
    prepared for this model (a recipe search evaluates many candidates on one prepared set).
    """
    classifier = model if isinstance(model, OnnxClassifier) else OnnxClassifier(model)
    if isinstance(data, str | Path):
        data = read_labelled_folder(data, classifier.card.synsets)
    choice = None
    if isinstance(data, LabelledFolder):
        choice = choose_photos(data, limit, model_split(Path(classifier.path)))
        source, data = str(data.root), choice.images
    else:
        source = getattr(data, "source", "") or "labelled images"
    if not isinstance(data, PreparedImages):
        if not data:
            raise EvaluationDataError(f"{source}: no labelled images to evaluate")
        data = prepare(list(data), classifier.card.preprocessing, source)
    if data.labels is None:
        raise EvaluationDataError(f"{data.source}: the images have no labels")
    logits = predict(classifier, data, desc)
    card = classifier.card
    return Evaluation(
        str(classifier.path), card.weights, source, accuracy(logits, data.labels), logits, data.labels, choice
    )
