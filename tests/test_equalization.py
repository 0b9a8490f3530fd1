"""optimize/equalization.py: cross-layer equalization keeps the function, balances channel ranges, refuses what it
cannot rescale exactly, and helps per-tensor int8 through quantize_model."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from smallnets.core.metadata import Preprocessing, card_of
from smallnets.core.preprocess import preprocess
from smallnets.core.targets import TARGETS, QuantOptions
from smallnets.optimize.calibration import ImageCalibrationReader, demo_calibration_set
from smallnets.optimize.equalization import (
    balancing_scale,
    equalization_pairs,
    equalize,
    input_channel_ranges,
    output_channel_ranges,
    scale_input_channels,
)
from smallnets.optimize.fuse import fuse
from smallnets.optimize.quantize import calibration_cache, prepare_for_quantization, quantize_model
from smallnets.optimize.sensitivity import sqnr_db
from smallnets.optimize.simplify import simplify

# (name, input channels, output channels, kernel, group) of each conv; "relu"/"clip" between two convs.
Layer = tuple[str, int, int, int, int] | str


def unbalanced_weight(rng: np.random.Generator, out: int, per_group: int, kernel: int) -> np.ndarray:
    """Random weights with a few output channels 100x and a few 0.01x the rest (what folded BatchNorm can leave)."""
    weight = rng.standard_normal((out, per_group, kernel, kernel)).astype(np.float32)
    weight[: out // 4] *= 100.0
    weight[-(out // 4) :] *= 0.01
    return weight[rng.permutation(out)]


def chain(layers: list[Layer], seed: int = 0, size: int = 8, balanced: bool = False) -> onnx.ModelProto:
    """x -> the convs and activations of ``layers`` in a row -> y (convs padded to keep the size, with biases);
    weights as :func:`unbalanced_weight` makes them unless ``balanced`` (then plain Gaussian ones)."""
    rng = np.random.default_rng(seed)
    nodes, inits, tensor = [], [], "x"
    first = next(layer for layer in layers if isinstance(layer, tuple))
    for index, layer in enumerate(layers):
        output = f"t{index}"
        if layer == "relu":
            nodes.append(helper.make_node("Relu", [tensor], [output], name=f"relu{index}"))
        elif layer == "clip":
            inits += [numpy_helper.from_array(np.array(v, np.float32), f"c{index}_{v}") for v in (0, 6)]
            bounds = [f"c{index}_0", f"c{index}_6"]
            nodes.append(helper.make_node("Clip", [tensor, *bounds], [output], name=f"clip{index}"))
        else:
            name, channels, out, kernel, group = layer
            inits += [
                numpy_helper.from_array(
                    rng.standard_normal((out, channels // group, kernel, kernel)).astype(np.float32)
                    if balanced
                    else unbalanced_weight(rng, out, channels // group, kernel),
                    f"{name}.w",
                ),
                numpy_helper.from_array(rng.standard_normal(out).astype(np.float32), f"{name}.b"),
            ]
            pads = [kernel // 2] * 4
            conv_inputs = [tensor, f"{name}.w", f"{name}.b"]
            nodes.append(helper.make_node("Conv", conv_inputs, [output], name=name, group=group, pads=pads))
        tensor = output
    nodes[-1].output[0] = "y"
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", first[1], size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def run(model: onnx.ModelProto, inputs: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: inputs})[0]


def same_function(a: onnx.ModelProto, b: onnx.ModelProto, channels: int) -> bool:
    """Equal outputs (1e-4 of the output's peak) on random inputs."""
    inputs = np.random.default_rng(7).standard_normal((4, channels, 8, 8)).astype(np.float32)
    reference, candidate = run(a, inputs), run(b, inputs)
    return float(np.abs(reference - candidate).max()) <= 1e-4 * float(np.abs(reference).max())


def weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}


def spread(values: np.ndarray) -> float:
    return float(values.max() / values.min())


CHAINS = {
    "conv-relu-conv": [("a", 4, 8, 3, 1), "relu", ("b", 8, 6, 3, 1)],
    "conv-depthwise-conv": [("a", 4, 8, 1, 1), ("dw", 8, 8, 3, 8), "relu", ("c", 8, 6, 1, 1)],
    "conv-grouped-conv": [("a", 4, 8, 1, 1), "relu", ("g", 8, 6, 3, 2)],
    "depthwise-multiplier-conv": [("a", 4, 4, 1, 1), ("dw", 4, 8, 3, 4), ("c", 8, 6, 1, 1)],
}


@pytest.mark.parametrize("layers", CHAINS.values(), ids=CHAINS.keys())
def test_equalization_keeps_the_function_and_balances_the_ranges(layers: list[Layer]) -> None:
    original = chain(layers)
    model = onnx.ModelProto()
    model.CopyFrom(original)
    result = equalize(model)
    convs = [layer for layer in layers if isinstance(layer, tuple)]
    assert [pair.producer for pair in result.pairs] == [conv[0] for conv in convs[:-1]]
    assert same_function(original, model, convs[0][1])
    assert result.range_ratio_after < result.range_ratio_before / 10, result
    before, after = weights(original), weights(model)
    for name, *_ in convs[:-1]:  # every producer's output channels end up within a few x of each other
        assert spread(output_channel_ranges(after[f"{name}.w"])) < spread(output_channel_ranges(before[f"{name}.w"]))
    assert np.array_equal(before[f"{convs[-1][0]}.b"], after[f"{convs[-1][0]}.b"])  # the last bias stays


def test_a_single_pair_ends_with_equal_ranges_on_both_sides() -> None:
    """One pass already gives channel c of A and input channel c of B the range sqrt(r1_c r2_c)."""
    model = chain(CHAINS["conv-relu-conv"])
    before = weights(model)
    equalize(model, passes=1)
    after = weights(model)
    expected = np.sqrt(output_channel_ranges(before["a.w"]) * input_channel_ranges(before["b.w"], 1))
    np.testing.assert_allclose(output_channel_ranges(after["a.w"]), expected, rtol=1e-5)
    np.testing.assert_allclose(input_channel_ranges(after["b.w"], 1), expected, rtol=1e-5)


def fork(blocker: str | None) -> onnx.ModelProto:
    """a -> Relu -> b (8 -> 8 channels), with what may stop equalizing it: a Clip(0, 6) instead of the Relu, the Relu's
    output also added to b's (residual), b sharing a's weight, or the Relu's output also a graph output."""
    model = chain([("a", 8, 8, 3, 1), "clip" if blocker == "clip" else "relu", ("b", 8, 8, 3, 1)])
    graph = model.graph
    if blocker == "residual":
        graph.node[-1].output[0] = "b_out"
        graph.node.append(helper.make_node("Add", ["b_out", "t1"], ["y"], name="residual"))
    if blocker == "shared":
        graph.node[-1].input[1] = "a.w"
        graph.initializer.remove(next(init for init in graph.initializer if init.name == "b.w"))
    if blocker == "output":
        graph.output.append(helper.make_tensor_value_info("t1", TensorProto.FLOAT, None))
    return model


@pytest.mark.parametrize("blocker", ["clip", "residual", "shared", "output"])
def test_each_refusal_stops_a_pair_that_is_equalized_without_it(blocker: str) -> None:
    free = fork(None)
    assert [pair.producer for pair in equalization_pairs(free)] == ["a"]  # the control: the refusal can fail
    blocked = fork(blocker)
    before = weights(blocked)
    result = equalize(blocked)
    assert result.pairs == () and result.passes == 0
    assert all(np.array_equal(before[name], value) for name, value in weights(blocked).items())


def rescaled(model: onnx.ModelProto, producer: str, consumer: str, scale: np.ndarray) -> onnx.ModelProto:
    """A copy with ``producer``'s output channels (and bias) / ``scale`` and ``consumer``'s input channels * it."""
    arrays = weights(model)
    scale = scale.astype(np.float32)
    arrays[f"{producer}.w"] = arrays[f"{producer}.w"] / scale[:, None, None, None]
    arrays[f"{producer}.b"] = arrays[f"{producer}.b"] / scale
    arrays[f"{consumer}.w"] = scale_input_channels(arrays[f"{consumer}.w"], 1, scale)
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for init in copy.graph.initializer:
        init.CopyFrom(numpy_helper.from_array(arrays[init.name], init.name))
    return copy


def forced(model: onnx.ModelProto, producer: str, consumer: str) -> onnx.ModelProto:
    """What equalizing across anything would do, whatever lies between the two convs."""
    arrays = weights(model)
    ranges = output_channel_ranges(arrays[f"{producer}.w"]), input_channel_ranges(arrays[f"{consumer}.w"], 1)
    return rescaled(model, producer, consumer, balancing_scale(*ranges))


def test_rescaling_across_a_clip_changes_the_outputs_and_across_a_relu_does_not() -> None:
    """The preservation check can fail: the same rescaling is exact through Relu and wrong through Clip(0, 6)."""
    relu, clip = fork(None), fork("clip")
    assert same_function(relu, forced(relu, "a", "b"), 8)
    assert not same_function(clip, forced(clip, "a", "b"), 8)


def test_several_convs_reading_one_relu_share_the_scale() -> None:
    """SqueezeNet's fire: squeeze -> Relu -> expand 1x1 and expand 3x3 -> Concat; s from the larger of their ranges."""
    model = chain([("squeeze", 4, 8, 1, 1), "relu", ("e1", 8, 6, 1, 1)])
    rng = np.random.default_rng(3)
    model.graph.initializer.extend(
        [
            numpy_helper.from_array(unbalanced_weight(rng, 6, 8, 3), "e3.w"),
            numpy_helper.from_array(rng.standard_normal(6).astype(np.float32), "e3.b"),
        ]
    )
    model.graph.node[-1].output[0] = "e1_out"
    model.graph.node.extend(
        [
            helper.make_node("Conv", ["t1", "e3.w", "e3.b"], ["e3_out"], name="e3", pads=[1, 1, 1, 1]),
            helper.make_node("Concat", ["e1_out", "e3_out"], ["y"], name="concat", axis=1),
        ]
    )
    original = onnx.ModelProto()
    original.CopyFrom(model)
    before = weights(model)
    result = equalize(model, passes=1)
    assert [(pair.producer, pair.activation, pair.consumers) for pair in result.pairs] == [
        ("squeeze", "relu1", ("e1", "e3"))
    ]
    assert same_function(original, model, 4)
    incoming = np.maximum(input_channel_ranges(before["e1.w"], 1), input_channel_ranges(before["e3.w"], 1))
    expected = np.sqrt(output_channel_ranges(before["squeeze.w"]) * incoming)
    np.testing.assert_allclose(output_channel_ranges(weights(model)["squeeze.w"]), expected, rtol=1e-5)


def classifier(path: Path) -> Path:
    """A small classifier whose convs pass the signal on through channels of very different weight ranges:
    conv -> Relu -> conv -> Relu -> 1x1 conv -> mean (logits), balanced, then each pair rescaled by 10^U(-2, 2) per
    channel (the same function; what folding BatchNorm can leave), so per-tensor int8 starves the small channels."""
    layers: list[Layer] = [("a", 3, 16, 3, 1), "relu", ("b", 16, 32, 3, 1), "relu", ("c", 32, 10, 1, 1)]
    model = chain(layers, seed=5, size=32, balanced=True)
    rng = np.random.default_rng(6)
    for producer, consumer, channels in (("a", "b", 16), ("b", "c", 32)):
        model = rescaled(model, producer, consumer, 10.0 ** rng.uniform(-2, 2, channels))
    model.graph.node[-1].output[0] = "c_out"
    model.graph.node.extend(
        [
            helper.make_node("GlobalAveragePool", ["c_out"], ["pooled"], name="pool"),
            helper.make_node("Flatten", ["pooled"], ["y"], name="flatten"),
        ]
    )
    onnx.save(model, str(path))
    return path


PICTURES = Preprocessing.for_resolution(32)


def logits_sqnr(fp32: Path, int8: onnx.ModelProto) -> float:
    inputs = preprocess(demo_calibration_set(16, seed=1).images, PICTURES)
    return sqnr_db(run(onnx.load(str(fp32)), inputs), run(int8, inputs))


def test_equalization_brings_per_tensor_int8_closer_to_fp32(tmp_path: Path) -> None:
    fp32 = classifier(tmp_path / "fp32.onnx")
    prepared = tmp_path / "prepared.onnx"
    prepare_for_quantization(onnx.load(str(fp32)), prepared)
    results = {}
    for equalization in (False, True):
        options = QuantOptions(f"eq{int(equalization)}", per_channel=False, equalization=equalization)
        reader = ImageCalibrationReader(demo_calibration_set(8).images, PICTURES, "x")
        int8 = quantize_model(prepared, tmp_path / f"{options.name}.onnx", options, None, tmp_path / "c.json", reader)
        results[equalization] = logits_sqnr(fp32, int8)
    assert results[True] > results[False] + 20.0, results  # 100x less noise power (measured: 0 -> 34 dB)


def test_the_quantizer_equalizes_when_the_options_say_so(exported: Callable[..., Path], tmp_path: Path) -> None:
    """quantize_model with equalization: its own calibration cache (the rescaled tensors have other ranges), and the
    int8 model loads and runs, with bias correction against the equalized fp32 model as well."""
    fused, _ = fuse(simplify(exported("squeezenet1_1")))
    prepared = tmp_path / "prepared.onnx"
    prepare_for_quantization(fused, prepared)
    pairs = equalization_pairs(onnx.load(str(prepared)))
    assert len(pairs) == 8 and all(len(pair.consumers) == 2 for pair in pairs)  # fire: squeeze -> Relu -> expands
    card = card_of(fused)
    cache = tmp_path / "c.json"

    def reader() -> ImageCalibrationReader:
        return ImageCalibrationReader(demo_calibration_set(6).images, card.preprocessing, "input")

    quantize_model(prepared, tmp_path / "plain.onnx", TARGETS["x86-vnni"].quant, None, cache, reader())
    options = QuantOptions("eq", equalization=True, bias_correction=True)
    with pytest.raises(ValueError, match=r"minmax \(equalized\) calibration needs calibration data"):
        quantize_model(prepared, tmp_path / "eq.onnx", options, None, cache, None)
    quantize_model(prepared, tmp_path / "eq.onnx", options, None, cache, reader())
    assert calibration_cache(cache, "minmax", equalized=True) == tmp_path / "c.equalized.json"
    assert (tmp_path / "c.equalized.json").exists()
    inputs = preprocess(demo_calibration_set(4, seed=2).images, card.preprocessing)
    logits = run(onnx.load(str(tmp_path / "eq.onnx")), inputs)
    reference = run(fused, inputs)
    assert logits.shape == reference.shape and np.isfinite(logits).all()
    cosine = np.sum(logits * reference, axis=1) / np.linalg.norm(logits, axis=1) / np.linalg.norm(reference, axis=1)
    assert cosine.min() > 0.95, cosine  # random weights; measured 0.992-0.9999 on these 4 crops
