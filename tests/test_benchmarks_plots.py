"""Peak compute, cost fits, the Pareto front and the trade-off figures (real matplotlib PNGs)."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from smallnets.benchmarks.machine import cpu_kind
from smallnets.benchmarks.plots import latency_vs_labelled_top1, latency_vs_macs, pareto_front
from smallnets.benchmarks.roofline import achieved_fraction, clock_ghz, fit_cost, peak_compute


def test_cpu_kind_names_the_int8_feature_that_matters() -> None:
    assert cpu_kind(("avx2", "fma", "avx512f", "avx512_vnni"), "x86_64") == "avx512_vnni"
    assert cpu_kind(("avx2", "fma"), "x86_64") == "avx2"
    assert cpu_kind(("asimd", "asimddp"), "aarch64") == "arm64_dotprod"
    assert cpu_kind((), "riscv64") == "riscv64"


def test_clock_is_the_mean_reported_mhz() -> None:
    assert clock_ghz("processor : 0\ncpu MHz\t\t: 2400.000\nprocessor : 1\ncpu MHz : 2600.0\n") == pytest.approx(2.5)
    assert clock_ghz("processor : 0\n") is None


@pytest.mark.parametrize(
    ("features", "model", "fp32", "int8"),
    [
        (("avx2", "fma", "avx512f", "avx512_vnni"), "Intel Xeon", 32, 128),
        (("avx2", "fma", "avx512f", "avx512_vnni"), "AMD EPYC 9R14", 16, 64),  # Zen 4: 256-bit halves
        (("avx2", "fma"), "AMD EPYC 7B13", 16, 32),
        (("asimd", "asimddp"), "ARM Neoverse-N1", 8, 32),
    ],
)
def test_peak_macs_per_cycle_from_isa(
    tmp_path: Path, features: tuple[str, ...], model: str, fp32: int, int8: int
) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("cpu MHz : 2450.0\n")
    peak = peak_compute(features, model, cpuinfo)
    assert (peak.fp32_macs_per_cycle, peak.int8_macs_per_cycle) == (fp32, int8)
    assert peak.peak_macs_per_s(2) == pytest.approx(2 * fp32 * 2.45e9)


def test_issue_example_lite0_cannot_beat_its_fp32_floor_on_zen3() -> None:
    """Issue 12: 385M MACs at 16 fp32 MAC/cycle and 2.45 GHz cannot run under ~9.8 ms on one core."""
    from smallnets.benchmarks.roofline import PeakCompute

    zen3 = PeakCompute(16, 32, 2.45, "test")
    assert achieved_fraction(385e6, 9.82, zen3, 1, "fp32") == pytest.approx(1.0, abs=0.01)
    assert achieved_fraction(385e6, 19.64, zen3, 1, "fp32") == pytest.approx(0.5, abs=0.01)


def test_cost_fit_recovers_a_known_line() -> None:
    macs = [100e6, 300e6, 600e6]
    fit = fit_cost(macs, [1.0 + 0.02 * m / 1e6 for m in macs])
    assert fit is not None and fit.fixed_ms == pytest.approx(1.0) and fit.ns_per_mmac == pytest.approx(2e4)
    assert fit.predict_ms(200e6) == pytest.approx(5.0)
    assert fit_cost([100e6, 100e6], [1.0, 2.0]) is None


def test_pareto_front_keeps_only_unbeaten_points() -> None:
    points = [(10.0, 80.0), (5.0, 70.0), (7.0, 69.0), (20.0, 85.0), (12.0, 79.0), (5.0, 60.0)]
    assert pareto_front(points) == [(5.0, 70.0), (10.0, 80.0), (20.0, 85.0)]


def rows() -> list[dict]:
    made = []
    for model, macs, top1 in (("a", 100e6, 0.7), ("b", 400e6, 0.8)):
        for variant, scale in (("onnx-fp32", 1.0), ("onnx-int8", 0.5), ("openvino-fp32", 1.1)):
            made.append(
                {"model": model, "variant": variant, "batch": 1, "threads": 1, "macs": macs,
                 "p50_ms": macs / 1e8 * scale, "labelled_top1": top1 - 0.01 * scale, "labelled_images": 400}
            )  # fmt: skip
    return made


def test_trade_off_figures_are_pngs(tmp_path: Path) -> None:
    from smallnets.benchmarks.roofline import PeakCompute

    written = [
        latency_vs_macs(rows(), tmp_path / "macs.png", PeakCompute(32, 128, 2.0, "test")),
        latency_vs_labelled_top1(rows(), tmp_path / "pareto.png"),
    ]
    for path in written:
        assert path is not None
        with Image.open(path) as image:
            image.verify()
    assert latency_vs_labelled_top1([{**row, "labelled_top1": None} for row in rows()], tmp_path / "x.png") is None
