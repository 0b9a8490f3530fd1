"""OpenAPI path items of the Open Inference Protocol's REST routes (serve/oip.py), for /docs.json.

Kept apart from the routes: the document is data, and the pages (serve/ui/pages.py) read it without importing the
request path. Every answer is JSON; every error is ``{"error": ...}``, including 404/405 on unknown paths or methods
under /v2.
"""

from __future__ import annotations

from typing import Any

from smallnets.serve.oip_codec import IMAGES_INPUT
from smallnets.serve.settings import MAX_TOP_K

MODEL_PATH = "/v2/models/{model}"
VERSION_PATH = "/v2/models/{model}/versions/{version}"


def _doc(method: str, summary: str, body: dict[str, Any] | None = None, path: tuple[str, ...] = ()) -> dict[str, Any]:
    """One OpenAPI path item of the protocol (its answers and errors are JSON; errors are {"error": ...})."""
    operation: dict[str, Any] = {
        "tags": ["Open Inference Protocol"],
        "summary": summary,
        "responses": {
            "200": {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}},
            "4XX": {"description": "refused", "content": {"application/json": {"schema": ERROR_SCHEMA}}},
            "5XX": {"description": "busy or failed", "content": {"application/json": {"schema": ERROR_SCHEMA}}},
        },
    }
    if path:
        operation["parameters"] = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}} for name in path
        ]
    if body is not None:
        operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    return {method: operation}


ERROR_SCHEMA = {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}
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
        for prefix, path in ((MODEL_PATH, ("model",)), (VERSION_PATH, ("model", "version")))
        for suffix, (method, summary, body) in _MODEL_DOCS.items()
    },
}
