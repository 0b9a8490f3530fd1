"""The arm64 path under QEMU user-mode emulation: artifacts built here (x86) give the same answers on aarch64.

Needs the emulated environment (`bash benchmarks/arm64/setup.sh`, cached); without it every test here is skipped
with that command in the message. One aarch64 run (benchmarks/arm64/verify.py) serves all checks: emulated
onnxruntime is slow, so it uses three small models, batch 1, one thread.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from smallnets.benchmarks.arm64.compare import (
    FP32_RELATIVE_TOLERANCE,
    INT8_RELATIVE_TOLERANCE,
    Comparison,
    build_arm64_artifacts,
    compare_across_cpus,
    host_target,
    run_comparison,
)
from smallnets.benchmarks.arm64.env import Arm64Environment, Arm64EnvironmentMissing, cache_dir
from smallnets.benchmarks.arm64.selfcheck import check as emulation_failures
from smallnets.core.hardware import parse_cpuinfo

pytestmark = pytest.mark.arm64

# (registry name, weights): EfficientNet-Lite0 has real ImageNet weights offline; the others are seeded random.
MODELS = (("mobilenet_v2", "random"), ("efficientnet_lite0", "imagenet"), ("squeezenet1_1", "random"))
PRECISIONS = ("fp32", "int8")
# /proc/cpuinfo of an AWS Graviton2 (c6g) core as the kernel prints it: no "model name", only the MIDR fields.
GRAVITON2_CPUINFO = """processor\t: 0
BogoMIPS\t: 243.75
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x3
CPU part\t: 0xd0c
CPU revision\t: 1
"""


@pytest.fixture(scope="module")
def arm64() -> Arm64Environment:
    """The emulated environment, trusted only after benchmarks/arm64/selfcheck.py: a numpy top-k and a small int8
    model give the native answers under each emulator (QEMU 7.2 got 28 of 300 top-2s wrong as a Haswell)."""
    try:
        environment = Arm64Environment.load()
    except Arm64EnvironmentMissing as error:
        pytest.skip(str(error))
    failures = emulation_failures(cache_dir())
    if failures:
        pytest.fail("emulated results cannot be trusted: " + "; ".join(failures))
    return environment


@pytest.fixture(scope="module")
def arm64_artifacts(
    arm64: Arm64Environment, exported: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, dict[str, Path]]:
    """fp32 and arm64-preset int8 files per model, built on this host as a user would before deploying."""
    root = tmp_path_factory.mktemp("arm64-artifacts")
    return {name: build_arm64_artifacts(exported(name, weights=weights), root / name) for name, weights in MODELS}


@pytest.fixture(scope="module")
def comparison(
    arm64: Arm64Environment,
    arm64_artifacts: dict[str, dict[str, Path]],
    photos: dict[str, Image.Image],
    tmp_path_factory: pytest.TempPathFactory,
) -> Comparison:
    return run_comparison(arm64_artifacts, photos, tmp_path_factory.mktemp("arm64-run"), arm64)


def _row(comparison: Comparison, model: str, precision: str):
    return next(row for row in comparison.rows if row.model == model and row.precision == precision)


def test_native_aarch64_cpuinfo_names_the_core() -> None:
    """No emulator needed: a real aarch64 kernel's cpuinfo gives the core name and the dot-product feature."""
    model, features = parse_cpuinfo(GRAVITON2_CPUINFO, "aarch64")
    assert model == "ARM Neoverse-N1"
    assert {"asimd", "asimddp"} <= set(features) and "i8mm" not in features


def test_project_runtime_runs_on_aarch64(comparison: Comparison) -> None:
    facts = comparison.aarch64
    assert facts["machine"] == "aarch64" and facts["cpu"]["arch"] == "aarch64"
    assert facts["onnxruntime"] == ort.__version__  # the same pinned release on both sides
    assert "asimd" in facts["cpu"]["features"]
    assert all(case["providers"][-1] == "CPUExecutionProvider" for case in facts["cases"].values())
    assert {case["threads"] for case in facts["cases"].values()} == {1}


def test_aarch64_cpu_features_come_from_the_emulated_core(arm64: Arm64Environment) -> None:
    """detect_cpu inside emulation reports the guest's ISA, never the x86 host's flags."""
    probe = "import json; from smallnets.core.hardware import detect_cpu; print(json.dumps(detect_cpu().to_dict()))"
    cpu = json.loads(arm64.run(["-c", probe], capture_output=True, text=True, check=True).stdout)
    assert cpu["arch"] == "aarch64"
    assert "asimd" in cpu["features"] and not {"avx2", "avx512_vnni"} & set(cpu["features"])
    if arm64.cpu == "neoverse-n1":  # QEMU 10's /proc/cpuinfo carries the emulated core's MIDR
        assert cpu["model"] == "ARM Neoverse-N1" and "asimddp" in cpu["features"] and "sve" not in cpu["features"]


def test_auto_target_picks_arm64_on_aarch64(comparison: Comparison) -> None:
    auto = comparison.aarch64["auto_target"]
    assert auto["preset"] == "arm64", auto
    assert "aarch64" in auto["reason"]


def test_benchmark_machine_block_is_marked_emulated(comparison: Comparison) -> None:
    """What `smallnets bench` records inside the emulator: an aarch64 machine, flagged as emulated."""
    machine = comparison.aarch64["benchmark_machine"]
    assert machine["emulated"] is True
    assert machine["cpu"]["arch"] == "aarch64" and "aarch64" in machine["platform"]
    assert machine["libraries"]["onnxruntime"] == ort.__version__ and machine["libraries"]["torch"] is None


@pytest.mark.parametrize("name", ["xnnpack", "acl"])
def test_accelerated_providers_fall_back_to_cpu_with_a_note(comparison: Comparison, name: str) -> None:
    facts = comparison.aarch64
    fallback = facts["provider_fallback"][name]
    full = {"xnnpack": "XnnpackExecutionProvider", "acl": "ACLExecutionProvider"}[name]
    if full in facts["available_providers"]:
        assert fallback["providers"][0] == full and not fallback["notes"]
    else:
        assert fallback["providers"] == ["CPUExecutionProvider"]
        assert f"{full} is not available" in fallback["notes"][0] and "using CPU" in fallback["notes"][0]


def test_preprocessing_on_aarch64_matches_x86(comparison: Comparison) -> None:
    """core.images + core.preprocess with the aarch64 pillow/numpy wheels give the host's tensors."""
    assert comparison.aarch64["preprocess"]["max_abs_diff"] <= 1e-6


@pytest.mark.parametrize("name", [name for name, _ in MODELS])
def test_fp32_logits_match_x86(comparison: Comparison, name: str) -> None:
    row = _row(comparison, name, "fp32")
    assert row.images >= 1 and row.tolerance == FP32_RELATIVE_TOLERANCE
    assert row.max_relative_diff <= row.tolerance, row
    assert row.decisive_agreement == 1.0, row


@pytest.mark.parametrize("name", [name for name, _ in MODELS])
def test_int8_logits_within_the_cpu_pair_tolerance_and_top1_off_near_ties(comparison: Comparison, name: str) -> None:
    """The same int8 file on this host's CPU kind and on aarch64: within the pair's measured tolerance, and the
    same top-1 wherever fp32 is not a near tie (x86-avx2 and x86-vnni hosts round differently; see compare.py)."""
    row = _row(comparison, name, "int8")
    assert row.host == host_target() and row.tolerance == INT8_RELATIVE_TOLERANCE[(row.host, "arm64")]
    if dict(MODELS)[name] == "random":  # noise-dominated int8: unvalidated (random weights), reported only
        assert not row.judged and row.passed, row
        return
    assert row.judged and row.passed, row
    assert row.max_relative_diff <= row.tolerance, row
    assert row.decisive_images > 0 and row.decisive_agreement == 1.0, "judged on decisive photos, not by default"


def test_near_tie_flips_pass_and_decisive_flips_fail() -> None:
    """No emulator needed: the verdict rules of compare.py on hand-made logits."""
    fp32 = np.array([[4.0, 3.9, 0.0], [4.0, 1.0, 0.0]], dtype=np.float32)  # image 0 is a near tie, image 1 is not
    near_tie_flip = np.array([[3.9, 4.0, 0.0], [4.0, 1.0, 0.0]], dtype=np.float32)
    assert compare_across_cpus("m", "int8", fp32, near_tie_flip, fp32, "x86-vnni").passed
    decisive_flip = np.array([[4.0, 3.9, 0.0], [1.0, 4.0, 0.0]], dtype=np.float32)
    row = compare_across_cpus("m", "int8", fp32, decisive_flip, fp32, "x86-vnni")
    assert not row.passed and row.decisive_images == 1 and row.decisive_agreement == 0.0
    assert compare_across_cpus("m", "int8", fp32, decisive_flip, fp32, "x86-vnni", random_weights=True).passed
    with pytest.raises(ValueError, match="no measured int8 tolerance"):
        compare_across_cpus("m", "int8", fp32, fp32, fp32, "x86-unknown")


def test_int8_files_carry_the_arm64_preset(arm64_artifacts: dict[str, dict[str, Path]]) -> None:
    from smallnets.core.runtime import OnnxClassifier

    for name, files in arm64_artifacts.items():
        card = OnnxClassifier(files["int8"], threads=1).card
        assert card.precision == "int8" and card.quantization["name"] == "arm64", (name, card.quantization)
        assert card.quantization["signature"] == "S8S8"


def test_real_weights_classify_the_cat_on_aarch64(comparison: Comparison, photos: dict[str, Image.Image]) -> None:
    """EfficientNet-Lite0 with ImageNet weights: chelsea is a cat (ImageNet classes 281-285) on aarch64 too."""
    chelsea = list(photos).index("chelsea")
    for precision in PRECISIONS:
        assert 281 <= _row(comparison, "efficientnet_lite0", precision).aarch64_top1[chelsea] <= 285


def test_classify_cli_runs_on_aarch64_and_explains_the_provider_fallback(
    arm64: Arm64Environment,
    arm64_artifacts: dict[str, dict[str, Path]],
    photos: dict[str, Image.Image],
    tmp_path: Path,
) -> None:
    """`smallnets classify --providers xnnpack` on the aarch64 wheel: CPU provider, right answer, and a note."""
    photo = tmp_path / "chelsea.png"
    photos["chelsea"].save(photo)
    model = arm64_artifacts["efficientnet_lite0"]["int8"]
    command = ["-m", "smallnets", "classify", str(model), str(photo), "--providers", "xnnpack", "--top-k", "3"]
    completed = arm64.run([*command, "--threads", "1"], capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    assert "CPUExecutionProvider" in completed.stdout and "cat" in completed.stdout
    assert "XnnpackExecutionProvider is not available" in completed.stderr
