"""What to benchmark: model choices (registry name + variant overrides), variants, and list arguments."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

DEFAULT_VARIANTS = ("torch", "onnx-fp32", "onnx-opt", "onnx-int8")
# Need the peers extra (openvino, nncf); openvino-smallnets-int8 is our onnx-int8 file run by OpenVINO instead.
SMALLNETS_INT8_ON_OPENVINO = "openvino-smallnets-int8"
PEER_VARIANTS = ("openvino-fp32", "openvino-default", "openvino-nncf-int8", SMALLNETS_INT8_ON_OPENVINO)
VARIANTS = (*DEFAULT_VARIANTS, *PEER_VARIANTS)
OPTIMIZED_VARIANTS = ("onnx-opt", "onnx-int8")
VARIANT_HELP = {
    "torch": "PyTorch eager fp32 (the starting point)",
    "onnx-fp32": "the exported ONNX file as is",
    "onnx-opt": "simplified + fused fp32 ONNX (optimize's model.fp32.onnx)",
    "onnx-int8": "int8 ONNX quantized with the target's options (optimize's model.int8.onnx)",
    "openvino-fp32": "OpenVINO CPU runtime, f32, converted from the exported ONNX",
    "openvino-default": "the same IR at OpenVINO's own default precision (bf16 on CPUs with BF16 units), latency hint",
    "openvino-nncf-int8": "OpenVINO CPU runtime, NNCF int8 calibrated on the same images as onnx-int8",
    SMALLNETS_INT8_ON_OPENVINO: "onnx-int8's file on the OpenVINO runtime (--runtime openvino): our int8, its kernels",
}
# One default variant of every family; `--models all-default` must finish in ~15 min on 2 cores, cache included.
ALL_DEFAULT = (
    "mobilenet_v1",
    "mobilenet_v2",
    "mobilenet_v3_large",
    "shufflenet_v1",
    "shufflenet_v2_x1_0",
    "squeezenet1_0",
    "squeezenet1_1",
    "xception",
    "efficientnet_b0",
    "efficientnet_lite0",
)


@dataclass(frozen=True)
class ModelChoice:
    """A registry name plus variant overrides, written ``name`` or ``name:width=0.5:resolution=128``."""

    name: str
    overrides: Mapping[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """How the model is named in rows, tables and plots (round-trips through ``parse``)."""
        return ":".join([self.name, *(f"{key}={value}" for key, value in sorted(self.overrides.items()))])

    @classmethod
    def parse(cls, text: str) -> ModelChoice:
        name, *assignments = text.strip().split(":")
        overrides: dict[str, Any] = {}
        for assignment in assignments:
            key, sep, value = assignment.partition("=")
            if not sep or not key or not value:
                raise ValueError(
                    f"bad model variant {assignment!r} in {text!r}: write NAME:KEY=VALUE, e.g. {name}:width=0.5"
                )
            overrides[key] = _number_or_text(value)
        if not name:
            raise ValueError(f"empty model name in {text!r}")
        return cls(name, overrides)


def _number_or_text(value: str) -> Any:
    for convert in (int, float):
        try:
            return convert(value)
        except ValueError:
            pass
    return value


def parse_models(text: str) -> list[ModelChoice]:
    """``a,b:width=0.5,...`` or ``all-default`` (one default variant of every family)."""
    names = ALL_DEFAULT if text.strip() == "all-default" else [part for part in text.split(",") if part.strip()]
    if not names:
        raise ValueError("no models given: pass --models NAME[,NAME...] or --models all-default")
    choices = {choice.label: choice for choice in map(ModelChoice.parse, names)}  # the same model once
    return list(choices.values())


def parse_variants(text: str) -> list[str]:
    variants = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [variant for variant in variants if variant not in VARIANTS]
    if unknown or not variants:
        raise ValueError(f"unknown variant {', '.join(unknown) or '(none)'}; choose from {', '.join(VARIANTS)}")
    return list(dict.fromkeys(variants))


def parse_positive_ints(text: str, what: str) -> list[int]:
    """``1,8`` -> [1, 8]; the error names the option (``what``) and the expected form."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as error:
        raise ValueError(f"{what} must be comma-separated positive integers like 1,8; got {text!r}") from error
    if not values or any(value < 1 for value in values):
        raise ValueError(f"{what} must be comma-separated positive integers like 1,8; got {text!r}")
    return list(dict.fromkeys(values))
