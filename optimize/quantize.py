"""Static int8 quantization with onnxruntime.quantization, as one of a target's `QuantOptions` says.

Options name the data types, reduce_range, per-channel weights (depthwise included), QDQ or QOperator and the
calibration method. Calibration runs once per method (all tensors) and is cached as JSON beside ``cache``, so
the recipe search can try many "what stays float" variants for the cost of the quantizer alone. The options'
``rewrites`` (optimize/int8_blocks.py) keep squeeze-excite pools and HardSigmoid gates in int8 around ORT's quantizer.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_static,
)
from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

from smallnets.core.targets import CALIBRATION_METHODS, QuantOptions
from smallnets.optimize.bias_correction import correct_biases
from smallnets.optimize.equalization import equalize
from smallnets.optimize.groups import name_nodes
from smallnets.optimize.int8_blocks import apply_after_quantization, apply_before_quantization
from smallnets.optimize.modelio import check_model, copy_metadata, save_model

_TYPES = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
_FORMATS = {"qdq": QuantFormat.QDQ, "qoperator": QuantFormat.QOperator}


def calibration_method(name: str) -> CalibrationMethod:
    if name not in CALIBRATION_METHODS:
        raise ValueError(f"unknown calibration method {name!r}; choose one of: {', '.join(CALIBRATION_METHODS)}")
    return CalibrationMethod[CALIBRATION_METHODS[name]]


def prepare_for_quantization(model: onnx.ModelProto, output: Path) -> onnx.ModelProto:
    """ORT's quantization pre-processing (symbolic + ONNX shape inference), with named nodes and metadata kept.

    Graph optimization is skipped: the model is already fused at the portable level by ``optimize.fuse``.
    """
    with tempfile.TemporaryDirectory(prefix="smallnets-prep-") as folder:
        source = Path(folder) / "in.onnx"
        onnx.save(model, str(source))
        quant_pre_process(str(source), str(output), skip_optimization=True)
        prepared = onnx.load(str(output))
    copy_metadata(model, prepared)
    name_nodes(prepared)
    save_model(prepared, output)
    return prepared


def calibration_cache(cache: Path, method: str, equalized: bool = False) -> Path:
    """The cache file of one calibration method: ranges from min-max and from percentiles differ, and so do the
    ranges of an equalized model (the tensors between each equalized conv pair are rescaled per channel)."""
    parts = [part for part, wanted in ((method, method != "minmax"), ("equalized", equalized)) if wanted]
    return cache.with_name(".".join([cache.stem, *parts]) + cache.suffix)


def quantize_model(
    prepared: Path,
    output: Path,
    options: QuantOptions,
    calibration: str | None,
    cache: Path,
    reader: CalibrationDataReader | None = None,
    exclude_nodes: Iterable[str] = (),
) -> onnx.ModelProto:
    """Quantize ``prepared`` (see :func:`prepare_for_quantization`) to ``output``; ``exclude_nodes`` stay float.

    ``calibration`` overrides the options' method when given. The first call per method needs ``reader`` and
    fills its cache (see :func:`calibration_cache`); later calls reuse the cached tensor ranges.
    """
    excluded = set(exclude_nodes)
    method = calibration or options.calibration
    cache = calibration_cache(cache, method, options.equalization)
    if not cache.exists() and reader is None:
        kind = f"{method}{' (equalized)' if options.equalization else ''}"
        raise ValueError(f"the first quantization with {kind} calibration needs calibration data")
    extra_options: dict[str, object] = {"WeightSymmetric": True}
    if method == "percentile":
        extra_options["CalibPercentile"] = options.percentile
    if method == "mean-minmax":  # one picture per calibration batch: the mean over pictures
        extra_options["CalibMovingAverage"] = True
    if options.float_outputs:  # pass-through ops (MaxPool) then quantize a float input instead of staying float
        extra_options["OpTypesToExcludeOutputQuantization"] = list(options.float_outputs)
        extra_options["ForceQuantizeNoInputCheck"] = True
    with tempfile.TemporaryDirectory(prefix="smallnets-rewrite-") as folder:
        source = equalized_copy(prepared, Path(folder)) if options.equalization else prepared
        rewritten = onnx.load(str(source))
        if apply_before_quantization(rewritten, options.rewrites):
            source = Path(folder) / "rewritten.onnx"
            onnx.save(rewritten, str(source))
        _quantize_static(source, output, options, method, cache, reader, excluded, extra_options)
        pictures = bias_pictures(cache, reader)  # kept on the first call, when the calibration cache is filled
        quantized = shield_float_nodes(onnx.load(str(output)), excluded)
        if options.bias_correction:
            correct_biases(source, quantized, pictures(), skip=excluded)  # as quantized: padded, equalized
    apply_after_quantization(quantized, options.rewrites, excluded, reference=rewritten)
    copy_metadata(onnx.load(str(prepared), load_external_data=False), quantized)
    check_model(quantized, "quantized model")
    save_model(quantized, output)
    return quantized


def equalized_copy(prepared: Path, folder: Path) -> Path:
    """``prepared`` with its conv pairs equalized (optimize/equalization.py), saved in ``folder``: the same function
    in fp32, with channel ranges one int8 scale per tensor covers better."""
    model = onnx.load(str(prepared))
    equalize(model)
    path = folder / "equalized.onnx"
    onnx.save(model, str(path))
    return path


BIAS_PICTURES = 32  # calibration pictures bias correction measures channel means on


def bias_pictures(cache: Path, reader: CalibrationDataReader | None) -> Callable[[], np.ndarray]:
    """Up to BIAS_PICTURES calibration inputs for bias correction: read from ``reader`` when given (and kept beside
    ``cache`` for the later calls, which get no reader), else loaded from that copy when asked for."""
    kept = cache.with_name(f"{cache.stem}.bias-pictures.npy")
    if reader is not None:
        if hasattr(reader, "rewind"):
            reader.rewind()
        batches: list[np.ndarray] = []
        while sum(len(batch) for batch in batches) < BIAS_PICTURES and (feed := reader.get_next()) is not None:
            batches.append(next(iter(feed.values())))
        if batches:
            np.save(kept, np.concatenate(batches)[:BIAS_PICTURES])

    def load() -> np.ndarray:
        if not kept.exists():
            raise ValueError(f"bias correction needs calibration data: no {kept.name} beside the calibration cache")
        return np.load(kept)

    return load


def _quantize_static(
    prepared: Path,
    output: Path,
    options: QuantOptions,
    method: str,
    cache: Path,
    reader: CalibrationDataReader | None,
    exclude_nodes: set[str],
    extra_options: dict[str, object],
) -> None:
    quiet = logging.getLogger()
    level = quiet.level
    quiet.setLevel(
        logging.ERROR
    )  # the quantizer warns about every un-quantizable op; the report says what stayed float
    try:
        quantize_static(
            str(prepared),
            str(output),
            calibration_data_reader=reader,
            quant_format=_FORMATS[options.quant_format],
            per_channel=options.per_channel,
            reduce_range=options.reduce_range,
            activation_type=_TYPES[options.activation_type],
            weight_type=_TYPES[options.weight_type],
            nodes_to_exclude=sorted(exclude_nodes),
            op_types_to_quantize=op_types_to_quantize(options),
            calibrate_method=calibration_method(method),
            calibration_cache_path=str(cache),
            extra_options=extra_options,
        )
    finally:
        quiet.setLevel(level)


def op_types_to_quantize(options: QuantOptions) -> list[str] | None:
    """The candidate's op types (None: the quantizer's own list), less those it leaves unquantized."""
    if not options.unquantized:
        return list(options.op_types) or None
    every = options.op_types or (*QLinearOpsRegistry, *QDQRegistry)
    return sorted(set(every) - set(options.unquantized))


def shield_float_nodes(model: onnx.ModelProto, float_nodes: set[str]) -> onnx.ModelProto:
    """Put a range-preserving Clip between a DequantizeLinear and a Conv/Gemm/MatMul we kept float.

    Why: ONNX Runtime's WeightBiasQuantization transformer (basic level, applied at every session load) turns
    a float Conv/Gemm whose input comes straight from DequantizeLinear into a QDQ unit with *per-tensor* int8
    weights, silently re-quantizing the node we kept float (a depthwise conv then loses most of its accuracy).
    The Clip spans the whole dequantized range, so it changes no value; it only breaks that pattern.
    """
    graph = model.graph
    producers = {output: node for node in graph.node for output in node.output}
    constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in list(graph.node):
        if node.name not in float_nodes or node.op_type not in ("Conv", "Gemm", "MatMul"):
            continue
        dequantize = producers.get(node.input[0])
        if dequantize is None or dequantize.op_type != "DequantizeLinear" or len(dequantize.input) < 3:
            continue
        scale, zero_point = constants.get(dequantize.input[1]), constants.get(dequantize.input[2])
        if scale is None or zero_point is None or scale.size != 1:
            continue
        info = np.iinfo(zero_point.dtype)
        low = float((info.min - int(zero_point)) * float(scale))
        high = float((info.max - int(zero_point)) * float(scale))
        bounds = [
            numpy_helper.from_array(np.array(value, dtype=np.float32), f"{node.name}_shield_{which}")
            for which, value in (("min", low), ("max", high))
        ]
        graph.initializer.extend(bounds)
        shielded = f"{node.input[0]}_shield_{node.name}"
        clip = onnx.helper.make_node(
            "Clip", [node.input[0], bounds[0].name, bounds[1].name], [shielded], name=f"{node.name}_shield"
        )
        graph.node.insert(list(graph.node).index(node), clip)
        node.input[0] = shielded
    return model
