"""MobileNet V1 (Howard et al. 2017, arXiv:1704.04861): a stack of depthwise-separable convolutions.

Width multiplier alpha scales every layer's channels; resolution multiplier rho is just the input size. Module and
state-dict layout follow timm's ``mobilenetv1_100`` (``conv_stem``/``bn1``/``blocks.i.j.{conv_dw,bn1,conv_pw,bn2}``/
``classifier``) so its checkpoint loads with ``strict=True`` and no key mapping.
"""

from __future__ import annotations

from torch import Tensor, nn

from smallnets.export.layers import BatchNormAct2d, make_divisible
from smallnets.export.registry import (
    INCEPTION_MEAN,
    INCEPTION_STD,
    ModelSpec,
    PreprocessingRecipe,
    PublishedFigures,
    WeightsSource,
    register,
)

STEM_CHANNELS = 32
# Depthwise-separable stages (paper Table 1): c = output channels, n = blocks, s = stride of the first block.
STAGES: tuple[tuple[int, int, int], ...] = (
    # c, n, s
    (64, 1, 1),
    (128, 2, 2),
    (256, 2, 2),
    (512, 6, 2),
    (1024, 2, 2),
)


class DepthwiseSeparableConv(nn.Module):
    """3x3 depthwise conv -> BN -> ReLU6 -> 1x1 pointwise conv -> BN -> ReLU6 (no residual in V1)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv_dw = nn.Conv2d(in_channels, in_channels, 3, stride, 1, groups=in_channels, bias=False)
        self.bn1 = BatchNormAct2d(in_channels, nn.ReLU6)
        self.conv_pw = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn2 = BatchNormAct2d(out_channels, nn.ReLU6)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn2(self.conv_pw(self.bn1(self.conv_dw(x))))


class MobileNetV1(nn.Module):
    def __init__(self, stages: tuple[tuple[int, int, int], ...], width: float, num_classes: int) -> None:
        super().__init__()
        channels = make_divisible(STEM_CHANNELS * width)
        self.conv_stem = nn.Conv2d(3, channels, 3, 2, 1, bias=False)
        self.bn1 = BatchNormAct2d(channels, nn.ReLU6)
        blocks = []
        for out_channels, repeats, stride in stages:
            out_channels = make_divisible(out_channels * width)
            stage = []
            for index in range(repeats):
                stage.append(DepthwiseSeparableConv(channels, out_channels, stride if index == 0 else 1))
                channels = out_channels
            blocks.append(nn.Sequential(*stage))
        self.blocks = nn.Sequential(*blocks)
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.blocks(self.bn1(self.conv_stem(x)))
        return self.classifier(self.global_pool(x).flatten(1))


def mobilenet_v1(width: float = 1.0, num_classes: int = 1000) -> MobileNetV1:
    """MobileNet V1 at width multiplier ``width`` (channels rounded to multiples of 8 as timm does)."""
    return MobileNetV1(STAGES, width, num_classes)


def _paper(value: float, units_of_last_digit: float, decimals: int = 0) -> float:
    """Relative tolerance of a paper figure printed with ``decimals`` decimals, in units of its last digit.

    Params get half a unit (plain rounding). MACs get one unit: the paper does not round them consistently
    (568.7M is printed 569, 290.7M at 160px is printed 290), so half a unit would fail on the paper's own figures.
    """
    return units_of_last_digit * 10**-decimals / value


_PAPER = "MobileNets paper (arXiv:1704.04861)"
register(
    ModelSpec(
        name="mobilenet_v1",
        family="mobilenet_v1",
        builder=mobilenet_v1,
        defaults={"width": 1.0, "resolution": 224},
        choices={"width": (1.0, 0.75, 0.5, 0.25), "resolution": (224, 192, 160, 128)},
        # timm's pretrained_cfg for mobilenetv1_100.ra4_e3600_r224_in1k: bicubic, crop_pct 0.875, mean = std = 0.5.
        preprocessing=PreprocessingRecipe(0.875, "bicubic", INCEPTION_MEAN, INCEPTION_STD),
        references=(
            PublishedFigures(params=4_231_976, source="timm mobilenetv1_100 (same layout)"),
            *(
                PublishedFigures(
                    variant={"width": width},
                    params=round(params * 1e6),
                    macs=macs * 1_000_000,
                    top1=top1,
                    source=f"{_PAPER} Table 6",
                    params_rel_tol=_paper(params, 0.5, decimals=1),
                    macs_rel_tol=_paper(macs, 1),
                )
                for width, params, macs, top1 in (
                    (1.0, 4.2, 569, 70.6),
                    (0.75, 2.6, 325, 68.4),
                    (0.5, 1.3, 149, 63.7),
                    (0.25, 0.5, 41, 50.6),
                )
            ),
            *(
                PublishedFigures(
                    variant={"resolution": resolution},
                    macs=macs * 1_000_000,
                    top1=top1,
                    source=f"{_PAPER} Table 7",
                    macs_rel_tol=_paper(macs, 1),
                )
                for resolution, macs, top1 in ((192, 418, 69.1), (160, 290, 67.2), (128, 186, 64.4))
            ),
        ),
        # Published on the Hugging Face hub only (pytorch_model.bin / model.safetensors), with no checksummed direct
        # URL to fetch through torch.hub: the user downloads it and passes --weights PATH (loads with strict=True).
        weights=WeightsSource(
            description="timm mobilenetv1_100.ra4_e3600_r224_in1k (hf-hub:timm/mobilenetv1_100.ra4_e3600_r224_in1k)"
        ),
        description="MobileNet V1: depthwise-separable convs, width multiplier alpha and input resolution rho",
    )
)
