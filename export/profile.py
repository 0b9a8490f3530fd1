"""Params and MACs of a registry variant, counted the way the reference tables count them."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from smallnets.export.registry import ModelSpec


def count_params(model: nn.Module) -> int:
    """Trainable + frozen parameters (buffers such as BatchNorm running stats excluded), as torchvision counts."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, resolution: int) -> int:
    """Multiply-accumulates of one image: FlopCounterMode total / 2, computed on the meta device (no compute)."""
    if any(p.device.type != "meta" for p in model.parameters()):
        model = copy.deepcopy(model).to("meta")
    with torch.device("meta"), FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(torch.empty(1, 3, resolution, resolution))
    return counter.get_total_flops() // 2


def profile(spec: ModelSpec, variant: Mapping[str, Any] | None = None) -> tuple[int, int]:
    """(params, MACs) of a variant, building the model on the meta device so even B7 costs nothing."""
    variant = spec.variant(**dict(variant or {}))
    with torch.device("meta"):
        model = spec.build(variant).eval()
    return count_params(model), count_macs(model, variant["resolution"])
