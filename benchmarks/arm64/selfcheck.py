"""Before any emulated figure is trusted: known computations must give the same answers emulated and native.

QEMU 7.2 (Debian bookworm) mis-emulates some AVX2 instructions: under ``qemu-x86_64 -cpu Haswell`` numpy 2.4's
``argpartition`` returned a wrong top-2 for 9 of 300 random float32 arrays, while model logits were right, so a
wrong label was printed beside right logits. The check therefore runs a numpy top-k and a small int8 model,
natively and under each emulator this folder sets up (aarch64, and x86 as an AVX2-only Haswell), and compares.

    python benchmarks/arm64/selfcheck.py        host: build the probe, run it natively and emulated, compare
    selfcheck.py run DIR OUT.npz                what each side runs (numpy and onnxruntime only)

The probe model is built with onnx and onnxruntime's quantizer (host only). Its int8 weights are 7-bit
(reduce_range), so AVX2's u8s8 kernels cannot saturate and every CPU kind computes the same integers.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

ARRAYS, CLASSES, TOP = 300, 1000, 2
PROBE_BATCH, PROBE_SIZE = 8, 32
# Logits of the probe may differ by requantization rounding between kernels, never by more than this share of
# their range; the top-1 class must not differ at all.
LOGIT_TOLERANCE = 0.05


def run(folder: Path, output: Path) -> None:
    """The computations to compare: top-k of seeded arrays by argpartition, and the int8 probe's logits."""
    import onnxruntime as ort

    arrays = np.load(folder / "arrays.npy")
    top = np.argpartition(-arrays, TOP, axis=1)[:, :TOP]
    order = np.argsort(-np.take_along_axis(arrays, top, axis=1), axis=1, kind="stable")
    session = ort.InferenceSession(str(folder / "int8.onnx"), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"input": np.load(folder / "inputs.npy")})[0]
    np.savez(output, top=np.take_along_axis(top, order, axis=1), logits=logits)


def make_probe(folder: Path) -> None:
    """Seeded arrays, inputs and a small int8 conv net (QDQ, per-channel, 7-bit weights) in ``folder``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    rng = np.random.default_rng(20)
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "arrays.npy", rng.standard_normal((ARRAYS, CLASSES), dtype=np.float32))
    inputs = rng.standard_normal((PROBE_BATCH, 3, PROBE_SIZE, PROBE_SIZE), dtype=np.float32)
    np.save(folder / "inputs.npy", inputs)
    weights = {
        "w1": rng.standard_normal((16, 3, 3, 3)).astype(np.float32) * 0.3,
        "w2": rng.standard_normal((32, 16, 3, 3)).astype(np.float32) * 0.1,
        "fc": rng.standard_normal((32, 100)).astype(np.float32) * 0.3,
        "bias": rng.standard_normal(100).astype(np.float32) * 0.1,
    }
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["input", "w1"], ["c1"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c1"], ["r1"]),
            helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2]),
            helper.make_node("Relu", ["c2"], ["r2"]),
            helper.make_node("GlobalAveragePool", ["r2"], ["pool"]),
            helper.make_node("Flatten", ["pool"], ["flat"]),
            helper.make_node("Gemm", ["flat", "fc", "bias"], ["logits"]),
        ],
        "probe",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, PROBE_SIZE, PROBE_SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 100])],
        [numpy_helper.from_array(value, name) for name, value in weights.items()],
    )
    fp32 = folder / "fp32.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(fp32))

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"input": inputs[index : index + 1]} for index in range(PROBE_BATCH)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer's advice to pre-process, irrelevant for this probe
    try:
        quantize_static(
            str(fp32),
            str(folder / "int8.onnx"),
            Reader(),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            reduce_range=True,
        )
    finally:
        root.setLevel(level)


def differences(native: Path, emulated: Path) -> list[str]:
    """What the emulated run got wrong, in words (empty when it agrees)."""
    expected, got = np.load(native), np.load(emulated)
    problems = []
    wrong = int(np.sum(np.any(expected["top"] != got["top"], axis=1)))
    if wrong:
        problems.append(f"numpy argpartition top-{TOP} differs on {wrong} of {ARRAYS} arrays")
    if not np.array_equal(expected["logits"].argmax(axis=1), got["logits"].argmax(axis=1)):
        problems.append("the int8 probe's top-1 class differs")
    spread = float(np.abs(expected["logits"]).max()) or 1.0
    worst = float(np.abs(expected["logits"] - got["logits"]).max()) / spread
    if worst > LOGIT_TOLERANCE:
        problems.append(f"the int8 probe's logits differ by {worst:.1%} of their range")
    return problems


def emulators(cache: Path) -> dict[str, list[str]]:
    """The emulated interpreters to check, as argv prefixes that take a script and its arguments."""
    from smallnets.benchmarks.arm64.env import Arm64Environment

    commands = {"aarch64": Arm64Environment.load(cache).command([])}
    x86 = cache / "qemu" / "qemu-x86_64-static"
    if x86.is_file():
        commands["x86 -cpu Haswell (AVX2)"] = [str(x86), "-cpu", "Haswell", sys.executable]
    return commands


def check(cache: Path) -> list[str]:
    """Run the probe natively and under every emulator; one line per emulator that disagrees."""
    from smallnets.benchmarks.arm64.env import Arm64Environment

    folder = cache / "selfcheck"
    make_probe(folder)
    run(folder, folder / "native.npz")
    failures = []
    for name, command in emulators(cache).items():
        output = folder / f"{name.split()[0]}.npz"
        argv = [*command, str(Path(__file__).resolve()), "run", str(folder), str(output)]
        environ = Arm64Environment.load(cache).environ() if name == "aarch64" else dict(os.environ)
        result = subprocess.run(argv, env=environ, capture_output=True, text=True)
        if result.returncode != 0:
            failures.append(f"{name}: the probe did not run: {result.stderr.strip().splitlines()[-1:]}")
            continue
        failures += [f"{name}: {problem}" for problem in differences(folder / "native.npz", output)]
    return failures


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["run"]:
        run(Path(args[1]), Path(args[2]))
        return 0
    from smallnets.benchmarks.arm64.env import cache_dir

    failures = check(cache_dir())
    for failure in failures:
        print(f"arm64 self-check: {failure}: emulated results cannot be trusted", file=sys.stderr)
    if not failures:
        print("arm64 self-check: numpy top-k and int8 logits agree emulated and native")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
