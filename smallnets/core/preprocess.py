"""The one preprocessing implementation: RGB pictures -> normalized NCHW float32 batch, as the card says."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from smallnets.core.metadata import Preprocessing

_RESAMPLING = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
}
# Shrink large photos by whole factors first (box filter), then resample the last < 3x: Pillow documents the result
# as indistinguishable from a full resample, at a fraction of the cost for 12-megapixel uploads. It only acts on
# photos at least 2 x 3 = 6x the resize target (Pillow reduces by int(scale / 3) >= 2), so ImageNet-sized photos
# get exactly torchvision's resample.
REDUCING_GAP = 3.0


def decode_min_side(config: Preprocessing) -> int:
    """The shorter side a photo may be shrunk to while decoding (JPEG draft, whole-factor box filter) and still
    reach preprocessing with the same pixels: what the reducing step would have produced anyway."""
    return round(config.resize * REDUCING_GAP)


def resized_size(width: int, height: int, shorter: int) -> tuple[int, int]:
    """torchvision ``Resize(int)`` geometry: shorter side exactly ``shorter``, longer side truncated (not rounded)."""
    if width <= height:
        return shorter, int(shorter * height / width)
    return int(shorter * width / height), shorter


def crop_offset(size: int, crop: int) -> int:
    """torchvision ``CenterCrop``: ``int(round((size - crop) / 2))`` (round half to even), not floor division."""
    return round((size - crop) / 2.0)


def resize_and_crop(image: Image.Image, config: Preprocessing) -> Image.Image:
    """Resize the shorter side to ``config.resize`` then take the centered ``config.crop`` square.

    Pixel for pixel what torchvision/timm evaluation does on a PIL image (``Resize(resize)`` then
    ``CenterCrop(crop)``), so published checkpoints see the inputs they were scored with. A single resample of
    only the kept region (Pillow's ``box``) would be ~2x faster but is not bit-exact: it moved pixels by up to 11
    levels on 93 of 100 ImageNet photos (bicubic 256 -> 224).
    """
    width, height = image.size
    resized_width, resized_height = resized_size(width, height, config.resize)
    resized = image.resize(
        (resized_width, resized_height), _RESAMPLING[config.interpolation], reducing_gap=REDUCING_GAP
    )
    left = crop_offset(resized_width, config.crop)
    top = crop_offset(resized_height, config.crop)
    return resized.crop((left, top, left + config.crop, top + config.crop))


def preprocess(images: Sequence[Image.Image], config: Preprocessing) -> np.ndarray:
    """Batch of RGB pictures -> float32 array of shape (N, 3, crop, crop): ``(pixel / 255 - mean) / std``."""
    std = np.asarray(config.std, dtype=np.float32)
    scale = (1.0 / (255.0 * std)).reshape(3, 1, 1)
    offset = (-np.asarray(config.mean, dtype=np.float32) / std).reshape(3, 1, 1)
    batch = np.empty((len(images), 3, config.crop, config.crop), dtype=np.float32)
    for index, image in enumerate(images):
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        pixels = np.asarray(resize_and_crop(rgb, config)).transpose(2, 0, 1)
        np.multiply(pixels, scale, out=batch[index])
        batch[index] += offset
    return batch
