"""The Open Inference Protocol (KServe v2 / Triton HTTP REST) routes, over the worker's engine.

Clients written for Triton or KServe (``tritonclient.http``, KServe's v2 client, curl) can use this server as is:
``GET /v2``, ``/v2/health/live``, ``/v2/health/ready``, ``/v2/models/{name}[/versions/{v}]`` and ``.../ready``,
``POST .../infer``. The model answers to two names: the store name (``efficientnet_lite0_int8``, which says what
runs and changes when the int8 model is refused on a CPU) and the card's name (``efficientnet_lite0``, stable):
/metadata lists both under ``model_names``. Tensor data in JSON (``BYTES`` as base64 strings) or with the binary
tensor data extension (``Inference-Header-Content-Length``), what ``tritonclient`` sends by default; the wire
format is serve/oip_codec.py. Same admission, limits, batching and deadline as ``/classify`` (serve/http_frame.py).
Every failure is ``{"error": "..."}`` with a 4xx/5xx status, unknown paths and methods under /v2 included.
"""

from __future__ import annotations

import logging

import bentoml
import numpy as np
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Match, Route

from smallnets.core.version import __version__
from smallnets.serve.admission import Ticket
from smallnets.serve.clock import RequestClock
from smallnets.serve.engine import Engine
from smallnets.serve.forms import RequestRejected, read_body
from smallnets.serve.http_frame import answer
from smallnets.serve.oip_codec import (
    EXTENSIONS,
    HEADER_LENGTH,
    IMAGES_INPUT,
    SERVER_NAME,
    TOO_LARGE_HINT,
    TOP_K_OUTPUTS,
    InferRequest,
    encode_rest,
    model_metadata_body,
    output_tensors,
    parse_rest,
)
from smallnets.serve.oip_openapi import MODEL_PATH, VERSION_PATH
from smallnets.serve.settings import MAX_TOP_K

LOGGER = logging.getLogger(__name__)
INFER_ROUTE = "/v2/models/{model}/infer"  # the route label of its requests in /metrics


def engine() -> Engine:
    """The worker's engine (the BentoML service instance holds it)."""
    return bentoml.get_current_service().engine


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def served_model(request: Request) -> Engine:
    """The engine, if the path names its model (and, when given, its version); else ``RequestRejected`` 404."""
    current = engine()
    info = current.info
    name = request.path_params["model"]
    version = request.path_params.get("version")
    if not info.serves(name):
        raise RequestRejected(404, f"unknown model {name!r}: this server serves {info.name!r} (or {info.base_name!r})")
    if not info.serves(name, version):
        available = list(info.versions) or "none"
        raise RequestRejected(404, f"unknown version {version!r} of {name!r}: available {available}")
    return current


async def server_metadata(_: Request) -> JSONResponse:
    return JSONResponse({"name": SERVER_NAME, "version": __version__, "extensions": list(EXTENSIONS)})


async def server_live(_: Request) -> JSONResponse:
    return JSONResponse({"live": True})


async def server_ready(_: Request) -> JSONResponse:
    ready = bentoml.get_current_service().__is_ready__()
    return JSONResponse({"ready": ready}, status_code=200 if ready else 400)


async def model_metadata(request: Request) -> JSONResponse:
    current = served_model(request)
    info = current.info
    parameters = {
        "one_input_of": [IMAGES_INPUT, info.input_name],
        "images": "encoded JPEG/PNG/WebP photos, preprocessed by the server as in /classify",
        "preprocessing": info.metadata["preprocessing"],
        "top_k_outputs": list(TOP_K_OUTPUTS),
        "max_top_k": MAX_TOP_K,
        "model_names": [info.name, info.base_name],
    }
    return JSONResponse({**model_metadata_body(info), "parameters": parameters})


async def model_ready(request: Request) -> JSONResponse:
    info = served_model(request).info
    ready = bentoml.get_current_service().__is_ready__()
    return JSONResponse({"name": info.name, "ready": ready}, status_code=200 if ready else 400)


async def infer(request: Request) -> Response:
    """``answer`` gives the same admission, deadline, disconnect handling, errors and metrics as /classify."""
    current = served_model(request)
    settings = current.settings

    async def read(http: Request) -> InferRequest:
        body = await read_body(http, settings.max_upload_bytes, TOO_LARGE_HINT)
        return parse_rest(current.info, settings.max_batch_images, body, http.headers.get(HEADER_LENGTH))

    async def compute(parsed: InferRequest, clock: RequestClock, ticket: Ticket) -> Response:
        if parsed.uploads is not None:
            logits = await current.logits_for_uploads(parsed.uploads, clock, ticket)
        else:
            logits = await current.logits_for_tensor(parsed.tensor, clock, ticket)
        logits = logits.astype(np.float32, copy=False)
        response = {
            "model_name": current.info.name,
            "model_version": (current.info.versions or ("",))[0],
            "parameters": {"inference_ms": clock.inference_ms(), "batch_size": clock.batch_size},
            "outputs": [],
        }
        if parsed.request_id is not None:
            response["id"] = parsed.request_id
        content, headers = encode_rest(response, output_tensors(current.info, parsed, logits))
        media_type = "application/octet-stream" if headers else "application/json"
        return Response(content, media_type=media_type, headers=headers)

    return await answer(current, request, INFER_ROUTE, read, compute)


async def rejected(_: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestRejected)
    return _error(error.status, error.message)


async def http_error(_: Request, error: Exception) -> JSONResponse:
    """Unknown paths (404) and methods (405) under /v2 answer JSON, as the OpenAPI document says."""
    assert isinstance(error, HTTPException)
    return JSONResponse({"error": error.detail}, status_code=error.status_code, headers=error.headers)


async def unknown_path(request: Request) -> JSONResponse:
    """Any other path under /v2: 405 where a route exists for another method, else 404; JSON either way."""
    for route in ROUTES:
        match, _ = route.matches(request.scope)
        if match == Match.PARTIAL:
            allowed = ", ".join(sorted(route.methods or ()))
            return JSONResponse(
                {"error": f"{request.method} is not allowed on {request.url.path}: use {allowed}"},
                status_code=405,
                headers={"Allow": allowed},
            )
    return _error(404, f"no such path {request.url.path}: see /docs for the /v2 routes")


async def internal_error(request: Request, error: Exception) -> JSONResponse:
    """An unexpected failure still answers in the protocol's shape (the traceback goes to the log)."""
    LOGGER.exception("%s %s failed", request.method, request.url.path, exc_info=error)
    return _error(500, f"internal error: {type(error).__name__}: {error}")


ROUTES = [
    Route("/v2", server_metadata, methods=["GET"]),
    Route("/v2/health/live", server_live, methods=["GET"]),
    Route("/v2/health/ready", server_ready, methods=["GET"]),
    *(Route(prefix, model_metadata, methods=["GET"]) for prefix in (MODEL_PATH, VERSION_PATH)),
    *(Route(f"{prefix}/ready", model_ready, methods=["GET"]) for prefix in (MODEL_PATH, VERSION_PATH)),
    *(Route(f"{prefix}/infer", infer, methods=["POST"]) for prefix in (MODEL_PATH, VERSION_PATH)),
]
ANY_METHOD = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
oip_app = Starlette(
    routes=[*ROUTES, Route("/v2/{rest:path}", unknown_path, methods=ANY_METHOD)],
    exception_handlers={RequestRejected: rejected, HTTPException: http_error, Exception: internal_error},
)
