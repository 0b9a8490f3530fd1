"""Named int8 quantization presets per CPU target, each with the hardware reason behind its choices.

Like Optimum's ``AutoQuantizationConfig.avx2/avx512_vnni/arm64``: the data types follow what the CPU's int8
dot-product instructions compute without overflow, and what ONNX Runtime's MLAS kernels are fastest at.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from smallnets.core.hardware import CpuInfo, detect_cpu

INT8_TYPES = ("uint8", "int8")


class UnknownTargetError(LookupError):
    """``--target`` names no preset."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class QuantPreset:
    """How to quantize for one CPU family: data types, weight range, granularity, format, and why."""

    name: str
    activation_type: str  # "uint8" | "int8"
    weight_type: str  # "int8" | "uint8"
    reduce_range: bool
    per_channel: bool = True
    quant_format: str = "qdq"  # QDQ: the format ORT's CPU graph transformers fuse into QLinear*/MLAS kernels
    arch: str = "x86_64"  # the CPU architecture whose int8 kernels the preset is for
    hardware: str = ""
    rationale: str = ""

    def __post_init__(self) -> None:
        if self.activation_type not in INT8_TYPES or self.weight_type not in INT8_TYPES:
            raise ValueError(f"preset {self.name}: activation/weight types must be one of {INT8_TYPES}")

    @property
    def signature(self) -> str:
        """Short form like ``U8S8`` (activation, weight) used by ORT's documentation."""
        short = {"uint8": "U8", "int8": "S8"}
        return short[self.activation_type] + short[self.weight_type]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "signature": self.signature}


PRESETS: dict[str, QuantPreset] = {
    preset.name: preset
    for preset in (
        QuantPreset(
            name="x86-avx2",
            activation_type="uint8",
            weight_type="int8",
            reduce_range=True,
            hardware="x86-64 with AVX2 but no VNNI (Haswell .. Skylake client, Zen 1-3)",
            rationale=(
                "Without VNNI, u8*s8 products go through VPMADDUBSW, which adds pairs into int16 and saturates "
                "when both operands use the full range. reduce_range=True keeps weights to 7 bits so the pair sum "
                "cannot overflow (ORT's documented recommendation for non-VNNI x86); U8S8 keeps the fast MLAS path."
            ),
        ),
        QuantPreset(
            name="x86-vnni",
            activation_type="uint8",
            weight_type="int8",
            reduce_range=False,
            hardware="x86-64 with AVX-512 VNNI, AVX-VNNI or AMX-INT8 (Cascade Lake+, Sapphire Rapids, Zen 4+)",
            rationale=(
                "VPDPBUSD accumulates u8*s8 products straight into int32 without the int16 saturation step, so "
                "full 8-bit weights are safe; U8S8 is the layout MLAS's VNNI/AMX GEMM and QLinearConv kernels take."
            ),
        ),
        QuantPreset(
            name="arm64",
            activation_type="int8",
            weight_type="int8",
            reduce_range=False,
            arch="aarch64",
            hardware="AArch64 with dot-product (ARMv8.2 asimddp, SDOT) or i8mm (ARMv8.6 SMMLA)",
            rationale=(
                "SDOT/SMMLA multiply signed int8 by signed int8 into int32; ORT's ARM guidance is symmetric S8S8 "
                "for activations and weights, which maps onto these kernels (and XNNPACK's qs8) with no "
                "zero-point correction on the weight side. On x86 S8S8 is slower than U8S8 (MLAS shifts it)."
            ),
        ),
    )
}
TARGETS = ("auto", *PRESETS)


def runs_here(preset: QuantPreset, cpu: CpuInfo | None = None) -> bool:
    """Whether timings on this machine say anything about the preset's kernels (same CPU architecture)."""
    cpu = cpu or detect_cpu()
    return (cpu.is_arm64 and preset.arch == "aarch64") or (cpu.is_x86 and preset.arch == "x86_64")


def resolve_target(name: str, cpu: CpuInfo | None = None) -> tuple[QuantPreset, str]:
    """The preset for ``name`` and a human reason; ``auto`` decides from the CPU's ISA flags."""
    if name != "auto":
        if name not in PRESETS:
            raise UnknownTargetError(f"unknown target {name!r}; choose one of: {', '.join(TARGETS)}")
        return PRESETS[name], f"target {name} requested explicitly"
    cpu = cpu or detect_cpu()
    if cpu.is_x86:
        vnni = [flag for flag in ("avx512_vnni", "avx_vnni", "amx_int8") if cpu.has(flag)]
        if vnni:
            return PRESETS["x86-vnni"], f"auto: {cpu.arch} CPU has {', '.join(vnni)} -> x86-vnni"
        if cpu.has("avx2"):
            return PRESETS["x86-avx2"], f"auto: {cpu.arch} CPU has avx2 but no VNNI -> x86-avx2 (reduce_range)"
        return PRESETS["x86-avx2"], (
            f"auto: {cpu.arch} CPU has neither VNNI nor AVX2; x86-avx2 (reduce_range) is the safe choice, "
            "but int8 may not beat fp32 here"
        )
    if cpu.is_arm64:
        dot = [flag for flag in ("asimddp", "i8mm") if cpu.has(flag)]
        detail = f"has {', '.join(dot)}" if dot else "reports no dot-product features (kernels fall back)"
        return PRESETS["arm64"], f"auto: {cpu.arch} CPU {detail} -> arm64 (S8S8)"
    raise UnknownTargetError(
        f"auto: no preset for CPU architecture {cpu.arch!r}; pass --target one of: {', '.join(PRESETS)}"
    )
