"""The model card every exported ONNX file carries, so later stages need no side configuration.

The card is stored as JSON under one key of the ONNX ``metadata_props``; ONNX Runtime exposes the same map
as ``session.get_modelmeta().custom_metadata_map``, so readers need neither torch nor the onnx package.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from smallnets.core.targets import ONNXRUNTIME

CARD_KEY = "smallnets.card"
CARD_VERSION = 1


class MissingMetadataError(ValueError):
    """The ONNX file was not exported by smallnets (or its card is unreadable)."""


@dataclass(frozen=True)
class Preprocessing:
    """How a photo becomes the network input: resize the shorter side, center-crop, scale, normalize."""

    resize: int
    crop: int
    interpolation: str = "bilinear"  # "bilinear" | "bicubic" | "nearest"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    @classmethod
    def for_resolution(
        cls,
        resolution: int,
        crop_pct: float = 0.875,
        interpolation: str = "bilinear",
        mean: tuple[float, float, float] = (0.485, 0.456, 0.406),
        std: tuple[float, float, float] = (0.229, 0.224, 0.225),
    ) -> Preprocessing:
        """timm's convention: resize to ``resolution / crop_pct`` then center-crop ``resolution``."""
        return cls(int(resolution / crop_pct), resolution, interpolation, tuple(mean), tuple(std))


RANDOM_WEIGHTS = "unvalidated (random weights)"


class RandomWeightsWarning(UserWarning):
    """Predictions of a model with random weights were asked for: they mean nothing (``ModelCard.weights_note``)."""


@dataclass(frozen=True)
class AccuracyStatus:
    """What is known about a model's accuracy, and where any figure comes from (never a figure for random weights).

    ``status``: "unvalidated (random weights)"; "unvalidated" (trained weights nobody measured here, e.g. a user's
    file); "published" (the checkpoint's published ImageNet top-1, quoted, not measured on this file); "measured"
    (top-1 on labelled photos, ``source`` names the set and the command).
    """

    status: str = RANDOM_WEIGHTS
    top1: float | None = None
    source: str = ""

    def __post_init__(self) -> None:
        if self.status == RANDOM_WEIGHTS and self.top1 is not None:
            raise ValueError("random weights have no accuracy figure: " + RANDOM_WEIGHTS)

    @property
    def summary(self) -> str:
        """One line for tables and logs: the status, or the figure with its source."""
        if self.top1 is None:
            return self.status if not self.source else f"{self.status} ({self.source})"
        return f"top-1 {self.top1:.1f}% {self.status} ({self.source})"

    @classmethod
    def for_old_card(cls, weights: str) -> AccuracyStatus:
        """Cards written before this field existed: random weights say so, anything else is unvalidated."""
        if weights.startswith("random"):
            return cls()
        return cls("unvalidated", source="card written before smallnets recorded accuracy status")


@dataclass(frozen=True)
class ModelCard:
    """Everything serving, optimizing and benchmarking need to know about one ONNX classifier."""

    name: str
    family: str
    variant: dict[str, Any]
    resolution: int
    preprocessing: Preprocessing
    labels: tuple[str, ...] = field(repr=False)  # 1000 class names would bury the rest of a printed card
    synsets: tuple[str, ...] = field(default=(), repr=False)
    params: int = 0
    macs: int = 0
    input_name: str = "input"
    output_name: str = "logits"
    precision: str = "fp32"
    weights: str = "random"
    provenance: dict[str, Any] = field(default_factory=dict)
    quantization: dict[str, Any] | None = None
    accuracy: AccuracyStatus = field(default_factory=AccuracyStatus)
    version: int = CARD_VERSION

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def display_name(self) -> str:
        """Registry name plus the variant parameters that differ from nothing, e.g. ``mobilenet_v1(width=0.5)``."""
        params = ",".join(f"{k}={v}" for k, v in sorted(self.variant.items()) if k != "resolution")
        return f"{self.name}({params})@{self.resolution}" if params else f"{self.name}@{self.resolution}"

    @property
    def runtime(self) -> str:
        """The runtime the file was built for: its int8 target's (core.targets.Target.runtime), else onnxruntime."""
        return (self.quantization or {}).get("runtime", ONNXRUNTIME)

    @property
    def weights_kind(self) -> str:
        """``random``, ``imagenet`` or ``file``: the first word of ``weights`` (a metric label, a filter)."""
        return self.weights.split()[0].rstrip(":") if self.weights else "random"

    @property
    def weights_note(self) -> str | None:
        """The warning every path that shows this model's predictions gives, or None for trained weights."""
        if self.weights_kind != "random":
            return None
        return (
            f"{self.display_name} has random weights: its predictions mean nothing, {RANDOM_WEIGHTS}; export it "
            "with --weights imagenet (where the registry has them) or --weights PATH"
        )

    def with_updates(self, **changes: Any) -> ModelCard:
        return replace(self, **changes)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelCard:
        data = json.loads(text)
        data["preprocessing"] = Preprocessing(
            **{
                **data["preprocessing"],
                "mean": tuple(data["preprocessing"]["mean"]),
                "std": tuple(data["preprocessing"]["std"]),
            }
        )
        accuracy = data.get("accuracy")
        data["accuracy"] = (
            AccuracyStatus(**accuracy) if accuracy else AccuracyStatus.for_old_card(data.get("weights", "random"))
        )
        data["labels"] = tuple(data["labels"])
        data["synsets"] = tuple(data.get("synsets", ()))
        return cls(**data)

    def to_metadata_props(self) -> dict[str, str]:
        return {CARD_KEY: self.to_json()}

    @classmethod
    def from_metadata_props(cls, props: Mapping[str, str], source: str = "model") -> ModelCard:
        """Read the card back; ``source`` names the file in the error so the user knows what to fix."""
        if CARD_KEY not in props:
            raise MissingMetadataError(
                f"{source} has no smallnets model card (metadata key {CARD_KEY!r}): export it with "
                "`smallnets export NAME -o OUT.onnx`, or pass its input size and preprocessing explicitly."
            )
        try:
            return cls.from_json(props[CARD_KEY])
        except (ValueError, TypeError, KeyError) as error:
            raise MissingMetadataError(f"{source} has an unreadable smallnets model card: {error}") from error


# The one place the card is read from and written to a model: an ONNX ModelProto in memory (export, optimize) or
# an ONNX file on disk through ONNX Runtime's metadata (serve, bench; no onnx package needed).
def card_of(model: Any) -> ModelCard | None:
    """The card in an ONNX ModelProto's ``metadata_props``, or None for a model smallnets did not write."""
    props = {entry.key: entry.value for entry in model.metadata_props}
    return ModelCard.from_metadata_props(props) if CARD_KEY in props else None


def write_card(model: Any, card: ModelCard) -> Any:
    """Set (replace) the card of an ONNX ModelProto in place; its other metadata entries are kept."""
    for key, value in card.to_metadata_props().items():
        for entry in model.metadata_props:
            if entry.key == key:
                entry.value = value
                break
        else:
            model.metadata_props.add(key=key, value=value)
    return model


def read_card(path: str | Path) -> ModelCard:
    """The card of an ONNX file, read through ONNX Runtime's metadata (the graph is not optimized or run)."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist: export one with `smallnets export NAME -o FILE`")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as error:  # ORT raises its own exception types for corrupt files
        raise ValueError(f"{path} is not a loadable ONNX model: {error}") from error
    return ModelCard.from_metadata_props(session.get_modelmeta().custom_metadata_map, source=str(path))
