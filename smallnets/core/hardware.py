"""What CPU we run on: ISA features that decide int8 kernels (x86 VNNI/AMX, ARM dotprod/i8mm) and core counts."""

from __future__ import annotations

import ctypes
import math
import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path

# Feature names as Linux prints them in /proc/cpuinfo ("flags" on x86, "Features" on aarch64).
X86_FEATURES = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "amx_bf16", "amx_tile")
ARM_FEATURES = ("asimd", "asimddp", "i8mm", "bf16", "sve", "sve2", "fphp", "asimdhp")

# The same aarch64 features as the kernel's auxiliary-vector bits (linux arch/arm64/include/uapi/asm/hwcap.h).
# getauxval works where /proc/cpuinfo does not describe the running ISA: under qemu-user it is the host's file.
AT_HWCAP, AT_HWCAP2 = 16, 26
ARM_HWCAP_BITS = {"asimd": 1, "fphp": 9, "asimdhp": 10, "asimddp": 20, "sve": 22}
ARM_HWCAP2_BITS = {"sve2": 1, "i8mm": 13, "bf16": 14}

# The x86 features numpy's runtime dispatch reads from CPUID (and the OS's XCR0): under qemu-user -cpu Haswell
# /proc/cpuinfo is the host's file, but CPUID answers for the CPU the process really runs on.
NUMPY_X86_NAMES = {
    "avx2": "AVX2",
    "fma": "FMA3",
    "avx512f": "AVX512F",
    "avx512bw": "AVX512BW",
    "avx512_vnni": "AVX512VNNI",
}
# Features numpy does not report, kept only beside the one every CPU with them has: AMX comes with AVX-512
# (Sapphire Rapids on), AVX-VNNI with AVX2 (Alder Lake on).
X86_PREREQUISITES = {"amx_int8": "avx512f", "amx_bf16": "avx512f", "amx_tile": "avx512f", "avx_vnni": "avx2"}

# MIDR part numbers of ARM Ltd. (implementer 0x41) cores found in servers and boards; aarch64 kernels print no
# "model name", so this is how the machine block gets a readable core name.
ARM_CORE_NAMES = {
    "0xd03": "Cortex-A53",
    "0xd07": "Cortex-A57",
    "0xd08": "Cortex-A72",
    "0xd0b": "Cortex-A76",
    "0xd0c": "Neoverse-N1",
    "0xd40": "Neoverse-V1",
    "0xd42": "Cortex-A78AE",
    "0xd49": "Neoverse-N2",
    "0xd4f": "Neoverse-V2",
}


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
    implementer = part = ""
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model", "hardware") and not model:
            model = value.strip()
        elif key in ("flags", "features"):
            flags.update(value.split())
        elif key == "cpu implementer" and not implementer:
            implementer = value.strip()
        elif key == "cpu part" and not part:
            part = value.strip()
    # QEMU >= 8 prints a generic "ARMv8 Processor rev N" model name for the core it emulates: the MIDR names it.
    if (not model or model.startswith("ARMv8 Processor")) and implementer == "0x41" and part in ARM_CORE_NAMES:
        model = f"ARM {ARM_CORE_NAMES[part]}"
    known = X86_FEATURES if arch in ("x86_64", "amd64", "i686") else ARM_FEATURES
    return model, tuple(feature for feature in known if feature in flags)


def arm_hwcap_features() -> tuple[str, ...]:
    """aarch64 features from getauxval(AT_HWCAP/AT_HWCAP2): the ISA this process runs on, emulated or not."""
    try:
        getauxval = ctypes.CDLL(None).getauxval
    except (OSError, AttributeError):
        return ()
    getauxval.restype = ctypes.c_ulong
    getauxval.argtypes = [ctypes.c_ulong]
    hwcap, hwcap2 = getauxval(AT_HWCAP), getauxval(AT_HWCAP2)
    present = {name for name, bit in ARM_HWCAP_BITS.items() if hwcap >> bit & 1}
    present |= {name for name, bit in ARM_HWCAP2_BITS.items() if hwcap2 >> bit & 1}
    return tuple(feature for feature in ARM_FEATURES if feature in present)


def x86_cpuid_features(listed: tuple[str, ...]) -> tuple[str, ...]:
    """The features of ``listed`` (from /proc/cpuinfo) that this process's CPU executes, by CPUID."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as cpuid  # what numpy.show_runtime() reads
    except ImportError:
        return listed
    # A feature numpy knows stays only if CPUID has it; one it does not know stays as listed, unless CPUID denies
    # one the file lists: then the file is another CPU's (qemu-user passes the host's through) and says nothing.
    denied = any(feature in NUMPY_X86_NAMES and not cpuid.get(NUMPY_X86_NAMES[feature]) for feature in listed)
    checked = {feature for feature in listed if feature in NUMPY_X86_NAMES and cpuid.get(NUMPY_X86_NAMES[feature])}
    kept = checked if denied else checked | {feature for feature in listed if feature not in NUMPY_X86_NAMES}
    kept = {feature for feature in kept if X86_PREREQUISITES.get(feature, feature) in kept}
    return tuple(feature for feature in X86_FEATURES if feature in kept)


def detect_cpu(cpuinfo_path: str | Path = "/proc/cpuinfo") -> CpuInfo:
    """Read the running CPU (Linux /proc/cpuinfo; elsewhere only the architecture is known)."""
    arch = platform.machine().lower()
    try:
        text = Path(cpuinfo_path).read_text()
    except OSError:
        text = ""
    if arch in ("aarch64", "arm64") and "features" not in text.lower():
        text = ""  # another architecture's /proc/cpuinfo (qemu-user passes the host's through): not ours
    model, features = parse_cpuinfo(text, arch)
    if arch in ("aarch64", "arm64"):
        from_hwcap = set(arm_hwcap_features())
        features = tuple(feature for feature in ARM_FEATURES if feature in from_hwcap or feature in features)
        model = model or "aarch64 (model not reported)"
    elif arch in ("x86_64", "amd64"):
        features = x86_cpuid_features(features)
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return CpuInfo(arch, model or platform.processor() or arch, features, os.cpu_count() or 1, usable)


# Where a container's CPU limit (docker --cpus, Kubernetes resources.limits.cpu) is written: cgroup v2's one file,
# or v1's quota/period pair. Inside a container the cgroup namespace shows its own group at these paths.
CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_V1_CPU_DIRS = ("cpu", "cpu,cpuacct", "cpuacct,cpu")


# One serving worker per 4 cores of the CPU quota, the cores shared out as threads: why in
# docs/decisions.md#serving-threads-and-workers.
CORES_PER_WORKER = 4


def cpu_quota(cgroup_root: str | Path = CGROUP_ROOT) -> float | None:
    """CPUs per second the cgroup CPU bandwidth limit allows this process (e.g. 1.5), None when unlimited.

    Affinity (``usable_cores``) does not see this limit: a container with 2 CPUs' quota on a 64-core host
    still has 64 cores in its affinity mask, and sizing threads from that oversubscribes it 32 times.
    """
    root = Path(cgroup_root)
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    for folder in CGROUP_V1_CPU_DIRS:
        try:
            quota_us = int((root / folder / "cpu.cfs_quota_us").read_text())
            period_us = int((root / folder / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        return quota_us / period_us if quota_us > 0 and period_us > 0 else None
    return None


def serving_cores(cpu: CpuInfo | None = None, quota: float | None = None) -> int:
    """Cores a server should plan for: the affinity mask, capped by the cgroup quota rounded up (at least 1)."""
    usable = (cpu or detect_cpu()).usable_cores
    return max(1, min(usable, math.ceil(quota))) if quota else usable


def serving_workers(cores: int) -> int:
    """Default server workers for ``cores`` (serving_cores): one per CORES_PER_WORKER, at least one."""
    return max(1, -(-cores // CORES_PER_WORKER))


def serving_threads(cores: int, workers: int | None = None) -> int:
    """Intra-op threads of one serving worker: its share of ``cores``. The one formula the server, optimize's speed
    gate and the bench's `--threads serving` use, so the gate times the thread count each worker will run."""
    return max(1, cores // (workers or serving_workers(cores)))
