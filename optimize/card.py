"""The model card optimize works with: read from the file, or built from flags for a foreign model."""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from smallnets.core.metadata import MissingMetadataError, ModelCard, Preprocessing, card_of
from smallnets.optimize.modelio import input_hw


@dataclass(frozen=True)
class PreprocessingFlags:
    """``--resolution/--resize/--mean/--std/--interpolation``: needed only for models without a card."""

    resolution: int | None = None
    resize: int | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    interpolation: str | None = None

    @property
    def given(self) -> bool:
        return any(
            value is not None for value in (self.resolution, self.resize, self.mean, self.std, self.interpolation)
        )


def resolve_card(model: onnx.ModelProto, flags: PreprocessingFlags, source: str) -> tuple[ModelCard, list[str]]:
    """The card to optimize with, plus notes on what the flags changed.

    A smallnets export carries its card; flags then override its preprocessing. A foreign model needs at least
    ``--resolution`` (the mean/std default to ImageNet's, which the note says).
    """
    card = card_of(model)
    notes: list[str] = []
    if card is None:
        resolution = flags.resolution
        if resolution is None:
            raise MissingMetadataError(
                f"{source} has no smallnets model card, so its input size and preprocessing are unknown: "
                "pass --resolution R (and --mean a,b,c --std a,b,c if not ImageNet's), "
                "or export it with `smallnets export NAME -o OUT.onnx`"
            )
        preprocessing = _preprocessing(resolution, flags)
        if flags.mean is None or flags.std is None:
            notes.append("no --mean/--std given: using ImageNet mean/std")
        num_classes = _num_classes(model)
        card = ModelCard(
            name=source.rsplit("/", 1)[-1].removesuffix(".onnx"),
            family="unknown",
            variant={"resolution": resolution},
            resolution=resolution,
            preprocessing=preprocessing,
            labels=tuple(str(index) for index in range(num_classes)),
            input_name=model.graph.input[0].name,
            output_name=model.graph.output[0].name,
            weights="unknown",
            provenance={"card": "built by smallnets optimize from command-line flags"},
        )
        notes.append(f"{source} has no model card: built one from the flags ({resolution}px, {num_classes} classes)")
    elif flags.given:
        resolution = flags.resolution or card.resolution
        card = card.with_updates(resolution=resolution, preprocessing=_preprocessing(resolution, flags, card))
        notes.append("preprocessing flags override the model card")
    height, width = input_hw(model)
    crop = card.preprocessing.crop
    if (height, width) != (None, None) and (height, width) != (crop, crop):
        raise ValueError(
            f"{source} takes {height}x{width} inputs but the preprocessing crops {crop}x{crop}: fix --resolution"
        )
    return card, notes


def _preprocessing(resolution: int, flags: PreprocessingFlags, card: ModelCard | None = None) -> Preprocessing:
    base = card.preprocessing if card else Preprocessing.for_resolution(resolution)
    crop_pct = base.crop / base.resize
    return Preprocessing(
        resize=flags.resize or (int(resolution / crop_pct) if resolution != base.crop else base.resize),
        crop=resolution,
        interpolation=flags.interpolation or base.interpolation,
        mean=flags.mean or base.mean,
        std=flags.std or base.std,
    )


def _num_classes(model: onnx.ModelProto) -> int:
    dims = model.graph.output[0].type.tensor_type.shape.dim
    if len(dims) != 2 or not dims[1].HasField("dim_value"):
        raise MissingMetadataError(f"cannot tell the number of classes from output {model.graph.output[0].name!r}")
    return dims[1].dim_value
