"""The benchmark harness on a tiny real model: fresh-process measurements, honest summaries, reports, plots.

One suite run (cheapest registry variant, 1 thread, count-bounded loops) is shared by the tests; real export,
real optimize, real onnxruntime and torch processes. Timings are never asserted, only their consistency.
"""

from __future__ import annotations

import csv
import json
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from smallnets.benchmarks.artifacts import OPTIMIZE_EFFORTS, ArtifactCache, ModelArtifacts
from smallnets.benchmarks.machine import EMULATED_WARNING, cpu_kind, machine_block
from smallnets.benchmarks.measure import MeasureSpec
from smallnets.benchmarks.report import render_markdown
from smallnets.benchmarks.runner import run_measurement
from smallnets.benchmarks.selection import DEFAULT_VARIANTS, VARIANTS, ModelChoice, parse_models
from smallnets.benchmarks.suite import BenchConfig, SuiteResult, make_row, plan, run_suite
from smallnets.cli import main

TINY = "mobilenet_v1:width=0.25:resolution=128"  # ~14M MACs: the cheapest registry variant
ITERATIONS = 12
REPEATS = 2
BATCHES = (1, 4)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
REQUIRED_KEYS = (
    "model", "variant", "provider", "threads", "batch", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "first_run_ms",
    "throughput_ips", "peak_rss_mb", "rss_increase_mb", "model_size_mb", "load_ms", "params", "macs",
)  # fmt: skip


@dataclass(frozen=True)
class SuiteRun:
    result: SuiteResult
    outdir: Path
    config: BenchConfig


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bench-cache")


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> SuiteRun:
    config = BenchConfig(
        models=(ModelChoice.parse(TINY),),
        variants=DEFAULT_VARIANTS,
        batches=BATCHES,
        threads=(1,),
        iterations=ITERATIONS,
        warmup=1,
        repeats=REPEATS,
        cache_dir=cache_dir,
    )
    outdir = tmp_path_factory.mktemp("bench-out")
    return SuiteRun(run_suite(config, outdir), outdir, config)


def measured_variants(result: SuiteResult) -> set[str]:
    return {row["variant"] for row in result.rows}


def test_every_variant_is_measured_or_explained(suite: SuiteRun) -> None:
    result = suite.result
    # optimize may reject int8 (slower than fp32 on a busy machine); then the report must say why.
    unexplained = set(DEFAULT_VARIANTS) - measured_variants(result)
    assert {"torch", "onnx-fp32", "onnx-opt"} <= measured_variants(result)
    for variant in unexplained:
        assert any(variant in reason for reason in result.machine["skipped"]), result.machine["skipped"]
    expected = {(variant, batch) for variant in measured_variants(result) for batch in BATCHES}
    assert {(row["variant"], row["batch"]) for row in result.rows} == expected


def test_latency_numbers_are_positive_and_ordered(suite: SuiteRun) -> None:
    result = suite.result
    for row in result.rows:
        assert 0 < row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"], row
        assert row["mean_ms"] > 0 and row["first_run_ms"] > 0 and row["load_ms"] > 0, row
        assert row["iterations"] == ITERATIONS * REPEATS, row
        assert row["params"] > 0 and row["macs"] > 0, row
        assert row["provider"] == ("torch-eager" if row["variant"] == "torch" else "CPUExecutionProvider")


def test_throughput_is_computed_from_batch_size_and_raw_timings(suite: SuiteRun) -> None:
    result, outdir = suite.result, suite.outdir
    raw = {
        (entry["variant"], entry["batch"]): entry["timings_ms"]
        for entry in json.loads((outdir / "timings.json").read_text())
    }
    for row in result.rows:
        timings = raw[(row["variant"], row["batch"])]
        assert len(timings) == row["iterations"]
        expected = row["batch"] * len(timings) / (sum(timings) / 1000.0)
        # timings.json keeps 0.1 us resolution: equal within that rounding
        assert row["throughput_ips"] == pytest.approx(expected, rel=1e-4)
        assert row["p50_ms"] == pytest.approx(float(np.percentile(timings, 50)), abs=1e-4)
        assert row["p99_ms"] == pytest.approx(float(np.percentile(timings, 99)), abs=1e-4)
    for measurement in result.measurements:
        assert measurement.throughput_ips == pytest.approx(
            measurement.spec.batch * measurement.iterations / measurement.timed_s
        )


def test_memory_and_size_rows(suite: SuiteRun) -> None:
    result = suite.result
    baseline = result.machine["bare_interpreter_rss_mb"]
    assert baseline > 0
    for row in result.rows:
        assert row["peak_rss_mb"] > baseline, row
        assert row["rss_increase_mb"] == pytest.approx(row["peak_rss_mb"] - baseline)
        assert row["model_size_mb"] > 0
    torch_rss = max(row["rss_increase_mb"] for row in result.rows if row["variant"] == "torch")
    onnx_rss = max(row["rss_increase_mb"] for row in result.rows if row["variant"] == "onnx-fp32")
    assert torch_rss > onnx_rss  # the torch library alone outweighs onnxruntime plus this tiny model


def test_results_files(suite: SuiteRun) -> None:
    result, outdir = suite.result, suite.outdir
    data = json.loads((outdir / "results.json").read_text())
    assert data["machine"]["cpu"]["arch"] and data["machine"]["libraries"]["onnxruntime"]
    assert data["machine"]["emulated"] is False
    for row in data["results"]:
        assert set(REQUIRED_KEYS) <= set(row), set(REQUIRED_KEYS) - set(row)
    with (outdir / "results.csv").open() as file:
        csv_rows = list(csv.DictReader(file))
    assert len(csv_rows) == len(data["results"]) == len(result.rows)
    assert {row["variant"] for row in csv_rows} == measured_variants(result)


def test_report_has_a_table_per_setting_with_speedups(suite: SuiteRun) -> None:
    report = (suite.outdir / "report.md").read_text()
    for batch in BATCHES:
        assert f"## Batch {batch}, 1 thread" in report
    assert "| model | variant | p50 ms |" in report
    label = ModelChoice.parse(TINY).label
    torch_line = next(line for line in report.splitlines() if line.startswith(f"| {label} | torch"))
    assert "| 1.00x |" in torch_line  # torch against itself
    int8_lines = [line for line in report.splitlines() if line.startswith(f"| {label} | onnx-int8")]
    assert all("cosine" in line or "95% CI" in line for line in int8_lines)  # optimize's own check
    assert "EMULATED" not in report


def test_plots_are_valid_pngs(suite: SuiteRun) -> None:
    result, outdir = suite.result, suite.outdir
    kind = cpu_kind()  # the machine's ISA is in every file name
    expected = {f"latency_vs_macs_{kind}.png", f"memory_{kind}.png"} | (
        {f"int8_speedup_{kind}.png"} if "onnx-int8" in measured_variants(result) else set()
    )
    written = {path.name for path in outdir.glob("*.png")}
    assert expected <= written
    for name in written:
        path = outdir / name
        assert path.read_bytes()[:8] == PNG_SIGNATURE
        with Image.open(path) as image:
            image.verify()
        assert f"]({name})" in (outdir / "report.md").read_text()


def test_runs_are_interleaved_across_variants(suite: SuiteRun, cache_dir: Path) -> None:
    config = suite.config
    artifacts = ArtifactCache(cache_dir).prepare(config.models[0], DEFAULT_VARIANTS, suite.result.machine["target"])
    order = [(variant, batch) for _, variant, batch, _ in plan([artifacts], config)]
    available = [variant for variant in DEFAULT_VARIANTS if artifacts.unavailable(variant) is None]
    assert order[: 2 * len(available)] == [(variant, 1) for variant in available] * 2  # A B C D A B C D


def test_second_run_reuses_the_cache(suite: SuiteRun, cache_dir: Path) -> None:
    config = suite.config
    cache = ArtifactCache(cache_dir)
    target = suite.result.machine["target"]
    first = cache.prepare(config.models[0], DEFAULT_VARIANTS, target)
    stamps = {path: path.stat().st_mtime_ns for path in first.folder.rglob("*") if path.is_file()}
    second = cache.prepare(config.models[0], DEFAULT_VARIANTS, target)
    assert second.folder == first.folder
    assert first.optimize_report()["config"]["calib_images"] == OPTIMIZE_EFFORTS[first.effort]["calib_images"]
    assert {path: path.stat().st_mtime_ns for path in second.folder.rglob("*") if path.is_file()} == stamps


def test_missing_imagenet_weights_fail_as_in_export(suite: SuiteRun, cache_dir: Path) -> None:
    from smallnets.export.weights import WeightsUnavailableError

    choice, cache = suite.config.models[0], ArtifactCache(cache_dir, weights="imagenet")
    with pytest.raises(WeightsUnavailableError, match="--weights"):  # no ImageNet checkpoint for width 0.25
        cache.prepare(choice, ["onnx-fp32"], None)
    assert not cache.folder(choice, "imagenet").exists(), "no empty cache entry left"


def test_count_bounded_measurement_runs_exactly_that_many(suite: SuiteRun) -> None:
    result = suite.result
    onnx_spec = next(m.spec for m in result.measurements if m.spec.kind == "onnx" and m.spec.batch == 1)
    spec = MeasureSpec(**{**onnx_spec.__dict__, "iterations": 7, "batch": 3})
    measurement = run_measurement(spec)
    assert measurement.iterations == 7
    assert measurement.throughput_ips == pytest.approx(3 * 7 / measurement.timed_s)


def test_emulation_is_marked_in_rows_and_report(
    suite: SuiteRun, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result, config = suite.result, suite.config
    monkeypatch.setenv("SMALLNETS_EMULATED", "1")
    machine = {**machine_block((1,)), "skipped": []}
    assert machine["emulated"] is True
    artifacts = ArtifactCache(cache_dir).prepare(config.models[0], ["onnx-fp32"], None)
    measurement = next(m for m in result.measurements if m.spec.kind == "onnx")
    row = make_row(artifacts, "onnx-fp32", measurement, 10.0, machine)
    assert row["emulated"] is True
    report = render_markdown([row], machine)
    assert EMULATED_WARNING in report and "(EMULATED)" in report


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err


def test_unknown_model_lists_valid_names(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run_cli(
        ["bench", "--models", "mobilenet_v9", "--cache-dir", str(tmp_path), "-o", str(tmp_path / "out")], capsys
    )
    assert code == 3  # smallnets.cli.EXIT_NOT_FOUND: an unknown model is a lookup, not a usage error
    assert "unknown model 'mobilenet_v9'" in err and "squeezenet1_1" in err and "efficientnet_lite0" in err


def test_unsupported_variant_parameter_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run_cli(
        ["bench", "--models", "mobilenet_v1:width=0.3", "--cache-dir", str(tmp_path), "-o", str(tmp_path / "out")],
        capsys,
    )
    assert code == 2 and "width=0.3" in err and "0.25" in err


def test_unknown_benchmark_variant_lists_valid_ones(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run_cli(["bench", "--variants", "onnx-fp16", "-o", str(tmp_path / "out")], capsys)
    assert code == 2
    assert "onnx-fp16" in err and all(variant in err for variant in VARIANTS)


def test_unknown_execution_provider_fails_before_building(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bench", "--models", TINY, "--providers", "tensorrt", "--cache-dir", str(tmp_path / "cache")]
    code, err = run_cli([*argv, "-o", str(tmp_path / "out")], capsys)
    assert code == 2 and "tensorrt" in err and "xnnpack" in err
    assert not (tmp_path / "cache").exists()


def test_unwritable_output_fails_before_measuring(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    cache = tmp_path / "cache"
    code, err = run_cli(
        ["bench", "--models", TINY, "--cache-dir", str(cache), "-o", str(blocker / "out")],
        capsys,
    )
    assert code == 6 and "not writable" in err and str(blocker / "out") in err  # smallnets.cli.EXIT_SYSTEM
    assert not cache.exists()  # nothing was built or measured


def test_model_list_syntax() -> None:
    assert [choice.name for choice in parse_models("all-default")][-1] == "efficientnet_lite0"
    choice = ModelChoice.parse("mobilenet_v1:width=0.5:resolution=160")
    assert choice.overrides == {"width": 0.5, "resolution": 160}
    assert ModelChoice.parse(choice.label) == choice
    with pytest.raises(ValueError, match="NAME:KEY=VALUE"):
        ModelChoice.parse("mobilenet_v1:width")


def row_stub(**changes: Any) -> dict[str, Any]:
    return {"model": "m", "variant": "onnx-fp32", "batch": 1, "threads": 1, "p50_ms": 1.0, **changes}


def test_speedups_against_torch_and_onnx_fp32() -> None:
    from smallnets.benchmarks.report import with_speedups

    rows = with_speedups(
        [row_stub(variant="torch", p50_ms=8.0), row_stub(p50_ms=4.0), row_stub(variant="onnx-int8", p50_ms=1.0)]
    )
    speedups = {row["variant"]: (row["speedup_vs_torch"], row["speedup_vs_onnx_fp32"]) for row in rows}
    assert speedups == {"torch": (1.0, 0.5), "onnx-fp32": (2.0, 1.0), "onnx-int8": (8.0, 4.0)}


def test_measure_process_reports_its_own_peak_memory_not_the_parent_s() -> None:
    """ru_maxrss survives exec, so a child spawned by a big parent would inherit its peak; VmHWM does not."""
    from smallnets.benchmarks.runner import bare_interpreter_rss_mb

    ballast = np.ones(64 * 2**20, dtype=np.uint8)  # make this (parent) process clearly bigger
    parent_rss_mb = int(Path("/proc/self/status").read_text().split("VmRSS:")[1].split()[0]) / 1024
    assert bare_interpreter_rss_mb() < parent_rss_mb - 32
    del ballast


def test_from_results_redraws_report_and_plots(suite: SuiteRun, tmp_path: Path) -> None:
    code = main(["bench", "--from-results", str(suite.outdir / "results.json"), "-o", str(tmp_path)])
    assert code == 0
    assert (tmp_path / "report.md").read_text() == (suite.outdir / "report.md").read_text()
    assert (tmp_path / f"latency_vs_macs_{cpu_kind()}.png").read_bytes()[:8] == PNG_SIGNATURE


def test_measuring_interpreter_can_be_overridden(monkeypatch: pytest.MonkeyPatch) -> None:
    """The arm64 harness points this at `qemu-aarch64 -L ROOT python3.11` (no binfmt under emulation)."""
    from smallnets.benchmarks.runner import bare_interpreter_rss_mb

    monkeypatch.setenv("SMALLNETS_MEASURE_PYTHON", shlex.join([sys.executable, "-X", "utf8"]))
    assert bare_interpreter_rss_mb() > 0
    monkeypatch.setenv("SMALLNETS_MEASURE_PYTHON", "/nonexistent/python3")
    with pytest.raises(FileNotFoundError, match="/nonexistent/python3"):
        bare_interpreter_rss_mb()


def test_half_built_or_older_optimize_output_is_not_taken_for_a_cache_hit(
    suite: SuiteRun, cache_dir: Path, tmp_path: Path
) -> None:
    target = suite.result.machine["target"]
    cached = ArtifactCache(cache_dir).prepare(suite.config.models[0], DEFAULT_VARIANTS, target)
    copy = ModelArtifacts(cached.choice, cached.weights, tmp_path / "copy", cached.card, target, cached.effort)
    shutil.copytree(cached.folder, copy.folder)
    assert copy.optimized_complete()
    report_path = copy.optimized_dir / "report.json"
    original = report_path.read_text()
    changed = json.loads(original)
    changed["config"]["calib_images"] += 1  # built with other bounds than this effort's
    report_path.write_text(json.dumps(changed))
    assert not copy.optimized_complete()
    other_code = json.loads(original)
    other_code["versions"]["code"] = "0" * 64  # built by other code (the int8 rewrites changed since)
    report_path.write_text(json.dumps(other_code))
    assert not copy.optimized_complete()
    report_path.write_text(original)
    status = copy.optimize_report()["status"]
    missing = copy.path("onnx-int8" if status == "accepted" else "onnx-opt")
    missing.unlink()
    assert not copy.optimized_complete()


def test_force_removes_its_stale_plots_and_never_claims_bench_http_files(
    suite: SuiteRun, cache_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from smallnets.core.files import add_to_manifest, read_manifest, write_manifest

    outdir = tmp_path / "results"
    quick = ["--models", TINY, "--variants", "onnx-fp32", "--batch", "1", "--threads", "1", "--iterations", "3"]
    quick += ["--warmup", "0", "--repeats", "1", "--cache-dir", str(cache_dir), "-o", str(outdir)]
    assert main(["bench", *quick]) == 0
    # What an earlier run with labelled photos drew and this one (random weights, no photos) does not.
    stale = outdir / f"latency_vs_labelled_top1_{cpu_kind()}.png"
    shutil.copy(outdir / f"latency_vs_macs_{cpu_kind()}.png", stale)
    add_to_manifest(outdir, [stale.name])
    http = outdir / "http"  # `smallnets bench-http`'s default output sits inside bench's
    http.mkdir()
    (http / "http_report.md").write_text("# load\n")
    write_manifest(http, "bench-http")
    assert main(["bench", "--force", *quick]) == 0
    assert not stale.exists(), "a plot this run did not draw is not left from the earlier run"
    listed = read_manifest(outdir)["files"]
    assert listed and not [name for name in listed if name.startswith("http/")]
    assert set(listed) == {path.name for path in outdir.iterdir() if path.is_file()} - {".smallnets-manifest.json"}
    assert (http / "http_report.md").is_file()
    machine = json.loads((outdir / "results.json").read_text())["machine"]
    assert {"start", "end", "cores", "busy"} <= set(machine["load_average"])
    report = (outdir / "report.md").read_text()
    assert "Load average (1 min)" in report and "--optimize-effort" not in report
    capsys.readouterr()
