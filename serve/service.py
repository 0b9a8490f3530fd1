"""The BentoML image-classification service: `bentoml serve smallnets.serve.service:ImageClassifier`.

Request flow: the public endpoints (``/classify``, ``/classify_batch``) read and validate the multipart upload
(serve/forms.py), decode and preprocess in a worker thread (serve/images.py + the shared runtime), then hand the
tensor to the worker's adaptive batcher (serve/batching.py: BentoML's CORK dispatcher), which merges concurrent
requests into one ONNX Runtime batch and gives each request its own rows back.

The model comes from the BentoML model store by tag, given as the Bento argument ``model_tag`` (`bentoml serve
... --arg model_tag=TAG`, recorded in a Bento by `bentoml build --arg`), or from a file path in SMALLNETS_MODEL
(development). Everything else is configured by environment variables (serve/settings.py).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import anyio.to_thread
import bentoml
import numpy as np
from pydantic import ConfigDict
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from smallnets.core.hardware import detect_cpu
from smallnets.core.images import ImageDecodeError, decode_image
from smallnets.core.runtime import OnnxClassifier, softmax, top_k
from smallnets.serve.batching import AdaptiveBatcher, BatcherOverloaded
from smallnets.serve.forms import ImageUpload, RequestRejected, multipart_form, parse_top_k, uploaded_images
from smallnets.serve.settings import DEFAULT_TOP_K, MAX_TOP_K, ServeSettings
from smallnets.serve.store import MODEL_FILENAME, model_name

LOGGER = logging.getLogger(__name__)
SETTINGS = ServeSettings.from_env()
MODEL_TAG: str | None = getattr(bentoml.use_arguments(), "model_tag", None)
# Requests are shed (503) only after waiting this long for a batch: a queue of small-CNN batches on a busy
# 2-core box can take a second or two, which is slow but still worth answering.
MAX_LATENCY_MS = 10_000

INFERENCE_SECONDS = bentoml.metrics.Histogram(
    name="smallnets_inference_seconds",
    documentation="ONNX Runtime time per batch (preprocessed tensors in, logits out)",
    labelnames=["model"],
    buckets=(0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048),
)
BATCH_SIZE = bentoml.metrics.Histogram(
    name="smallnets_batch_size",
    documentation="Images per ONNX Runtime batch formed by adaptive batching",
    labelnames=["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)


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
    """/classify: one ``image`` file, optional ``top_k``."""

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


async def metadata_endpoint(_: Request) -> JSONResponse:
    service: ImageClassifier = bentoml.get_current_service()
    return JSONResponse(service.metadata())


metadata_app = Starlette(routes=[Route("/metadata", metadata_endpoint, methods=["GET"])])


@bentoml.service(
    name="smallnets_classifier",
    workers=SETTINGS.workers,  # each worker: its own session, batcher and share of the cores
    traffic={"timeout": 60},
)
@bentoml.asgi_app(metadata_app, path="/")
class ImageClassifier:
    """One ONNX classifier per worker, warmed up before /readyz says yes."""

    if MODEL_TAG:  # declared on the class so that `bentoml build` packs the model into the Bento
        model_ref = bentoml.models.BentoModel(MODEL_TAG)

    def __init__(self) -> None:
        self._ready = False
        if MODEL_TAG:
            self.model_path = Path(self.model_ref.path_of(MODEL_FILENAME))
        elif SETTINGS.model_path:
            self.model_path = Path(SETTINGS.model_path)
        else:
            raise RuntimeError(
                "no model to serve: pass a BentoML model tag (bentoml serve ... --arg model_tag=TAG) or set "
                "SMALLNETS_MODEL to an .onnx path, or start the server with `smallnets serve MODEL.onnx`"
            )
        providers = list(SETTINGS.providers) or None
        self.classifier = OnnxClassifier(
            self.model_path, providers=providers, threads=SETTINGS.threads, memory_arena=False, spinning=False
        )
        for note in self.classifier.provider_notes:
            LOGGER.warning("execution providers: %s", note)
        self.model_name = model_name(self.classifier.card)
        # A /classify_batch request larger than max_batch_size is split across batches by the dispatcher.
        self.batcher = AdaptiveBatcher(
            self._probabilities, SETTINGS.max_batch_size, MAX_LATENCY_MS, observe=self._observe
        )
        # Decoding uses the same cores as inference: more parallel decoders than cores only queue for the CPU
        # and multiply per-thread malloc arenas (resident memory).
        self._decoders = anyio.CapacityLimiter(detect_cpu().usable_cores)
        self.classifier.warm_up()
        self._ready = True

    def __is_ready__(self) -> bool:
        return self._ready

    def metadata(self) -> dict[str, Any]:
        return {
            **self.classifier.describe(),
            "model": self.model_name,
            "model_tag": MODEL_TAG,
            "model_file": str(self.model_path),
            "provider_notes": self.classifier.provider_notes,
            "workers": SETTINGS.workers,
            "max_upload_bytes": SETTINGS.max_upload_bytes,
            "max_batch_images": SETTINGS.max_batch_images,
            "max_batch_size": SETTINGS.max_batch_size,
            "max_top_k": MAX_TOP_K,
        }

    @bentoml.api(route="/classify", input_spec=ImageUploadForm)
    async def classify(self, ctx: bentoml.Context) -> dict[str, Any]:
        """Classify one photo: multipart field ``image``, optional ``top_k`` (1..20, default 5)."""
        try:
            async with multipart_form(ctx.request, SETTINGS.max_upload_bytes) as form:
                uploads = await uploaded_images(form, "image", max_count=1)
                return (await self._classify(uploads, parse_top_k(form)))[0]
        except RequestRejected as rejected:
            return self._rejection(ctx, rejected)

    @bentoml.api(route="/classify_batch", input_spec=ImagesUploadForm)
    async def classify_batch(self, ctx: bentoml.Context) -> dict[str, Any]:
        """Classify several photos sent as repeated ``images`` fields; one result per image, in order."""
        try:
            async with multipart_form(ctx.request, SETTINGS.max_upload_bytes) as form:
                uploads = await uploaded_images(form, "images", max_count=SETTINGS.max_batch_images)
                return {"model": self.model_name, "results": await self._classify(uploads, parse_top_k(form))}
        except RequestRejected as rejected:
            return self._rejection(ctx, rejected)

    def _probabilities(self, batch: np.ndarray) -> np.ndarray:
        return softmax(self.classifier.run(batch))

    def _observe(self, batch_size: int, seconds: float) -> None:
        INFERENCE_SECONDS.labels(model=self.model_name).observe(seconds)
        BATCH_SIZE.labels(model=self.model_name).observe(batch_size)

    @bentoml.on_shutdown
    def _stop_batching(self) -> None:
        self.batcher.shutdown()

    @staticmethod
    def _rejection(ctx: bentoml.Context, rejected: RequestRejected) -> dict[str, Any]:
        # With a context parameter BentoML takes the status from ctx.response, not from a returned Response.
        ctx.response.status_code = rejected.status
        return {"error": rejected.message}

    async def _classify(self, uploads: Sequence[ImageUpload], k: int) -> list[dict[str, Any]]:
        """Decode + preprocess off the event loop, then wait for a batch slot."""
        batch = await anyio.to_thread.run_sync(self._prepare, uploads, limiter=self._decoders)
        try:
            rows = await self.batcher(batch)
        except BatcherOverloaded as error:
            raise RequestRejected(503, str(error)) from error
        return [
            {
                "model": self.model_name,
                "predictions": [prediction.to_dict() for prediction in top_k(row, k, self.classifier.card.labels)],
                "inference_ms": round(rows.inference_ms, 3),
                "batch_size": rows.batch_size,
            }
            for row in rows.outputs
        ]

    def _prepare(self, uploads: Sequence[ImageUpload]) -> np.ndarray:
        images = []
        for upload in uploads:
            try:
                images.append(decode_image(upload.data, max_pixels=SETTINGS.max_pixels))
            except ImageDecodeError as error:
                raise RequestRejected(400, f"{upload.filename}: {error}") from error
        return self.classifier.preprocess(images)
