"""The BentoML image-classification service: `bentoml serve smallnets.serve.service:ImageClassifier`.

A thin frame: each worker builds one ``Engine`` (serve/engine.py: model session, batcher, decode threads,
admission by predicted wait) and exposes it over
- REST: /classify, /classify_batch (multipart or raw image bodies, serve/forms.py), /metadata, the Open Inference
  Protocol under /v2 (serve/oip.py), the pages /ui and /docs (serve/ui/pages.py), BentoML's /livez, /readyz,
  /metrics; every inference request goes through serve/http_frame.py (admission, byte caps, deadline, client
  disconnect, JSON errors);
- gRPC, when SMALLNETS_GRPC_PORT is set: the Open Inference Protocol's GRPCInferenceService (serve/grpc_server.py),
  served from the same worker and engine, so the same limits, batching, deadlines and admission apply.

The model comes from the BentoML model store by tag, given as the Bento argument ``model_tag`` (`bentoml serve
... --arg model_tag=TAG`, recorded in a Bento by `bentoml build --arg`), or from a file path in SMALLNETS_MODEL
(development). Everything else is configured by environment variables (serve/settings.py).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, ClassVar

import bentoml
from bentoml.exceptions import BentoMLException
from pydantic import BaseModel, ConfigDict
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from smallnets.core.runtime import softmax, top_k
from smallnets.serve import metrics
from smallnets.serve.admission import Ticket
from smallnets.serve.clock import RequestClock
from smallnets.serve.engine import Engine
from smallnets.serve.forms import (
    ImageUpload,
    is_raw_image,
    multipart_form,
    parse_top_k,
    read_raw_image,
    uploaded_images,
)
from smallnets.serve.grpc_server import GrpcFrontEnd
from smallnets.serve.http_frame import answer
from smallnets.serve.oip import oip_app
from smallnets.serve.settings import DEFAULT_TOP_K, MAX_TOP_K, ServeSettings
from smallnets.serve.store import MODEL_FILENAME, read_card
from smallnets.serve.ui.pages import pages_app

LOGGER = logging.getLogger(__name__)
SETTINGS = ServeSettings.from_env()
MODEL_TAG: str | None = getattr(bentoml.use_arguments(), "model_tag", None)
# BentoML's own request timeout only backs ours up: our deadline answers 504 first and stops the work.
BENTOML_TIMEOUT_MARGIN_S = 30
Uploads = tuple[list[ImageUpload], int]
COPIED_HEADERS = ("server-timing", "retry-after", "warning")


class MultipartUpload(bentoml.IODescriptor):
    """Input of the public endpoints: a multipart form the endpoint reads itself (see serve/forms.py).

    BentoML's own multipart parsing is bypassed on purpose (it would fetch URLs given as text); the subclasses
    only document their form fields in the OpenAPI schema.
    """

    media_type: ClassVar[str | None] = "multipart/form-data"

    @classmethod
    async def from_http_request(cls, request: Request, serde: Any) -> MultipartUpload:
        return cls()


_TOP_K_SCHEMA = {"type": "integer", "minimum": 1, "maximum": MAX_TOP_K, "default": DEFAULT_TOP_K}
_FILE_SCHEMA = {"type": "string", "format": "binary"}


class ImageUploadForm(MultipartUpload):
    """/classify: one ``image`` file, optional ``top_k``; or the raw image bytes as the body (``?top_k=``)."""

    model_config = ConfigDict(
        json_schema_extra={"properties": {"image": _FILE_SCHEMA, "top_k": _TOP_K_SCHEMA}, "required": ["image"]}
    )


class ImagesUploadForm(MultipartUpload):
    """/classify_batch: repeated ``images`` files, optional ``top_k``."""

    model_config = ConfigDict(
        json_schema_extra={
            "properties": {"images": {"type": "array", "items": _FILE_SCHEMA}, "top_k": _TOP_K_SCHEMA},
            "required": ["images"],
        }
    )


class PredictionOut(BaseModel):
    class_id: int
    label: str
    score: float


class ClassificationOut(bentoml.IODescriptor):
    """/classify's answer (also each item of /classify_batch's ``results``)."""

    model: str
    predictions: list[PredictionOut]
    inference_ms: float
    batch_size: int


class BatchClassificationOut(bentoml.IODescriptor):
    """/classify_batch's answer: one result per uploaded image, in upload order."""

    model: str
    results: list[ClassificationOut]


def checked_model_file() -> Path | None:
    """The ONNX file to serve, checked at import: `bentoml serve` imports this module before it starts workers, so
    a missing or corrupt model stops the server with one line and exit status 1, instead of failing in workers
    that BentoML would restart forever. None when no model is configured (the module is importable by tools)."""
    if MODEL_TAG:
        try:
            path = Path(bentoml.models.BentoModel(MODEL_TAG).resolve().path_of(MODEL_FILENAME))
        except BentoMLException as error:
            raise SystemExit(
                f"smallnets serve: model {MODEL_TAG} is not in the BentoML model store ({error}); import it with "
                "`smallnets serve MODEL.onnx` or `smallnets build MODEL.onnx`"
            ) from None
    elif SETTINGS.model_path:
        path = Path(SETTINGS.model_path)
    else:
        return None
    try:
        read_card(path)
    except (OSError, ValueError, KeyError) as error:
        raise SystemExit(f"smallnets serve: {error}") from None
    return path


MODEL_FILE = checked_model_file()


async def metadata_endpoint(_: Request) -> JSONResponse:
    return JSONResponse(bentoml.get_current_service().engine.metadata())


async def post_only(request: Request) -> JSONResponse:
    """GET (or another method) on an inference route: a JSON 405, as the OpenAPI document says."""
    return JSONResponse(
        {"error": f"{request.method} is not allowed on {request.url.path}: POST an image (see /docs)"},
        status_code=405,
        headers={"Allow": "POST"},
    )


_NOT_POST = ["GET", "HEAD", "PUT", "PATCH", "DELETE"]
metadata_app = Starlette(
    routes=[
        Route("/metadata", metadata_endpoint, methods=["GET"]),
        *(Route(path, post_only, methods=_NOT_POST) for path in ("/classify", "/classify_batch")),
    ]
)


@bentoml.service(
    name="smallnets_classifier",
    workers=SETTINGS.workers,  # each worker: its own engine (session, batcher, admission) and share of the cores
    traffic={"timeout": SETTINGS.request_timeout_s + BENTOML_TIMEOUT_MARGIN_S},
    logging={"access": {"enabled": SETTINGS.access_log}},  # SMALLNETS_ACCESS_LOG=1 / `smallnets serve --access-log`
)
@bentoml.asgi_app(metadata_app, path="/")
@bentoml.asgi_app(oip_app, path="/")  # Open Inference Protocol (KServe v2 / Triton HTTP): /v2/...
@bentoml.asgi_app(pages_app, path="/")  # / -> /ui (classifier page), /docs + /docs.json (offline, complete)
class ImageClassifier:
    """One engine per worker, warmed up before /readyz says yes; the gRPC front-end starts beside it."""

    if MODEL_TAG:  # declared on the class so that `bentoml build` packs the model into the Bento
        model_ref = bentoml.models.BentoModel(MODEL_TAG)

    def __init__(self) -> None:
        if MODEL_FILE is None:
            raise RuntimeError(
                "no model to serve: pass a BentoML model tag (bentoml serve ... --arg model_tag=TAG) or set "
                "SMALLNETS_MODEL to an .onnx path, or start the server with `smallnets serve MODEL.onnx`"
            )
        self._ready = False
        self.engine = Engine(MODEL_FILE, MODEL_TAG, SETTINGS)
        self.grpc = GrpcFrontEnd(self.engine, self.__is_ready__) if SETTINGS.grpc_port else None
        card, classifier = self.engine.classifier.card, self.engine.classifier
        metrics.publish_model_info(
            self.engine.info.name,
            card.name,
            card.precision,
            ",".join(classifier.providers),
            classifier.threads,
            card.weights_kind,
        )
        self._ready = True

    def __is_ready__(self) -> bool:
        return self._ready and not self.engine.draining

    @bentoml.on_startup
    async def _start_grpc(self) -> None:
        """In the worker's event loop, where the engine's batcher runs."""
        if self.grpc is not None:
            await self.grpc.start(SETTINGS.grpc_host, SETTINGS.grpc_port)

    @bentoml.api(route="/classify", input_spec=ImageUploadForm, output_spec=ClassificationOut)
    async def classify(self, ctx: bentoml.Context) -> Response:
        """Classify one photo: multipart field ``image`` (optional ``top_k`` 1..20, default 5), or the raw image
        bytes as the body with Content-Type image/jpeg, image/png or image/webp (``?top_k=``)."""
        return self._reply(ctx, await answer(self.engine, ctx.request, "/classify", read_one_image, self._classify_one))

    @bentoml.api(route="/classify_batch", input_spec=ImagesUploadForm, output_spec=BatchClassificationOut)
    async def classify_batch(self, ctx: bentoml.Context) -> Response:
        """Classify several photos sent as repeated ``images`` fields; one result per image, in order."""
        response = await answer(self.engine, ctx.request, "/classify_batch", self._read_images, self._classify_many)
        return self._reply(ctx, response)

    @staticmethod
    def _reply(ctx: bentoml.Context, response: Response) -> Response:
        # With a context parameter BentoML takes the status and headers from ctx.response.
        ctx.response.status_code = response.status_code
        ctx.response.headers.update({k: v for k, v in response.headers.items() if k in COPIED_HEADERS})
        return response

    async def _read_images(self, request: Request) -> Uploads:
        async with multipart_form(request, SETTINGS.max_upload_bytes) as form:
            uploads = await uploaded_images(form, "images", max_count=SETTINGS.max_batch_images)
            return uploads, parse_top_k(form)

    async def _classify_one(self, request: Uploads, clock: RequestClock, ticket: Ticket) -> dict[str, Any]:
        uploads, k = request
        return self._predictions(await self.engine.logits_for_uploads(uploads, clock, ticket), k, clock)[0]

    async def _classify_many(self, request: Uploads, clock: RequestClock, ticket: Ticket) -> dict[str, Any]:
        uploads, k = request
        logits = await self.engine.logits_for_uploads(uploads, clock, ticket)
        return {"model": self.engine.info.name, "results": self._predictions(logits, k, clock)}

    def _predictions(self, logits: Any, k: int, clock: RequestClock) -> list[dict[str, Any]]:
        labels = self.engine.info.labels
        return [
            {
                "model": self.engine.info.name,
                "predictions": [prediction.to_dict() for prediction in top_k(row, k, labels)],
                "inference_ms": clock.inference_ms(),
                "batch_size": clock.batch_size,
            }
            for row in softmax(logits)
        ]

    @bentoml.on_shutdown
    async def _drain(self) -> None:
        """Answer what was admitted (newcomers get 503 meanwhile), then stop gRPC and the inference thread."""
        if self.grpc is not None:
            await self.grpc.stop(SETTINGS.request_timeout_s)
        await self.engine.drain(SETTINGS.request_timeout_s)


async def read_one_image(request: Request) -> Uploads:
    if is_raw_image(request):
        return [await read_raw_image(request, SETTINGS.max_upload_bytes)], parse_top_k(request.query_params)
    async with multipart_form(request, SETTINGS.max_upload_bytes, raw_allowed=True) as form:
        return await uploaded_images(form, "image", max_count=1), parse_top_k(form)
