"""ShuffleNet V2 (Ma et al. 2018): channel split + concat + channel shuffle, in torchvision's state-dict layout.

Keys follow torchvision (``conv1``, ``stage2..4``, ``conv5``, ``fc``; ``branch1``/``branch2`` inside units) so its
checkpoints load with ``strict=True``. The four registered names share one builder; only the width differs.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from smallnets.export.layers import ConvNormAct, channel_shuffle
from smallnets.export.registry import ModelSpec, PreprocessingRecipe, PublishedFigures, WeightsSource, register

STAGE_REPEATS = (4, 8, 4)  # units per stage (stage2, stage3, stage4), the first of each with stride 2

# width multiplier -> (stem, stage2, stage3, stage4, conv5) output channels (paper Table 5, torchvision).
STAGE_CHANNELS: dict[float, tuple[int, int, int, int, int]] = {
    0.5: (24, 48, 96, 192, 1024),
    1.0: (24, 116, 232, 464, 1024),
    1.5: (24, 176, 352, 704, 1024),
    2.0: (24, 244, 488, 976, 2048),
}

RESOLUTIONS = (224, 192, 160, 128)


def _conv_bn(
    in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1
) -> list[nn.Module]:
    """Conv + BN as two list items: torchvision's branches are flat sequences, not nested conv blocks."""
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_channels),
    ]


class ShuffleUnitV2(nn.Module):
    """Stride 1: split channels, transform one half. Stride 2: transform both copies of the input (downsampling).

    Either way the two halves are concatenated and shuffled so information crosses between them next unit.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        branch_channels = out_channels // 2
        if stride > 1:
            self.branch1 = nn.Sequential(
                *_conv_bn(in_channels, in_channels, 3, stride, groups=in_channels),
                *_conv_bn(in_channels, branch_channels, 1),
                nn.ReLU(inplace=True),
            )
        elif in_channels != out_channels:
            raise ValueError(f"a stride-1 unit keeps its width, got {in_channels} -> {out_channels} channels")
        self.branch2 = nn.Sequential(
            *_conv_bn(in_channels if stride > 1 else branch_channels, branch_channels, 1),
            nn.ReLU(inplace=True),
            *_conv_bn(branch_channels, branch_channels, 3, stride, groups=branch_channels),
            *_conv_bn(branch_channels, branch_channels, 1),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        if self.stride == 1:
            kept, transformed = x.chunk(2, dim=1)
            out = torch.cat((kept, self.branch2(transformed)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    """Stem conv + max-pool, three stages of shuffle units, 1x1 conv, global average pool, linear classifier."""

    def __init__(self, stage_channels: tuple[int, ...], stage_repeats: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        stem_channels, *unit_channels, head_channels = stage_channels
        self.conv1 = ConvNormAct(3, stem_channels, 3, stride=2)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        in_channels = stem_channels
        for index, (out_channels, repeats) in enumerate(zip(unit_channels, stage_repeats, strict=True), start=2):
            units = [ShuffleUnitV2(in_channels, out_channels, stride=2)]
            units += [ShuffleUnitV2(out_channels, out_channels, stride=1) for _ in range(repeats - 1)]
            self.add_module(f"stage{index}", nn.Sequential(*units))
            in_channels = out_channels
        self.conv5 = ConvNormAct(in_channels, head_channels, 1)
        self.fc = nn.Linear(head_channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.conv1(x))
        x = self.stage4(self.stage3(self.stage2(x)))
        return self.fc(self.conv5(x).mean((2, 3)))


def shufflenet_v2(width: float = 1.0, num_classes: int = 1000) -> ShuffleNetV2:
    """The family builder: ``width`` picks a row of the channel table."""
    return ShuffleNetV2(STAGE_CHANNELS[width], STAGE_REPEATS, num_classes)


# torchvision IMAGENET1K_V1 weights: width -> (checkpoint file, sha256 prefix, params, top-1, resize before 224 crop)
TORCHVISION_WEIGHTS: dict[float, tuple[str, str, int, float, int]] = {
    0.5: ("shufflenetv2_x0.5-f707e7126e.pth", "f707e7126e", 1_366_792, 60.552, 256),
    1.0: ("shufflenetv2_x1-5666bf0f80.pth", "5666bf0f80", 2_278_604, 69.362, 256),
    1.5: ("shufflenetv2_x1_5-3c479a10.pth", "3c479a10", 3_503_624, 72.996, 232),
    2.0: ("shufflenetv2_x2_0-8be3c8ee.pth", "8be3c8ee", 7_393_996, 76.230, 232),
}
# torchvision's "_ops" (GFLOPS counted as multiply-adds) -> MACs, with half a unit of its last digit as tolerance;
# x1_0 uses the finer 144.9M of the reference table.
TORCHVISION_MACS: dict[float, tuple[int, float]] = {
    0.5: (40_000_000, 0.5 / 40),
    1.0: (144_900_000, 0.001),
    1.5: (296_000_000, 0.5 / 296),
    2.0: (583_000_000, 0.5 / 583),
}


def _register(width: float) -> None:
    file, sha256, params, top1, resize = TORCHVISION_WEIGHTS[width]
    macs, macs_rel_tol = TORCHVISION_MACS[width]
    suffix = f"x{width:.1f}".replace(".", "_")
    source = f"torchvision ShuffleNet_V2_{suffix.upper()}_Weights.IMAGENET1K_V1"
    register(
        ModelSpec(
            name=f"shufflenet_v2_{suffix}",
            family="shufflenet_v2",
            builder=shufflenet_v2,
            defaults={"width": width, "resolution": 224},
            choices={"width": (width,), "resolution": RESOLUTIONS},
            preprocessing=PreprocessingRecipe(crop_pct=224 / resize),
            references=(
                PublishedFigures(
                    variant={"width": width},
                    params=params,
                    macs=macs,
                    top1=top1,
                    source=source,
                    macs_rel_tol=macs_rel_tol,
                ),
            ),
            weights=WeightsSource(
                url=f"https://download.pytorch.org/models/{file}",
                sha256=sha256,
                top1=top1,
                description=f"{source}; sha256 is the prefix torch.hub checks (from the file name)",
            ),
            description=f"ShuffleNet V2 {width}x: channel split + shuffle, depthwise 3x3, no group 1x1 convs",
        )
    )


for _width in TORCHVISION_WEIGHTS:
    _register(_width)
