"""Random weights whose logits depend on the input, so every numerics check downstream can catch a broken graph.

A freshly built network is not such a model: with PyTorch's default init each layer shrinks the signal (~6x in
second moment for ReLU), BatchNorm's identity running statistics do not undo it, and the logits of MobileNet,
ShuffleNet V2 and SqueezeNet end up as the classifier bias plus ~1e-9: the same top-1 for every photo, so an
export, simplify, int8 or arm64 comparison would pass for a graph with a zeroed weight. Three seeded steps fix it:

1. variance-preserving init: He normal over each conv's per-group fan-in (ReLU gain), linear layers with unit
   gain, zero biases, BatchNorm affine at identity;
2. BatchNorm running statistics re-estimated on real photos (random crops and flips of scikit-image's sample
   photos at the model's own preprocessing), the AdaBN / timm "recalibrate BN" recipe, interleaved one to one
   with standard-normal inputs: the numerics checks of every stage (export validation, simplify/fuse) also feed
   white noise, and statistics from photos alone let it grow ~3x per stage (random EfficientNet-B0: photo
   logits ~2, noise logits ~1.2e3, where float rounding differences reach 3% and every comparison flakes);
   with both, both stay ~1 (B0: photo logits 0.9, noise 1.1);
3. the classifier centred on the photos (its bias minus the mean logit), so the logits are what differs
   between photos rather than one shared offset that picks the same class for every input.

Never the labelled evaluation photos: random weights have no accuracy to tune, and those photos stay unseen.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
from PIL import Image
from torch import nn

from smallnets.core.metadata import Preprocessing
from smallnets.core.preprocess import preprocess

STATISTICS_CROPS = 16  # photos (plus as many noise inputs): 32 x 7x7 positions per channel at the last stage
CHUNK = 8  # images per forward pass: bounded memory at 600 px (EfficientNet-B7)
MIN_CROP_AREA = 0.35  # of the photo, as in RandomResizedCrop's lower range (kept above its 0.08: whole objects)
SYNTHETIC_SIZE = 320


def init_random_weights(model: nn.Module, preprocessing: Preprocessing, seed: int) -> str:
    """Apply the three steps in place (deterministic for ``seed``); returns the line the model card records."""
    pictures, origin = statistics_pictures(STATISTICS_CROPS, seed)
    photos = torch.from_numpy(preprocess(pictures, preprocessing))
    noise = torch.from_numpy(np.random.default_rng(seed).standard_normal(photos.shape, dtype=np.float32))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        variance_preserving_init(model)
    reestimate_batchnorm(model, torch.stack([photos, noise], dim=1).flatten(0, 1))  # photo, noise, photo, ...
    centre_classifier(model, photos)
    return (
        f"variance-preserving init, BatchNorm statistics from {len(pictures)} crops of {origin} and as many "
        f"standard-normal inputs, classifier centred on the crops (seed {seed})"
    )


def statistics_pictures(count: int, seed: int) -> tuple[list[Image.Image], str]:
    """Seeded random crops (35-100% of the area, aspect kept) and flips of the sample photos.

    Without scikit-image (the demo extra), seeded smooth synthetic pictures stand in; the origin says which.
    """
    from smallnets.core.images import sample_photos

    rng = np.random.default_rng(seed)
    try:
        photos = list(sample_photos().values())
        origin = "the scikit-image sample photos"
    except RuntimeError:
        photos = [_synthetic_picture(rng) for _ in range(count)]
        origin = "synthetic pictures (scikit-image is not installed)"
    return [_random_crop(photos[index % len(photos)], rng) for index in range(count)], origin


def _random_crop(photo: Image.Image, rng: np.random.Generator) -> Image.Image:
    width, height = photo.size
    side = math.sqrt(rng.uniform(MIN_CROP_AREA, 1.0))
    crop_width, crop_height = max(1, round(width * side)), max(1, round(height * side))
    left = int(rng.integers(0, width - crop_width + 1))
    top = int(rng.integers(0, height - crop_height + 1))
    crop = photo.crop((left, top, left + crop_width, top + crop_height))
    return crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else crop


def _synthetic_picture(rng: np.random.Generator) -> Image.Image:
    """Low-frequency colour noise upsampled to a photo-like picture (structure at several scales)."""
    coarse = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize((SYNTHETIC_SIZE, SYNTHETIC_SIZE), Image.Resampling.BICUBIC)


def variance_preserving_init(model: nn.Module) -> None:
    """He normal over the per-group fan-in for convs (ReLU-family gain), unit gain for linear layers."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            fan_in = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_in))
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0.0, math.sqrt(1.0 / module.in_features))
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_parameters()
        if isinstance(module, nn.Conv2d | nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)


def reestimate_batchnorm(model: nn.Module, batch: torch.Tensor) -> None:
    """Running mean/var as the exact average over ``batch`` (momentum None); only BatchNorm leaves eval mode,
    so dropout stays off."""
    norms = [module for module in model.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]
    momenta = [norm.momentum for norm in norms]
    model.eval()
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
        norm.train()
    try:
        with torch.no_grad():
            for chunk in _chunks(batch):
                model(chunk)
    finally:
        for norm, momentum in zip(norms, momenta, strict=True):
            norm.momentum = momentum
        model.eval()


def centre_classifier(model: nn.Module, batch: torch.Tensor) -> None:
    """Subtract the mean output of the last linear/conv layer (the classifier) over ``batch`` from its bias."""
    layers = [module for module in model.modules() if isinstance(module, nn.Linear | nn.Conv2d)]
    classifier = layers[-1]
    if classifier.bias is None:
        raise ValueError(f"{type(model).__name__}'s last layer has no bias to centre; the family needs one")
    outputs: list[torch.Tensor] = []
    hook = classifier.register_forward_hook(lambda _module, _inputs, output: outputs.append(output))
    try:
        with torch.no_grad():
            for chunk in _chunks(batch):
                model(chunk)
    finally:
        hook.remove()
    logits = torch.cat(outputs)
    mean = logits.mean(dim=[axis for axis in range(logits.dim()) if axis != 1])
    with torch.no_grad():
        classifier.bias -= mean


def _chunks(batch: torch.Tensor) -> Iterator[torch.Tensor]:
    for start in range(0, len(batch), CHUNK):
        yield batch[start : start + CHUNK]
