"""Routes of the service's own pages: ``/`` (to the classifier page), ``/ui``, ``/docs`` and ``/docs.json``.

Mounted into the BentoML service ahead of BentoML's index, so they replace its generic Swagger page (which loads
Google Tag Manager from the internet) and its OpenAPI document (which omits the routes of mounted apps and reads
version "None"). Everything a page loads comes from this server.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import bentoml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from smallnets.core.version import __version__
from smallnets.serve.oip_openapi import OPENAPI_PATHS as OIP_PATHS

STATIC = Path(__file__).parent / "static"
_HTML = {"type": "string", "format": "html"}


async def index(_: Request) -> RedirectResponse:
    return RedirectResponse("/ui", status_code=307)


async def classifier_page(_: Request) -> FileResponse:
    return FileResponse(STATIC / "index.html")


async def docs_page(_: Request) -> FileResponse:
    return FileResponse(STATIC / "docs.html")


async def openapi_document(_: Request) -> JSONResponse:
    service = bentoml.get_current_service()
    return JSONResponse(complete_openapi(service.bento_service.openapi_spec.asdict()))


def complete_openapi(spec: dict[str, Any]) -> dict[str, Any]:
    """BentoML's document for the service's APIs, plus the mounted routes, versioned like the package."""
    info = spec.setdefault("info", {})
    info["version"] = __version__
    info["title"] = "smallnets image classifier"
    info["description"] = DESCRIPTION  # BentoML's default README shows badge images from other hosts
    info["contact"] = {"name": "smallnets"}
    spec["paths"] = {**spec.get("paths", {}), **PAGE_PATHS, **OIP_PATHS}
    spec["tags"] = [*spec.get("tags", []), {"name": "Open Inference Protocol", "description": OIP_TAG_DOC}]
    return spec


DESCRIPTION = (
    "Image classification with an ONNX model exported and optimized by smallnets. Try it on the page at /ui; "
    "the model card is at /metadata. Two ways to ask: this server's own multipart API (/classify, "
    "/classify_batch) and the Open Inference Protocol (KServe v2 / Triton HTTP REST, under /v2). Health: "
    "/livez, /readyz; Prometheus metrics: /metrics."
)
OIP_TAG_DOC = "KServe v2 / Triton HTTP REST: usable with tritonclient.http and KServe's v2 clients unchanged."


def _page(summary: str, content: dict[str, Any], tag: str = "Pages") -> dict[str, Any]:
    return {"get": {"tags": [tag], "summary": summary, "responses": {"200": {"description": "OK", "content": content}}}}


PAGE_PATHS: dict[str, Any] = {
    "/": {
        "get": {
            "tags": ["Pages"],
            "summary": "Redirects to the classifier page /ui",
            "responses": {"307": {"description": "to /ui"}},
        }
    },
    "/ui": _page(
        "Classifier web page: drop a photo, see the top-5, latency and the model card", {"text/html": {"schema": _HTML}}
    ),
    "/docs": _page("This API documentation (offline Swagger UI)", {"text/html": {"schema": _HTML}}),
    "/docs.json": _page("This OpenAPI document", {"application/json": {"schema": {"type": "object"}}}),
    "/metadata": _page(
        "Model card and serving settings: name, family, variant, precision, params, MACs, weights, "
        "quantization (target, recipe), preprocessing, providers, threads, workers and request limits",
        {"application/json": {"schema": {"type": "object"}}},
        tag="Service APIs",
    ),
}

pages_app = Starlette(
    routes=[
        Route("/", index, methods=["GET"]),
        Route("/ui", classifier_page, methods=["GET"]),
        Mount("/ui/static", StaticFiles(directory=STATIC), name="ui-static"),
        Route("/docs", docs_page, methods=["GET"]),
        Route("/docs.json", openapi_document, methods=["GET"]),
    ]
)
