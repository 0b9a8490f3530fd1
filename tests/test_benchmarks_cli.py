"""benchmarks/cli.py: the bench registration in named parts, each parsed on its own, and the config they build."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from smallnets.benchmarks.cli import (
    add_bench_http_parser,
    add_bench_parser,
    add_build_arguments,
    add_loop_arguments,
    add_output_arguments,
    add_selection_arguments,
    bench_config,
    print_summary,
    register,
)
from smallnets.benchmarks.http_wire import BODIES
from smallnets.benchmarks.selection import ModelChoice
from smallnets.core.hardware import detect_cpu


def parser_with(*parts: object) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    for part in parts:
        part(parser)  # type: ignore[operator]
    return parser


def bench_args(*argv: str) -> argparse.Namespace:
    subparsers = argparse.ArgumentParser().add_subparsers()
    return add_bench_parser(subparsers).parse_args(list(argv))


def test_selection_part_parses_models_variants_and_labelled_photos() -> None:
    args = parser_with(add_selection_arguments).parse_args(["--models", "a,b", "--eval-dir", "photos"])
    assert (args.models, args.eval_dir, args.batch, args.threads) == ("a,b", Path("photos"), "1,8", "1,all")
    assert args.variants == "torch,onnx-fp32,onnx-opt,onnx-int8" and args.weights is None  # per model


def test_loop_part_keeps_duration_and_iterations_exclusive() -> None:
    parser = parser_with(add_loop_arguments)
    assert parser.parse_args(["--iterations", "5"]).iterations == 5
    with pytest.raises(SystemExit):
        parser.parse_args(["--iterations", "5", "--duration", "1"])


def test_build_part_accepts_the_old_effort_name() -> None:
    parser = parser_with(add_build_arguments)
    assert parser.parse_args(["--optimize-effort", "full"]).effort == "full"
    assert parser.parse_args([]).effort == "bounded"
    with pytest.raises(SystemExit):
        parser.parse_args(["--effort", "quick"])


def test_output_part_has_force_and_redraw() -> None:
    args = parser_with(add_output_arguments).parse_args(["--from-results", "r.json", "-o", "out", "--force"])
    assert (args.from_results, args.output, args.force) == ([Path("r.json")], Path("out"), True)


def test_register_adds_both_commands_with_their_handlers() -> None:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    assert parser.parse_args(["bench"]).handler.__name__ == "run_bench"
    http = parser.parse_args(["bench-http", "--url", "http://127.0.0.1:1"])
    assert http.handler.__name__ == "run_bench_http" and http.concurrency == "1,4,16,64"
    alone = add_bench_http_parser(argparse.ArgumentParser().add_subparsers())
    with pytest.raises(SystemExit):
        alone.parse_args([])  # --url is required


def test_bench_http_takes_the_load_tools_bodies() -> None:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    assert BODIES == ("multipart", "raw")
    assert parser.parse_args(["bench-http", "--url", "u"]).body == "multipart"
    assert parser.parse_args(["bench-http", "--url", "u", "--body", "raw"]).body == "raw"
    with pytest.raises(SystemExit):
        parser.parse_args(["bench-http", "--url", "u", "--body", "form"])


def test_bench_config_from_arguments(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SMALLNETS_EVAL_DIR", str(tmp_path))
    config = bench_config(bench_args("--models", "squeezenet1_1", "--threads", "1,all", "--variants", "onnx-fp32"))
    assert config.models == (ModelChoice("squeezenet1_1"),) and config.variants == ("onnx-fp32",)
    assert config.threads == tuple(dict.fromkeys((1, detect_cpu().usable_cores))) and config.eval_dir == tmp_path
    explicit = bench_config(bench_args("--eval-dir", "elsewhere"))
    assert explicit.eval_dir == Path("elsewhere")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("--repeats", "0"), "--repeats"),
        (("--duration", "0"), "--duration"),
        (("--batch", "0"), "--batch"),
        (("--variants", "onnx-fp16"), "openvino-nncf-int8"),
    ],
)
def test_bench_config_refuses_bad_values_by_name(argv: tuple[str, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        bench_config(bench_args(*argv))


def test_summary_prints_the_first_setting(capsys: pytest.CaptureFixture[str]) -> None:
    config = bench_config(bench_args("--batch", "4,1", "--threads", "2"))
    row = {"model": "m", "variant": "onnx-fp32", "batch": 4, "threads": 2, "p50_ms": 3.0}
    print_summary([row, {**row, "batch": 1, "p50_ms": 1.0}], config, Path("out"))
    printed = capsys.readouterr().out
    assert "batch 4, 2 thread(s)" in printed and "| 3.00 |" in printed and "| 1.00 |" not in printed
    assert "out/report.md" in printed


def test_redraw_merges_runs_of_one_machine_and_refuses_others(tmp_path: Path) -> None:
    import json

    from smallnets.benchmarks.machine import machine_block
    from smallnets.benchmarks.report import merge_results

    machine = machine_block((1,))
    row = {"model": "m", "variant": "onnx-fp32", "batch": 1, "threads": 1, "p50_ms": 1.0}
    first, second, foreign = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    first.write_text(json.dumps({"machine": machine, "results": [row]}))
    second.write_text(json.dumps({"machine": machine, "results": [{**row, "model": "n"}]}))
    other = {**machine, "cpu": {**machine["cpu"], "model": "another CPU"}}
    foreign.write_text(json.dumps({"machine": other, "results": [row]}))
    rows, merged = merge_results([first, second])
    assert [r["model"] for r in rows] == ["m", "n"] and merged["merged_from"] == [str(first), str(second)]
    again = tmp_path / "again.json"  # m measured again later: its new row replaces the old one
    again.write_text(json.dumps({"machine": machine, "results": [{**row, "p50_ms": 0.5}]}))
    rows, _ = merge_results([first, second, again])
    assert [(r["model"], r["p50_ms"]) for r in rows] == [("m", 0.5), ("n", 1.0)]
    with pytest.raises(ValueError, match="another CPU"):
        merge_results([first, foreign])
