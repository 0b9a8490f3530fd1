"""optimize/sensitivity.py: per-layer SQNR finds the layer whose output int8 (here: a damaged weight) spoils."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from smallnets.optimize.sensitivity import layer_errors, mean_cosine, report_entry, report_lines, sqnr_db, worst


def test_sqnr_and_cosine_of_known_errors() -> None:
    reference = np.ones((2, 10), np.float32)
    assert sqnr_db(reference, reference) == math.inf
    noisy = reference + np.sqrt(0.1)  # error power a tenth of the signal's
    assert sqnr_db(reference, noisy) == pytest.approx(10.0)
    assert mean_cosine(reference, -reference) == pytest.approx(-1.0)
    assert mean_cosine(np.zeros((1, 3)), np.zeros((1, 3))) == 1.0


def chain(path: Path, damage: float, fold: bool = False) -> Path:
    """Three 1x1 convs with ReLUs; ``damage`` perturbs the middle conv's weights only. ``fold`` drops the middle
    ReLU and has the conv write the ReLU's tensor name, as ORT's quantizer does (its Q then clips): the tensor of
    that name holds pre-activation values, so layers must be matched by node name, not tensor name."""
    rng = np.random.default_rng(0)
    nodes, weights, source = [], [], "x"
    for index in range(3):
        weight = rng.standard_normal((8, 8, 1, 1)).astype(np.float32) / 3
        if index == 1:
            weight += damage * rng.standard_normal(weight.shape).astype(np.float32)
        weights.append(numpy_helper.from_array(weight, f"w{index}"))
        if index == 1 and fold:
            nodes.append(helper.make_node("Conv", [source, f"w{index}"], [f"r{index}"], name=f"conv{index}"))
        else:
            nodes.append(helper.make_node("Conv", [source, f"w{index}"], [f"c{index}"], name=f"conv{index}"))
            nodes.append(helper.make_node("Relu", [f"c{index}"], [f"r{index}"], name=f"relu{index}"))
        source = f"r{index}"
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 4, 4])],
        [helper.make_tensor_value_info(source, TensorProto.FLOAT, None)],
        weights,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_the_damaged_layer_is_where_the_signal_drops(tmp_path: Path) -> None:
    reference, damaged = chain(tmp_path / "fp32.onnx", 0.0), chain(tmp_path / "int8.onnx", 0.5)
    inputs = np.random.default_rng(1).standard_normal((3, 8, 4, 4)).astype(np.float32)
    errors = layer_errors(reference, damaged, inputs)
    assert [error.node for error in errors] == ["conv0", "conv1", "conv2"]
    assert [error.output for error in errors] == ["c0", "c1", "c2"]  # fp32's names
    assert errors[0].sqnr_db == math.inf and errors[0].cosine == pytest.approx(1.0)
    assert errors[1].sqnr_db < 15 and errors[1].drop_db == math.inf  # from exact to noisy: all of it lost here
    assert errors[0].to_dict()["sqnr_db"] is None  # JSON has no infinity
    assert worst(errors, 1)[0].node == "conv1"
    entry = report_entry(errors, "damaged", len(inputs), "probe photos")
    assert entry["final_sqnr_db"] == errors[-1].sqnr_db and len(entry["layers"]) == 3
    json.dumps(entry, allow_nan=False)
    text = "\n".join(report_lines(entry))
    assert "| conv1 | Conv |" in text and "3 probe photos" in text


def test_a_folded_activation_is_compared_before_it(tmp_path: Path) -> None:
    """The int8 conv that writes its folded ReLU's tensor name is compared with fp32's conv output, not its ReLU's."""
    reference, folded = chain(tmp_path / "fp32.onnx", 0.0), chain(tmp_path / "int8.onnx", 0.0, fold=True)
    inputs = np.random.default_rng(1).standard_normal((3, 8, 4, 4)).astype(np.float32)
    errors = layer_errors(reference, folded, inputs)
    assert errors[1].node == "conv1" and errors[1].sqnr_db == math.inf  # same weights: exact before the ReLU
