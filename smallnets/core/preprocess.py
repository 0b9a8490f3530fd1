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
# as indistinguishable from a full resample, at a fraction of the cost for 12-megapixel uploads.
REDUCING_GAP = 3.0


def resize_and_crop(image: Image.Image, config: Preprocessing) -> Image.Image:
    """Resize the shorter side to ``config.resize`` then take the centered ``config.crop`` square.

    Done as one resample of the kept source region (Pillow's ``box``), so pixels that the crop discards are
    never interpolated; the geometry is the same as resize-then-crop.
    """
    width, height = image.size
    scale = config.resize / min(width, height)
    resized_width = max(config.crop, round(width * scale))
    resized_height = max(config.crop, round(height * scale))
    left = (resized_width - config.crop) // 2
    top = (resized_height - config.crop) // 2
    x_scale, y_scale = width / resized_width, height / resized_height
    box = (left * x_scale, top * y_scale, (left + config.crop) * x_scale, (top + config.crop) * y_scale)
    return image.resize(
        (config.crop, config.crop), _RESAMPLING[config.interpolation], box=box, reducing_gap=REDUCING_GAP
    )


def preprocess(images: Sequence[Image.Image], config: Preprocessing) -> np.ndarray:
    """Batch of RGB pictures -> float32 array of shape (N, 3, crop, crop): ``(pixel / 255 - mean) / std``."""
    std = np.asarray(config.std, dtype=np.float32)
    scale = (1.0 / (255.0 * std)).reshape(3, 1, 1)
    offset = (-np.asarray(config.mean, dtype=np.float32) / std).reshape(3, 1, 1)
    batch = np.empty((len(images), 3, config.crop, config.crop), dtype=np.float32)
    for index, image in enumerate(images):
        pixels = np.asarray(resize_and_crop(image.convert("RGB"), config)).transpose(2, 0, 1)
        np.multiply(pixels, scale, out=batch[index])
        batch[index] += offset
    return batch
