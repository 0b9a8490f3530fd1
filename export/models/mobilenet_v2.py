"""MobileNet V2 (Sandler et al. 2018, arXiv:1801.04381): inverted residuals with linear bottlenecks.

Module and state-dict layout follow torchvision's ``mobilenet_v2`` (``features.N...``, ``classifier.1``) so its
checkpoints load with ``strict=True`` and no key mapping.
"""

from __future__ import annotations

from torch import Tensor, nn

from smallnets.export.layers import ConvNormAct, make_divisible
from smallnets.export.registry import ModelSpec, PreprocessingRecipe, PublishedFigures, WeightsSource, register

STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
# Inverted-residual stages (paper Table 2): t = expansion, c = output channels, n = blocks, s = first block's stride.
STAGES: tuple[tuple[int, int, int, int], ...] = (
    # t, c, n, s
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class InvertedResidual(nn.Module):
    """1x1 expand (skipped when t = 1) -> 3x3 depthwise -> linear 1x1 project, residual when shapes match."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = round(in_channels * expansion)
        self.use_residual = stride == 1 and in_channels == out_channels
        layers: list[nn.Module] = []
        if expansion != 1:
            layers.append(ConvNormAct(in_channels, hidden, 1, activation=nn.ReLU6))
        layers += [
            ConvNormAct(hidden, hidden, 3, stride, groups=hidden, activation=nn.ReLU6),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, stages: tuple[tuple[int, int, int, int], ...], width: float, num_classes: int) -> None:
        super().__init__()
        channels = make_divisible(STEM_CHANNELS * width)
        layers: list[nn.Module] = [ConvNormAct(3, channels, 3, 2, activation=nn.ReLU6)]
        for expansion, out_channels, repeats, stride in stages:
            out_channels = make_divisible(out_channels * width)
            for index in range(repeats):
                layers.append(InvertedResidual(channels, out_channels, stride if index == 0 else 1, expansion))
                channels = out_channels
        # The head never shrinks below 1280 channels: narrow models keep a full-width classifier input.
        head_channels = make_divisible(HEAD_CHANNELS * max(1.0, width))
        layers.append(ConvNormAct(channels, head_channels, 1, activation=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(head_channels, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


def mobilenet_v2(width: float = 1.0, num_classes: int = 1000) -> MobileNetV2:
    """MobileNet V2 at width multiplier ``width`` (channels rounded to multiples of 8 as torchvision does)."""
    return MobileNetV2(STAGES, width, num_classes)


_TF_SLIM = "TF-slim MobileNetV2 checkpoint table (tensorflow/models research/slim/nets/mobilenet/README.md)"
register(
    ModelSpec(
        name="mobilenet_v2",
        family="mobilenet_v2",
        builder=mobilenet_v2,
        defaults={"width": 1.0, "resolution": 224},
        choices={"width": (1.4, 1.0, 0.75, 0.5, 0.35), "resolution": (224, 192, 160, 128, 96)},
        # torchvision MobileNet_V2_Weights.IMAGENET1K_V2: resize 232 (bilinear), center-crop 224, ImageNet mean/std.
        preprocessing=PreprocessingRecipe(crop_pct=224 / 232, interpolation="bilinear"),
        references=(
            PublishedFigures(
                params=3_504_872,
                macs=300_800_000,
                top1=72.154,
                source="torchvision mobilenet_v2 (same layout; MACs printed to 0.1M)",
                macs_rel_tol=0.05e6 / 300.8e6,
            ),
            # Same architecture as TF-slim's checkpoints; their table drops the MACs' fraction (153.9M -> 153), so a
            # full unit of tolerance. Its params count conv/FC weights only (no BatchNorm), so they are not compared.
            *(
                PublishedFigures(
                    variant={"width": width, "resolution": resolution},
                    macs=macs * 1_000_000,
                    top1=top1,
                    source=_TF_SLIM,
                    macs_rel_tol=1 / macs,
                )
                for width, resolution, macs, top1 in (
                    (1.4, 224, 582, 75.0),
                    (0.75, 224, 209, 69.8),
                    (0.5, 224, 97, 65.4),
                    (0.35, 224, 59, 60.3),
                    (1.0, 192, 221, 70.7),
                    (1.0, 160, 154, 68.8),
                    (1.0, 128, 99, 65.3),
                    (1.0, 96, 56, 60.3),
                    (0.35, 96, 11, 45.5),
                )
            ),
        ),
        # torchvision's default weights; sha256 is the prefix torchvision puts in the file name (torch.hub checks it).
        # The older IMAGENET1K_V1 (mobilenet_v2-b0353104.pth, 71.878 top-1) was evaluated at resize 256 instead.
        weights=WeightsSource(
            url="https://download.pytorch.org/models/mobilenet_v2-7ebf99e0.pth",
            sha256="7ebf99e0",
            top1=72.154,
            description="torchvision MobileNet_V2_Weights.IMAGENET1K_V2",
        ),
        description="MobileNet V2: inverted residuals and linear bottlenecks, width multiplier",
    )
)
