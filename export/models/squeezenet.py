"""SqueezeNet (Iandola et al. 2016): fire modules (1x1 squeeze, then parallel 1x1 / 3x3 expand), no linear layer.

The layout is torchvision's: ``features.N`` is a flat sequence (conv, ReLU, max-pools and fires at the same indices)
and ``classifier.1`` the final 1x1 conv, so torchvision checkpoints load with ``strict=True``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from smallnets.export.registry import ModelSpec, PreprocessingRecipe, PublishedFigures, WeightsSource, register

POOL = "pool"
# version -> (stem channels, stem kernel, features after the stem: POOL or a fire (squeeze, expand1x1, expand3x3)).
# 1.1 (official SqueezeNet repo) uses a 3x3 stem and pools earlier: 2.4x fewer MACs at the same accuracy.
FEATURES: dict[str, tuple[int, int, tuple[str | tuple[int, int, int], ...]]] = {
    "1_0": (
        96,
        7,
        (POOL, (16, 64, 64), (16, 64, 64), (32, 128, 128), POOL, (32, 128, 128), (48, 192, 192), (48, 192, 192),
         (64, 256, 256), POOL, (64, 256, 256)),
    ),
    "1_1": (
        64,
        3,
        (POOL, (16, 64, 64), (16, 64, 64), POOL, (32, 128, 128), (32, 128, 128), POOL, (48, 192, 192),
         (48, 192, 192), (64, 256, 256), (64, 256, 256)),
    ),
}  # fmt: skip

RESOLUTIONS = (224, 192, 160, 128)


class Fire(nn.Module):
    """Squeeze to few channels with 1x1, then expand with 1x1 and 3x3 side by side: the 3x3 sees few inputs."""

    def __init__(self, in_channels: int, squeeze: int, expand1x1: int, expand3x3: int) -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(in_channels, squeeze, kernel_size=1)
        self.squeeze_activation = nn.ReLU(inplace=True)
        self.expand1x1 = nn.Conv2d(squeeze, expand1x1, kernel_size=1)
        self.expand1x1_activation = nn.ReLU(inplace=True)
        self.expand3x3 = nn.Conv2d(squeeze, expand3x3, kernel_size=3, padding=1)
        self.expand3x3_activation = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        x = self.squeeze_activation(self.squeeze(x))
        return torch.cat(
            (self.expand1x1_activation(self.expand1x1(x)), self.expand3x3_activation(self.expand3x3(x))), dim=1
        )


class SqueezeNet(nn.Module):
    """Stem conv, fires and ceil-mode max-pools, then a 1x1 conv to class scores averaged over the image."""

    def __init__(self, version: str, num_classes: int = 1000, dropout: float = 0.5) -> None:
        super().__init__()
        stem_channels, stem_kernel, layers = FEATURES[version]
        features: list[nn.Module] = [nn.Conv2d(3, stem_channels, stem_kernel, stride=2), nn.ReLU(inplace=True)]
        channels = stem_channels
        for layer in layers:
            if layer == POOL:
                features.append(nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True))
            else:
                squeeze, expand1x1, expand3x3 = layer
                features.append(Fire(channels, squeeze, expand1x1, expand3x3))
                channels = expand1x1 + expand3x3
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout),
            nn.Conv2d(channels, num_classes, kernel_size=1),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x)).flatten(1)


def squeezenet(version: str = "1_0", num_classes: int = 1000) -> SqueezeNet:
    """The family builder: ``version`` picks a row of the feature table."""
    return SqueezeNet(version, num_classes)


# version -> (torchvision checkpoint file, sha256 prefix, params, MACs at 224, ImageNet top-1)
TORCHVISION_WEIGHTS: dict[str, tuple[str, str, int, int, float]] = {
    "1_0": ("squeezenet1_0-b66bff10.pth", "b66bff10", 1_248_424, 818_900_000, 58.092),
    "1_1": ("squeezenet1_1-b8a52dc0.pth", "b8a52dc0", 1_235_496, 349_200_000, 58.178),
}


def _register(version: str) -> None:
    file, sha256, params, macs, top1 = TORCHVISION_WEIGHTS[version]
    source = f"torchvision SqueezeNet{version}_Weights.IMAGENET1K_V1"
    register(
        ModelSpec(
            name=f"squeezenet{version}",
            family="squeezenet",
            builder=squeezenet,
            defaults={"version": version, "resolution": 224},
            choices={"version": (version,), "resolution": RESOLUTIONS},
            preprocessing=PreprocessingRecipe(crop_pct=224 / 256),
            references=(
                PublishedFigures(
                    variant={"version": version},
                    params=params,
                    macs=macs,
                    top1=top1,
                    source=source,
                    macs_rel_tol=0.001,
                ),
            ),
            weights=WeightsSource(
                url=f"https://download.pytorch.org/models/{file}",
                sha256=sha256,
                top1=top1,
                description=f"{source}; sha256 is the prefix torch.hub checks (from the file name)",
            ),
            description=f"SqueezeNet {version.replace('_', '.')}: fire modules, conv classifier, AlexNet accuracy",
        )
    )


for _version in TORCHVISION_WEIGHTS:
    _register(_version)
