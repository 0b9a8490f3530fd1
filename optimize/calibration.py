"""Calibration and evaluation images: user folders, or the demo set built from scikit-image photos.

Demo path: evaluation uses the project's sample photos (chelsea, coffee, ...) under a fixed grid of crops,
scales and flips; calibration uses *other* scikit-image pictures plus seeded random crops of the sample photos.
No picture seen in calibration is an evaluation picture (random crop boxes never equal the grid's boxes), and
the counts go into the report.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from onnxruntime.quantization import CalibrationDataReader
from PIL import Image, ImageOps

from smallnets.core.images import SAMPLE_PHOTOS, ImageDecodeError, iter_image_files, load_image, sample_photos
from smallnets.core.metadata import Preprocessing
from smallnets.core.preprocess import preprocess

# Extra scikit-image pictures that ship with the wheel (no download), used for calibration only.
CALIBRATION_EXTRA_PHOTOS = ("retina", "colorwheel", "camera", "coins", "clock", "brick", "gravel", "page")
# (scale of the shorter side kept, horizontal anchor in [0, 1], flip) for the evaluation grid.
EVALUATION_GRID = tuple(
    (scale, anchor, flip)
    for scale in (1.0, 0.9, 0.8, 0.7)
    for anchor in (0.5, 0.0, 1.0, 0.25)
    for flip in (False, True)
)


class CalibrationDataError(ValueError):
    """A calibration/evaluation folder is missing, empty or holds no decodable image."""


@dataclass(frozen=True)
class ImageSet:
    """Pictures plus where they came from (for the report) and optional ImageNet class ids."""

    images: tuple[Image.Image, ...]
    source: str
    labels: tuple[int, ...] | None = None

    def __len__(self) -> int:
        return len(self.images)


def crop_box(image: Image.Image, scale: float, anchor_x: float, anchor_y: float) -> Image.Image:
    """A square crop whose side is ``scale`` x the shorter side, placed by anchors in [0, 1]."""
    width, height = image.size
    side = max(8, round(min(width, height) * scale))
    left = round((width - side) * anchor_x)
    top = round((height - side) * anchor_y)
    return image.crop((left, top, left + side, top + side))


def demo_evaluation_set(count_per_photo: int = 32) -> ImageSet:
    """The sample photos under the deterministic crop/scale/flip grid (first ``count_per_photo`` cells)."""
    photos = sample_photos(SAMPLE_PHOTOS)
    images = []
    for photo in photos.values():
        for scale, anchor, flip in EVALUATION_GRID[:count_per_photo]:
            view = crop_box(photo, scale, anchor, 0.5)
            images.append(ImageOps.mirror(view) if flip else view)
    return ImageSet(tuple(images), f"demo: {len(photos)} scikit-image photos x {count_per_photo} grid crops/flips")


def demo_calibration_set(count: int = 64, seed: int = 0) -> ImageSet:
    """Seeded random crops (scale 0.35-1, random flips) of the extra pictures and the sample photos."""
    photos = list(sample_photos(CALIBRATION_EXTRA_PHOTOS + SAMPLE_PHOTOS).values())
    rng = np.random.default_rng(seed)
    images = []
    for index in range(count):
        photo = photos[index % len(photos)]
        view = crop_box(photo, float(rng.uniform(0.35, 1.0)), float(rng.uniform()), float(rng.uniform()))
        images.append(ImageOps.mirror(view) if rng.uniform() < 0.5 else view)
    return ImageSet(
        tuple(images), f"demo: {count} seeded random crops of {len(photos)} scikit-image pictures (disjoint from eval)"
    )


def folder_set(
    folder: str | Path,
    what: str,
    limit: int | None = None,
    synsets: Sequence[str] = (),
    labels_csv: str | Path | None = None,
) -> ImageSet:
    """Every image below ``folder``; labels from a ``file,class_id`` CSV or from synset sub-folder names."""
    folder = Path(folder)
    flag = f"--{what}-dir"
    if not folder.is_dir():
        raise CalibrationDataError(f"{flag} {folder}: not a folder of images")
    paths = list(iter_image_files(folder))
    if not paths:
        raise CalibrationDataError(f"{flag} {folder}: no .jpg/.png/.webp/.bmp images found (searched recursively)")
    if limit is not None:
        paths = paths[:limit]
    images, kept, skipped = [], [], []
    for path in paths:
        try:
            images.append(load_image(path))
            kept.append(path)
        except (ImageDecodeError, OSError) as error:
            skipped.append(f"{path.name}: {error}")
    if not images:
        raise CalibrationDataError(f"{flag} {folder}: none of the {len(paths)} images could be read ({skipped[0]})")
    if labels_csv is not None:
        mapping = csv_labels(labels_csv, folder)
        missing = [path.name for path in kept if path.resolve() not in mapping]
        if missing:
            raise CalibrationDataError(f"{labels_csv}: no class id for {len(missing)} images, e.g. {missing[0]}")
        labels = tuple(mapping[path.resolve()] for path in kept)
    else:
        labels = synset_labels(folder, kept, synsets)
    note = f", {len(skipped)} unreadable skipped" if skipped else ""
    return ImageSet(tuple(images), f"{folder} ({len(images)} images{note})", labels)


def synset_labels(root: Path, paths: Sequence[Path], synsets: Sequence[str]) -> tuple[int, ...] | None:
    """Class ids when every image sits in a sub-folder named after one of the model's synsets."""
    index = {synset: class_id for class_id, synset in enumerate(synsets)}
    labels = [
        index.get(path.relative_to(root).parts[0]) if len(path.relative_to(root).parts) > 1 else None for path in paths
    ]
    return tuple(labels) if labels and all(label is not None for label in labels) else None  # type: ignore[arg-type]


def csv_labels(csv_path: str | Path, folder: str | Path) -> dict[Path, int]:
    """``file,class_id`` rows (file relative to the eval folder) -> resolved path -> class id."""
    import csv

    mapping: dict[Path, int] = {}
    with open(csv_path, newline="") as handle:
        for row_number, row in enumerate(csv.reader(handle), start=1):
            if not row or row[0].startswith("#") or (row_number == 1 and not row[-1].strip().isdigit()):
                continue
            if len(row) < 2 or not row[1].strip().isdigit():
                raise CalibrationDataError(f"{csv_path}:{row_number}: expected 'file,class_id', got {row!r}")
            mapping[(Path(folder) / row[0].strip()).resolve()] = int(row[1])
    return mapping


class ImageCalibrationReader(CalibrationDataReader):
    """Feeds preprocessed pictures (the card's preprocessing) to ORT's calibrator, in small batches."""

    def __init__(
        self, images: Sequence[Image.Image], preprocessing: Preprocessing, input_name: str, batch_size: int = 1
    ) -> None:
        self.images = images
        self.preprocessing = preprocessing
        self.input_name = input_name
        self.batch_size = batch_size
        self.progress = None
        self._batches: Iterator[np.ndarray] = self._generate()

    def _generate(self) -> Iterator[np.ndarray]:
        from tqdm.auto import tqdm

        self.progress = tqdm(total=len(self.images), desc="calibration", unit="img", leave=False, disable=None)
        for start in range(0, len(self.images), self.batch_size):
            chunk = self.images[start : start + self.batch_size]
            yield preprocess(chunk, self.preprocessing)
            self.progress.update(len(chunk))
        self.progress.close()

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {self.input_name: batch}

    def rewind(self) -> None:
        self._batches = self._generate()

    def __len__(self) -> int:
        return -(-len(self.images) // self.batch_size)
