"""`--runtime openvino`: the same smallnets file run by OpenVINO instead of onnxruntime, family by family."""

from __future__ import annotations

import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static
from registry_choices import FAMILIES, FAMILY_IDS

from smallnets.core.loading import load_classifier
from smallnets.core.openvino_runtime import OpenVinoSession, RuntimeUnavailableError, UnreadableModelError
from smallnets.core.runtime import OnnxClassifier
from smallnets.core.targets import UnknownRuntimeError
from smallnets.serve.bento import bentofile_for

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("family", FAMILY_IDS)
def test_every_family_computes_the_same_logits_on_openvino(family: str, exported: Callable[..., Path]) -> None:
    """Float parts stay f32 on OpenVINO (it would pick bf16 on CPUs with BF16 units, ~1e-2 off), at batch 1 (its
    static compile) and batch 5 (the dynamic one); the card comes through OpenVINO's reading of the file."""
    name, variant = FAMILIES[family]
    path = exported(name, **variant)
    reference, candidate = OnnxClassifier(path, threads=1), OnnxClassifier(path, threads=1, runtime="openvino")
    assert candidate.card == reference.card and candidate.providers[0].startswith("openvino-")
    size = reference.card.preprocessing.crop
    for batch in (1, 5):
        data = np.random.default_rng(batch).standard_normal((batch, 3, size, size), dtype=np.float32)
        expected, actual = reference.run(data), candidate.run(data)
        assert actual.shape == expected.shape == (batch, reference.card.num_classes)
        np.testing.assert_allclose(actual, expected, rtol=1e-3, atol=1e-4 * max(1.0, float(np.abs(expected).max())))


def test_batches_of_each_size_keep_their_rows(exported: Callable[..., Path]) -> None:
    """A batch-1 run (static compile) and the same row inside a larger batch (dynamic compile) give one answer;
    the output is a copy, not a view a later run overwrites."""
    path = exported("squeezenet1_1")
    classifier = OnnxClassifier(path, threads=1, runtime="openvino")
    data = np.random.default_rng(0).standard_normal((3, 3, 224, 224), dtype=np.float32)
    alone = classifier.run(data[:1])
    together = classifier.run(data)
    np.testing.assert_allclose(together[:1], alone, rtol=1e-4, atol=1e-5)
    assert not np.allclose(classifier.run(data[1:2]), alone), "a later run must not change an earlier answer"
    with ThreadPoolExecutor(4) as pool:  # requests come from a pool: no two threads share one
        answers = list(pool.map(classifier.run, [data[index : index + 1] for index in (0, 1, 2) * 4]))
    for index, answer in zip((0, 1, 2) * 4, answers, strict=True):
        np.testing.assert_allclose(answer, together[index : index + 1], rtol=1e-4, atol=1e-5)


def test_an_unknown_runtime_names_the_choices(exported: Callable[..., Path]) -> None:
    with pytest.raises(UnknownRuntimeError, match="onnxruntime, openvino"):
        OnnxClassifier(exported("squeezenet1_1"), runtime="tvm")


def test_without_openvino_installed_the_error_names_the_extra(
    exported: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # what `import openvino` meets where it is not installed
    with pytest.raises(RuntimeUnavailableError, match=r"smallnets\[openvino\]"):
        load_classifier(exported("squeezenet1_1"), runtime="openvino")


class _Pictures(CalibrationDataReader):
    def __init__(self, size: int) -> None:
        rng = np.random.default_rng(1)
        self.feeds = iter([{"input": rng.standard_normal((1, 3, size, size)).astype(np.float32)} for _ in range(4)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.feeds, None)


def test_a_qdq_int8_file_runs_on_openvino_with_onnxruntimes_integers(tmp_path: Path) -> None:
    """OpenVINO turns our QDQ pairs into FakeQuantize and computes the same integers, give or take a rounding step
    of the output's scale: what `--runtime openvino` serves is the file optimize validated."""
    weights = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 3, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w"], ["y"], pads=[1, 1, 1, 1])],
        "conv",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [weights],
    )
    source, int8 = tmp_path / "float.onnx", tmp_path / "int8.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(source))
    quantize_static(str(source), str(int8), _Pictures(16), quant_format=QuantFormat.QDQ, per_channel=True)
    batch = np.random.default_rng(2).standard_normal((1, 3, 16, 16)).astype(np.float32)
    ours = ort.InferenceSession(str(int8), providers=["CPUExecutionProvider"]).run(None, {"input": batch})[0]
    theirs = OpenVinoSession(int8, threads=1).run(batch)
    step = float(np.abs(ours).max()) / 127  # about one output quantization step
    assert np.abs(theirs - ours).max() <= 2 * step, "the same integers, give or take a rounding step"
    assert np.abs(theirs - ours).max() < 0.1 * np.abs(ours).std()


def test_a_qoperator_int8_file_is_refused_naming_its_ops(tmp_path: Path) -> None:
    """onnxruntime's QOperator form has com.microsoft ops (QLinearGlobalAveragePool) OpenVINO cannot read: one
    error naming them and the runtime that can, not OpenVINO's page-long conversion log."""
    weights = numpy_helper.from_array(np.random.default_rng(0).standard_normal((3, 3, 1, 1)).astype(np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["input", "w"], ["conv"]),
            helper.make_node("GlobalAveragePool", ["conv"], ["logits"]),
        ],
        "pooled",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3, 1, 1])],
        [weights],
    )
    source, int8 = tmp_path / "float.onnx", tmp_path / "int8.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(source))
    quantize_static(str(source), str(int8), _Pictures(8), quant_format=QuantFormat.QOperator)
    assert any(node.op_type == "QLinearGlobalAveragePool" for node in onnx.load(str(int8)).graph.node)
    with pytest.raises(UnreadableModelError, match="QLinearGlobalAveragePool") as refused:
        OnnxClassifier(int8, runtime="openvino")
    assert "--runtime onnxruntime" in str(refused.value) and "\n" not in str(refused.value)


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_a_bento_carries_openvino_only_when_it_runs_it(runtime: str) -> None:
    config = bentofile_for("m:tag", "linux/amd64", ROOT / "bentofile.yaml", runtime)
    packages = [requirement.split("==")[0] for requirement in config["python"]["packages"]]
    assert ("openvino" in packages) == (runtime == "openvino") and "onnxruntime" in packages
    assert {"name": "SMALLNETS_RUNTIME", "value": runtime} in config["envs"]
    assert config["labels"]["runtime"] == runtime
