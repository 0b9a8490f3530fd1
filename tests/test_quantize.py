"""optimize/quantize.py with a target's QuantOptions: formats, ranges, per-channel depthwise, calibration caches."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from registry_choices import FAMILIES

from smallnets.core.metadata import card_of
from smallnets.core.targets import OPENVINO_PLACEMENT, TARGETS, QuantOptions
from smallnets.optimize.calibration import ImageCalibrationReader, demo_calibration_set
from smallnets.optimize.fuse import fuse, op_counts
from smallnets.optimize.quantize import calibration_cache, prepare_for_quantization, quantize_model
from smallnets.optimize.simplify import simplify


@pytest.fixture(scope="module")
def prepared(exported: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(fused fp32, prepared) of the cheapest MobileNet V1: depthwise + pointwise convolutions."""
    folder = tmp_path_factory.mktemp("quantize")
    fused, _ = fuse(simplify(exported("mobilenet_v1", width=0.25, resolution=128)))
    fp32 = folder / "fp32.onnx"
    onnx.save(fused, str(fp32))
    prepare_for_quantization(fused, folder / "prepared.onnx")
    return fp32, folder / "prepared.onnx"


def quantize(prepared: Path, folder: Path, options: QuantOptions) -> onnx.ModelProto:
    card = card_of(onnx.load(str(prepared)))
    reader = ImageCalibrationReader(demo_calibration_set(4).images, card.preprocessing, "input")
    return quantize_model(prepared, folder / f"{options.name}.onnx", options, None, folder / "cache.json", reader)


def initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}


def test_depthwise_weights_get_one_scale_per_channel(prepared: tuple[Path, Path], tmp_path: Path) -> None:
    model = quantize(prepared[1], tmp_path, TARGETS["x86-vnni"].quant)
    inits = initializers(model)
    producers = {output: node for node in model.graph.node for output in node.output}
    depthwise = [
        node
        for node in model.graph.node
        if node.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in node.attribute)
    ]
    assert depthwise, "MobileNet V1 has depthwise convolutions"
    for node in depthwise:
        weight_dq = producers[node.input[1]]
        assert weight_dq.op_type == "DequantizeLinear"
        channels = inits[weight_dq.input[0]].shape[0]
        assert inits[weight_dq.input[1]].shape == (channels,), node.name  # per-channel, not per-tensor


def test_qoperator_emits_qlinear_kernels_and_qdq_does_not(prepared: tuple[Path, Path], tmp_path: Path) -> None:
    qoperator = op_counts(quantize(prepared[1], tmp_path, QuantOptions("qop", quant_format="qoperator")))
    qdq = op_counts(quantize(prepared[1], tmp_path, QuantOptions("qdq")))
    assert qoperator.get("QLinearConv", 0) > 0 and qdq.get("QLinearConv", 0) == 0
    assert qdq.get("DequantizeLinear", 0) > qoperator.get("DequantizeLinear", 0)


def test_reduce_range_keeps_weights_to_seven_bits(prepared: tuple[Path, Path], tmp_path: Path) -> None:
    for options in (QuantOptions("full"), QuantOptions("rr", reduce_range=True)):
        inits = initializers(quantize(prepared[1], tmp_path, options))
        peak = max(int(np.abs(value.astype(np.int32)).max()) for value in inits.values() if value.dtype == np.int8)
        assert (peak <= 64) == options.reduce_range, (options.name, peak)


def test_calibration_methods_keep_separate_caches(prepared: tuple[Path, Path], tmp_path: Path) -> None:
    cache = tmp_path / "cache.json"
    assert calibration_cache(cache, "minmax") == cache
    assert calibration_cache(cache, "percentile") == tmp_path / "cache.percentile.json"
    with pytest.raises(ValueError, match="percentile calibration needs calibration data"):
        quantize_model(prepared[1], tmp_path / "x.onnx", QuantOptions("p", calibration="percentile"), None, cache)


def test_mean_minmax_ranges_lie_within_the_extremes(prepared: tuple[Path, Path], tmp_path: Path) -> None:
    """mean-minmax averages each picture's extremes (NNCF's default): never wider than min-max, narrower somewhere."""

    def activation_scales(method: str) -> dict[str, float]:
        model = quantize(prepared[1], tmp_path / method, QuantOptions(method, calibration=method))
        inits = initializers(model)
        return {
            node.input[1]: float(inits[node.input[1]])
            for node in model.graph.node
            if node.op_type == "QuantizeLinear" and inits[node.input[1]].size == 1
        }

    extremes, means = activation_scales("minmax"), activation_scales("mean-minmax")
    assert extremes.keys() == means.keys() and extremes
    assert all(means[name] <= extremes[name] * (1 + 1e-6) for name in extremes)
    assert any(means[name] < extremes[name] * 0.99 for name in extremes), "the option did not take effect"


def test_openvino_placement_keeps_shuffles_whole_and_pools_int8(exported: Callable[..., Path], tmp_path: Path) -> None:
    """x86-openvino's placement on ShuffleNet V2: no Q/DQ inside a Reshape-Transpose-Reshape channel shuffle (OpenVINO
    then sees ShuffleChannels), and the MaxPool after the stem's float Relu quantizes its input (int8 pooling)."""
    prepared = tmp_path / "prepared.onnx"
    name, variant = FAMILIES["shufflenet_v2"]
    prepare_for_quantization(simplify(exported(name, **variant)), prepared)
    model = quantize(prepared, tmp_path, QuantOptions("openvino", rewrites=(), **OPENVINO_PLACEMENT))
    producers = {output: node.op_type for node in model.graph.node for output in node.output}
    transposes = [node for node in model.graph.node if node.op_type == "Transpose"]
    assert transposes and {producers[node.input[0]] for node in transposes} == {"Reshape"}
    pools = [node for node in model.graph.node if node.op_type == "MaxPool"]
    assert pools and {producers[node.input[0]] for node in pools} == {"DequantizeLinear"}
