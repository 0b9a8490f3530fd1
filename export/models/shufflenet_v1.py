"""ShuffleNet V1 (Zhang et al. 2018): grouped 1x1 convs made to talk to each other by a channel shuffle.

No torchvision/timm checkpoint exists, so the layout is our own, named like ShuffleNet V2 (``conv1``, ``stage2..4``,
``fc``). Variants are the paper's: ``groups`` of the 1x1 convs (Table 1) and the width scale factor "s x".
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from smallnets.export.layers import ConvNormAct, channel_shuffle, make_divisible
from smallnets.export.registry import ModelSpec, PublishedFigures, register

STAGE_REPEATS = (4, 8, 4)  # units per stage (stage2, stage3, stage4), the first of each with stride 2
BOTTLENECK_RATIO = 4  # bottleneck width = unit output channels / 4 (paper §3.3)
# groups -> stage2..4 output channels at 1x (paper Table 1): more groups afford wider layers at equal cost
STAGE_CHANNELS: dict[int, tuple[int, int, int]] = {
    1: (144, 288, 576),
    2: (200, 400, 800),
    3: (240, 480, 960),
    4: (272, 544, 1088),
    8: (384, 768, 1536),
}
# width -> stem channels, as the authors' code sets them (1.5x keeps 24: it reproduces the paper's 292 MFLOPs)
STEM_CHANNELS: dict[float, int] = {0.5: 12, 1.0: 24, 1.5: 24, 2.0: 48}
RESOLUTIONS = (224, 192, 160, 128)


class ShuffleUnitV1(nn.Module):
    """Group 1x1 -> shuffle -> depthwise 3x3 -> group 1x1 residual unit (paper Fig. 2b/c).

    Stride 1 adds the identity; stride 2 concatenates a 3x3 average-pooled shortcut, so the residual branch only
    produces the channels the unit adds.
    """

    def __init__(self, in_channels: int, out_channels: int, groups: int, stride: int, group_first: bool = True) -> None:
        super().__init__()
        self.groups = groups
        self.stride = stride
        bottleneck = out_channels // BOTTLENECK_RATIO
        branch_channels = out_channels - in_channels if stride > 1 else out_channels
        self.compress = ConvNormAct(in_channels, bottleneck, 1, groups=groups if group_first else 1)
        self.depthwise = ConvNormAct(bottleneck, bottleneck, 3, stride, groups=bottleneck, activation=None)
        self.expand = ConvNormAct(bottleneck, branch_channels, 1, groups=groups, activation=None)
        self.shortcut = nn.AvgPool2d(3, stride, padding=1) if stride > 1 else nn.Identity()
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        branch = self.compress(x)
        if self.groups > 1:
            branch = channel_shuffle(branch, self.groups)
        branch = self.expand(self.depthwise(branch))
        if self.stride == 1:
            return self.act(x + branch)
        return self.act(torch.cat((self.shortcut(x), branch), dim=1))


class ShuffleNetV1(nn.Module):
    """Stem conv + max-pool, three stages of shuffle units, global average pool, linear classifier."""

    def __init__(
        self, stem_channels: int, stage_channels: tuple[int, ...], groups: int, num_classes: int = 1000
    ) -> None:
        super().__init__()
        self.conv1 = ConvNormAct(3, stem_channels, 3, stride=2)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        in_channels = stem_channels
        for index, (out_channels, repeats) in enumerate(zip(stage_channels, STAGE_REPEATS, strict=True), start=2):
            # stage 2's first 1x1 conv is not grouped: its few input channels are too few to split (paper §3.3)
            units = [ShuffleUnitV1(in_channels, out_channels, groups, stride=2, group_first=index > 2)]
            units += [ShuffleUnitV1(out_channels, out_channels, groups, stride=1) for _ in range(repeats - 1)]
            self.add_module(f"stage{index}", nn.Sequential(*units))
            in_channels = out_channels
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.conv1(x))
        x = self.stage4(self.stage3(self.stage2(x)))
        return self.fc(x.mean((2, 3)))


def shufflenet_v1(groups: int = 3, width: float = 1.0, num_classes: int = 1000) -> ShuffleNetV1:
    """The family builder: the paper's "ShuffleNet s x (g = groups)".

    Scaled channels are rounded so every grouped conv splits evenly: stage outputs (and so bottlenecks, a quarter
    of them) to multiples of 4 * groups, the stem to a multiple of groups (the stride-2 branch makes out - in).
    At 1x this leaves the paper's table unchanged; 0.5x with 8 groups gets the authors' 16-channel stem.
    """
    stem = make_divisible(STEM_CHANNELS[width], groups)
    stages = tuple(make_divisible(channels * width, BOTTLENECK_RATIO * groups) for channels in STAGE_CHANNELS[groups])
    return ShuffleNetV1(stem, stages, groups, num_classes)


_PAPER = "ShuffleNet paper (Zhang et al. 2018) Table 1, complexity in MFLOPs (multiply-adds)"
_MEGVII = "megvii-model/ShuffleNet-Series ShuffleNetV1/README.md (authors' implementation; rounded, top-1 = 100 - err)"
# groups -> MACs of ShuffleNet 1x (paper Table 1)
PAPER_MACS: dict[int, int] = {1: 143_000_000, 2: 140_000_000, 3: 137_000_000, 4: 133_000_000, 8: 137_000_000}
# (groups, width) -> (MACs, params, top-1) of the authors' trained models
MEGVII_MODELS: dict[tuple[int, float], tuple[int, int, float]] = {
    (3, 0.5): (38_000_000, 700_000, 57.3),
    (3, 1.0): (138_000_000, 1_900_000, 67.8),
    (3, 1.5): (292_000_000, 3_400_000, 71.6),
    (3, 2.0): (524_000_000, 5_400_000, 74.1),
    (8, 0.5): (40_000_000, 1_000_000, 58.8),
    (8, 1.0): (138_000_000, 2_400_000, 68.0),
    (8, 1.5): (290_000_000, 4_300_000, 71.0),
    (8, 2.0): (522_000_000, 6_500_000, 72.9),
}

register(
    ModelSpec(
        name="shufflenet_v1",
        family="shufflenet_v1",
        builder=shufflenet_v1,
        defaults={"groups": 3, "width": 1.0, "resolution": 224},
        choices={"groups": tuple(STAGE_CHANNELS), "width": tuple(STEM_CHANNELS), "resolution": RESOLUTIONS},
        references=(
            *(
                PublishedFigures(variant={"groups": groups, "width": 1.0}, macs=macs, source=_PAPER, macs_rel_tol=0.05)
                for groups, macs in PAPER_MACS.items()
            ),
            *(
                PublishedFigures(
                    variant={"groups": groups, "width": width},
                    params=params,
                    macs=macs,
                    top1=top1,
                    source=_MEGVII,
                    params_rel_tol=0.05,
                    macs_rel_tol=0.05,
                )
                for (groups, width), (macs, params, top1) in MEGVII_MODELS.items()
            ),
        ),
        weights=None,
        description="ShuffleNet V1: grouped 1x1 convs + channel shuffle; no public torchvision/timm weights",
    )
)
