"""Peak compute, cost fits, the Pareto front and the trade-off figures (real matplotlib PNGs)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from PIL import Image

from smallnets.benchmarks.machine import cpu_kind
from smallnets.benchmarks.plots import (
    int8_speedup_figure,
    latency_vs_labelled_top1,
    latency_vs_labelled_top1_figure,
    latency_vs_macs,
    latency_vs_macs_figure,
    pareto_front,
)
from smallnets.benchmarks.roofline import achieved_fraction, clock_ghz, peak_compute


def test_cpu_kind_names_the_int8_feature_that_matters() -> None:
    assert cpu_kind(("avx2", "fma", "avx512f", "avx512_vnni"), "x86_64") == "avx512_vnni"
    assert cpu_kind(("avx2", "fma"), "x86_64") == "avx2"
    assert cpu_kind(("asimd", "asimddp"), "aarch64") == "arm64_dotprod"
    assert cpu_kind((), "riscv64") == "riscv64"


def test_clock_is_the_mean_reported_mhz() -> None:
    assert clock_ghz("processor : 0\ncpu MHz\t\t: 2400.000\nprocessor : 1\ncpu MHz : 2600.0\n") == pytest.approx(2.5)
    assert clock_ghz("processor : 0\n") is None


@pytest.mark.parametrize(
    ("features", "model", "family", "fp32", "int8"),
    [
        (("avx2", "fma", "avx512f", "avx512_vnni"), "Intel Xeon", 6, 32, 128),
        (("avx2", "fma", "avx512f", "avx512_vnni"), "AMD EPYC 9R14", 25, 16, 64),  # Zen 4: 256-bit halves
        (("avx2", "fma", "avx512f", "avx512_vnni"), "AMD EPYC", 26, 32, 128),  # Zen 5: full 512-bit datapaths
        (("avx2", "fma"), "AMD EPYC 7B13", 25, 16, 32),
        (("asimd", "asimddp"), "ARM Neoverse-N1", None, 8, 32),
    ],
)
def test_peak_macs_per_cycle_from_isa(
    tmp_path: Path, features: tuple[str, ...], model: str, family: int | None, fp32: int, int8: int
) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(("" if family is None else f"cpu family\t: {family}\n") + "cpu MHz : 2450.0\n")
    peak = peak_compute(features, model, cpuinfo)
    assert (peak.fp32_macs_per_cycle, peak.int8_macs_per_cycle) == (fp32, int8)
    assert peak.peak_macs_per_s(2) == pytest.approx(2 * fp32 * 2.45e9)


def test_issue_example_lite0_cannot_beat_its_fp32_floor_on_zen3() -> None:
    """Issue 12: 385M MACs at 16 fp32 MAC/cycle and 2.45 GHz cannot run under ~9.8 ms on one core."""
    from smallnets.benchmarks.roofline import PeakCompute

    zen3 = PeakCompute(16, 32, 2.45, "test")
    assert achieved_fraction(385e6, 9.82, zen3, 1, "fp32") == pytest.approx(1.0, abs=0.01)
    assert achieved_fraction(385e6, 19.64, zen3, 1, "fp32") == pytest.approx(0.5, abs=0.01)


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


def crowded_rows() -> list[dict]:
    """Eight models close together at every variant: where names collide unless they are placed apart."""
    made = []
    for index in range(8):
        macs = 300e6 + index * 12e6
        for variant, scale in (("torch", 2.5), ("onnx-fp32", 1.0), ("onnx-opt", 0.97), ("onnx-int8", 0.5)):
            made.append(
                {"model": f"efficientnet_lite{index}", "variant": variant, "batch": 1, "threads": 1, "macs": macs,
                 "p50_ms": macs / 1e8 * scale, "labelled_top1": 0.88 + 0.001 * index - 0.002 * scale,
                 "labelled_images": 400}
            )  # fmt: skip
    return made


def label_boxes(axes) -> dict[str, object]:
    renderer = axes.figure.canvas.get_renderer()
    return {text.get_text(): text.get_window_extent(renderer) for text in axes.texts}


def assert_apart(boxes: dict[str, object]) -> None:
    names = list(boxes)
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            assert not boxes[first].overlaps(boxes[second]), f"{first} overlaps {second}"


def test_latency_vs_macs_shows_the_measured_points_and_costs_per_gmac() -> None:
    from smallnets.benchmarks.roofline import PeakCompute

    axes = latency_vs_macs_figure(rows(), PeakCompute(32, 128, 2.0, "test")).axes[0]
    points = {tuple(point) for collection in axes.collections for point in collection.get_offsets()}
    assert points == {(row["macs"] / 1e6, row["p50_ms"]) for row in rows()}
    legend = [text.get_text() for text in axes.get_legend().get_texts()]
    # p50 = MACs / 1e8 ms: 10 ms per GMAC at fp32, 5 at int8 (half the time), 11 for OpenVINO.
    assert [entry.split(",")[0] for entry in legend] == [
        "onnx-fp32: 10.0 ms/GMAC (median)",
        "onnx-int8: 5.0 ms/GMAC (median)",
        "openvino-fp32: 11.0 ms/GMAC (median)",
    ]
    assert not axes.lines, "no line joins architectures that share only a runtime"
    axes.figure.canvas.draw()
    ticks = [label.get_text() for label in axes.get_xticklabels() + axes.get_yticklabels() if label.get_text()]
    assert ticks and all(re.fullmatch(r"[\d.]+", tick) for tick in ticks), ticks
    assert sorted(text.get_text() for text in axes.texts) == ["a", "b"], "each model named once"


@pytest.mark.parametrize("figure", ["macs", "top1"])
def test_model_names_do_not_overlap(figure: str) -> None:
    built = (
        latency_vs_macs_figure(crowded_rows()) if figure == "macs" else latency_vs_labelled_top1_figure(crowded_rows())
    )
    assert len(built.axes[0].texts) == 8, "each model named once"
    boxes = label_boxes(built.axes[0])
    assert_apart(boxes)


def test_latency_vs_top1_joins_only_one_models_points() -> None:
    axes = latency_vs_labelled_top1_figure(crowded_rows()).axes[0]
    joined = [line for line in axes.lines if (line.get_gid() or "").startswith("model:")]
    assert len(joined) == 8
    for line in joined:
        model = line.get_gid().removeprefix("model:")
        mine = {(row["p50_ms"], 100 * row["labelled_top1"]) for row in crowded_rows() if row["model"] == model}
        assert set(zip(line.get_xdata(), line.get_ydata(), strict=True)) == mine


def test_speedup_bars_are_the_ratios_and_the_legend_hides_none() -> None:
    figure = int8_speedup_figure(rows())
    axes = figure.axes[0]
    heights = [bar.get_height() for bar in axes.patches]
    assert heights == pytest.approx([2.0, 2.0])  # int8 at half the fp32 time, both models
    assert [text.get_text() for text in axes.texts] == ["2.00x", "2.00x"]  # each bar says its value
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    legend = axes.get_legend().get_window_extent(renderer)
    assert not any(legend.overlaps(bar.get_window_extent(renderer)) for bar in axes.patches)
    entries = " ".join(text.get_text() for text in axes.get_legend().get_texts())
    assert "2x: the int8 goal" in entries and "1x: as fast as fp32" in entries
