"""Which photos do what: the deterministic split into calibration / selection / report parts, and the photos an
evaluation uses (evenly sampled, or the report part of a model's own split).

The split depends on a photo's content only (the SHA-256 of its bytes): renaming or adding photos never moves
another photo to a different part, and calibration, selection and report parts never share a photo.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from smallnets.core.artifacts import REPORT_JSON
from smallnets.core.files import sha256_file
from smallnets.core.images import iter_image_files
from smallnets.core.labelled import EvaluationDataError, LabelledFolder, LabelledImage, sample_evenly


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
        found.setdefault(sha256_file(path), path)
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
        candidates = digests_of(iter_image_files(calibration_dir))
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
        if own and limit is not None:
            effect = "these photos come from its report part, which neither saw"
        else:
            effect = "figures on the photos it saw are optimistic for int8"
            effect += f"; --limit N draws from its {len(pool)} report-part photos only" if own else ""
        notes.append(f"photos of {folder.root.name} {' and '.join(uses)}: {effect}")
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
