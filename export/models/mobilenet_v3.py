"""MobileNet V3 Large and Small (Howard et al. 2019, arXiv:1905.02244): NAS-found inverted residuals with
squeeze-and-excitation and hard-swish.

Module and state-dict layout follow torchvision's ``mobilenet_v3_large`` / ``mobilenet_v3_small`` (``features.N.block``,
``classifier.0`` / ``classifier.3``) so their checkpoints load with ``strict=True`` and no key mapping. Hardswish and
Hardsigmoid are plain ``nn`` modules, which both ONNX exporters map to single ops.
"""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor, nn

from smallnets.export.layers import ConvNormAct, SqueezeExcitation, make_divisible
from smallnets.export.registry import ModelSpec, PreprocessingRecipe, PublishedFigures, WeightsSource, register

STEM_CHANNELS = 16
# torchvision's BatchNorm settings for MobileNetV3 (TF defaults), part of what makes its checkpoints reproduce.
NORM = {"norm_eps": 0.001, "norm_momentum": 0.01}


class Block(NamedTuple):
    """One row of the paper's Tables 1-2."""

    kernel: int
    expanded: int
    out: int
    se: bool
    activation: str  # "RE" = ReLU, "HS" = hard-swish
    stride: int


LARGE: tuple[Block, ...] = tuple(
    Block(*row)
    for row in (
        # k, exp, c, se, act, s
        (3, 16, 16, False, "RE", 1),
        (3, 64, 24, False, "RE", 2),
        (3, 72, 24, False, "RE", 1),
        (5, 72, 40, True, "RE", 2),
        (5, 120, 40, True, "RE", 1),
        (5, 120, 40, True, "RE", 1),
        (3, 240, 80, False, "HS", 2),
        (3, 200, 80, False, "HS", 1),
        (3, 184, 80, False, "HS", 1),
        (3, 184, 80, False, "HS", 1),
        (3, 480, 112, True, "HS", 1),
        (3, 672, 112, True, "HS", 1),
        (5, 672, 160, True, "HS", 2),
        (5, 960, 160, True, "HS", 1),
        (5, 960, 160, True, "HS", 1),
    )
)
LARGE_LAST_CHANNEL = 1280

SMALL: tuple[Block, ...] = tuple(
    Block(*row)
    for row in (
        # k, exp, c, se, act, s
        (3, 16, 16, True, "RE", 2),
        (3, 72, 24, False, "RE", 2),
        (3, 88, 24, False, "RE", 1),
        (5, 96, 40, True, "HS", 2),
        (5, 240, 40, True, "HS", 1),
        (5, 240, 40, True, "HS", 1),
        (5, 120, 48, True, "HS", 1),
        (5, 144, 48, True, "HS", 1),
        (5, 288, 96, True, "HS", 2),
        (5, 576, 96, True, "HS", 1),
        (5, 576, 96, True, "HS", 1),
    )
)
SMALL_LAST_CHANNEL = 1024

ACTIVATIONS: dict[str, type[nn.Module]] = {"RE": nn.ReLU, "HS": nn.Hardswish}


class InvertedResidual(nn.Module):
    """1x1 expand (skipped when it would not change the width) -> kxk depthwise -> SE -> linear 1x1 project."""

    def __init__(self, in_channels: int, expanded: int, out_channels: int, config: Block) -> None:
        super().__init__()
        activation = ACTIVATIONS[config.activation]
        self.use_residual = config.stride == 1 and in_channels == out_channels
        layers: list[nn.Module] = []
        if expanded != in_channels:
            layers.append(ConvNormAct(in_channels, expanded, 1, activation=activation, **NORM))
        depthwise = ConvNormAct(expanded, expanded, config.kernel, config.stride, expanded, activation, **NORM)
        layers.append(depthwise)
        if config.se:
            squeeze = make_divisible(expanded // 4)
            layers.append(SqueezeExcitation(expanded, squeeze, nn.ReLU, nn.Hardsigmoid))
        layers.append(ConvNormAct(expanded, out_channels, 1, activation=None, **NORM))
        self.block = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.block(x) if self.use_residual else self.block(x)


class MobileNetV3(nn.Module):
    def __init__(self, blocks: tuple[Block, ...], last_channel: int, width: float, num_classes: int) -> None:
        super().__init__()
        channels = make_divisible(STEM_CHANNELS * width)
        layers: list[nn.Module] = [ConvNormAct(3, channels, 3, 2, activation=nn.Hardswish, **NORM)]
        for config in blocks:
            expanded, out_channels = make_divisible(config.expanded * width), make_divisible(config.out * width)
            layers.append(InvertedResidual(channels, expanded, out_channels, config))
            channels = out_channels
        head_channels = 6 * channels
        layers.append(ConvNormAct(channels, head_channels, 1, activation=nn.Hardswish, **NORM))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        last_channel = make_divisible(last_channel * width)
        self.classifier = nn.Sequential(
            nn.Linear(head_channels, last_channel),
            nn.Hardswish(inplace=True),
            nn.Dropout(0.2, inplace=True),
            nn.Linear(last_channel, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.avgpool(self.features(x)).flatten(1))


def mobilenet_v3(
    blocks: tuple[Block, ...], last_channel: int, width: float = 1.0, num_classes: int = 1000
) -> MobileNetV3:
    """The family builder: a block table plus the classifier's hidden width, scaled by ``width`` as torchvision does."""
    return MobileNetV3(blocks, last_channel, width, num_classes)


def mobilenet_v3_large(width: float = 1.0, num_classes: int = 1000) -> MobileNetV3:
    return mobilenet_v3(LARGE, LARGE_LAST_CHANNEL, width, num_classes)


def mobilenet_v3_small(width: float = 1.0, num_classes: int = 1000) -> MobileNetV3:
    return mobilenet_v3(SMALL, SMALL_LAST_CHANNEL, width, num_classes)


# torchvision publishes checkpoints for width 1.0 only; its width scaling is not the paper's (it also shrinks the
# 1280/1024 classifier), so narrower variants would match neither weights nor published figures.
_CHOICES = {"width": (1.0,), "resolution": (224, 192, 160, 128, 96)}
_TORCHVISION = "torchvision {} (same layout; MACs printed to 0.1M)"

register(
    ModelSpec(
        name="mobilenet_v3_large",
        family="mobilenet_v3",
        builder=mobilenet_v3_large,
        defaults={"width": 1.0, "resolution": 224},
        choices=_CHOICES,
        # torchvision MobileNet_V3_Large_Weights.IMAGENET1K_V2: resize 232 (bilinear), center-crop 224.
        preprocessing=PreprocessingRecipe(crop_pct=224 / 232, interpolation="bilinear"),
        references=(
            PublishedFigures(
                params=5_483_032,
                macs=216_600_000,
                top1=75.274,
                source=_TORCHVISION.format("mobilenet_v3_large"),
                macs_rel_tol=0.05e6 / 216.6e6,
            ),
        ),
        # torchvision's default weights; sha256 is the prefix torchvision puts in the file name (torch.hub checks it).
        # The older IMAGENET1K_V1 (mobilenet_v3_large-8738ca79.pth, 74.042 top-1) was evaluated at resize 256 instead.
        weights=WeightsSource(
            url="https://download.pytorch.org/models/mobilenet_v3_large-5c1a4163.pth",
            sha256="5c1a4163",
            top1=75.274,
            description="torchvision MobileNet_V3_Large_Weights.IMAGENET1K_V2",
        ),
        description="MobileNet V3 Large: NAS-found inverted residuals with SE and hard-swish",
    )
)

register(
    ModelSpec(
        name="mobilenet_v3_small",
        family="mobilenet_v3",
        builder=mobilenet_v3_small,
        defaults={"width": 1.0, "resolution": 224},
        choices=_CHOICES,
        # torchvision MobileNet_V3_Small_Weights.IMAGENET1K_V1: resize 256 (bilinear), center-crop 224.
        preprocessing=PreprocessingRecipe(crop_pct=0.875, interpolation="bilinear"),
        references=(
            PublishedFigures(
                params=2_542_856,
                macs=56_500_000,
                top1=67.668,
                source=_TORCHVISION.format("mobilenet_v3_small"),
                macs_rel_tol=0.05e6 / 56.5e6,
            ),
        ),
        weights=WeightsSource(
            url="https://download.pytorch.org/models/mobilenet_v3_small-047dcff4.pth",
            sha256="047dcff4",
            top1=67.668,
            description="torchvision MobileNet_V3_Small_Weights.IMAGENET1K_V1",
        ),
        description="MobileNet V3 Small: the low-resource MobileNet V3 search result",
    )
)
