"""core.preprocess resizes and crops exactly like torchvision's eval transforms (what timm's eval uses too), so a
published checkpoint sees the pixels it was scored with."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from smallnets.core.images import iter_image_files, load_image
from smallnets.core.labelled import EVAL_DIR_ENV, eval_dir_setting
from smallnets.core.metadata import Preprocessing
from smallnets.core.preprocess import resize_and_crop
from smallnets.export.registry import get_spec, list_specs

RESAMPLING = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}
# Every distinct recipe of the registry's default variants (resize, crop, interpolation).
RECIPES = sorted({spec.preprocessing_for() for spec in list_specs()}, key=repr)
# Photo sizes where the old geometry differed: 640x427 at 256 -> torchvision 383 px wide (int), rounding gave 384;
# then (383 - 224) / 2 = 79.5 -> torchvision's round() crops at 80, floor division at 79.
SIZES = ((640, 427), (427, 640), (500, 375), (333, 500), (1023, 769), (256, 256), (301, 299))


def torchvision_resize_center_crop(image: Image.Image, config: Preprocessing) -> Image.Image:
    """torchvision ``Resize(config.resize)`` + ``CenterCrop(config.crop)`` on a PIL image, restated from its source:
    ``_compute_resized_output_size`` (short side = size, long side = int(size * long / short)), PIL ``resize``
    without reducing_gap, and ``center_crop``'s ``int(round((size - crop) / 2.0))`` offsets."""
    width, height = image.size
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = config.resize, int(config.resize * long / short)
    new_width, new_height = (new_short, new_long) if width <= height else (new_long, new_short)
    resized = image.resize((new_width, new_height), RESAMPLING[config.interpolation])
    top = int(round((new_height - config.crop) / 2.0))  # noqa: RUF046 -- torchvision's exact expression
    left = int(round((new_width - config.crop) / 2.0))  # noqa: RUF046
    return resized.crop((left, top, left + config.crop, top + config.crop))


def synthetic_photo(width: int, height: int) -> Image.Image:
    """Detailed content (noise over gradients) so a one-pixel shift or a resampling change shows."""
    rng = np.random.default_rng(width * 10_000 + height)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 // width, y * 255 // height, (x + y) % 255], axis=-1)
    pixels = np.clip(base + rng.integers(-40, 40, size=base.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, mode="RGB")


@pytest.mark.parametrize("config", RECIPES, ids=lambda c: f"{c.resize}-{c.crop}-{c.interpolation}")
def test_resize_and_crop_equals_torchvision_on_awkward_sizes(config: Preprocessing) -> None:
    for width, height in SIZES:
        photo = synthetic_photo(width, height)
        ours = np.asarray(resize_and_crop(photo, config))
        reference = np.asarray(torchvision_resize_center_crop(photo, config))
        assert ours.shape == (config.crop, config.crop, 3)
        assert np.array_equal(ours, reference), (
            f"{width}x{height}: max diff {np.abs(ours - reference.astype(int)).max()}"
        )


@pytest.mark.parametrize("name", ["efficientnet_lite0", "mobilenet_v2"])  # bicubic 256->224, bilinear 232->224
def test_resize_and_crop_equals_torchvision_on_every_labelled_photo(name: str) -> None:
    folder = eval_dir_setting()
    if folder is None or not folder.is_dir():
        pytest.skip(f"needs labelled photos: set {EVAL_DIR_ENV} to an ImageFolder of ImageNet photos")
    config = get_spec(name).preprocessing_for()
    differing = []
    for path in iter_image_files(Path(folder)):
        photo = load_image(path)
        if not np.array_equal(
            np.asarray(resize_and_crop(photo, config)), np.asarray(torchvision_resize_center_crop(photo, config))
        ):
            differing.append(path.name)
    assert not differing, f"{len(differing)} photos differ from torchvision, e.g. {differing[:5]}"
