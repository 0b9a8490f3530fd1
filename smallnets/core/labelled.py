"""Labelled photos: an ImageFolder of ImageNet photos (``DIR/SYNSET/photo.JPEG``) read as (path, class, digest).

A folder is labelled when it has the ImageFolder layout (e.g. ``n01440764/x.JPEG``); the class index of a synset
is its position in the model card's synset list (sorted WordNet ids for ImageNet-1k), so the folder needs no side
file and may hold any subset of the classes (imagenet-dev holds the even ones). Photos are identified by the
SHA-256 of their bytes: duplicates are counted once.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from smallnets.core.files import sha256_file
from smallnets.core.images import iter_image_files

EVAL_DIR_ENV = "SMALLNETS_EVAL_DIR"
# Labelled folders whose absolute figures mislead, by folder name: said beside every accuracy figure taken on them.
KNOWN_FOLDERS = {
    "imagenet-dev": "ImageNet photos, likely from its training split: absolute top-1 is inflated, drops are what "
    "matter",
}
SYNSET_PATTERN = re.compile(r"^n\d{8}$")
EXPECTED_LAYOUT = "expected the ImageFolder layout DIR/SYNSET/photo.JPEG, e.g. DIR/n01440764/tench.JPEG"


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
    paths = list(iter_image_files(root))
    if not paths:
        raise EvaluationDataError(f"{root}: no images found (searched recursively); {EXPECTED_LAYOUT}")
    labels = [label_of(root, path, index) for path in paths]  # layout errors before any file is read
    images: dict[str, LabelledImage] = {}
    for path, label in zip(paths, labels, strict=True):
        images.setdefault(sha256_file(path), LabelledImage(path, label, ""))
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
