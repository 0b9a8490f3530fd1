"""The BentoML image-classification service: `bentoml serve serve.service:ImageClassifier`.

Request flow: the public endpoints (``/classify``, ``/classify_batch``) read and validate the multipart upload
(serve/forms.py), decode and preprocess in a worker thread (serve/images.py + the shared runtime), then call the
batchable ``infer_batch`` API through BentoML's in-process proxy, so concurrent requests are merged into one
ONNX Runtime batch by BentoML's adaptive dispatcher. The preprocessed tensors do not travel through that proxy
(it would JSON-encode 600 KB per image): they wait in a per-worker table and only integer tokens are batched.

The model comes from the BentoML model store by tag, given as the Bento argument ``model_tag`` (`bentoml serve
... --arg model_tag=TAG`, recorded in a Bento by `bentoml build --arg`), or from a file path in SMALLNETS_MODEL
(development). Everything else is configured by environment variables (serve/settings.py).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import anyio.to_thread
import bentoml
import numpy as np
from pydantic import BaseModel, ConfigDict
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from serve.forms import ImageUpload, RequestRejected, parse_top_k, read_form, uploaded_images
from serve.images import ImageDecodeError, decode_image
from serve.runtime import OnnxClassifier, softmax
from serve.settings import DEFAULT_TOP_K, MAX_TOP_K, ServeSettings
from serve.store import MODEL_FILENAME, model_name

SETTINGS = ServeSettings.from_env()
MODEL_TAG: str | None = getattr(bentoml.use_arguments(), "model_tag", None)
# Largest batch ONNX Runtime sees: also the cap of one /classify_batch request, so one request is one batch.
MAX_BATCH_SIZE = max(64, SETTINGS.max_batch_images)

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
    model_config = ConfigDict(
        json_schema_extra={"properties": {"image": _FILE_SCHEMA, "top_k": _TOP_K_SCHEMA}, "required": ["image"]}
    )


class ImagesUploadForm(MultipartUpload):
    model_config = ConfigDict(
        json_schema_extra={
            "properties": {"images": {"type": "array", "items": _FILE_SCHEMA}, "top_k": _TOP_K_SCHEMA},
            "required": ["images"],
        }
    )


class RankedClasses(BaseModel):
    """Internal result of ``infer_batch`` for one image: the MAX_TOP_K best classes and the batch's run time."""

    class_ids: list[int]
    scores: list[float]
    inference_ms: float
    batch_size: int


async def metadata_endpoint(_: Request) -> JSONResponse:
    service: ImageClassifier = bentoml.get_current_service()
    return JSONResponse(service.metadata())


metadata_app = Starlette(routes=[Route("/metadata", metadata_endpoint, methods=["GET"])])


@bentoml.service(
    name="smallnets_classifier",
    workers=SETTINGS.workers,
    threads=1,  # one ONNX Runtime batch at a time per worker; its intra-op threads use the worker's cores
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
        self.classifier = OnnxClassifier(self.model_path, providers=providers, threads=SETTINGS.threads)
        self.model_name = model_name(self.classifier.card)
        self._pending: dict[int, np.ndarray] = {}
        self._tokens = itertools.count()
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
            "max_top_k": MAX_TOP_K,
        }

    @bentoml.api(route="/classify", input_spec=ImageUploadForm)
    async def classify(self, ctx: bentoml.Context) -> dict[str, Any]:
        """Classify one photo: multipart field ``image``, optional ``top_k`` (1..20, default 5)."""
        try:
            form = await read_form(ctx.request, SETTINGS.max_upload_bytes)
            uploads = await uploaded_images(form, "image", max_count=1)
            return (await self._classify(uploads, parse_top_k(form)))[0]
        except RequestRejected as rejected:
            return self._rejection(ctx, rejected)

    @bentoml.api(route="/classify_batch", input_spec=ImagesUploadForm)
    async def classify_batch(self, ctx: bentoml.Context) -> dict[str, Any]:
        """Classify several photos sent as repeated ``images`` fields; one result per image, in order."""
        try:
            form = await read_form(ctx.request, SETTINGS.max_upload_bytes)
            uploads = await uploaded_images(form, "images", max_count=SETTINGS.max_batch_images)
            return {"model": self.model_name, "results": await self._classify(uploads, parse_top_k(form))}
        except RequestRejected as rejected:
            return self._rejection(ctx, rejected)

    # Requests are shed (503) only after waiting this long: a queue of small-CNN batches on a busy 2-core box can take
    # a second or two, which is slow but still worth answering.
    @bentoml.api(batchable=True, max_batch_size=MAX_BATCH_SIZE, max_latency_ms=10_000)
    def infer_batch(self, tokens: list[int]) -> list[RankedClasses]:
        """Internal: run the waiting tensors of ``tokens`` as one batch (BentoML merges concurrent calls)."""
        known = [token for token in tokens if token in self._pending]
        ranked = {}
        if known:
            batch = np.concatenate([self._pending.pop(token) for token in known])
            started = time.perf_counter()
            probabilities = softmax(self.classifier.run(batch))
            seconds = time.perf_counter() - started
            INFERENCE_SECONDS.labels(model=self.model_name).observe(seconds)
            BATCH_SIZE.labels(model=self.model_name).observe(len(known))
            best = np.argsort(-probabilities, axis=1, kind="stable")[:, :MAX_TOP_K]
            for token, row, order in zip(known, probabilities, best, strict=True):
                ranked[token] = RankedClasses(
                    class_ids=order.tolist(),
                    scores=row[order].tolist(),
                    inference_ms=seconds * 1000.0,
                    batch_size=len(known),
                )
        # Unknown tokens (a stray external call) get an empty answer instead of failing the whole batch.
        return [
            ranked.get(token, RankedClasses(class_ids=[], scores=[], inference_ms=0.0, batch_size=0))
            for token in tokens
        ]

    @staticmethod
    def _rejection(ctx: bentoml.Context, rejected: RequestRejected) -> dict[str, Any]:
        # With a context parameter BentoML takes the status from ctx.response, not from a returned Response.
        ctx.response.status_code = rejected.status
        return {"error": rejected.message}

    async def _classify(self, uploads: Sequence[ImageUpload], top_k: int) -> list[dict[str, Any]]:
        """Decode + preprocess off the event loop, then go through the batching dispatcher."""
        batch = await anyio.to_thread.run_sync(self._prepare, uploads)
        tokens = [next(self._tokens) for _ in uploads]
        self._pending.update({token: batch[index : index + 1] for index, token in enumerate(tokens)})
        try:
            ranked = await self.to_async.infer_batch(tokens)
        finally:
            for token in tokens:
                self._pending.pop(token, None)
        labels = self.classifier.card.labels
        return [
            {
                "model": self.model_name,
                "predictions": [
                    {
                        "class_id": class_id,
                        "label": labels[class_id] if class_id < len(labels) else str(class_id),
                        "score": score,
                    }
                    for class_id, score in zip(result.class_ids[:top_k], result.scores[:top_k], strict=True)
                ],
                "inference_ms": round(result.inference_ms, 3),
                "batch_size": result.batch_size,
            }
            for result in (RankedClasses.model_validate(item) for item in ranked)
        ]

    def _prepare(self, uploads: Sequence[ImageUpload]) -> np.ndarray:
        images = []
        for upload in uploads:
            try:
                images.append(decode_image(upload.data, max_pixels=SETTINGS.max_pixels))
            except ImageDecodeError as error:
                raise RequestRejected(400, f"{upload.filename}: {error}") from error
        return self.classifier.preprocess(images)
