"""Labelled photos for the suite: a calibration part and a disjoint part the reported top-1 is measured on.

The split is by a hash of each file's bytes, so it does not depend on file names, order or the machine, and
adding photos never moves an existing one between parts. Calibration reaches optimize (and NNCF) as a folder of
symbolic links in the artifact cache; the photos are never copied. Optimize's own recipe choice in the suite
uses its demo evaluation set, so no reported photo was used to calibrate or to choose.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from smallnets.core.images import iter_image_files, load_image
from smallnets.core.metadata import ModelCard
from smallnets.core.preprocess import preprocess

EVAL_DIR_ENV = "SMALLNETS_EVAL_DIR"
CALIBRATION_SHARE = 5  # one photo in five calibrates; the other four are reported on


@dataclass(frozen=True)
class LabelledSplit:
    """Photo paths of the two parts, and the folder they came from (labels are its synset sub-folders)."""

    root: Path
    calibration: tuple[Path, ...]
    report: tuple[Path, ...]

    @property
    def tag(self) -> str:
        """Short stable name of the calibration part, for cache folder names."""
        digest = hashlib.sha256("\n".join(str(path) for path in self.calibration).encode()).hexdigest()
        return f"calib{len(self.calibration)}-{digest[:8]}"


def eval_dir_from_env() -> Path | None:
    value = os.environ.get(EVAL_DIR_ENV, "").strip()
    return Path(value) if value else None


def is_calibration(path: Path) -> bool:
    return int(hashlib.sha256(path.read_bytes()).hexdigest()[:8], 16) % CALIBRATION_SHARE == 0


def split_labelled(root: str | Path) -> LabelledSplit:
    """Every image below ``root`` (ImageFolder layout: SYNSET/file), split into calibration and report parts."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"labelled photo folder {root} does not exist; set {EVAL_DIR_ENV} or --eval-dir")
    paths = sorted(iter_image_files(root))
    if not paths:
        raise FileNotFoundError(f"{root} holds no images; point {EVAL_DIR_ENV} or --eval-dir at an ImageFolder")
    calibration = tuple(path for path in paths if is_calibration(path))
    report = tuple(path for path in paths if path not in set(calibration))
    return LabelledSplit(root, calibration, report)


def calibration_folder(split: LabelledSplit, cache_root: Path) -> Path:
    """A folder of symbolic links to the calibration photos (optimize reads calibration from a folder)."""
    folder = cache_root / "labelled" / split.tag
    for path in split.calibration:
        link = folder / path.relative_to(split.root)
        if not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(path.resolve())
    return folder


def report_batch(split: LabelledSplit, card: ModelCard) -> tuple[np.ndarray, np.ndarray]:
    """The report photos preprocessed by the model's card, and their class ids (from synset folder names)."""
    index = {synset: class_id for class_id, synset in enumerate(card.synsets)}
    synsets = [path.relative_to(split.root).parts[0] for path in split.report]
    unknown = sorted({synset for synset in synsets if synset not in index})
    if unknown:
        raise ValueError(f"{split.root}: sub-folders {unknown[:3]} are not synsets of {card.name}")
    images = [load_image(path) for path in split.report]
    return preprocess(images, card.preprocessing), np.array([index[synset] for synset in synsets])
