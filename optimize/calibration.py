"""Calibration and evaluation pictures without labels: a calibration folder, or the demo set of scikit-image photos.

Labelled folders are read and split by smallnets.core.labelled and .split. Without one, the demo set stands in: three
disjoint groups of photos, one per use (calibration, recipe selection, reported agreement), so no photo is seen
by two of them. Evaluation crops follow a fixed grid of crops, scales and flips and are deduplicated by their
pixels (a square photo gives the same crop at every horizontal anchor). The demo set has no labels: a verdict
made on it says that the accuracy is not validated.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from onnxruntime.quantization import CalibrationDataReader
from PIL import Image, ImageOps

from smallnets.core.images import ImageDecodeError, iter_image_files, load_image, sample_photos
from smallnets.core.metadata import Preprocessing
from smallnets.core.preprocess import preprocess
from smallnets.core.progress import Progress

# scikit-image's bundled pictures (no download), one group per use. `cat` is not used: it is `chelsea` again.
CALIBRATION_PHOTOS = (
    "hubble_deep_field",
    "retina",
    "colorwheel",
    "camera",
    "coins",
    "clock",
    "brick",
    "gravel",
    "page",
)
SELECTION_PHOTOS = ("rocket", "immunohistochemistry")
REPORT_PHOTOS = ("chelsea", "coffee", "astronaut")
# (scale of the shorter side kept, horizontal anchor in [0, 1], flip) for the evaluation grid.
EVALUATION_GRID = tuple(
    (scale, anchor, flip)
    for scale in (1.0, 0.9, 0.8, 0.7)
    for anchor in (0.5, 0.0, 1.0, 0.25)
    for flip in (False, True)
)


class CalibrationDataError(ValueError):
    """A calibration folder is missing, empty or holds no decodable image."""


@dataclass(frozen=True)
class ImageSet:
    """Unlabelled pictures plus where they came from (for the report)."""

    images: tuple[Image.Image, ...]
    source: str

    def __len__(self) -> int:
        return len(self.images)


def crop_box(image: Image.Image, scale: float, anchor_x: float, anchor_y: float) -> Image.Image:
    """A square crop whose side is ``scale`` x the shorter side, placed by anchors in [0, 1]."""
    width, height = image.size
    side = max(8, round(min(width, height) * scale))
    left = round((width - side) * anchor_x)
    top = round((height - side) * anchor_y)
    return image.crop((left, top, left + side, top + side))


def demo_evaluation_set(photos: Sequence[str], count_per_photo: int = 32) -> ImageSet:
    """``photos`` under the first ``count_per_photo`` cells of the crop/scale/flip grid, identical crops once."""
    images: dict[str, Image.Image] = {}
    for photo in sample_photos(tuple(photos)).values():
        for scale, anchor, flip in EVALUATION_GRID[:count_per_photo]:
            view = crop_box(photo, scale, anchor, 0.5)
            view = ImageOps.mirror(view) if flip else view
            images.setdefault(hashlib.sha256(view.tobytes() + str(view.size).encode()).hexdigest(), view)
    return ImageSet(
        tuple(images.values()),
        f"demo: {len(images)} distinct grid crops of the scikit-image photos {', '.join(photos)} (no labels)",
    )


def demo_calibration_set(count: int = 64, seed: int = 0) -> ImageSet:
    """Seeded random crops (scale 0.35-1, random flips) of the calibration photos only."""
    photos = list(sample_photos(CALIBRATION_PHOTOS).values())
    rng = np.random.default_rng(seed)
    images = []
    for index in range(count):
        photo = photos[index % len(photos)]
        view = crop_box(photo, float(rng.uniform(0.35, 1.0)), float(rng.uniform()), float(rng.uniform()))
        images.append(ImageOps.mirror(view) if rng.uniform() < 0.5 else view)
    return ImageSet(
        tuple(images),
        f"demo: {count} seeded random crops of the scikit-image photos {', '.join(CALIBRATION_PHOTOS)} "
        "(no evaluation photo among them)",
    )


def folder_set(folder: str | Path, limit: int | None = None) -> ImageSet:
    """Every image below ``folder`` (recursive, path order), at most ``limit``; unreadable files are skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CalibrationDataError(f"--calib-dir {folder}: not a folder of images")
    paths = list(iter_image_files(folder))
    if not paths:
        raise CalibrationDataError(f"--calib-dir {folder}: no .jpg/.png/.webp/.bmp images found (searched recursively)")
    return images_from(paths[:limit], str(folder))


def images_from(paths: Sequence[Path], source: str) -> ImageSet:
    """Decode ``paths``; unreadable files are skipped and counted, none readable is an error."""
    images, skipped = [], []
    for path in paths:
        try:
            images.append(load_image(path))
        except (ImageDecodeError, OSError) as error:
            skipped.append(f"{path.name}: {error}")
    if not images:
        raise CalibrationDataError(f"{source}: none of the {len(paths)} images could be read ({skipped[0]})")
    note = f", {len(skipped)} unreadable skipped" if skipped else ""
    return ImageSet(tuple(images), f"{source} ({len(images)} images{note})")


class ImageCalibrationReader(CalibrationDataReader):
    """Feeds preprocessed pictures (the card's preprocessing) to ORT's calibrator, in small batches."""

    def __init__(
        self, images: Sequence[Image.Image], preprocessing: Preprocessing, input_name: str, batch_size: int = 1
    ) -> None:
        self.images = images
        self.preprocessing = preprocessing
        self.input_name = input_name
        self.batch_size = batch_size
        self._batches: Iterator[np.ndarray] = self._generate()

    def _generate(self) -> Iterator[np.ndarray]:
        starts = range(0, len(self.images), self.batch_size)
        for start in Progress(starts, "calibration", unit="batch", leave=False):
            yield preprocess(self.images[start : start + self.batch_size], self.preprocessing)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {self.input_name: batch}

    def rewind(self) -> None:
        self._batches = self._generate()

    def __len__(self) -> int:
        return -(-len(self.images) // self.batch_size)
