"""optimize/float_ops.py: what an int8 file still computes in float, read from onnxruntime's own profile.

A tiny MobileNet V1 (width 0.25, 128 px: depthwise + pointwise convolutions) is quantized three ways: not at all,
all-int8, and with its depthwise convolutions kept float; the listing must tell them apart and count MACs that
add up to the registry's figure.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.numpy_helper
import pytest

from smallnets.core.metadata import card_of
from smallnets.core.targets import INT8_BLOCK_REWRITES, TARGETS
from smallnets.export.registry import get_spec
from smallnets.optimize.calibration import ImageCalibrationReader, demo_calibration_set
from smallnets.optimize.float_ops import float_ops
from smallnets.optimize.fuse import fuse
from smallnets.optimize.groups import find_groups
from smallnets.optimize.quantize import prepare_for_quantization, quantize_model
from smallnets.optimize.simplify import simplify

SHAPE = (1, 3, 128, 128)
VARIANT = {"width": 0.25, "resolution": 128}


@pytest.fixture(scope="module")
def built(exported: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """fp32, all-int8 and depthwise-float files of one tiny model, plus the depthwise node names."""
    folder = tmp_path_factory.mktemp("float-ops")
    fused, _ = fuse(simplify(exported("mobilenet_v1", **VARIANT)))
    fp32 = folder / "fp32.onnx"
    onnx.save(fused, str(fp32))
    prepared = folder / "prepared.onnx"
    prepare_for_quantization(fused, prepared)
    reader = ImageCalibrationReader(demo_calibration_set(4).images, card_of(fused).preprocessing, "input")
    # Without channel padding, whose zero channels add MACs the registry does not count (test_channel_padding).
    options = dataclasses.replace(TARGETS["x86-vnni"].quant, rewrites=INT8_BLOCK_REWRITES)
    quantize_model(prepared, folder / "all-int8.onnx", options, None, folder / "cache.json", reader)
    depthwise = find_groups(onnx.load(str(prepared)))["depthwise"].nodes
    quantize_model(prepared, folder / "dw-float.onnx", options, None, folder / "cache.json", None, depthwise)
    return {"fp32": fp32, "all-int8": folder / "all-int8.onnx", "dw-float": folder / "dw-float.onnx", "dw": depthwise}


def registry_macs() -> int:
    reference = next(ref for ref in get_spec("mobilenet_v1").references if dict(ref.variant) == {"width": 0.25})
    assert reference.macs is not None
    return reference.macs * 128 * 128 // (224 * 224)  # the registry's figure is at 224 px


def test_fp32_is_all_float_and_its_macs_match_the_registry(built: dict[str, Any]) -> None:
    listing = float_ops(built["fp32"], SHAPE, {})
    total = listing["macs"]["int8"] + listing["macs"]["float"]
    assert listing["int8_mac_share"] == 0.0 and not listing["uncounted_kernels"]
    assert total == pytest.approx(registry_macs(), rel=0.05)
    assert {row["op"] for row in listing["float_ops"]} >= {"Conv"}
    assert all(row["by"].startswith("onnxruntime") for row in listing["float_ops"]), "nothing was kept by a recipe"


def test_all_int8_runs_every_mac_in_int8(built: dict[str, Any]) -> None:
    listing = float_ops(built["all-int8"], SHAPE, {})
    assert listing["int8_mac_share"] == 1.0 and listing["macs"]["float"] == 0, listing
    assert listing["macs"]["int8"] == float_ops(built["fp32"], SHAPE, {})["macs"]["float"], "same MACs, other type"


def test_a_group_kept_float_is_named_with_its_share(built: dict[str, Any]) -> None:
    listing = float_ops(built["dw-float"], SHAPE, {"depthwise": built["dw"]})
    by_recipe = {row["op"]: row for row in listing["float_ops"] if row["by"] == "recipe (kept float: depthwise)"}
    convs = [row for op, row in by_recipe.items() if "Conv" in op]
    assert convs and sum(row["count"] for row in convs) == 13, "MobileNet V1's 13 depthwise convolutions"
    assert sum(row["macs"] for row in convs) == listing["macs"]["float"] > 0, "the float MACs are the depthwise ones"
    total = listing["macs"]["int8"] + listing["macs"]["float"]
    assert total == float_ops(built["fp32"], SHAPE, {})["macs"]["float"]
    assert 0.5 < listing["int8_mac_share"] < 1.0, "depthwise convs are a small share of MobileNet's MACs"


def test_an_int8_op_whose_first_input_is_a_float_scale_is_int8(tmp_path: Path) -> None:
    """QLinearConcat(y_scale, y_zero_point, x1, x1_scale, ...): it once counted as float, by its first input."""
    scale, zero = onnx.numpy_helper.from_array(np.float32(0.1), "s"), onnx.numpy_helper.from_array(np.uint8(128), "z")
    nodes = [
        onnx.helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
        onnx.helper.make_node(
            "QLinearConcat", ["s", "z", "q", "s", "z", "q", "s", "z"], ["c"], domain="com.microsoft", axis=1
        ),
        onnx.helper.make_node("DequantizeLinear", ["c", "s", "z"], ["y"]),
    ]
    graph = onnx.helper.make_graph(
        nodes,
        "concat",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 2, 4, 4])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        [scale, zero],
    )
    opsets = [onnx.helper.make_opsetid("", 17), onnx.helper.make_opsetid("com.microsoft", 1)]
    onnx.save(onnx.helper.make_model(graph, opset_imports=opsets), str(tmp_path / "concat.onnx"))
    listing = float_ops(tmp_path / "concat.onnx", (1, 2, 4, 4), {})
    assert listing["float_ops"] == [], listing["float_ops"]
