"""How fast the CPU could go: peak multiply-accumulates per second from ISA, vector width and clock, and the fit.

Peak = cores x clock x MACs per cycle per core. fp32: FMA units x vector lanes (AVX-512: 2 x 16 = 32, AVX2:
2 x 8 = 16, NEON: 2 x 4 = 8). int8: VNNI's VPDPBUSD does 4 u8*s8 MACs per 32-bit lane (AVX-512 VNNI: 2 x 64 =
128); AVX2 without VNNI needs VPMADDUBSW + VPMADDWD (about 2 x 32 = 64); ARM SDOT 4 per 32-bit lane (2 x 16 = 32).
AMD Zen 4 (CPU family 25) implements AVX-512 on 256-bit datapaths (each 512-bit op takes two halves), so its
per-cycle figures are the AVX2-width ones although the flags say avx512f; Zen 5 (family 26) has full 512-bit
datapaths (this project's AVX-512 EPYC reports family 26: its fp32 1x1 convs ran at 92 GMAC/s on one core, more than
a Zen 4 core's 2 x 8 x 3.7 GHz could). Memory traffic and small depthwise layers keep real models far
below this peak: the fraction achieved is the point of the figure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

FMA_UNITS = 2


@dataclass(frozen=True)
class PeakCompute:
    """Per-core MACs per cycle (fp32 and int8), the clock and where each figure came from."""

    fp32_macs_per_cycle: int
    int8_macs_per_cycle: int
    ghz: float
    basis: str

    def peak_macs_per_s(self, threads: int, precision: str = "fp32") -> float:
        per_cycle = self.int8_macs_per_cycle if precision == "int8" else self.fp32_macs_per_cycle
        return per_cycle * self.ghz * 1e9 * threads


def clock_ghz(cpuinfo: str) -> float | None:
    """Mean "cpu MHz" of /proc/cpuinfo (what the cores report running at), in GHz; None where not reported."""
    values = [
        float(value)
        for key, _, value in (line.partition(":") for line in cpuinfo.splitlines())
        if key.strip().lower() == "cpu mhz" and value.strip()
    ]
    return sum(values) / len(values) / 1000.0 if values else None


def cpu_family(cpuinfo: str) -> int | None:
    """The first "cpu family" of /proc/cpuinfo (x86 only); None where not reported."""
    for key, _, value in (line.partition(":") for line in cpuinfo.splitlines()):
        if key.strip().lower() == "cpu family" and value.strip().isdigit():
            return int(value)
    return None


def vector_lanes(features: Sequence[str], model: str, family: int | None = None) -> tuple[int, str]:
    """fp32 lanes per FMA and why: 16 (AVX-512), 8 (AVX2), 4 (NEON); AMD Zen 4 runs AVX-512 on 256-bit halves."""
    if "avx512f" in features:
        if "AMD" in model.upper() and (family or 0) >= 26:
            return 16, "AVX-512 on AMD Zen 5 (full 512-bit datapaths)"
        if "AMD" in model.upper():
            return 8, "AVX-512 on AMD Zen 4 (two 256-bit halves per 512-bit op)"
        return 16, "AVX-512"
    if "avx2" in features:
        return 8, "AVX2"
    if "asimd" in features:
        return 4, "NEON"
    return 4, "SSE (no wider vector ISA detected)"


def peak_compute(features: Sequence[str], model: str, cpuinfo_path: str | Path = "/proc/cpuinfo") -> PeakCompute:
    """The CPU's peak from its features, model name, family and clock (2.0 GHz assumed where no clock is reported)."""
    try:
        cpuinfo = Path(cpuinfo_path).read_text()
    except OSError:
        cpuinfo = ""
    lanes, basis = vector_lanes(features, model, cpu_family(cpuinfo))
    int8_per_lane = 4 if any(flag in features for flag in ("avx512_vnni", "avx_vnni", "asimddp")) else 2
    ghz = clock_ghz(cpuinfo)
    clock = f"{ghz:.2f} GHz from /proc/cpuinfo" if ghz else "2.0 GHz assumed (no clock reported)"
    return PeakCompute(
        fp32_macs_per_cycle=FMA_UNITS * lanes,
        int8_macs_per_cycle=FMA_UNITS * lanes * int8_per_lane,
        ghz=ghz or 2.0,
        basis=f"{basis}, {FMA_UNITS} FMA units, int8 x{int8_per_lane} per lane, {clock}",
    )


def achieved_fraction(macs: float, latency_ms: float, peak: PeakCompute, threads: int, precision: str) -> float:
    """MACs per second achieved over the peak at ``threads`` cores."""
    return macs / (latency_ms / 1000.0) / peak.peak_macs_per_s(threads, precision)
