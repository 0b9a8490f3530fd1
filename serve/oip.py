"""The Open Inference Protocol (KServe v2 / Triton HTTP REST) over the service's own request path.

Clients written for Triton or KServe (``tritonclient.http``, KServe's v2 client, curl) can use this server as is:

- ``GET /v2``, ``/v2/health/live``, ``/v2/health/ready``, ``/v2/models/{name}[/versions/{v}]`` and ``.../ready``;
- ``POST /v2/models/{name}[/versions/{v}]/infer`` with ONE input, either ``images`` (``BYTES [N]``: encoded
  JPEG/PNG/WebP photos, decoded and preprocessed by the server like ``/classify`` does) or the model's own input
  (``FP32 [N,3,H,W]``, already preprocessed). The answer is the logits output (``FP32 [N,classes]``).
- Tensor data in JSON (``data``; ``BYTES`` elements there are base64 strings, since JSON cannot hold raw bytes) or
  with the binary tensor data extension (``binary_data_size``, ``Inference-Header-Content-Length``), which is what
  ``tritonclient`` sends by default; outputs come back binary when asked (``binary_data``/``binary_data_output``).
- Top-k: Triton's classification extension (``"classification": k`` on the logits output: ``BYTES [N,k]`` strings
  ``"<logit>:<class id>:<label>"``), or the request parameter ``"top_k": k``, which adds the outputs
  ``top_k_class_ids`` (``INT64``), ``top_k_labels`` (``BYTES``) and ``top_k_scores`` (``FP32`` softmax
  probabilities), each ``[N,k]``, beside the logits.

Same limits, batching, deadline and overload answers as ``/classify``: inference requests go through the service's
``answer`` frame with ``logits_for_uploads``/``logits_for_tensor`` as the work. Every failure is
``{"error": "..."}`` with a 4xx/5xx status, as the protocol requires.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
import struct
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import bentoml
import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

import smallnets
from smallnets.core.runtime import softmax, top_k
from smallnets.serve.clock import RequestClock
from smallnets.serve.forms import ImageUpload, RequestRejected
from smallnets.serve.settings import DEFAULT_TOP_K, MAX_TOP_K

if TYPE_CHECKING:
    from smallnets.serve.service import ImageClassifier

LOGGER = logging.getLogger(__name__)
SERVER_NAME = "smallnets"
EXTENSIONS = ("binary_tensor_data", "classification")
IMAGES_INPUT = "images"
TOP_K_OUTPUTS = ("top_k_class_ids", "top_k_labels", "top_k_scores")
HEADER_LENGTH = "Inference-Header-Content-Length"
INFER_ROUTE = "/v2/models/{model}/infer"  # the route label of its requests in /metrics
_LENGTH_PREFIX = struct.Struct("<I")


@dataclass
class Tensor:
    """One named tensor of a response, with how it is to be sent (JSON ``data`` or binary after the JSON)."""

    name: str
    datatype: str  # FP32 | INT64 | BYTES
    array: np.ndarray
    binary: bool = False


def _service() -> ImageClassifier:
    return bentoml.get_current_service()


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _model_or_404(request: Request) -> ImageClassifier:
    """The service, if the path names its model (and, when given, its version); else the 404 to send."""
    service = _service()
    name = request.path_params["model"]
    version = request.path_params.get("version")
    if name != service.model_name:
        raise RequestRejected(404, f"unknown model {name!r}: this server serves {service.model_name!r}")
    if version is not None and version not in model_versions(service):
        raise RequestRejected(
            404, f"unknown version {version!r} of {name!r}: available {model_versions(service) or 'none'}"
        )
    return service


def model_versions(service: ImageClassifier) -> list[str]:
    """The model store version of the served model (its content hash), when it came from the store."""
    tag = service.metadata().get("model_tag")
    return [tag.partition(":")[2]] if tag else []


async def server_metadata(_: Request) -> JSONResponse:
    return JSONResponse({"name": SERVER_NAME, "version": smallnets.__version__, "extensions": list(EXTENSIONS)})


async def server_live(_: Request) -> JSONResponse:
    return JSONResponse({"live": True})


async def server_ready(_: Request) -> JSONResponse:
    ready = _service().__is_ready__()
    return JSONResponse({"ready": ready}, status_code=200 if ready else 400)


async def model_metadata(request: Request) -> JSONResponse:
    try:
        service = _model_or_404(request)
    except RequestRejected as rejected:
        return _error(rejected.status, rejected.message)
    card = service.classifier.card
    crop = card.preprocessing.crop
    return JSONResponse(
        {
            "name": service.model_name,
            "versions": model_versions(service),
            "platform": "onnxruntime_onnx",
            "inputs": [
                {"name": IMAGES_INPUT, "datatype": "BYTES", "shape": [-1]},
                {"name": card.input_name, "datatype": "FP32", "shape": [-1, 3, crop, crop]},
            ],
            "outputs": [{"name": card.output_name, "datatype": "FP32", "shape": [-1, card.num_classes]}],
            "parameters": {
                "one_input_of": [IMAGES_INPUT, card.input_name],
                "images": "encoded JPEG/PNG/WebP photos, preprocessed by the server as in /classify",
                "preprocessing": _preprocessing(service),
                "top_k_outputs": list(TOP_K_OUTPUTS),
                "max_top_k": MAX_TOP_K,
            },
        }
    )


async def model_ready(request: Request) -> JSONResponse:
    try:
        service = _model_or_404(request)
    except RequestRejected as rejected:
        return _error(rejected.status, rejected.message)
    ready = service.__is_ready__()
    return JSONResponse({"name": service.model_name, "ready": ready}, status_code=200 if ready else 400)


@dataclass(frozen=True)
class InferRequest:
    """A parsed inference request: its one input (photos or a preprocessed tensor) and what to answer."""

    request_id: Any
    uploads: list[ImageUpload] | None
    tensor: np.ndarray | None
    outputs: list[tuple[str, dict[str, Any]]]  # (name, parameters) in request order
    top_k: int
    binary_output: bool  # request-level ``binary_data_output``


async def infer(request: Request) -> Response:
    """``answer`` gives the same admission, deadline, disconnect handling, errors and metrics as /classify."""
    try:
        service = _model_or_404(request)
    except RequestRejected as rejected:
        return _error(rejected.status, rejected.message)
    ctx = service.bento_service.context  # the request's bentoml.Context (BentoML sets it for mounted apps too)

    async def read(http: Request) -> InferRequest:
        return await read_infer_request(service, http)

    async def compute(parsed: InferRequest, clock: RequestClock) -> Response:
        if parsed.uploads is not None:
            logits = await service.logits_for_uploads(parsed.uploads, clock)
        else:
            logits = await service.logits_for_tensor(parsed.tensor, clock)
        timing = {"inference_ms": round(clock.phases.get("inference", 0.0) * 1000.0, 3), "batch_size": clock.batch_size}
        return infer_response(service, parsed, logits.astype(np.float32, copy=False), timing)

    response = await service.answer(ctx, INFER_ROUTE, read, compute)
    response.headers.update(ctx.response.headers)  # Server-Timing, Retry-After: set on the context by ``answer``
    return response


async def read_infer_request(service: ImageClassifier, request: Request) -> InferRequest:
    """Read and validate the whole request before any work starts (every refusal is a 4xx naming the fix)."""
    body = await read_body(request, service.metadata()["max_upload_bytes"])
    payload, binary = split_body(body, request.headers.get(HEADER_LENGTH))
    parameters = payload.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise RequestRejected(400, "'parameters' must be a JSON object")
    k = _top_k_value(parameters.get("top_k"), "parameter 'top_k'")
    outputs = requested_outputs(payload, service.classifier.card.output_name, k)
    uploads, tensor = parse_input(service, payload, binary)
    return InferRequest(
        payload.get("id"), uploads, tensor, outputs, k or DEFAULT_TOP_K, bool(parameters.get("binary_data_output"))
    )


def infer_response(
    service: ImageClassifier, parsed: InferRequest, logits: np.ndarray, timing: dict[str, Any]
) -> Response:
    tensors = []
    for name, parameters in parsed.outputs:
        tensor = output_tensor(service, name, parameters, logits, parsed.top_k)
        tensor.binary = bool(parameters.get("binary_data", parsed.binary_output))
        tensors.append(tensor)
    response: dict[str, Any] = {
        "model_name": service.model_name,
        "model_version": (model_versions(service) or [""])[0],
        "parameters": timing,
        "outputs": [],
    }
    if parsed.request_id is not None:
        response["id"] = parsed.request_id
    return encode_response(response, tensors)


async def internal_error(request: Request, error: Exception) -> JSONResponse:
    """An unexpected failure still answers in the protocol's shape (the traceback goes to the log)."""
    LOGGER.exception("%s %s failed", request.method, request.url.path, exc_info=error)
    return _error(500, f"internal error: {type(error).__name__}: {error}")


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The whole request body, refused with 413 as soon as it passes ``max_bytes`` (compressed bodies: 415)."""
    encoding = request.headers.get("content-encoding", "identity").lower()
    if encoding != "identity":
        raise RequestRejected(415, f"Content-Encoding {encoding!r} is not accepted: send the request uncompressed")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(int(declared), max_bytes)
    chunks, received = [], 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > max_bytes:
            raise _too_large(received, max_bytes)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(size: int, max_bytes: int) -> RequestRejected:
    return RequestRejected(
        413,
        f"request too large: {size} bytes exceeds the limit of {max_bytes} bytes (send fewer images, or raise "
        "SMALLNETS_MAX_UPLOAD_MB when serving; FP32 tensors are 4 bytes per value, send them binary, not as JSON)",
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


def _top_k_value(value: Any, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_TOP_K:
        raise RequestRejected(400, f"{what} must be an integer from 1 to {MAX_TOP_K}, got {value!r}")
    return value


def requested_outputs(payload: dict[str, Any], logits_name: str, k: int | None) -> list[tuple[str, dict[str, Any]]]:
    """(name, parameters) of each output to return: the listed ones, else the logits (+ top-k ones with top_k)."""
    listed = payload.get("outputs")
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
        _top_k_value(parameters.get("classification"), f"output {name!r} parameter 'classification'")
        wanted.append((name, parameters))
    return wanted


def parse_input(
    service: ImageClassifier, payload: dict[str, Any], binary: bytes
) -> tuple[list[ImageUpload] | None, np.ndarray | None]:
    """The one input of the request: encoded photos (BYTES) or a preprocessed FP32 tensor."""
    inputs = payload.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise RequestRejected(
            400,
            f"'inputs' must list exactly one input: {IMAGES_INPUT!r} (BYTES, encoded photos) or "
            f"{service.classifier.card.input_name!r} (FP32 [N,3,H,W], preprocessed)",
        )
    spec = inputs[0]
    name, datatype = spec.get("name"), spec.get("datatype")
    shape = _shape(spec.get("shape"), name)
    raw = _binary_part(spec, binary)
    card = service.classifier.card
    max_images = service.metadata()["max_batch_images"]
    if name == IMAGES_INPUT:
        _expect(datatype, "BYTES", name)
        count = math.prod(shape)
        if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
            raise RequestRejected(400, f"input {name!r} must have shape [N] (or [N,1]), got {shape}")
        _check_count(count, max_images)
        elements = _bytes_elements(raw, count, name) if raw is not None else _base64_elements(spec, count, name)
        return [ImageUpload(f"{name}[{index}]", data) for index, data in enumerate(elements)], None
    if name == card.input_name:
        _expect(datatype, "FP32", name)
        crop = card.preprocessing.crop
        if len(shape) != 4 or shape[1:] != [3, crop, crop]:
            raise RequestRejected(400, f"input {name!r} must have shape [N,3,{crop},{crop}], got {shape}")
        _check_count(shape[0], max_images)
        return None, _fp32_tensor(spec, raw, shape, name)
    raise RequestRejected(
        400,
        f"unknown input {name!r}: send {IMAGES_INPUT!r} (BYTES, encoded JPEG/PNG/WebP photos) or "
        f"{card.input_name!r} (FP32 [N,3,{card.preprocessing.crop},{card.preprocessing.crop}], preprocessed)",
    )


def _expect(datatype: Any, expected: str, name: str) -> None:
    if datatype != expected:
        raise RequestRejected(400, f"input {name!r} must have datatype {expected}, got {datatype!r}")


def _shape(shape: Any, name: Any) -> list[int]:
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


def _bytes_elements(raw: bytes, count: int, name: str) -> list[bytes]:
    """BYTES tensor data in the binary format: each element is a 4-byte little-endian length, then the bytes."""
    elements, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            break
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


def _base64_elements(spec: dict[str, Any], count: int, name: str) -> list[bytes]:
    data = list(_flatten(spec.get("data")))
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


def _fp32_tensor(spec: dict[str, Any], raw: bytes | None, shape: list[int], name: str) -> np.ndarray:
    size = math.prod(shape)
    if raw is not None:
        if len(raw) != size * 4:
            raise RequestRejected(400, f"input {name!r}: {len(raw)} bytes of FP32 data, shape {shape} needs {size * 4}")
        batch = np.frombuffer(raw, dtype="<f4").reshape(shape).astype(np.float32)
    else:
        data = list(_flatten(spec.get("data")))
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


def output_tensor(
    service: ImageClassifier, name: str, parameters: dict[str, Any], logits: np.ndarray, k: int
) -> Tensor:
    """One requested output computed from the batch's logits."""
    card = service.classifier.card
    labels = card.labels
    classification = parameters.get("classification")
    if name == card.output_name and classification:
        rows = [
            [f"{logit:.6g}:{index}:{labels[index]}" for index, logit in _highest(row, classification)] for row in logits
        ]
        return Tensor(name, "BYTES", np.array(rows, dtype=object))
    if name == card.output_name:
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


def encode_response(response: dict[str, Any], outputs: Sequence[Tensor]) -> Response:
    """The response JSON, followed by the binary outputs (with their lengths in the header) if any."""
    buffers = []
    for tensor in outputs:
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.array.shape)}
        if tensor.binary:
            raw = _to_binary(tensor)
            entry["parameters"] = {"binary_data_size": len(raw)}
            buffers.append(raw)
        else:
            entry["data"] = tensor.array.reshape(-1).tolist()
        response["outputs"].append(entry)
    header = json.dumps(response).encode()
    if not buffers:
        return Response(header, media_type="application/json")
    return Response(
        b"".join([header, *buffers]),
        media_type="application/octet-stream",
        headers={HEADER_LENGTH: str(len(header))},
    )


def _to_binary(tensor: Tensor) -> bytes:
    if tensor.datatype == "BYTES":
        parts = []
        for item in tensor.array.reshape(-1):
            encoded = item.encode() if isinstance(item, str) else bytes(item)
            parts += [_LENGTH_PREFIX.pack(len(encoded)), encoded]
        return b"".join(parts)
    dtype = "<f4" if tensor.datatype == "FP32" else "<i8"
    return tensor.array.astype(dtype).tobytes()


def _preprocessing(service: ImageClassifier) -> dict[str, Any]:
    return asdict(service.classifier.card.preprocessing)


_MODEL = "/v2/models/{model}"
_VERSION = "/v2/models/{model}/versions/{version}"
oip_app = Starlette(
    routes=[
        Route("/v2", server_metadata, methods=["GET"]),
        Route("/v2/health/live", server_live, methods=["GET"]),
        Route("/v2/health/ready", server_ready, methods=["GET"]),
        *(Route(prefix, model_metadata, methods=["GET"]) for prefix in (_MODEL, _VERSION)),
        *(Route(f"{prefix}/ready", model_ready, methods=["GET"]) for prefix in (_MODEL, _VERSION)),
        *(Route(f"{prefix}/infer", infer, methods=["POST"]) for prefix in (_MODEL, _VERSION)),
    ],
    exception_handlers={Exception: internal_error},
)


def _doc(method: str, summary: str, body: dict[str, Any] | None = None, path: tuple[str, ...] = ()) -> dict[str, Any]:
    """One OpenAPI path item of the protocol (its answers and errors are JSON; errors are {"error": ...})."""
    operation: dict[str, Any] = {
        "tags": ["Open Inference Protocol"],
        "summary": summary,
        "responses": {
            "200": {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}},
            "4XX": {"description": "refused", "content": {"application/json": {"schema": _ERROR_SCHEMA}}},
        },
    }
    if path:
        operation["parameters"] = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}} for name in path
        ]
    if body is not None:
        operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    return {method: operation}


_ERROR_SCHEMA = {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}
_INFER_REQUEST = {
    "type": "object",
    "required": ["inputs"],
    "properties": {
        "id": {"type": "string"},
        "parameters": {
            "type": "object",
            "properties": {
                "top_k": {"type": "integer", "minimum": 1, "maximum": MAX_TOP_K},
                "binary_data_output": {"type": "boolean"},
            },
        },
        "inputs": {
            "type": "array",
            "minItems": 1,
            "maxItems": 1,
            "items": {
                "type": "object",
                "required": ["name", "shape", "datatype"],
                "properties": {
                    "name": {"type": "string", "description": f"{IMAGES_INPUT!r} (BYTES) or the model's input (FP32)"},
                    "shape": {"type": "array", "items": {"type": "integer"}},
                    "datatype": {"type": "string", "enum": ["BYTES", "FP32"]},
                    "parameters": {"type": "object", "properties": {"binary_data_size": {"type": "integer"}}},
                    "data": {"type": "array", "description": "FP32 numbers, or base64 strings of encoded photos"},
                },
            },
        },
        "outputs": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "parameters": {
                        "type": "object",
                        "properties": {"binary_data": {"type": "boolean"}, "classification": {"type": "integer"}},
                    },
                },
            },
        },
    },
}
_MODEL_DOCS = {
    "": ("get", "Model metadata of {model}: inputs, outputs, versions", None),
    "/ready": ("get", "200 when {model} is ready for inference", None),
    "/infer": ("post", "Inference on {model}: encoded photos (BYTES) or preprocessed FP32 tensors", _INFER_REQUEST),
}
OPENAPI_PATHS: dict[str, Any] = {
    "/v2": _doc("get", "Server metadata: name, version, protocol extensions"),
    "/v2/health/live": _doc("get", "200 while the server is live"),
    "/v2/health/ready": _doc("get", "200 when the server is ready for inference"),
    **{
        f"{prefix}{suffix}": _doc(method, summary, body, path)
        for prefix, path in ((_MODEL, ("model",)), (_VERSION, ("model", "version")))
        for suffix, (method, summary, body) in _MODEL_DOCS.items()
    },
}
