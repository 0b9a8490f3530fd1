"""The one preprocessing implementation: RGB pictures -> normalized NCHW float32 batch, as the card says."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from serve.metadata import Preprocessing

_RESAMPLING = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
}


def resize_and_crop(image: Image.Image, config: Preprocessing) -> Image.Image:
    """Resize the shorter side to ``config.resize`` then take the centered ``config.crop`` square."""
    width, height = image.size
    scale = config.resize / min(width, height)
    new_size = (max(config.crop, round(width * scale)), max(config.crop, round(height * scale)))
    image = image.resize(new_size, _RESAMPLING[config.interpolation])
    left = (new_size[0] - config.crop) // 2
    top = (new_size[1] - config.crop) // 2
    return image.crop((left, top, left + config.crop, top + config.crop))


def preprocess(images: Sequence[Image.Image], config: Preprocessing) -> np.ndarray:
    """Batch of RGB pictures -> float32 array of shape (N, 3, crop, crop)."""
    mean = np.asarray(config.mean, dtype=np.float32).reshape(1, 1, 3)
    std = np.asarray(config.std, dtype=np.float32).reshape(1, 1, 3)
    batch = np.empty((len(images), 3, config.crop, config.crop), dtype=np.float32)
    for index, image in enumerate(images):
        pixels = np.asarray(resize_and_crop(image.convert("RGB"), config), dtype=np.float32) / 255.0
        batch[index] = ((pixels - mean) / std).transpose(2, 0, 1)
    return batch
