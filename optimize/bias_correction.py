"""Empirical per-channel bias correction of a QDQ int8 model on calibration pictures (NNCF's fast bias correction).

Rounding weights to int8 shifts each output channel's mean by E[W_q x] - E[W x], a systematic error that depthwise
convolutions (9 weights per channel) feel most, and that ReLU-like activations downstream turn into lost signal.
Layer by layer in graph order, the int8 model (with the corrections made so far) and the fp32 model run on the same
pictures; each conv/GEMM's per-channel output mean is moved onto fp32's by adding the difference to its int32 bias.
Going in order means a layer is corrected for the error it still sees after its inputs were corrected.
"""

from __future__ import annotations

import tempfile
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from smallnets.optimize.groups import COMPUTE_OPS


@dataclass(frozen=True)
class BiasCorrection:
    """One layer's correction: the largest per-channel shift applied, relative to its output's spread."""

    node: str
    channels: int
    max_shift: float
    relative_shift: float  # max |shift| / std of the fp32 output


@dataclass(frozen=True)
class _Layer:
    node: onnx.NodeProto
    bias: onnx.TensorProto  # the int32 initializer behind the bias DequantizeLinear
    scale: np.ndarray  # the bias's dequantization scale (per channel or one)
    channel_axis: int


def _correctable(model: onnx.ModelProto, skip: Collection[str]) -> list[_Layer]:
    """Quantized Conv/Gemm nodes (in graph order) whose bias comes from an int32 DequantizeLinear."""
    producers = {output: node for node in model.graph.node for output in node.output}
    initializers = {init.name: init for init in model.graph.initializer}
    layers = []
    for node in model.graph.node:
        if node.op_type not in COMPUTE_OPS or node.name in skip or len(node.input) < 3:
            continue
        dequantize = producers.get(node.input[2])
        if dequantize is None or dequantize.op_type != "DequantizeLinear":
            continue
        bias, scale = initializers.get(dequantize.input[0]), initializers.get(dequantize.input[1])
        if bias is None or scale is None or bias.data_type != onnx.TensorProto.INT32:
            continue
        layers.append(_Layer(node, bias, numpy_helper.to_array(scale), 1 if node.op_type == "Conv" else -1))
    return layers


def _session(
    model: onnx.ModelProto, outputs: list[str], folder: Path, fed: Collection[str] = ()
) -> ort.InferenceSession:
    """A session that also outputs ``outputs`` and takes the initializers named in ``fed`` as inputs."""
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    present = {output.name for output in exposed.graph.output}
    exposed.graph.output.extend(onnx.ValueInfoProto(name=name) for name in outputs if name not in present)
    for init in [init for init in exposed.graph.initializer if init.name in fed]:
        exposed.graph.input.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
        exposed.graph.initializer.remove(init)
    path = folder / "exposed.onnx"
    onnx.save(exposed, str(path))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC  # keep the named tensors
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _channel_means(
    session: ort.InferenceSession,
    names: list[str],
    inputs: np.ndarray,
    axes: list[int],
    feeds: dict[str, np.ndarray] | None = None,
) -> list[tuple[np.ndarray, float]]:
    """Per tensor of ``names``: per-channel means over images and space, and the overall standard deviation.

    All pictures in one run where the batch axis is free, else one per run (fixed-batch models); ``feeds`` are
    further inputs (the biases being corrected).
    """
    feed, batch = session.get_inputs()[0].name, session.get_inputs()[0].shape[0]
    step = len(inputs) if not isinstance(batch, int) or batch <= 0 else 1
    sums = [0.0] * len(names)
    squares = [0.0] * len(names)
    counts = [0] * len(names)
    channel_sums: list[np.ndarray | float] = [0.0] * len(names)
    for index in range(0, len(inputs), step):
        for k, value in enumerate(session.run(names, {feed: inputs[index : index + step], **(feeds or {})})):
            flat = np.moveaxis(value.astype(np.float64), axes[k], 0).reshape(value.shape[axes[k]], -1)
            channel_sums[k] = channel_sums[k] + flat.mean(axis=1) * value.shape[0]  # images in this run
            sums[k] += float(flat.sum())
            squares[k] += float((flat**2).sum())
            counts[k] += flat.size
    results = []
    for k in range(len(names)):
        mean = sums[k] / counts[k]
        results.append(
            (np.asarray(channel_sums[k]) / len(inputs), float(np.sqrt(max(squares[k] / counts[k] - mean**2, 0.0))))
        )
    return results


def correct_biases(
    fp32: Path, int8: onnx.ModelProto, inputs: np.ndarray, skip: Collection[str] = ()
) -> tuple[onnx.ModelProto, list[BiasCorrection]]:
    """Correct every quantized conv/GEMM bias of ``int8`` (a QDQ model quantized from ``fp32``) in place.

    ``inputs`` are preprocessed calibration pictures (N, C, H, W); layers named in ``skip`` are left alone. The fp32
    model must have the same layer output names (ORT's quantizer keeps them). Returns the model and what moved.
    """
    if len(inputs) == 0:
        raise ValueError("bias correction needs at least one calibration picture")
    reference = onnx.load(str(fp32), load_external_data=False)
    # The same layer by node name; its fp32 output is pre-activation even where the quantizer folded a ReLU into the
    # int8 conv and gave the conv the ReLU's output name.
    fp32_layer = {node.name: node.output[0] for node in reference.graph.node if node.op_type in COMPUTE_OPS}
    layers = [layer for layer in _correctable(int8, skip) if layer.node.name in fp32_layer]
    corrections: list[BiasCorrection] = []
    if not layers:
        return int8, corrections
    with tempfile.TemporaryDirectory(prefix="smallnets-bias-") as folder:
        axes = [layer.channel_axis for layer in layers]
        references = [fp32_layer[layer.node.name] for layer in layers]
        targets = _channel_means(_session(reference, references, Path(folder)), references, inputs, axes)
        # One session with the biases as inputs: each layer is measured with every correction made so far.
        biases = {layer.bias.name: numpy_helper.to_array(layer.bias) for layer in layers}
        session = _session(int8, [layer.node.output[0] for layer in layers], Path(folder), biases)
        info = np.iinfo(np.int32)
        for layer, (target, spread) in zip(layers, targets, strict=True):
            name = layer.node.output[0]
            current, _ = _channel_means(session, [name], inputs, [layer.channel_axis], biases)[0]
            shift = target - current
            steps = np.round(shift / np.broadcast_to(layer.scale, shift.shape)).astype(np.int64)
            updated = np.clip(biases[layer.bias.name].astype(np.int64) + steps, info.min, info.max)
            biases[layer.bias.name] = updated.astype(np.int32)
            largest = float(np.abs(shift).max())
            corrections.append(BiasCorrection(layer.node.name, len(shift), largest, largest / (spread or 1.0)))
    for layer in layers:
        layer.bias.CopyFrom(numpy_helper.from_array(biases[layer.bias.name], layer.bias.name))
    return int8, corrections
