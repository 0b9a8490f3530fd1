"""The Open Inference Protocol's wire codec, free of any server: requests in, validated; logits out, encoded.

Pure functions over bytes, dicts and numpy arrays (tests call them directly); the REST routes (serve/oip.py) and
the gRPC front-end (serve/grpc_server.py) share the validation and the outputs. Every refusal is a
``RequestRejected`` (HTTP 4xx; gRPC maps it to a status code) whose message names the fix.

Inputs: ONE input, either ``images`` (``BYTES [N]``: encoded JPEG/PNG/WebP photos, decoded and preprocessed by the
server like ``/classify``) or the model's own input (``FP32 [N,3,H,W]``, preprocessed). Outputs: the logits
(``FP32 [N,classes]``), Triton's classification extension (``"classification": k`` on the logits: ``BYTES [N,k]``
strings ``"<logit>:<class id>:<label>"``), or with the request parameter ``top_k`` the outputs ``top_k_class_ids``
(``INT64``), ``top_k_labels`` (``BYTES``) and ``top_k_scores`` (``FP32`` softmax probabilities), each ``[N,k]``.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from smallnets.core.runtime import softmax, top_k
from smallnets.serve.engine import ModelInfo
from smallnets.serve.forms import ImageUpload, RequestRejected
from smallnets.serve.settings import DEFAULT_TOP_K, MAX_TOP_K

SERVER_NAME = "smallnets"
EXTENSIONS = ("binary_tensor_data", "classification")
IMAGES_INPUT = "images"
TOP_K_OUTPUTS = ("top_k_class_ids", "top_k_labels", "top_k_scores")
HEADER_LENGTH = "Inference-Header-Content-Length"
TOO_LARGE_HINT = (
    "send fewer images, or raise SMALLNETS_MAX_UPLOAD_MB when serving; FP32 tensors are 4 bytes per value, send "
    "them binary, not as JSON"
)
_LENGTH_PREFIX = struct.Struct("<I")


@dataclass
class Tensor:
    """One named output tensor, with how it is to be sent (JSON ``data`` or binary after the JSON)."""

    name: str
    datatype: str  # FP32 | INT64 | BYTES
    array: np.ndarray
    binary: bool = False


@dataclass(frozen=True)
class InferRequest:
    """A validated inference request: its one input (photos or a preprocessed tensor) and what to answer."""

    request_id: Any
    uploads: list[ImageUpload] | None
    tensor: np.ndarray | None
    outputs: list[tuple[str, dict[str, Any]]]  # (name, parameters) in request order
    top_k: int
    binary_output: bool  # request-level ``binary_data_output``


# Triton's platform names for what runs the model.
PLATFORMS = {"onnxruntime": "onnxruntime_onnx", "openvino": "openvino"}


def model_metadata_body(info: ModelInfo) -> dict[str, Any]:
    """The protocol's model metadata (REST and gRPC say the same)."""
    return {
        "name": info.name,
        "versions": list(info.versions),
        "platform": PLATFORMS[info.metadata["runtime"]],
        "inputs": [
            {"name": IMAGES_INPUT, "datatype": "BYTES", "shape": [-1]},
            {"name": info.input_name, "datatype": "FP32", "shape": [-1, *info.row_shape]},
        ],
        "outputs": [{"name": info.output_name, "datatype": "FP32", "shape": [-1, info.num_classes]}],
    }


def parse_rest(info: ModelInfo, max_images: int, body: bytes, header_length: str | None) -> InferRequest:
    """A REST inference request (JSON, optionally followed by binary tensor data), validated whole."""
    payload, binary = split_body(body, header_length)
    parameters = request_parameters(payload.get("parameters"))
    k = top_k_value(parameters.get("top_k"), "parameter 'top_k'")
    outputs = requested_outputs(payload.get("outputs"), info.output_name, k)
    inputs = payload.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise one_input_error(info)
    spec = inputs[0]
    name, datatype = spec.get("name"), spec.get("datatype")
    shape = input_shape(spec.get("shape"), name)
    raw = _binary_part(spec, binary)
    values = None if raw is not None else list(_flatten(spec.get("data")))
    if name == IMAGES_INPUT and datatype == "BYTES" and values is not None:
        values = _base64_elements(values, math.prod(shape), name)
    uploads, tensor = decode_input(info, max_images, name, datatype, shape, raw, values)
    return InferRequest(
        payload.get("id"), uploads, tensor, outputs, k or DEFAULT_TOP_K, bool(parameters.get("binary_data_output"))
    )


def request_parameters(parameters: Any) -> dict[str, Any]:
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise RequestRejected(400, "'parameters' must be a JSON object")
    return parameters


def one_input_error(info: ModelInfo) -> RequestRejected:
    return RequestRejected(
        400,
        f"'inputs' must list exactly one input: {IMAGES_INPUT!r} (BYTES, encoded photos) or {info.input_name!r} "
        "(FP32 [N,3,H,W], preprocessed)",
    )


def split_body(body: bytes, header_length: str | None) -> tuple[dict[str, Any], bytes]:
    """The inference request JSON and the binary tensor data after it (binary tensor data extension)."""
    if header_length is None:
        json_part, binary = body, b""
    else:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise RequestRejected(
                400, f"{HEADER_LENGTH}: {header_length!r} is not a length within the {len(body)}-byte body"
            )
        json_part, binary = body[: int(header_length)], body[int(header_length) :]
    try:
        payload = json.loads(json_part)
    except (UnicodeDecodeError, ValueError) as error:
        hint = "" if header_length else f" (binary tensor data needs the {HEADER_LENGTH} header)"
        raise RequestRejected(400, f"the inference request is not valid JSON: {error}{hint}") from error
    if not isinstance(payload, dict):
        raise RequestRejected(400, "the inference request must be a JSON object with an 'inputs' list")
    return payload, binary


def top_k_value(value: Any, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_TOP_K:
        raise RequestRejected(400, f"{what} must be an integer from 1 to {MAX_TOP_K}, got {value!r}")
    return value


def requested_outputs(listed: Any, logits_name: str, k: int | None) -> list[tuple[str, dict[str, Any]]]:
    """(name, parameters) of each output to return: the listed ones, else the logits (+ top-k ones with top_k)."""
    if listed is None:
        names = [logits_name, *(TOP_K_OUTPUTS if k else ())]
        return [(name, {}) for name in names]
    if not isinstance(listed, list) or not listed:
        raise RequestRejected(400, "'outputs' must be a non-empty list of {\"name\": ...} objects when given")
    known = (logits_name, *TOP_K_OUTPUTS)
    wanted = []
    for item in listed:
        name = item.get("name") if isinstance(item, dict) else None
        if name not in known:
            raise RequestRejected(400, f"unknown output {name!r}: this model has {list(known)}")
        parameters = item.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise RequestRejected(400, f"output {name!r}: 'parameters' must be a JSON object")
        if "classification" in parameters and name != logits_name:
            raise RequestRejected(400, f"classification applies to {logits_name!r} only, not {name!r}")
        top_k_value(parameters.get("classification"), f"output {name!r} parameter 'classification'")
        wanted.append((name, parameters))
    return wanted


def decode_input(
    info: ModelInfo,
    max_images: int,
    name: Any,
    datatype: Any,
    shape: list[int],
    raw: bytes | None,
    values: list[Any] | None,
) -> tuple[list[ImageUpload] | None, np.ndarray | None]:
    """The one input: encoded photos (``BYTES``; ``values`` are their bytes) or a preprocessed ``FP32`` tensor;
    its data either ``raw`` (little-endian bytes, BYTES elements length-prefixed) or ``values``."""
    if name == IMAGES_INPUT:
        _expect(datatype, "BYTES", name)
        count = math.prod(shape)
        if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
            raise RequestRejected(400, f"input {name!r} must have shape [N] (or [N,1]), got {shape}")
        _check_count(count, max_images)
        elements = bytes_elements(raw, count, name) if raw is not None else _checked_elements(values, count, name)
        return [ImageUpload(f"{name}[{index}]", data) for index, data in enumerate(elements)], None
    if name == info.input_name:
        _expect(datatype, "FP32", name)
        if len(shape) != 4 or shape[1:] != list(info.row_shape):
            raise RequestRejected(400, f"input {name!r} must have shape [N,3,{info.crop},{info.crop}], got {shape}")
        _check_count(shape[0], max_images)
        return None, _fp32_tensor(raw, values, shape, name)
    raise RequestRejected(
        400,
        f"unknown input {name!r}: send {IMAGES_INPUT!r} (BYTES, encoded JPEG/PNG/WebP photos) or "
        f"{info.input_name!r} (FP32 [N,3,{info.crop},{info.crop}], preprocessed)",
    )


def _expect(datatype: Any, expected: str, name: str) -> None:
    if datatype != expected:
        raise RequestRejected(400, f"input {name!r} must have datatype {expected}, got {datatype!r}")


def input_shape(shape: Any, name: Any) -> list[int]:
    if not isinstance(shape, list) or not shape or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise RequestRejected(400, f"input {name!r}: 'shape' must be a list of non-negative integers, got {shape!r}")
    return shape


def _check_count(count: int, max_images: int) -> None:
    if not 1 <= count <= max_images:
        raise RequestRejected(400, f"batch of {count} images: send from 1 to {max_images} per request")


def _binary_part(spec: dict[str, Any], binary: bytes) -> bytes | None:
    """The input's bytes after the JSON when it uses the binary extension, None when its data is in JSON."""
    size = (spec.get("parameters") or {}).get("binary_data_size")
    if size is None:
        return None
    if isinstance(size, bool) or not isinstance(size, int) or size != len(binary):
        raise RequestRejected(
            400, f"binary_data_size {size!r} does not match the {len(binary)} bytes after the JSON header"
        )
    return binary


def bytes_elements(raw: bytes, count: int, name: str) -> list[bytes]:
    """BYTES tensor data in the binary format: each element is a 4-byte little-endian length, then the bytes."""
    elements, offset = [], 0
    while offset + 4 <= len(raw):
        (length,) = _LENGTH_PREFIX.unpack_from(raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise RequestRejected(400, f"input {name!r}: element {len(elements)} runs past the end of the data")
        elements.append(raw[offset : offset + length])
        offset += length
    if offset != len(raw) or len(elements) != count:
        raise RequestRejected(
            400, f"input {name!r}: the binary data holds {len(elements)} elements, the shape says {count}"
        )
    return elements


def _checked_elements(values: list[Any] | None, count: int, name: str) -> list[bytes]:
    elements = values or []
    if len(elements) != count or not all(isinstance(item, bytes) for item in elements):
        raise RequestRejected(400, f"input {name!r}: {count} photos expected (one per element), got {len(elements)}")
    return elements


def _base64_elements(data: list[Any], count: int, name: str) -> list[bytes]:
    if len(data) != count or not all(isinstance(item, str) for item in data):
        raise RequestRejected(
            400, f"input {name!r}: 'data' must hold {count} base64 strings (one per photo), got {len(data)} items"
        )
    elements = []
    for index, item in enumerate(data):
        try:
            elements.append(base64.b64decode(item, validate=True))
        except (binascii.Error, ValueError) as error:
            raise RequestRejected(
                400,
                f"input {name!r} element {index} is not base64 ({error}): in JSON, BYTES photos are base64 "
                "strings; or send them raw with the binary tensor data extension",
            ) from error
    return elements


def _fp32_tensor(raw: bytes | None, values: list[Any] | None, shape: list[int], name: str) -> np.ndarray:
    size = math.prod(shape)
    if raw is not None:
        if len(raw) != size * 4:
            raise RequestRejected(400, f"input {name!r}: {len(raw)} bytes of FP32 data, shape {shape} needs {size * 4}")
        batch = np.frombuffer(raw, dtype="<f4").reshape(shape).astype(np.float32)
    else:
        data = values or []
        if len(data) != size:
            raise RequestRejected(400, f"input {name!r}: 'data' holds {len(data)} numbers, shape {shape} needs {size}")
        try:
            batch = np.asarray(data, dtype=np.float32).reshape(shape)
        except (TypeError, ValueError) as error:
            raise RequestRejected(400, f"input {name!r}: 'data' must hold numbers only ({error})") from error
    if not np.isfinite(batch).all():
        raise RequestRejected(400, f"input {name!r} holds NaN or infinite values")
    return batch


def _flatten(data: Any) -> Iterator[Any]:
    """Row-major elements of ``data``, which the protocol allows flat or nested."""
    if isinstance(data, list):
        for item in data:
            yield from _flatten(item)
    elif data is not None:
        yield data


def output_tensors(info: ModelInfo, parsed: InferRequest, logits: np.ndarray) -> list[Tensor]:
    """The requested outputs computed from the request's logits, each marked binary as asked."""
    tensors = []
    for name, parameters in parsed.outputs:
        tensor = output_tensor(info, name, parameters, logits, parsed.top_k)
        tensor.binary = bool(parameters.get("binary_data", parsed.binary_output))
        tensors.append(tensor)
    return tensors


def output_tensor(info: ModelInfo, name: str, parameters: dict[str, Any], logits: np.ndarray, k: int) -> Tensor:
    """One requested output computed from the batch's logits."""
    labels = info.labels
    classification = parameters.get("classification")
    if name == info.output_name and classification:
        rows = [
            [f"{logit:.6g}:{index}:{labels[index]}" for index, logit in _highest(row, classification)] for row in logits
        ]
        return Tensor(name, "BYTES", np.array(rows, dtype=object))
    if name == info.output_name:
        return Tensor(name, "FP32", logits)
    predictions = [top_k(row, k, labels) for row in softmax(logits)]
    if name == "top_k_class_ids":
        return Tensor(name, "INT64", np.array([[p.class_id for p in row] for row in predictions], dtype=np.int64))
    if name == "top_k_labels":
        return Tensor(name, "BYTES", np.array([[p.label for p in row] for row in predictions], dtype=object))
    return Tensor(name, "FP32", np.array([[p.score for p in row] for row in predictions], dtype=np.float32))


def _highest(row: np.ndarray, count: int) -> list[tuple[int, float]]:
    order = np.argsort(-row, kind="stable")[:count]
    return [(int(index), float(row[index])) for index in order]


def encode_rest(response: dict[str, Any], outputs: Sequence[Tensor]) -> tuple[bytes, dict[str, str]]:
    """The response JSON, followed by the binary outputs (with their lengths in the header) if any; and the
    headers that say how to split it (none when all is JSON)."""
    buffers = []
    for tensor in outputs:
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.array.shape)}
        if tensor.binary:
            raw = tensor_bytes(tensor)
            entry["parameters"] = {"binary_data_size": len(raw)}
            buffers.append(raw)
        else:
            entry["data"] = tensor.array.reshape(-1).tolist()
        response["outputs"].append(entry)
    header = json.dumps(response).encode()
    if not buffers:
        return header, {}
    return b"".join([header, *buffers]), {HEADER_LENGTH: str(len(header))}


def tensor_bytes(tensor: Tensor) -> bytes:
    """A tensor in the protocol's binary form: little-endian numbers, or length-prefixed BYTES elements."""
    if tensor.datatype == "BYTES":
        parts = []
        for item in tensor.array.reshape(-1):
            encoded = item.encode() if isinstance(item, str) else bytes(item)
            parts += [_LENGTH_PREFIX.pack(len(encoded)), encoded]
        return b"".join(parts)
    dtype = "<f4" if tensor.datatype == "FP32" else "<i8"
    return tensor.array.astype(dtype).tobytes()
