"""Small building blocks shared by several families."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None, round_limit: float = 0.9) -> int:
    """Round channels to a multiple of ``divisor`` without going down by more than 10% (TF/torchvision/timm rule)."""
    min_value = min_value or divisor
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < round_limit * value:
        rounded += divisor
    return rounded


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """Interleave the channels of ``groups`` groups so the next group conv sees every group (ShuffleNet V1/V2).

    Only the channel axis is reshaped, so batch and spatial sizes never get baked into the exported graph
    (dynamo export gives a plain Reshape -> Transpose -> Reshape).
    """
    return x.unflatten(1, (groups, -1)).transpose(1, 2).flatten(1, 2)


class ConvNormAct(nn.Sequential):
    """Conv2d (no bias) -> BatchNorm2d -> optional activation, indexed 0/1/2 like torchvision's
    ``Conv2dNormActivation`` so torchvision checkpoints load without renaming keys."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        activation: Callable[..., nn.Module] | None = nn.ReLU,
        norm_eps: float = 1e-5,
        norm_momentum: float = 0.1,
    ) -> None:
        padding = (kernel_size - 1) // 2
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=False),
            nn.BatchNorm2d(out_channels, eps=norm_eps, momentum=norm_momentum),
        ]
        if activation is not None:
            layers.append(activation(inplace=True))
        super().__init__(*layers)


class BatchNormAct2d(nn.BatchNorm2d):
    """BatchNorm2d followed by an activation, keeping BatchNorm's own state-dict keys (timm's ``BatchNormAct2d``)."""

    def __init__(
        self, num_features: int, activation: Callable[..., nn.Module] | None = nn.ReLU, **norm_kwargs: float
    ) -> None:
        super().__init__(num_features, **norm_kwargs)
        self.act = activation(inplace=True) if activation is not None else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(super().forward(x))


class SqueezeExcitation(nn.Module):
    """Channel attention with torchvision's key names (``fc1``/``fc2``), used by MobileNetV3 and EfficientNet."""

    def __init__(
        self,
        channels: int,
        squeeze_channels: int,
        activation: Callable[..., nn.Module] = nn.ReLU,
        scale_activation: Callable[..., nn.Module] = nn.Sigmoid,
    ) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze_channels, 1)
        self.fc2 = nn.Conv2d(squeeze_channels, channels, 1)
        self.activation = activation()
        self.scale_activation = scale_activation()

    def forward(self, x: Tensor) -> Tensor:
        scale = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
        return scale * x
