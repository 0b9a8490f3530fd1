"""EfficientNet B0-B7 (Tan & Le, 2019): MBConv + squeeze-and-excitation + SiLU, scaled from one B0 stage table.

The module layout is torchvision's (``features.N.M.block...``, ``classifier.1``), so torchvision
``efficientnet_b*`` checkpoints load with ``strict=True`` and no key mapping.

Two ways to scale B0 are registered:

* ``efficientnet_b0`` ... ``efficientnet_b7``: the official (width, depth, resolution) table the released
  checkpoints were trained with.
* ``efficientnet`` with ``phi``: pure compound scaling, depth = 1.2^phi, width = 1.1^phi and
  resolution = 224 * 1.15^phi (see :func:`compound_scaling`).

The official table is *not* compound scaling with integer phi. Side by side (width, depth, resolution):

====  ====================  ==================
phi   compound 1.1/1.2/1.15  official B{phi}
====  ====================  ==================
1     1.10, 1.20, 258       1.0, 1.1, 240
2     1.21, 1.44, 296       1.1, 1.2, 260
3     1.33, 1.73, 341       1.2, 1.4, 300
4     1.46, 2.07, 392       1.4, 1.8, 380
5     1.61, 2.49, 451       1.6, 2.2, 456
6     1.77, 2.99, 518       1.8, 2.6, 528
7     1.95, 3.58, 596       2.0, 3.1, 600
====  ====================  ==================

The official B1-B4 grow more slowly in every dimension (B1 does not even widen), B5-B7 are slightly wider and
use a larger input than the formula, and from B3 on the official nets are much shallower than 1.2^phi
(B7: 3.1 vs 3.58, i.e. 55 instead of 64 MBConv blocks). Compound phi=1 is exactly B2's architecture
(width 1.1, depth 1.2: 9,109,994 params) at 258 px instead of 260. The paper fixed alpha/beta/gamma by a grid search at
phi=1 and then hand-picked the released coefficients, which is why both are offered here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from smallnets.export.layers import ConvNormAct, SqueezeExcitation, make_divisible
from smallnets.export.registry import ModelSpec, PreprocessingRecipe, PublishedFigures, WeightsSource, register

# Paper section 3.3: alpha (depth), beta (width), gamma (resolution), found by grid search at phi=1.
DEPTH_BASE, WIDTH_BASE, RESOLUTION_BASE = 1.2, 1.1, 1.15
BASE_RESOLUTION = 224
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
SE_RATIO = 0.25
TORCHVISION = "torchvision"


@dataclass(frozen=True)
class MBConvStage:
    """One row of the paper's Table 1: expansion t, kernel k, first stride s, output channels c, repeats n."""

    expand_ratio: int
    kernel: int
    stride: int
    channels: int
    repeats: int


B0_STAGES: tuple[MBConvStage, ...] = (
    MBConvStage(1, 3, 1, 16, 1),
    MBConvStage(6, 3, 2, 24, 2),
    MBConvStage(6, 5, 2, 40, 2),
    MBConvStage(6, 3, 2, 80, 3),
    MBConvStage(6, 5, 1, 112, 3),
    MBConvStage(6, 5, 2, 192, 4),
    MBConvStage(6, 3, 1, 320, 1),
)


def scale_channels(channels: int, width_mult: float) -> int:
    """TF reference ``round_filters``: multiply, then round to a multiple of 8 (never more than 10% down)."""
    return make_divisible(channels * width_mult, 8)


def scale_repeats(repeats: int, depth_mult: float) -> int:
    """TF reference ``round_repeats``: always round up, so any depth multiplier > 1 deepens every stage."""
    return math.ceil(repeats * depth_mult)


def compound_scaling(phi: int) -> tuple[float, float, int]:
    """(width, depth, resolution) of compound coefficient ``phi``: 1.1^phi, 1.2^phi, round(224 * 1.15^phi)."""
    return WIDTH_BASE**phi, DEPTH_BASE**phi, round(BASE_RESOLUTION * RESOLUTION_BASE**phi)


class MBConv(nn.Module):
    """Inverted residual with SE: 1x1 expand (skipped when t=1) -> depthwise kxk -> SE -> linear 1x1 project.

    Stochastic depth is a training-time regularizer and an identity at inference, so it is left out.
    """

    def __init__(self, in_channels: int, out_channels: int, expand_ratio: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.use_residual = stride == 1 and in_channels == out_channels
        hidden = make_divisible(in_channels * expand_ratio, 8)
        layers: list[nn.Module] = []
        if hidden != in_channels:
            layers.append(ConvNormAct(in_channels, hidden, 1, activation=nn.SiLU))
        layers += [
            ConvNormAct(hidden, hidden, kernel, stride, groups=hidden, activation=nn.SiLU),
            # The squeeze width follows the block input, not the expanded width (TF reference, torchvision).
            SqueezeExcitation(hidden, max(1, int(in_channels * SE_RATIO)), activation=nn.SiLU),
            ConvNormAct(hidden, out_channels, 1, activation=None),
        ]
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return out + x if self.use_residual else out


def init_fan_out(model: nn.Module) -> None:
    """He init over the *per-group* fan-out, as timm and the TF reference do (EfficientNet and -Lite).

    torchvision's ``kaiming_normal_(mode="fan_out")`` ignores groups, which shrinks every depthwise output by
    its channel count (random B0 logits ~1e-14). Even so, with BatchNorm's identity running statistics each
    MBConv still damps activations ~3x at init (SE gates ~0.5, SiLU ~x/2 near 0): random B0 logits are ~1e-5.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
            nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            bound = 1.0 / math.sqrt(module.out_features)
            nn.init.uniform_(module.weight, -bound, bound)
            nn.init.zeros_(module.bias)


class EfficientNet(nn.Module):
    """Stem conv -> MBConv stages -> 1x1 head conv -> global average pool -> dropout -> linear."""

    def __init__(
        self,
        stages: tuple[MBConvStage, ...] = B0_STAGES,
        width_mult: float = 1.0,
        depth_mult: float = 1.0,
        dropout: float = 0.2,
        num_classes: int = 1000,
    ) -> None:
        super().__init__()
        channels = scale_channels(STEM_CHANNELS, width_mult)
        features: list[nn.Module] = [ConvNormAct(3, channels, 3, stride=2, activation=nn.SiLU)]
        for stage in stages:
            out_channels = scale_channels(stage.channels, width_mult)
            blocks = []
            for index in range(scale_repeats(stage.repeats, depth_mult)):
                stride = stage.stride if index == 0 else 1
                blocks.append(MBConv(channels, out_channels, stage.expand_ratio, stage.kernel, stride))
                channels = out_channels
            features.append(nn.Sequential(*blocks))
        head_channels = scale_channels(HEAD_CHANNELS, width_mult)
        features.append(ConvNormAct(channels, head_channels, 1, activation=nn.SiLU))
        self.features = nn.Sequential(*features)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(head_channels, num_classes))
        init_fan_out(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def efficientnet(width_mult: float, depth_mult: float, dropout: float = 0.2, num_classes: int = 1000) -> EfficientNet:
    """The family builder: B0's stage table scaled by a width and a depth multiplier."""
    return EfficientNet(B0_STAGES, width_mult, depth_mult, dropout, num_classes)


def efficientnet_compound(phi: int, num_classes: int = 1000) -> EfficientNet:
    """B0 scaled by pure compound scaling (see :func:`compound_scaling`); dropout as for official B{phi}."""
    width, depth, _ = compound_scaling(phi)
    return efficientnet(width, depth, _dropout(phi), num_classes)


def _dropout(phi: int) -> float:
    """The official table's dropout: 0.2 for B0-B1, +0.1 every two steps (B6-B7: 0.5)."""
    return round(0.2 + 0.1 * (phi // 2), 1)


def _fixed_builder(width_mult: float, depth_mult: float, dropout: float) -> Callable[..., EfficientNet]:
    """A registry builder for one row of the official table (no architecture knobs left to choose)."""

    def build(num_classes: int = 1000) -> EfficientNet:
        return efficientnet(width_mult, depth_mult, dropout, num_classes)

    return build


@dataclass(frozen=True)
class CompoundScaledSpec(ModelSpec):
    """A spec whose default resolution follows ``phi`` (224 * 1.15^phi) unless a resolution is given."""

    def variant(self, **overrides: Any) -> dict[str, Any]:
        phi = overrides.get("phi")
        phi = self.defaults["phi"] if phi is None else phi
        if overrides.get("resolution") is None and phi in self.choices["phi"]:
            overrides = {**overrides, "resolution": compound_scaling(phi)[2]}
        return super().variant(**overrides)


def _torchvision_weights(file: str, top1: float, recipe: str) -> WeightsSource:
    return WeightsSource(
        url=f"https://download.pytorch.org/models/{file}",
        sha256=file.rsplit("-", 1)[1].removesuffix(".pth"),  # torch.hub convention: the file name's hash prefix
        top1=top1,
        description=f"torchvision {recipe}",
    )


@dataclass(frozen=True)
class _Official:
    """One row of the official table plus its torchvision checkpoint and evaluation transform."""

    width: float
    depth: float
    resolution: int
    dropout: float
    params: int
    weights_file: str
    top1: float
    recipe: str
    resize: int  # torchvision eval transform: resize shorter side, then center-crop ``crop``
    crop: int
    interpolation: str
    macs: int | None = None


OFFICIAL: Mapping[str, _Official] = {
    "b0": _Official(1.0, 1.0, 224, 0.2, 5_288_548, "efficientnet_b0_rwightman-3dd342df.pth", 77.692,
                    "IMAGENET1K_V1", 256, 224, "bicubic", macs=385_800_000),
    "b1": _Official(1.0, 1.1, 240, 0.2, 7_794_184, "efficientnet_b1-c27df63c.pth", 79.838,
                    "IMAGENET1K_V2", 255, 240, "bilinear"),
    "b2": _Official(1.1, 1.2, 260, 0.3, 9_109_994, "efficientnet_b2_rwightman-bcdf34b7.pth", 80.608,
                    "IMAGENET1K_V1", 288, 288, "bicubic"),
    "b3": _Official(1.2, 1.4, 300, 0.3, 12_233_232, "efficientnet_b3_rwightman-cf984f9c.pth", 82.008,
                    "IMAGENET1K_V1", 320, 300, "bicubic"),
    "b4": _Official(1.4, 1.8, 380, 0.4, 19_341_616, "efficientnet_b4_rwightman-7eb33cd5.pth", 83.384,
                    "IMAGENET1K_V1", 384, 380, "bicubic"),
    "b5": _Official(1.6, 2.2, 456, 0.4, 30_389_784, "efficientnet_b5_lukemelas-b6417697.pth", 83.444,
                    "IMAGENET1K_V1", 456, 456, "bicubic"),
    "b6": _Official(1.8, 2.6, 528, 0.5, 43_040_704, "efficientnet_b6_lukemelas-c76e70fd.pth", 84.008,
                    "IMAGENET1K_V1", 528, 528, "bicubic"),
    "b7": _Official(2.0, 3.1, 600, 0.5, 66_347_960, "efficientnet_b7_lukemelas-dcc49843.pth", 84.122,
                    "IMAGENET1K_V1", 600, 600, "bicubic"),
}  # fmt: skip

for _suffix, _row in OFFICIAL.items():
    register(
        ModelSpec(
            name=f"efficientnet_{_suffix}",
            family="efficientnet",
            builder=_fixed_builder(_row.width, _row.depth, _row.dropout),
            defaults={"resolution": _row.resolution},
            # torchvision's crop/resize ratio. B2's checkpoint is evaluated at 288 (above its 260 training size)
            # without a margin: crop_pct 1.0 keeps "no margin" at our 260 input.
            preprocessing=PreprocessingRecipe(crop_pct=_row.crop / _row.resize, interpolation=_row.interpolation),
            references=(
                PublishedFigures(
                    params=_row.params,
                    macs=_row.macs,
                    top1=_row.top1,
                    source=f"{TORCHVISION} efficientnet_{_suffix}",
                    macs_rel_tol=0.001,
                ),
            ),
            weights=_torchvision_weights(_row.weights_file, _row.top1, _row.recipe),
            description=f"EfficientNet-{_suffix.upper()} (width {_row.width}, depth {_row.depth}, official table)",
        )
    )

PHI_CHOICES = tuple(range(8))

register(
    CompoundScaledSpec(
        name="efficientnet",
        family="efficientnet",
        builder=efficientnet_compound,
        defaults={"phi": 0, "resolution": BASE_RESOLUTION},
        choices={"phi": PHI_CHOICES, "resolution": tuple(compound_scaling(phi)[2] for phi in PHI_CHOICES)},
        preprocessing=PreprocessingRecipe(crop_pct=0.875, interpolation="bicubic"),
        references=(
            PublishedFigures(
                variant={"phi": 0},
                params=OFFICIAL["b0"].params,
                macs=OFFICIAL["b0"].macs,
                source=f"{TORCHVISION} efficientnet_b0 (phi=0 is B0)",
                macs_rel_tol=0.001,
            ),
        ),
        # phi=0 is exactly B0, so B0's checkpoint serves the default variant.
        weights=_torchvision_weights(OFFICIAL["b0"].weights_file, OFFICIAL["b0"].top1, OFFICIAL["b0"].recipe),
        description="EfficientNet with pure compound scaling: width 1.1^phi, depth 1.2^phi, input 224*1.15^phi",
    )
)
