"""What CPU we run on: ISA features that decide int8 kernels (x86 VNNI/AMX, ARM dotprod/i8mm) and core counts."""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path

# Feature names as Linux prints them in /proc/cpuinfo ("flags" on x86, "Features" on aarch64).
X86_FEATURES = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "amx_bf16", "amx_tile")
ARM_FEATURES = ("asimd", "asimddp", "i8mm", "bf16", "sve", "sve2", "fphp", "asimdhp")


@dataclass(frozen=True)
class CpuInfo:
    """The machine block recorded with every measurement."""

    arch: str
    model: str
    features: tuple[str, ...]
    logical_cores: int
    usable_cores: int

    @property
    def is_x86(self) -> bool:
        return self.arch in ("x86_64", "amd64", "i686")

    @property
    def is_arm64(self) -> bool:
        return self.arch in ("aarch64", "arm64")

    def has(self, feature: str) -> bool:
        return feature in self.features

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def parse_cpuinfo(text: str, arch: str) -> tuple[str, tuple[str, ...]]:
    """(model name, interesting features) from the text of /proc/cpuinfo."""
    model = ""
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model", "hardware") and not model:
            model = value.strip()
        elif key in ("flags", "features"):
            flags.update(value.split())
    known = X86_FEATURES if arch in ("x86_64", "amd64", "i686") else ARM_FEATURES
    return model, tuple(feature for feature in known if feature in flags)


def detect_cpu(cpuinfo_path: str | Path = "/proc/cpuinfo") -> CpuInfo:
    """Read the running CPU (Linux /proc/cpuinfo; elsewhere only the architecture is known)."""
    arch = platform.machine().lower()
    try:
        text = Path(cpuinfo_path).read_text()
    except OSError:
        text = ""
    model, features = parse_cpuinfo(text, arch)
    if arch in ("aarch64", "arm64") and not model:
        model = "aarch64 (model not reported)"
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return CpuInfo(arch, model or platform.processor() or arch, features, os.cpu_count() or 1, usable)
