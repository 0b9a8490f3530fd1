"""Xception (Chollet 2017): Inception taken to the extreme, i.e. depthwise separable convs with residual links.

The layout is timm's ``legacy_xception`` (the Keras port by Cadene): ``conv1/bn1``, ``conv2/bn2``, ``block1..12``
(``rep.N`` sequences plus ``skip``/``skipbn`` projections), ``conv3/bn3``, ``conv4/bn4``, ``fc``, so its checkpoint
loads with ``strict=True``. The ``rep.N`` indices count the parameter-free ReLUs too; the builder keeps them in place.
"""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor, nn

from smallnets.export.registry import (
    INCEPTION_MEAN,
    INCEPTION_STD,
    ModelSpec,
    PreprocessingRecipe,
    PublishedFigures,
    WeightsSource,
    register,
)


class BlockSpec(NamedTuple):
    """One residual block: ``repeats`` ReLU-SepConv-BN steps; stride 2 ends in a max-pool and projects the skip."""

    out_channels: int
    repeats: int
    stride: int
    start_with_relu: bool = True
    grow_first: bool = True  # widen in the first step (entry/middle flow) or in the last (exit flow)


STEM_CHANNELS = (32, 64)
# entry flow (3 downsampling blocks), middle flow (8 identical blocks), exit flow (1 block); then two SepConvs
BLOCKS = (
    BlockSpec(128, 2, 2, start_with_relu=False),
    BlockSpec(256, 2, 2),
    BlockSpec(728, 2, 2),
    *[BlockSpec(728, 3, 1)] * 8,
    BlockSpec(1024, 2, 2, grow_first=False),
)
HEAD_CHANNELS = (1536, 2048)

RESOLUTIONS = (299, 224)


class SeparableConv2d(nn.Module):
    """Depthwise 3x3 (``conv1``) then pointwise 1x1 (``pointwise``), no non-linearity in between (paper §4.7)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, in_channels, 3, padding=1, groups=in_channels, bias=False)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise(self.conv1(x))


class Block(nn.Module):
    """Residual block; the skip is an identity, or a strided 1x1 conv + BN when width or resolution changes."""

    def __init__(self, in_channels: int, spec: BlockSpec) -> None:
        super().__init__()
        out_channels, repeats, stride = spec.out_channels, spec.repeats, spec.stride
        if in_channels != out_channels or stride != 1:
            self.skip = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)
            self.skipbn = nn.BatchNorm2d(out_channels)
        else:
            self.skip = None
        widen_at = 0 if spec.grow_first else repeats - 1
        layers: list[nn.Module] = []
        channels = in_channels
        for step in range(repeats):
            step_out = out_channels if step == widen_at else channels
            # the first ReLU must not overwrite the block input: the skip path still reads it
            layers += [nn.ReLU(inplace=step > 0), SeparableConv2d(channels, step_out), nn.BatchNorm2d(step_out)]
            channels = step_out
        if not spec.start_with_relu:
            layers = layers[1:]
        if stride != 1:
            layers.append(nn.MaxPool2d(3, stride, padding=1))
        self.rep = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        skip = x if self.skip is None else self.skipbn(self.skip(x))
        return self.rep(x) + skip


class Xception(nn.Module):
    """Two plain 3x3 convs, the residual blocks of the table, two SepConvs, global average pool, linear classifier."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        stem1, stem2 = STEM_CHANNELS
        self.conv1 = nn.Conv2d(3, stem1, 3, stride=2, bias=False)
        self.bn1 = nn.BatchNorm2d(stem1)
        self.conv2 = nn.Conv2d(stem1, stem2, 3, bias=False)
        self.bn2 = nn.BatchNorm2d(stem2)
        channels = stem2
        for index, spec in enumerate(BLOCKS, start=1):
            self.add_module(f"block{index}", Block(channels, spec))
            channels = spec.out_channels
        head1, head2 = HEAD_CHANNELS
        self.conv3 = SeparableConv2d(channels, head1)
        self.bn3 = nn.BatchNorm2d(head1)
        self.conv4 = SeparableConv2d(head1, head2)
        self.bn4 = nn.BatchNorm2d(head2)
        self.fc = nn.Linear(head2, num_classes)
        self.act = nn.ReLU(inplace=True)
        self.block_names = tuple(f"block{index}" for index in range(1, len(BLOCKS) + 1))

    def forward(self, x: Tensor) -> Tensor:
        x = self.act(self.bn1(self.conv1(x)))
        x = self.act(self.bn2(self.conv2(x)))
        for name in self.block_names:
            x = getattr(self, name)(x)
        x = self.act(self.bn3(self.conv3(x)))
        x = self.act(self.bn4(self.conv4(x)))
        return self.fc(x.mean((2, 3)))


def xception(num_classes: int = 1000) -> Xception:
    """The family builder (a single published variant; resolution is only the input size)."""
    return Xception(num_classes)


_SOURCE = "timm legacy_xception (Cadene's port of the Keras weights)"
register(
    ModelSpec(
        name="xception",
        family="xception",
        builder=xception,
        defaults={"resolution": 299},
        choices={"resolution": RESOLUTIONS},
        # timm default_cfg: resize 333, center-crop 299, bicubic, inputs scaled to [-1, 1]
        preprocessing=PreprocessingRecipe(
            crop_pct=0.8975, interpolation="bicubic", mean=INCEPTION_MEAN, std=INCEPTION_STD
        ),
        references=(
            PublishedFigures(params=22_855_952, macs=8_357_000_000, top1=78.892, source=_SOURCE, macs_rel_tol=0.001),
        ),
        weights=WeightsSource(
            url="https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-cadene/xception-43020ad28.pth",
            sha256="43020ad28",
            top1=78.892,
            description=(
                f"{_SOURCE}; top-1 from timm's xception.py docstring. sha256 is the file-name prefix: timm loads this "
                "file without check_hash, so the prefix is unverified (now also on the HF hub as timm/legacy_xception)"
            ),
        ),
        description="Xception: 36 depthwise separable convs in 14 residual modules (entry, middle, exit flow)",
    )
)
