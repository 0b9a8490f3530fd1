"""core/targets.py: one Target per CPU kind, constructed by name or from the CPU's ISA flags, read by every stage."""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import onnx
import onnxruntime as ort
import pytest

from smallnets.benchmarks.arm64.env import SETUP_COMMAND, cache_dir
from smallnets.core.hardware import CpuInfo, detect_cpu
from smallnets.core.metadata import card_of, write_card
from smallnets.core.targets import (
    EXECUTION_PROVIDERS,
    TARGET_CHOICES,
    TARGETS,
    ExecutionProvider,
    QuantOptions,
    Target,
    UnknownTargetError,
    int8_fit_note,
    resolve_target,
    runs_here,
)
from smallnets.serve.settings import ServeSettings


def fabricated(arch: str, features: tuple[str, ...] = (), cores: int = 4) -> CpuInfo:
    return CpuInfo(arch, "fabricated", features, cores, cores)


def test_presets_state_the_int8_kinds_their_cpus_compute_without_overflow() -> None:
    avx2, vnni, arm = TARGETS["x86-avx2"], TARGETS["x86-vnni"], TARGETS["arm64"]
    assert (avx2.signature, avx2.reduce_range) == ("U8S8", True)
    assert (vnni.signature, vnni.reduce_range) == ("U8S8", False)
    assert (arm.signature, arm.reduce_range) == ("S8S8", False)
    for target in TARGETS.values():
        assert target.per_channel and target.rationale and target.hardware and target.features
        assert target.candidates[0] == target.quant and len(target.candidates) > 1
        assert 0.5 < target.int8_min_cosine < 1.0
        assert 0.0 < target.random_weights_min_cosine < target.int8_min_cosine
        assert target.providers[-1].name == "CPUExecutionProvider"  # CPU stays the fallback everywhere


def test_avx2_never_tries_full_range_u8s8_weights() -> None:
    """VPMADDUBSW saturates on full-range u8*s8 pairs: every AVX2 candidate must keep reduce_range."""
    assert all(options.reduce_range for options in TARGETS["x86-avx2"].candidates)


def test_candidates_are_filtered_by_family() -> None:
    only = QuantOptions("only-lite", families=("efficientnet_lite",))
    target = Target(
        "t", "x86_64", ("avx2",), "h", "r", quant=QuantOptions("base"), candidates=(QuantOptions("base"), only)
    )
    assert [o.name for o in target.candidates_for("efficientnet_lite")] == ["base", "only-lite"]
    assert [o.name for o in target.candidates_for("mobilenet_v2")] == ["base"]


@pytest.mark.parametrize("name", list(TARGETS))
def test_with_quant_makes_the_search_choice_the_targets_own(name: str) -> None:
    """What optimize writes into the int8 card and report: the options the search chose, not the default's."""
    target = TARGETS[name]
    other = target.candidates[-1]
    chosen = target.with_quant(other)
    assert chosen.quant == other and chosen.quant_format == other.quant_format and chosen.candidates[0] == other
    assert set(chosen.candidates) == set(target.candidates) and chosen.to_dict()["quant_name"] == other.name
    with pytest.raises(ValueError, match="not one of its candidates"):
        target.with_quant(QuantOptions("elsewhere"))


def test_a_target_must_try_its_default_first() -> None:
    with pytest.raises(ValueError, match="first candidate"):
        Target("t", "x86_64", (), "h", "r", quant=QuantOptions("a"), candidates=(QuantOptions("b"),))


@pytest.mark.parametrize(
    ("field", "value"), [("activation_type", "int4"), ("quant_format", "qdqq"), ("calibration", "mse")]
)
def test_quant_options_refuse_unknown_values(field: str, value: str) -> None:
    with pytest.raises(ValueError, match=value):
        QuantOptions("bad", **{field: value})


def test_thread_counts_are_one_and_the_serving_count(monkeypatch: pytest.MonkeyPatch) -> None:
    """The server's formula: one worker per 4 cores of the CPU quota, each with its share of the cores."""
    monkeypatch.setattr("smallnets.core.targets.cpu_quota", lambda: None)
    target, _ = resolve_target("x86-vnni", fabricated("x86_64", ("avx512_vnni",), cores=16))
    monkeypatch.setattr("smallnets.serve.settings.cpu_quota", lambda: None)
    monkeypatch.setattr("smallnets.serve.settings.serving_cores", lambda quota: 16)
    assert target.threads == (1, 4) and target.serving_threads == 4 == ServeSettings.from_env({}).threads
    two, _ = resolve_target("x86-vnni", fabricated("x86_64", ("avx512_vnni",), cores=2))
    assert two.threads == (1, 2)
    single, _ = resolve_target("x86-vnni", fabricated("x86_64", ("avx512_vnni",), cores=1))
    assert single.threads == (1,)
    monkeypatch.setattr("smallnets.core.targets.cpu_quota", lambda: 1.5)  # a container's quota, not the host's cores
    quota, _ = resolve_target("x86-vnni", fabricated("x86_64", ("avx512_vnni",), cores=64))
    assert quota.threads == (1, 2)


def test_to_dict_carries_the_flat_keys_reports_read() -> None:
    data = TARGETS["x86-avx2"].to_dict()
    assert data["name"] == "x86-avx2" and data["signature"] == "U8S8" and data["reduce_range"] is True
    assert data["quant_format"] in ("qdq", "qoperator") and data["candidates"][0] == data["quant_name"]
    assert data["providers"][0]["name"] == "CPUExecutionProvider"


def test_execution_providers_have_one_home() -> None:
    assert {"cpu", "xnnpack", "acl", "openvino"} <= set(EXECUTION_PROVIDERS)
    assert all(provider.name.endswith("ExecutionProvider") for provider in EXECUTION_PROVIDERS.values())


def test_auto_picks_the_target_of_this_cpu() -> None:
    cpu = detect_cpu()
    target, reason = resolve_target("auto")
    if cpu.is_x86 and any(cpu.has(flag) for flag in ("avx512_vnni", "avx_vnni", "amx_int8")):
        assert target.name == "x86-vnni"  # this machine: AVX-512 VNNI
    assert target.name in reason and "auto" in reason


def x86_emulator() -> Path:
    """qemu-x86_64: the copy benchmarks/arm64/setup.sh keeps, else Debian's qemu-user-static if installed."""
    kept = cache_dir() / "qemu" / "qemu-x86_64-static"
    found = kept if kept.is_file() else shutil.which("qemu-x86_64-static")
    if found is None:
        pytest.skip(f"no qemu-x86_64-static: run `{SETUP_COMMAND}` (or apt-get install qemu-user-static)")
    return Path(found)


@pytest.mark.skipif(platform.machine() != "x86_64", reason="emulates an x86-64 CPU with this x86-64 venv")
def test_an_avx2_only_cpu_is_told_by_cpuid_not_by_the_host_cpuinfo() -> None:
    """Under qemu -cpu Haswell /proc/cpuinfo is the host's (maybe AVX-512 VNNI); the target must still be AVX2's."""
    probe = (
        "import json; from smallnets.core.hardware import detect_cpu; from smallnets.core.targets import "
        "resolve_target; print(json.dumps([detect_cpu().features, resolve_target('auto')[0].name]))"
    )
    command = [str(x86_emulator()), "-cpu", "Haswell", sys.executable, "-c", probe]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300, check=True)
    features, target = json.loads(completed.stdout)
    assert features == ["avx2", "fma"] and target == "x86-avx2", completed.stdout


@pytest.mark.parametrize(
    ("built_for", "arch", "features", "warned"),
    [
        ("x86-vnni", "x86_64", ("avx2", "fma"), "--target x86-avx2"),  # full-range U8S8 saturates without VNNI
        ("x86-vnni", "x86_64", ("avx2", "avx_vnni"), None),
        ("x86-vnni", "x86_64", ("avx2", "avx512f", "avx512_vnni"), None),
        ("x86-avx2", "x86_64", ("avx2", "fma"), None),
        ("x86-avx2", "x86_64", ("avx2", "avx512f", "avx512_vnni"), None),  # reduce_range is safe everywhere
        ("arm64", "x86_64", ("avx2", "avx512f", "avx512_vnni"), "aarch64"),
        ("x86-vnni", "aarch64", ("asimd", "asimddp"), "x86_64"),
        ("arm64", "aarch64", ("asimd",), None),
    ],
)
def test_int8_built_for_another_cpu_kind_is_named(
    built_for: str, arch: str, features: tuple, warned: str | None
) -> None:
    note = int8_fit_note(TARGETS[built_for].to_dict(), fabricated(arch, features))
    assert (note is None) if warned is None else (warned in note and built_for in note), note
    assert int8_fit_note(None, fabricated(arch, features)) is None  # fp32


@pytest.mark.skipif(platform.machine() != "x86_64", reason="emulates an x86-64 CPU with this x86-64 venv")
def test_classify_warns_when_vnni_int8_runs_on_an_avx2_only_cpu(
    exported: Callable[..., Path], photos: dict, tmp_path: Path
) -> None:
    """The card of a model says x86-vnni int8; the same command warns under qemu -cpu Haswell and not natively."""
    model = onnx.load(str(exported("mobilenet_v3_small")))
    card = card_of(model).with_updates(precision="int8", quantization=TARGETS["x86-vnni"].to_dict())
    onnx.save(write_card(model, card), str(tmp_path / "model.onnx"))
    photos["chelsea"].save(tmp_path / "chelsea.jpg")
    command = [
        sys.executable,
        "-m",
        "smallnets",
        "classify",
        str(tmp_path / "model.onnx"),
        str(tmp_path / "chelsea.jpg"),
    ]
    native = subprocess.run(command, capture_output=True, text=True, timeout=300, check=True)
    emulated = subprocess.run(
        [str(x86_emulator()), "-cpu", "Haswell", *command], capture_output=True, text=True, timeout=300, check=True
    )
    assert "VNNI" not in native.stderr and "warning: int8 built for target x86-vnni" in emulated.stderr
    assert emulated.stdout.splitlines()[0] == native.stdout.splitlines()[0]  # it still answers


@pytest.mark.parametrize(
    ("arch", "features", "expected"),
    [
        ("x86_64", ("avx2", "fma"), "x86-avx2"),
        ("x86_64", ("avx2", "avx512f", "avx512_vnni"), "x86-vnni"),
        ("x86_64", ("avx2", "avx_vnni"), "x86-vnni"),
        ("x86_64", ("avx2", "amx_int8"), "x86-vnni"),
        ("x86_64", (), "x86-avx2"),
        ("aarch64", ("asimd", "asimddp", "i8mm"), "arm64"),
        ("aarch64", ("asimd",), "arm64"),
    ],
)
def test_auto_from_fabricated_cpus(arch: str, features: tuple[str, ...], expected: str) -> None:
    target, reason = resolve_target("auto", fabricated(arch, features))
    assert target.name == expected and expected in reason


def test_targets_know_which_cpus_they_can_be_timed_on() -> None:
    x86, arm = fabricated("x86_64"), fabricated("aarch64")
    assert runs_here(TARGETS["x86-vnni"], x86) and runs_here(TARGETS["x86-avx2"], x86)
    assert not runs_here(TARGETS["arm64"], x86) and runs_here(TARGETS["arm64"], arm)
    assert not runs_here(TARGETS["x86-vnni"], arm)


def test_unknown_target_and_architecture_are_refused() -> None:
    with pytest.raises(UnknownTargetError, match="x86-vnni"):
        resolve_target("x86-avx9")
    with pytest.raises(UnknownTargetError, match="--target"):
        resolve_target("auto", fabricated("riscv64"))
    assert TARGET_CHOICES[0] == "auto" and set(TARGET_CHOICES[1:]) == set(TARGETS)


def test_the_runtime_takes_its_providers_from_the_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """An alias added to EXECUTION_PROVIDERS is understood by sessions and `--providers`; its options go along."""
    from smallnets.core.runtime import provider_options, resolve_providers

    monkeypatch.setitem(EXECUTION_PROVIDERS, "mine", ExecutionProvider("mine", "MineExecutionProvider", {"k": "v"}))
    providers, notes = resolve_providers(["Mine", "openvino"])
    assert providers == ["CPUExecutionProvider"]  # neither is built into this onnxruntime: CPU, with a note each
    assert "MineExecutionProvider" in notes[0] and "OpenVINOExecutionProvider" in notes[1]
    assert provider_options(["MineExecutionProvider", "OpenVINOExecutionProvider", "CPUExecutionProvider"]) == [
        {"k": "v"},
        {"device_type": "CPU"},
        {},
    ]
    defaults = [provider.name for provider in EXECUTION_PROVIDERS.values() if provider.by_default]
    assert resolve_providers()[0] == [name for name in defaults if name in ort.get_available_providers()]


def test_the_readme_and_the_help_name_every_provider_of_the_registry() -> None:
    import argparse

    from smallnets.cli import build_parser

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text().lower()
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    for command in ("classify", "serve", "bench"):
        option = next(a for a in commands[command]._actions if "--providers" in a.option_strings)
        assert all(alias in option.help for alias in EXECUTION_PROVIDERS), (command, option.help)
    missing = [alias for alias in EXECUTION_PROVIDERS if alias not in readme]
    assert not missing, f"README.md does not mention the execution providers {missing}"


def test_each_candidate_calibrates_its_own_way_unless_told() -> None:
    """QuantOptions.calibration takes effect: optimize's config overrides it only when --calibration is given."""
    from smallnets.cli import build_parser
    from smallnets.core.targets import CALIBRATION_METHODS
    from smallnets.optimize.cli import optimize_config

    parser = build_parser()
    assert optimize_config(parser.parse_args(["optimize", "m.onnx"])).calibration is None
    for method in CALIBRATION_METHODS:
        assert optimize_config(parser.parse_args(["optimize", "m.onnx", "--calibration", method])).calibration == method
        assert QuantOptions("q", calibration=method).calibration == method
