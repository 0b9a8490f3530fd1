"""Labelled evaluation: an ImageFolder of ImageNet photos -> top-1/top-5 with 95% intervals, and fp32 vs int8.

The one implementation that ``smallnets evaluate``, optimize's int8 gate and the benchmarks call. A folder is
labelled when it has the ImageFolder layout ``DIR/SYNSET/photo.JPEG`` (e.g. ``n01440764/x.JPEG``); the class
index of a synset is its position in the model card's synset list (sorted WordNet ids for ImageNet-1k), so the
folder needs no side file and may hold any subset of the classes (imagenet-dev holds the even ones).

Images are identified by the SHA-256 of their bytes: duplicates are counted once, and the deterministic split
into calibration / selection / report parts depends on an image's content only (renaming or adding photos
never moves another photo to a different part).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from smallnets.core.artifacts import REPORT_JSON
from smallnets.core.images import IMAGE_SUFFIXES, load_image
from smallnets.core.metadata import Preprocessing
from smallnets.core.preprocess import preprocess
from smallnets.core.progress import Progress
from smallnets.core.runtime import OnnxClassifier

EVAL_DIR_ENV = "SMALLNETS_EVAL_DIR"
# Labelled folders whose absolute figures mislead, by folder name: said beside every accuracy figure taken on them.
KNOWN_FOLDERS = {
    "imagenet-dev": "ImageNet photos, likely from its training split: absolute top-1 is inflated, drops are what "
    "matter",
}
SYNSET_PATTERN = re.compile(r"^n\d{8}$")
EXPECTED_LAYOUT = "expected the ImageFolder layout DIR/SYNSET/photo.JPEG, e.g. DIR/n01440764/tench.JPEG"
Z_95 = 1.959963984540054  # two-sided 95% normal quantile
BATCH_SIZE = 16


class EvaluationDataError(ValueError):
    """An evaluation folder cannot be read as labelled photos; the message names the problem and the fix."""


@dataclass(frozen=True)
class LabelledImage:
    """One photo of a labelled folder: where it is, its class index and the SHA-256 of its bytes."""

    path: Path
    label: int
    digest: str


@dataclass(frozen=True)
class LabelledFolder:
    """The distinct photos of a labelled folder (byte-identical copies counted once), in path order."""

    root: Path
    images: tuple[LabelledImage, ...]
    duplicates: int = 0

    def __len__(self) -> int:
        return len(self.images)


def eval_dir_setting(flag: str | Path | None = None) -> Path | None:
    """The labelled folder to use: the flag when given, else ``$SMALLNETS_EVAL_DIR``, else None (no labels)."""
    value = flag if flag is not None else os.environ.get(EVAL_DIR_ENV) or None
    return Path(value) if value is not None else None


def provenance(folder: str | Path, images: int) -> str:
    """What to print beside an accuracy figure: the folder's name, the photo count, and any caveat it is known by."""
    name = Path(folder).name
    note = KNOWN_FOLDERS.get(name)
    return f"{name}, {images} photos" + (f"; {note}" if note else "")


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def image_files(folder: Path) -> Iterator[Path]:
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            yield path


def read_labelled_folder(folder: str | Path, synsets: Sequence[str], limit: int | None = None) -> LabelledFolder:
    """Every photo under ``folder``'s synset sub-folders, labelled by the synset's index in ``synsets``.

    ``limit`` keeps N photos evenly spaced in content-hash order (:func:`sample_evenly`).
    """
    root = Path(folder)
    if not root.is_dir():
        raise EvaluationDataError(f"{root}: not a folder; {EXPECTED_LAYOUT}")
    if not synsets:
        raise EvaluationDataError(
            "the model card lists no class synsets, so SYNSET folder names cannot be mapped to class indices: "
            "use a model exported by `smallnets export`"
        )
    index = {synset: position for position, synset in enumerate(synsets)}
    paths = list(image_files(root))
    if not paths:
        raise EvaluationDataError(f"{root}: no images found (searched recursively); {EXPECTED_LAYOUT}")
    labels = [label_of(root, path, index) for path in paths]  # layout errors before any file is read
    images: dict[str, LabelledImage] = {}
    for path, label in zip(paths, labels, strict=True):
        images.setdefault(file_digest(path), LabelledImage(path, label, ""))
    labelled = tuple(LabelledImage(image.path, image.label, digest) for digest, image in images.items())
    if limit is not None:
        labelled = sample_evenly(labelled, limit)
    return LabelledFolder(root, tuple(sorted(labelled, key=lambda image: image.path)), len(paths) - len(images))


def sample_evenly(images: Sequence[LabelledImage], limit: int) -> tuple[LabelledImage, ...]:
    """``limit`` photos evenly spaced in content-hash order: deterministic, mixed over the classes, and drawn from
    every part of a hash split in proportion (the first N in hash order would all be calibration photos)."""
    ordered = sorted(images, key=lambda image: image.digest)
    if limit >= len(ordered):
        return tuple(ordered)
    return tuple(ordered[int((index + 0.5) * len(ordered) / limit)] for index in range(limit))


def label_of(root: Path, path: Path, index: dict[str, int]) -> int:
    """The class index of ``root/SYNSET/.../photo``; a clear error for anything else."""
    parts = path.relative_to(root).parts
    if len(parts) < 2:
        raise EvaluationDataError(f"{path} is not in a class sub-folder: the folder is not labelled; {EXPECTED_LAYOUT}")
    synset = parts[0]
    if not SYNSET_PATTERN.match(synset):
        raise EvaluationDataError(
            f"{root / synset}: sub-folder name is not a WordNet synset id (nXXXXXXXX); {EXPECTED_LAYOUT}"
        )
    if synset not in index:
        raise EvaluationDataError(f"{root / synset}: synset {synset} is not one of the model's {len(index)} classes")
    return index[synset]


# --- intervals -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Interval:
    """A two-sided 95% confidence interval, in the unit of the estimate it belongs to."""

    low: float
    high: float

    def scaled(self, factor: float) -> Interval:
        return Interval(self.low * factor, self.high * factor)

    def to_list(self) -> list[float]:
        return [self.low, self.high]


def wilson_interval(successes: int, total: int, z: float = Z_95) -> Interval:
    """Wilson score interval of a proportion: keeps its coverage near 0 and 1, where the normal one collapses."""
    if total <= 0:
        return Interval(0.0, 1.0)
    p = successes / total
    denominator = 1.0 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denominator
    low = 0.0 if successes == 0 else max(0.0, centre - half)  # exact ends: rounding would leave 1e-17 off
    high = 1.0 if successes == total else min(1.0, centre + half)
    return Interval(low, high)


@functools.lru_cache(maxsize=65536)
def paired_difference_interval(broken: float, fixed: float, total: float, z: float = Z_95) -> Interval:
    """95% interval of the paired difference p(reference right) - p(candidate right), as a fraction.

    Tango's (1998) score interval for matched pairs: only the discordant pairs (``broken``: reference right,
    candidate wrong; ``fixed``: the reverse) carry information, and the score statistic
    ``(b - c - n d) / sqrt(n (2 q(d) + d (1 - d)))`` with ``q(d)`` the constrained maximum-likelihood estimate
    of p(fixed) is inverted numerically. Unlike the Wald interval on discordant pairs it stays honest when there
    are few or no flips: with none among n images the upper end is z^2 / (n + z^2) (about 1.5 points for 250
    images), not zero. Counts may be fractional (what-if questions at observed rates); results are cached, as a
    recipe search and the gate's simulation ask for the same counts many times.
    """
    if total <= 0:
        return Interval(-1.0, 1.0)
    estimate = (broken - fixed) / total

    def score(difference: float) -> float:
        b_coef = (broken + fixed) - (2 * total - broken + fixed) * difference
        # The discriminant is >= 0 in exact arithmetic; at d -> -1 with every pair fixed it rounds below zero.
        discriminant = max(0.0, b_coef * b_coef + 8 * total * fixed * difference * (1 - difference))
        constrained = (b_coef + math.sqrt(discriminant)) / (4 * total)
        numerator = broken - fixed - total * difference
        variance = total * (2 * constrained + difference * (1 - difference))
        return (
            numerator / math.sqrt(variance)
            if variance > 0
            else (0.0 if numerator == 0 else math.copysign(1e9, numerator))
        )

    def solve(low: float, high: float, target: float) -> float:
        """Bisection for score(d) = target on [low, high]; score falls as d grows."""
        for _ in range(100):
            middle = (low + high) / 2
            if score(middle) > target:
                low = middle
            else:
                high = middle
        return (low + high) / 2

    edge = 1.0 - 1e-12
    # min/max: at an estimate of exactly +-1 (every pair broken, or fixed) the bisection stops 1e-12 short of it.
    return Interval(min(solve(-edge, estimate, z), estimate), max(solve(estimate, edge, -z), estimate))


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


# --- the split -----------------------------------------------------------------------------------------------


class Part(Enum):
    """Where an image may be used: never in more than one part."""

    CALIBRATION = "calibration"
    SELECTION = "selection"
    REPORT = "report"


@dataclass(frozen=True)
class SplitFractions:
    """Share of a single folder for each part (the report gets the rest); 500 photos -> about 75/175/250."""

    calibration: float = 0.15
    selection: float = 0.35


def hash_position(digest: str) -> float:
    """A content hash as a number in [0, 1): uniform, and fixed for a given photo."""
    return int(digest[:13], 16) / 16**13


def part_of(digest: str, fractions: SplitFractions, with_calibration: bool = True) -> Part:
    """The part of one image; without a calibration share (a separate calibration folder) two-way."""
    position = hash_position(digest)
    if with_calibration:
        if position < fractions.calibration:
            return Part.CALIBRATION
        position = (position - fractions.calibration) / (1.0 - fractions.calibration)
    share = fractions.selection / (1.0 - fractions.calibration)
    return Part.SELECTION if position < share else Part.REPORT


@dataclass(frozen=True)
class DataSplit:
    """Disjoint calibration / selection / report images, and how they were drawn (for report.json)."""

    calibration: tuple[Path, ...]
    selection: tuple[LabelledImage, ...]
    report: tuple[LabelledImage, ...]
    calibration_source: str
    evaluation_source: str
    calibration_dir: Path | None = None  # None: the calibration part of the evaluation folder
    shared_between_folders: int = 0
    duplicates_removed: int = 0
    calibration_unused: int = 0
    fractions: SplitFractions = field(default_factory=SplitFractions)
    overlap: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": "SHA-256 of the file bytes -> position in [0, 1) -> part",
            "fractions": {"calibration": self.fractions.calibration, "selection": self.fractions.selection},
            "calibration_source": self.calibration_source,
            "evaluation_source": self.evaluation_source,
            "calibration_dir": str(self.calibration_dir) if self.calibration_dir else None,
            "counts": {
                "calibration": len(self.calibration),
                "selection": len(self.selection),
                "report": len(self.report),
            },
            "calibration_unused": self.calibration_unused,
            "duplicates_removed": self.duplicates_removed,
            "shared_between_folders": self.shared_between_folders,
            "overlap": self.overlap,
            "disjoint": not any(self.overlap.values()),
        }


def digests_of(paths: Iterable[Path]) -> dict[str, Path]:
    """Distinct content -> first path holding it."""
    found: dict[str, Path] = {}
    for path in paths:
        found.setdefault(file_digest(path), path)
    return found


def split_folders(
    evaluation: LabelledFolder,
    calibration_dir: Path | None,
    calibration_limit: int,
    fractions: SplitFractions | None = None,
) -> DataSplit:
    """Split labelled photos (and an optional calibration folder) into disjoint parts by content hash.

    One folder: three parts by hash. A separate calibration folder: its photos calibrate and the labelled ones
    are split into selection and report; a photo in both folders (same bytes) goes where the three-way rule
    puts it, so overlapping or identical folders still yield disjoint parts (the report counts shared photos).
    ``calibration_limit`` caps the calibration part (first photos in hash order; the rest stay unused rather
    than move, so the selection and report parts never depend on it).
    """
    fractions = fractions or SplitFractions()
    labelled = {image.digest: image for image in evaluation.images}
    if calibration_dir is None:
        candidates = {digest: image.path for digest, image in labelled.items()}
        source = f"{evaluation.root}, calibration part"
    else:
        if not calibration_dir.is_dir():
            raise EvaluationDataError(f"--calib-dir {calibration_dir}: not a folder of images")
        candidates = digests_of(image_files(calibration_dir))
        if not candidates:
            raise EvaluationDataError(f"--calib-dir {calibration_dir}: no images found (searched recursively)")
        source = str(calibration_dir)
    shared = set(candidates) & set(labelled)
    in_calibration = {
        digest for digest in candidates if digest not in labelled or part_of(digest, fractions) is Part.CALIBRATION
    }
    chosen = sorted(in_calibration)[:calibration_limit]
    parts: dict[Part, list[LabelledImage]] = {Part.SELECTION: [], Part.REPORT: []}
    for digest, image in labelled.items():
        if digest not in in_calibration:
            parts[part_of(digest, fractions, with_calibration=digest in candidates)].append(image)
    digests = {
        "calibration": set(chosen),
        "selection": {image.digest for image in parts[Part.SELECTION]},
        "report": {image.digest for image in parts[Part.REPORT]},
    }
    pairs = (("calibration", "selection"), ("calibration", "report"), ("selection", "report"))
    return DataSplit(
        calibration=tuple(candidates[digest] for digest in chosen),
        selection=tuple(parts[Part.SELECTION]),
        report=tuple(parts[Part.REPORT]),
        calibration_source=source,
        evaluation_source=str(evaluation.root),
        calibration_dir=calibration_dir,
        shared_between_folders=len(shared) if calibration_dir is not None else 0,
        duplicates_removed=evaluation.duplicates,
        calibration_unused=len(in_calibration) - len(chosen),
        fractions=fractions,
        overlap={f"{a}&{b}": len(digests[a] & digests[b]) for a, b in pairs},
    )


# --- which photos an evaluation uses ----------------------------------------------------------------------


@dataclass(frozen=True)
class PhotoChoice:
    """The photos an evaluation runs on, and in words which ones and why (printed beside its figures)."""

    images: tuple[LabelledImage, ...]
    description: str
    notes: tuple[str, ...] = ()
    subset: bool = False


def model_split(model: Path) -> dict[str, Any] | None:
    """The split optimize recorded beside ``model`` (its folder's report.json), or None when there is none."""
    try:
        split = json.loads((model.parent / REPORT_JSON).read_text()).get("split") or {}
    except (OSError, ValueError, AttributeError):
        return None
    return split if split.get("evaluation_source") else None


def split_calibration_dir(split: dict[str, Any]) -> Path | None:
    """The recorded split's separate calibration folder; None when calibration photos came from the eval folder."""
    if "calibration_dir" in split:
        return Path(split["calibration_dir"]) if split["calibration_dir"] else None
    source = str(split.get("calibration_source", ""))  # reports written before calibration_dir was recorded
    return None if source.endswith(", calibration part") else Path(source)


def same_folder(a: Path, b: Path) -> bool:
    return a.expanduser().resolve() == b.expanduser().resolve()


def choose_photos(folder: LabelledFolder, limit: int | None, split: dict[str, Any] | None) -> PhotoChoice:
    """All photos, or ``limit`` of them evenly spaced in content-hash order: from the report part of the model's
    own split when ``folder`` is the folder it was optimized on (photos neither calibration nor the recipe search
    saw), else from the whole folder. Evaluating on a folder the model was calibrated on says so."""
    total = len(folder)
    own = split is not None and same_folder(Path(split["evaluation_source"]), folder.root)
    calibration_dir = split_calibration_dir(split) if split is not None else None
    calibrated_here = split is not None and (
        (own and calibration_dir is None) or (calibration_dir is not None and same_folder(calibration_dir, folder.root))
    )
    notes = []
    if own and calibration_dir is not None and not calibration_dir.is_dir():
        own = False
        notes.append(f"the model's calibration folder {calibration_dir} is gone: its report part cannot be rebuilt")
    pool: Sequence[LabelledImage] = folder.images
    if own:
        assert split is not None
        fractions = SplitFractions(**split.get("fractions", {}))
        pool = split_folders(folder, calibration_dir, calibration_limit=total, fractions=fractions).report
    if calibrated_here or own:
        uses = [*(["calibrated this model"] if calibrated_here else []), *(["chose its recipe"] if own else [])]
        unseen = f"; --limit N draws from its {len(pool)} report-part photos only" if limit is None and own else ""
        notes.append(
            f"photos of {folder.root.name} {' and '.join(uses)}: figures on the photos it saw are optimistic for "
            f"int8{unseen}"
        )
    if limit is None:
        return PhotoChoice(folder.images, f"all {total} photos", tuple(notes))
    chosen = sample_evenly(pool, limit)
    where = f"the {len(pool)} report-part photos of this model's split" if own else f"the {total} photos"
    return PhotoChoice(
        tuple(sorted(chosen, key=lambda image: image.path)),
        f"{len(chosen)} of {where}, evenly spaced in content-hash order",
        tuple(notes),
        subset=True,
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
