"""One `Target` per CPU kind: what int8 means on it, how to run it, and what the stages try and expect there.

Optimize quantizes with a target's default options and lets the recipe search try the target's candidates; the
report and the model card record the target; bench times at its thread counts; serve shows the target a model
was built for; tests read its numerics tolerance. A new execution provider is one `ExecutionProvider` entry in
`EXECUTION_PROVIDERS`; a new precision or CPU kind is one `QuantOptions`/`Target` below (plus its tests).

Like Optimum's ``AutoQuantizationConfig.avx2/avx512_vnni/arm64``: data types follow what the CPU's int8
dot-product instructions compute without overflow and what ONNX Runtime's MLAS kernels are fastest at.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from smallnets.core.hardware import CpuInfo, cpu_quota, detect_cpu, serving_cores, serving_threads

INT8_TYPES = ("uint8", "int8")
QUANT_FORMATS = ("qdq", "qoperator")
# Range calibration of int8 activations by name, with onnxruntime's CalibrationMethod member: the one list that
# QuantOptions, optimize's --calibration and the quantizer read. "mean-minmax" averages each picture's min and max
# (NNCF's default for per-tensor activations) instead of taking the extremes over all pictures.
CALIBRATION_METHODS = {"minmax": "MinMax", "mean-minmax": "MinMax", "percentile": "Percentile", "entropy": "Entropy"}
# Graph rewrites that keep ops onnxruntime leaves float inside int8 (optimize/int8_blocks.py; exact, measured faster),
# channel shuffles folded into conv weights (optimize/channel_shuffle.py; exact) and a Concat's inputs quantized at its
# output's scale (optimize/concat_scales.py; one rounding instead of two).
INT8_BLOCK_REWRITES = (
    "fold-channel-shuffles",
    "spatial-mean-as-global-pool",
    "average-pool-as-depthwise-conv",
    "hard-sigmoid-as-qlinear-add",
    "float-silu-as-quick-gelu",
    "concat-inputs-at-output-scale",
)
# Depthwise convs padded to the channel multiple of MLAS's fast int8 depthwise kernels (optimize/channel_padding.py):
# 16 on x86, 8 on ARM64 (MlasConvSymPackWSize's GroupAlign). Exact; a target's candidates name the one for its CPU.
X86_CHANNEL_PADDING, ARM_CHANNEL_PADDING = "pad-depthwise-channels-16", "pad-depthwise-channels-8"
# x86 only: an RGB input read by convs gets a zero fourth channel (MLAS's x86 int8 conv takes input channels in fours).
STEM_CHANNEL_PADDING = "pad-stem-channels-4"
KNOWN_REWRITES = (*INT8_BLOCK_REWRITES, X86_CHANNEL_PADDING, ARM_CHANNEL_PADDING, STEM_CHANNEL_PADDING)
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
ARM_DOT_FLAGS = ("asimddp", "i8mm")


class UnknownTargetError(LookupError):
    """``--target`` names no target, or ``auto`` finds none for this CPU."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class QuantOptions:
    """One way to quantize a model: a candidate the recipe search can try, named so reports can cite it.

    ``families`` limits a candidate to the model families it is worth trying on (empty: every family).
    ``rewrites`` name exact graph rewrites applied around quantization: by default every rewrite that keeps whole
    blocks int8 (each made mobilenet_v3_large, efficientnet_b0 or shufflenet_v1 faster on AVX-512 VNNI; see
    optimize/int8_blocks.py); each target's candidates add the channel padding of its CPU (optimize/channel_padding.py).
    ``equalization`` rescales Conv(-Relu)-Conv pairs (exact in fp32) so one weight scale wastes fewer levels on
    unbalanced channels; off by default (measured in benchmarks/results/avx512_vnni/equalization.md).
    """

    name: str
    activation_type: str = "uint8"  # "uint8" | "int8"
    weight_type: str = "int8"  # "int8" | "uint8"
    reduce_range: bool = False
    per_channel: bool = True  # per output channel, depthwise convolutions included
    quant_format: str = "qdq"  # "qdq" (ORT fuses QDQ units into QLinear kernels) | "qoperator" (QLinear ops directly)
    calibration: str = "minmax"
    percentile: float = 99.999
    families: tuple[str, ...] = ()
    rewrites: tuple[str, ...] = INT8_BLOCK_REWRITES
    bias_correction: bool = False  # per-channel bias correction on calibration pictures (optimize/bias_correction.py)
    equalization: bool = False  # cross-layer equalization of conv pairs before calibration (optimize/equalization.py)
    op_types: tuple[str, ...] = ()  # the op types whose inputs are quantized (empty: every one the quantizer knows)
    float_outputs: tuple[str, ...] = ()  # op types whose outputs get no Q/DQ of their own (a consumer may add one)
    unquantized: tuple[str, ...] = ()  # op types never given Q/DQ (taken out of op_types or the quantizer's own list)

    def __post_init__(self) -> None:
        if self.activation_type not in INT8_TYPES or self.weight_type not in INT8_TYPES:
            raise ValueError(
                f"{self.name}: activation/weight types must be one of {INT8_TYPES}, "
                f"got {self.activation_type}/{self.weight_type}"
            )
        if self.quant_format not in QUANT_FORMATS:
            raise ValueError(f"{self.name}: quant_format must be one of {QUANT_FORMATS}, got {self.quant_format!r}")
        if self.bias_correction and self.quant_format != "qdq":
            raise ValueError(
                f"{self.name}: bias correction needs the qdq format (it edits the int32 bias of a QDQ conv)"
            )
        if unknown := set(self.rewrites) - set(KNOWN_REWRITES):
            raise ValueError(f"{self.name}: unknown rewrites {sorted(unknown)}; known: {KNOWN_REWRITES}")
        if self.calibration not in CALIBRATION_METHODS:
            raise ValueError(
                f"unknown calibration method {self.calibration!r}; choose one of: {', '.join(CALIBRATION_METHODS)}"
            )

    @property
    def signature(self) -> str:
        """Short form like ``U8S8`` (activation, weight) used by ORT's documentation."""
        short = {"uint8": "U8", "int8": "S8"}
        return short[self.activation_type] + short[self.weight_type]

    def applies_to(self, family: str) -> bool:
        return not self.families or family in self.families

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "signature": self.signature}


@dataclass(frozen=True)
class ExecutionProvider:
    """An onnxruntime execution provider by its short name, full name and the session options it needs.

    ``by_default``: a session takes it unasked when this onnxruntime build has it; else only when named.
    """

    alias: str
    name: str
    options: Mapping[str, str] = field(default_factory=dict)
    by_default: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"alias": self.alias, "name": self.name, "options": dict(self.options)}


# Every provider the project knows, in preference order: the one place to add another. The runtime's sessions,
# `--providers` and the README read it. CPU is always the last resort.
EXECUTION_PROVIDERS: dict[str, ExecutionProvider] = {
    provider.alias: provider
    for provider in (
        ExecutionProvider("xnnpack", "XnnpackExecutionProvider"),  # named by the arm64 target, or --providers
        ExecutionProvider("acl", "ACLExecutionProvider", by_default=True),
        # Needs the onnxruntime-openvino wheel, which replaces plain onnxruntime (they cannot share a venv); the
        # `openvino` runtime (RUNTIMES below) runs OpenVINO without it.
        ExecutionProvider("openvino", "OpenVINOExecutionProvider", {"device_type": "CPU"}),
        ExecutionProvider("cpu", "CPUExecutionProvider", by_default=True),
    )
}
CPU_PROVIDER = EXECUTION_PROVIDERS["cpu"]
PROVIDERS_HELP = (
    f"comma-separated onnxruntime execution providers, {'|'.join(EXECUTION_PROVIDERS)} or a full name, e.g. "
    f"xnnpack,cpu (default: {', '.join(p.alias for p in EXECUTION_PROVIDERS.values() if p.by_default)}, "
    "those this onnxruntime has)"
)


# What runs the ONNX file: onnxruntime (the default, every CPU) or OpenVINO (x86, the `openvino` extra).
ONNXRUNTIME, OPENVINO = "onnxruntime", "openvino"
RUNTIMES = (ONNXRUNTIME, OPENVINO)
RUNTIME_HELP = (
    f"what runs the model: {ONNXRUNTIME} or {OPENVINO} (OpenVINO's CPU runtime, ~10%% faster int8 on x86; needs the "
    "openvino extra) (default: the one the file was built for, onnxruntime unless --target x86-openvino)"
)


class UnknownRuntimeError(ValueError):
    """A runtime name that is not one of RUNTIMES."""


def check_runtime(name: str) -> str:
    """``name`` when it is a runtime; else UnknownRuntimeError naming the choices."""
    if name not in RUNTIMES:
        raise UnknownRuntimeError(f"unknown runtime {name!r}; choose from {', '.join(RUNTIMES)}")
    return name


def execution_provider(name: str) -> ExecutionProvider | None:
    """The registry entry for an alias (any case) or a full onnxruntime name; None for a provider not listed."""
    return EXECUTION_PROVIDERS.get(name.lower()) or next(
        (provider for provider in EXECUTION_PROVIDERS.values() if provider.name == name), None
    )


@dataclass(frozen=True)
class Target:
    """Everything a CPU target means to the project, read by optimize, report, bench, serve and tests.

    ``quant`` is the default way to quantize; ``candidates`` are the options the recipe search tries (the default
    first). ``threads`` are the counts int8 must be faster at: 1 and the serving thread count.
    ``int8_min_cosine`` is the mean logit cosine int8 must keep against fp32 for trained weights judged without
    labels; ``random_weights_min_cosine`` the same for seeded random weights, whose int8 is faithful but noisier.
    """

    name: str
    arch: str  # "x86_64" | "aarch64": the architecture whose int8 kernels the target is for
    features: tuple[str, ...]  # ISA features the target's kernels rely on
    hardware: str
    rationale: str
    quant: QuantOptions
    candidates: tuple[QuantOptions, ...]
    providers: tuple[ExecutionProvider, ...] = (CPU_PROVIDER,)
    threads: tuple[int, ...] = (1,)
    # What runs the int8: optimize times and judges its candidates on it, and serving takes it from the card.
    runtime: str = ONNXRUNTIME
    # onnxruntime's basic fusions saved into the files (optimize/fuse.py); they inline HardSwish as HardSigmoid * x,
    # which OpenVINO cannot fuse into its convolutions, so its target keeps the simplified graph.
    offline_fusion: bool = True
    int8_min_cosine: float = 0.95
    # A coarse floor: random-weight logits carry little signal (docs/decisions.md#logit-cosine-floors).
    random_weights_min_cosine: float = 0.2

    def __post_init__(self) -> None:
        if not self.candidates or self.candidates[0] != self.quant:
            raise ValueError(f"target {self.name}: the default quantization must be the first candidate")

    # The default options' fields, read where one quantization setting is meant (report, card, tests).
    @property
    def activation_type(self) -> str:
        return self.quant.activation_type

    @property
    def weight_type(self) -> str:
        return self.quant.weight_type

    @property
    def reduce_range(self) -> bool:
        return self.quant.reduce_range

    @property
    def per_channel(self) -> bool:
        return self.quant.per_channel

    @property
    def quant_format(self) -> str:
        return self.quant.quant_format

    @property
    def signature(self) -> str:
        return self.quant.signature

    @property
    def serving_threads(self) -> int:
        return max(self.threads)

    def candidates_for(self, family: str) -> list[QuantOptions]:
        """The quantization options worth trying on a model family, the target's default first."""
        return [options for options in self.candidates if options.applies_to(family)]

    def with_quant(self, options: QuantOptions) -> Target:
        """This target with ``options`` as its quantization (what the recipe search chose among the candidates)."""
        if options not in self.candidates:
            raise ValueError(f"target {self.name}: {options.name} is not one of its candidates")
        return replace(self, quant=options, candidates=(options, *(c for c in self.candidates if c != options)))

    def with_threads(self, serving: int) -> Target:
        return replace(self, threads=tuple(sorted({1, max(1, serving)})))

    def to_dict(self) -> dict[str, Any]:
        """Flat keys of the default options (as reports read them) plus the target's own fields."""
        quant = self.quant.to_dict()
        quant.pop("name")
        return {
            "name": self.name,
            **quant,
            "quant_name": self.quant.name,
            "arch": self.arch,
            "features": list(self.features),
            "hardware": self.hardware,
            "rationale": self.rationale,
            "candidates": [options.name for options in self.candidates],
            "providers": [provider.to_dict() for provider in self.providers],
            "runtime": self.runtime,
            "offline_fusion": self.offline_fusion,
            "threads": list(self.threads),
            "int8_min_cosine": self.int8_min_cosine,
            "random_weights_min_cosine": self.random_weights_min_cosine,
        }


def _options(name: str, **fields: Any) -> QuantOptions:
    return QuantOptions(name=name, **fields)


# Per-channel, min-max, QDQ and QOperator per target: why, with the measurements, in
# docs/decisions.md#int8-candidates-per-cpu-target. The recipe search keeps the faster format per model.

# x86 without VNNI: VPMADDUBSW's int16 pair sums saturate on full-range u8*s8, so weights keep 7 bits.
# Bias correction takes back what the 7th bit costs: Lite0 on 423 held-out imagenet-dev photos -0.47 -> +0.47 points
# against fp32 (14 -> 6 changed answers; VNNI full range 6 -> 3), at ~30-45 s of build time per candidate. QDQ only.
X86_REWRITES = (*INT8_BLOCK_REWRITES, X86_CHANNEL_PADDING, STEM_CHANNEL_PADDING)
AVX2_CANDIDATES = (
    _options("u8s8-rr-qdq", reduce_range=True, bias_correction=True, rewrites=X86_REWRITES),
    _options("u8s8-rr-qoperator", reduce_range=True, quant_format="qoperator", rewrites=X86_REWRITES),
)
# x86 with VNNI: VPDPBUSD accumulates u8*s8 straight into int32, so full-range weights are safe.
VNNI_CANDIDATES = (
    _options("u8s8-qdq", rewrites=X86_REWRITES),
    _options("u8s8-qoperator", quant_format="qoperator", rewrites=X86_REWRITES),
)
# OpenVINO's runtime: QDQ only (it cannot read onnxruntime's QOperator contrib ops) and only rewrites into standard
# ops; onnxruntime's own (HardSwish decomposed, padded depthwise channels, int8 through squeeze-excite) cost it time
# (MobileNet V3 0.32x of NNCF's int8 with them: docs/decisions.md#the-openvino-runtime).
OPENVINO_REWRITES = ("fold-channel-shuffles", "spatial-mean-as-global-pool", "average-pool-as-depthwise-conv")
# Conv and Gemm outputs stay float, as in NNCF's placement: OpenVINO then fuses what follows (HardSwish, a residual
# Add, the next quantization) into the convolution instead of running a dequantize-activation-quantize subgraph per
# block (MobileNet V3 large: 34 int8 subgraphs -> 9, NNCF's count; Lite0's compiled graph then equals NNCF's).
OPENVINO_FLOAT_OUTPUTS = ("Conv", "Gemm", "MatMul")
# With conv outputs float, pass-through ops must quantize a float input (MaxPool after a stem's Relu), but Q/DQ
# inside a Reshape-Transpose-Reshape channel shuffle hides it from OpenVINO, which moves dequantization through
# such ops itself (ShuffleNet V2: 15 Transposes and 45 Reorders instead of ShuffleChannels).
OPENVINO_UNQUANTIZED = ("Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze")
OPENVINO_PLACEMENT: dict[str, Any] = {"float_outputs": OPENVINO_FLOAT_OUTPUTS, "unquantized": OPENVINO_UNQUANTIZED}
# Bias correction as NNCF does by default (its fast bias correction): decided on imagenet-dev's selection part, where
# it raised the logit cosine of Lite0/1/2 (x86-vnni 0.9943/0.9931/0.9951 -> 0.9973/0.9944/0.9974; Lite1 on OpenVINO
# 0.9931 -> 0.9947, 4 -> 1 broken of 175), for ~1-2 min of build time per candidate.
OPENVINO_OPTIONS: dict[str, Any] = {**OPENVINO_PLACEMENT, "bias_correction": True}
OPENVINO_CANDIDATES = (
    _options("u8s8-qdq-openvino", rewrites=OPENVINO_REWRITES, **OPENVINO_OPTIONS),
    _options(
        "u8s8-qdq-openvino-concat-scales",
        rewrites=(*OPENVINO_REWRITES, "concat-inputs-at-output-scale"),
        **OPENVINO_OPTIONS,
    ),
    _options(
        "u8s8-qdq-openvino-compute-inputs",
        rewrites=OPENVINO_REWRITES,
        op_types=("Conv", "MatMul", "Gemm"),
        **OPENVINO_OPTIONS,
    ),
)
# AArch64: S8S8 maps onto SDOT/SMMLA.
ARM_REWRITES = (*INT8_BLOCK_REWRITES, ARM_CHANNEL_PADDING)
ARM_CANDIDATES = (
    _options("s8s8-qdq", activation_type="int8", rewrites=ARM_REWRITES),
    _options("s8s8-qoperator", activation_type="int8", quant_format="qoperator", rewrites=ARM_REWRITES),
)

TARGETS: dict[str, Target] = {
    target.name: target
    for target in (
        Target(
            name="x86-avx2",
            arch="x86_64",
            features=("avx2", "fma"),
            hardware="x86-64 with AVX2 but no VNNI (Haswell .. Skylake client, Zen 1-3)",
            rationale=(
                "Without VNNI, u8*s8 products go through VPMADDUBSW, which adds pairs into int16 and saturates "
                "when both operands use the full range. reduce_range=True keeps weights to 7 bits so the pair sum "
                "cannot overflow (ORT's documented recommendation for non-VNNI x86); U8S8 keeps the fast MLAS path."
            ),
            quant=AVX2_CANDIDATES[0],
            candidates=AVX2_CANDIDATES,
            int8_min_cosine=0.95,  # docs/decisions.md#logit-cosine-floors
        ),
        Target(
            name="x86-vnni",
            arch="x86_64",
            features=("avx2", "fma", "avx512_vnni"),
            hardware="x86-64 with AVX-512 VNNI, AVX-VNNI or AMX-INT8 (Cascade Lake+, Sapphire Rapids, Zen 4+)",
            rationale=(
                "VPDPBUSD accumulates u8*s8 products straight into int32 without the int16 saturation step, so "
                "full 8-bit weights are safe; U8S8 is the layout MLAS's VNNI/AMX GEMM and QLinearConv kernels take."
            ),
            quant=VNNI_CANDIDATES[0],
            candidates=VNNI_CANDIDATES,
            int8_min_cosine=0.95,  # docs/decisions.md#logit-cosine-floors
        ),
        Target(
            name="x86-openvino",
            arch="x86_64",
            features=("avx2", "fma", "avx512_vnni"),
            hardware="x86-64 with AVX-512 VNNI, AVX-VNNI or AMX-INT8, served by OpenVINO (`--runtime openvino`)",
            rationale=(
                "OpenVINO turns QDQ pairs into FakeQuantize and fuses element-wise tails into its int8 "
                "convolutions, so the int8 keeps ONNX's standard ops and is timed and judged on OpenVINO itself. "
                "Full-range U8S8 as for x86-vnni; on CPUs without VNNI its stated accuracy does not hold."
            ),
            quant=OPENVINO_CANDIDATES[0],
            candidates=OPENVINO_CANDIDATES,
            runtime=OPENVINO,
            offline_fusion=False,
            int8_min_cosine=0.95,  # docs/decisions.md#logit-cosine-floors
        ),
        Target(
            name="arm64",
            arch="aarch64",
            features=("asimd", "asimddp"),
            hardware="AArch64 with dot-product (ARMv8.2 asimddp, SDOT) or i8mm (ARMv8.6 SMMLA)",
            rationale=(
                "SDOT/SMMLA multiply signed int8 by signed int8 into int32; ORT's ARM guidance is symmetric S8S8 "
                "for activations and weights, which maps onto these kernels (and XNNPACK's qs8) with no "
                "zero-point correction on the weight side. On x86 S8S8 is slower than U8S8 (MLAS shifts it)."
            ),
            quant=ARM_CANDIDATES[0],
            candidates=ARM_CANDIDATES,
            # XNNPACK first where the wheel has it (runtime falls back to CPU with a note otherwise).
            providers=(EXECUTION_PROVIDERS["xnnpack"], CPU_PROVIDER),
            int8_min_cosine=0.95,  # docs/decisions.md#logit-cosine-floors
        ),
    )
}
TARGET_CHOICES = ("auto", *TARGETS)


def runs_here(target: Target, cpu: CpuInfo | None = None) -> bool:
    """Whether timings on this machine say anything about the target's kernels (same CPU architecture)."""
    cpu = cpu or detect_cpu()
    return (cpu.is_arm64 and target.arch == "aarch64") or (cpu.is_x86 and target.arch == "x86_64")


def resolve_target(name: str, cpu: CpuInfo | None = None) -> tuple[Target, str]:
    """The target for ``name`` (with the serving thread count of one server worker here) and a human reason.

    ``auto`` decides from the CPU's ISA flags. The threads follow the server's formula (core.hardware
    serving_threads: the CPU quota's cores shared among the default workers), so the speed gate times what a
    worker runs.
    """
    if name != "auto" and name not in TARGETS:
        raise UnknownTargetError(f"unknown target {name!r}; choose one of: {', '.join(TARGET_CHOICES)}")
    cpu = cpu or detect_cpu()
    threads = serving_threads(serving_cores(cpu, cpu_quota()))
    if name != "auto":
        return TARGETS[name].with_threads(threads), f"target {name} requested explicitly"
    chosen, reason = _auto(cpu)
    return chosen.with_threads(threads), reason


def _auto(cpu: CpuInfo) -> tuple[Target, str]:
    if cpu.is_x86:
        vnni = [flag for flag in VNNI_FLAGS if cpu.has(flag)]
        if vnni:
            return TARGETS["x86-vnni"], f"auto: {cpu.arch} CPU has {', '.join(vnni)} -> x86-vnni"
        if cpu.has("avx2"):
            return TARGETS["x86-avx2"], f"auto: {cpu.arch} CPU has avx2 but no VNNI -> x86-avx2 (reduce_range)"
        return TARGETS["x86-avx2"], (
            f"auto: {cpu.arch} CPU has neither VNNI nor AVX2; x86-avx2 (reduce_range) is the safe choice, "
            "but int8 may not beat fp32 here"
        )
    if cpu.is_arm64:
        dot = [flag for flag in ARM_DOT_FLAGS if cpu.has(flag)]
        detail = f"has {', '.join(dot)}" if dot else "reports no dot-product features (kernels fall back)"
        return TARGETS["arm64"], f"auto: {cpu.arch} CPU {detail} -> arm64 (S8S8)"
    raise UnknownTargetError(
        f"auto: no target for CPU architecture {cpu.arch!r}; pass --target one of: {', '.join(TARGETS)}"
    )


def int8_fit_note(quantization: Mapping[str, Any] | None, cpu: CpuInfo) -> str | None:
    """Why this CPU does not compute the int8 model the way it was validated, or None (fp32, or a CPU of its kind).

    Full-range U8S8 (x86-vnni) on an x86 CPU without VNNI goes through VPMADDUBSW, whose int16 sums saturate: the
    accuracy the model card states was measured on other arithmetic. Another architecture has other kernels.
    """
    if not quantization:
        return None
    name, arch = quantization.get("name", "?"), quantization.get("arch")
    if arch and arch != cpu.arch:
        return (
            f"int8 built for target {name} ({arch}) runs on {cpu.arch}: its kernels and rounding differ from the "
            f"ones it was validated with; rebuild it here with `smallnets optimize ... --target auto`"
        )
    full_range_u8s8 = quantization.get("signature") == "U8S8" and not quantization.get("reduce_range")
    if cpu.is_x86 and full_range_u8s8 and not any(cpu.has(flag) for flag in VNNI_FLAGS):
        return (
            f"int8 built for target {name} (full-range U8S8) on an x86 CPU without VNNI: VPMADDUBSW saturates its "
            "u8*s8 sums, so the stated accuracy does not hold here; rebuild with `smallnets optimize ... --target "
            "x86-avx2` (or auto on this machine)"
        )
    return None
