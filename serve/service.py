"""The BentoML image-classification service: `bentoml serve smallnets.serve.service:ImageClassifier`.

Request flow (``answer`` -> ``logits_for_uploads`` / ``logits_for_tensor``):
1. admission: a worker holds at most SMALLNETS_MAX_QUEUE requests; past that, 503 + Retry-After at once, before
   the body is read;
2. the body is read with a byte cap (serve/forms.py): a multipart form or a raw image body;
3. each upload's header is read and its decoded size summed: over SMALLNETS_MAX_REQUEST_PIXELS -> 413 before any
   pixel is decoded;
4. the uploads are decoded one at a time, each shrunk while decoding (smallnets/core/images.py) and preprocessed
   to one model row, on a bounded pool of decode threads (one decoded upload per thread at most in memory);
5. each row goes to the worker's batcher (serve/batching.py), which merges rows of concurrent requests into
   ONNX Runtime batches of at most SMALLNETS_MAX_BATCH_SIZE.
Every request has a deadline (SMALLNETS_REQUEST_TIMEOUT_S): past it, or when the client disconnects, its
remaining work is dropped (no further decode, its queued rows never run) and it is answered 504 (or not at all).

The model comes from the BentoML model store by tag, given as the Bento argument ``model_tag`` (`bentoml serve
... --arg model_tag=TAG`, recorded in a Bento by `bentoml build --arg`), or from a file path in SMALLNETS_MODEL
(development). Everything else is configured by environment variables (serve/settings.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import anyio.to_thread
import bentoml
import numpy as np
from bentoml.exceptions import BentoMLException
from PIL import Image
from pydantic import BaseModel, ConfigDict
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from smallnets.core.images import ImageDecodeError, finish_decode, open_image
from smallnets.core.metadata import RANDOM_WEIGHTS
from smallnets.core.preprocess import decode_min_side
from smallnets.core.runtime import OnnxClassifier, softmax, top_k
from smallnets.serve import metrics
from smallnets.serve.batching import Batcher, BatcherStopped, DeadlineExceeded
from smallnets.serve.clock import RequestClock
from smallnets.serve.forms import (
    RAW_IMAGE_TYPES,
    ImageUpload,
    RequestRejected,
    is_raw_image,
    multipart_form,
    parse_top_k,
    read_raw_image,
    uploaded_images,
)
from smallnets.serve.memory import map_large_blocks, release_after_decode
from smallnets.serve.oip import oip_app
from smallnets.serve.settings import DEFAULT_TOP_K, MAX_TOP_K, ServeSettings
from smallnets.serve.store import MODEL_FILENAME, model_name, read_card
from smallnets.serve.ui.pages import pages_app

LOGGER = logging.getLogger(__name__)
SETTINGS = ServeSettings.from_env()
MODEL_TAG: str | None = getattr(bentoml.use_arguments(), "model_tag", None)
# BentoML's own request timeout only backs ours up: our deadline answers 504 first and stops the work.
BENTOML_TIMEOUT_MARGIN_S = 30
# What a shed request is told: the queue drains within a second at the default limits.
RETRY_AFTER_S = 1
# A decode this large (pixels actually decoded: a 12 MP JPEG at its reduced scale is 3 MP) counts as heavy.
HEAVY_DECODE_PIXELS = 8_000_000
Input = TypeVar("Input")


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
    service: ImageClassifier = bentoml.get_current_service()
    return JSONResponse(service.metadata())


metadata_app = Starlette(routes=[Route("/metadata", metadata_endpoint, methods=["GET"])])


@bentoml.service(
    name="smallnets_classifier",
    workers=SETTINGS.workers,  # each worker: its own session, batcher and share of the cores
    traffic={"timeout": SETTINGS.request_timeout_s + BENTOML_TIMEOUT_MARGIN_S},
)
@bentoml.asgi_app(metadata_app, path="/")
@bentoml.asgi_app(oip_app, path="/")  # Open Inference Protocol (KServe v2 / Triton HTTP): /v2/...
@bentoml.asgi_app(pages_app, path="/")  # / -> /ui (classifier page), /docs + /docs.json (offline, complete)
class ImageClassifier:
    """One ONNX classifier per worker, warmed up before /readyz says yes.

    Other endpoints (e.g. an Open Inference Protocol route) reuse the request path through ``answer`` (admission,
    deadline, disconnect, errors, metrics) with ``logits_for_uploads`` or ``logits_for_tensor`` as the work: the
    same limits, batching and error answers as /classify.
    """

    if MODEL_TAG:  # declared on the class so that `bentoml build` packs the model into the Bento
        model_ref = bentoml.models.BentoModel(MODEL_TAG)

    def __init__(self) -> None:
        if MODEL_FILE is None:
            raise RuntimeError(
                "no model to serve: pass a BentoML model tag (bentoml serve ... --arg model_tag=TAG) or set "
                "SMALLNETS_MODEL to an .onnx path, or start the server with `smallnets serve MODEL.onnx`"
            )
        self._ready = False
        map_large_blocks()  # before the first large picture: its blocks then never settle in an arena
        self.model_path = MODEL_FILE
        self.classifier = OnnxClassifier.for_serving(
            self.model_path, threads=SETTINGS.threads, providers=list(SETTINGS.providers) or None
        )
        for note in self.classifier.provider_notes:
            LOGGER.warning("execution providers: %s", note)
        for note in filter(None, (self.classifier.cpu_note, self.classifier.weights_note)):
            LOGGER.warning("%s", note)
        self.model_name = model_name(self.classifier.card)
        self.batcher = Batcher(self._run_model, SETTINGS.max_batch_size, observe=self._observe_batch)
        self._decoders = anyio.CapacityLimiter(SETTINGS.decode_threads)
        # Large decodes take at most all but one decode thread: photos of other requests always find one free, and
        # at most that many full-size pictures are in memory at once.
        self._heavy_decoders = anyio.CapacityLimiter(max(1, SETTINGS.decode_threads - 1))
        preprocessing = self.classifier.card.preprocessing
        # Decode big uploads straight to a size the preprocessing still reduces by box filter: same picture.
        self._decode_min_side = decode_min_side(preprocessing)
        self._row_shape = (3, preprocessing.crop, preprocessing.crop)
        self._held = 0
        self._draining = False
        self.classifier.warm_up()
        card = self.classifier.card
        metrics.publish_model_info(
            self.model_name,
            card.name,
            card.precision,
            ",".join(self.classifier.providers),
            self.classifier.threads,
            card.weights_kind,
        )
        metrics.QUEUE_LIMIT.set(SETTINGS.max_queue)
        self._ready = True

    def __is_ready__(self) -> bool:
        return self._ready and not self._draining

    def metadata(self) -> dict[str, Any]:
        return {
            **self.classifier.describe(),
            "model": self.model_name,
            "model_tag": MODEL_TAG,
            "model_file": str(self.model_path),
            "target": (self.classifier.card.quantization or {}).get("name"),  # the CPU target int8 was built for
            "provider_notes": self.classifier.provider_notes,
            "cpu_note": self.classifier.cpu_note,  # int8 built for another CPU kind than this one
            "preprocessing": asdict(self.classifier.card.preprocessing),  # shown by the /ui model card
            "workers": SETTINGS.workers,
            "threads_per_worker": self.classifier.threads,
            "decode_threads": SETTINGS.decode_threads,
            "cores": SETTINGS.cores,
            "cpu_quota": SETTINGS.cpu_quota,
            "max_upload_bytes": SETTINGS.max_upload_bytes,
            "max_batch_images": SETTINGS.max_batch_images,
            "max_batch_size": SETTINGS.max_batch_size,
            "max_pixels": SETTINGS.max_pixels,
            "max_request_pixels": SETTINGS.max_request_pixels,
            "max_queue": SETTINGS.max_queue,
            "request_timeout_s": SETTINGS.request_timeout_s,
            "max_top_k": MAX_TOP_K,
            "raw_image_types": list(RAW_IMAGE_TYPES),
        }

    @bentoml.api(route="/classify", input_spec=ImageUploadForm, output_spec=ClassificationOut)
    async def classify(self, ctx: bentoml.Context) -> Response:
        """Classify one photo: multipart field ``image`` (optional ``top_k`` 1..20, default 5), or the raw image
        bytes as the body with Content-Type image/jpeg, image/png or image/webp (``?top_k=``)."""
        return await self.answer(ctx, "/classify", self._read_one_image, self._classify_one)

    @bentoml.api(route="/classify_batch", input_spec=ImagesUploadForm, output_spec=BatchClassificationOut)
    async def classify_batch(self, ctx: bentoml.Context) -> Response:
        """Classify several photos sent as repeated ``images`` fields; one result per image, in order."""
        return await self.answer(ctx, "/classify_batch", self._read_images, self._classify_many)

    async def answer(
        self,
        ctx: bentoml.Context,
        route: str,
        read: Callable[[Request], Awaitable[Input]],
        compute: Callable[[Input, RequestClock], Awaitable[Any]],
    ) -> Response:
        """The frame of every inference request: admission (503), ``read`` the body, ``compute`` the JSON answer
        under the request's deadline (504) while watching for the client leaving; ``RequestRejected`` becomes its
        4xx/5xx ``{"error": ...}``; timing goes to /metrics and the Server-Timing header.
        """
        clock = RequestClock.start(SETTINGS.request_timeout_s)
        status, body, headers = 200, None, {}
        if self._held >= SETTINGS.max_queue or self._draining:
            status, body, headers = self._shed()
            return self._reply(ctx, route, clock, status, body, headers)
        self._held += 1
        metrics.QUEUE_DEPTH.inc()
        try:
            async with asyncio.timeout_at(clock.deadline):
                payload = await read(ctx.request)
                async with cancelled_on_disconnect(ctx.request):
                    body = await compute(payload, clock)
        except RequestRejected as rejected:
            status, body, headers = rejected.status, {"error": rejected.message}, rejected.headers
        except (TimeoutError, DeadlineExceeded):
            status = 504
            body = {
                "error": f"not answered within the {SETTINGS.request_timeout_s:g} s deadline "
                "(SMALLNETS_REQUEST_TIMEOUT_S); its remaining work was dropped: retry later or send less"
            }
        except BatcherStopped:
            status, body, headers = self._shed()
        except asyncio.CancelledError:
            metrics.observe_request(route, 499, clock.elapsed(), clock.phases)
            raise
        finally:
            self._held -= 1
            metrics.QUEUE_DEPTH.dec()
        return self._reply(ctx, route, clock, status, body, headers)

    async def logits_for_uploads(self, uploads: Sequence[ImageUpload], clock: RequestClock) -> np.ndarray:
        """Logits (N, classes) of encoded images, in order: pixel budget (413), bad image (400 naming it), one
        upload decoded at a time on the decode pool, its rows sent to the batcher in model-sized chunks (merged
        there with other requests' rows)."""
        opened: list[Image.Image | None] = [self._open(upload) for upload in uploads]
        pixels = sum(image.width * image.height for image in opened if image is not None)
        if pixels > SETTINGS.max_request_pixels:
            raise RequestRejected(
                413,
                f"request too large: its {len(uploads)} image(s) decode to {pixels} pixels, over the per-request "
                f"limit of {SETTINGS.max_request_pixels} (SMALLNETS_MAX_REQUEST_PIXELS): send fewer or smaller images",
            )
        submitted: list[asyncio.Future] = []
        rows: list[np.ndarray] = []
        try:
            for index, upload in enumerate(uploads):
                image, opened[index] = opened[index], None  # once decoded, nothing keeps the full-size pixels
                heavy = image.width * image.height > HEAVY_DECODE_PIXELS
                async with self._heavy_decoders if heavy else contextlib.nullcontext():
                    row = await anyio.to_thread.run_sync(
                        self._decode_and_preprocess,
                        upload.filename,
                        image,
                        clock,
                        time.perf_counter(),
                        limiter=self._decoders,
                    )
                del image
                rows.append(row)
                if len(rows) == self.batcher.max_batch_size or index == len(uploads) - 1:
                    # A full model batch runs while the next images decode; a lone photo goes at once.
                    chunk, rows = np.concatenate(rows) if len(rows) > 1 else rows[0], []
                    submitted.append(asyncio.ensure_future(self.batcher.submit(chunk, clock.deadline)))
            return clock.merge(await asyncio.gather(*submitted))
        finally:
            for pending in submitted:
                pending.cancel()

    async def logits_for_tensor(self, tensor: np.ndarray, clock: RequestClock) -> np.ndarray:
        """Logits (N, classes) of an already preprocessed float32 (N, 3, crop, crop) tensor, N <= the batch-request
        limit; split into model-sized batches and merged with other requests'."""
        if tensor.ndim != 4 or tensor.shape[1:] != self._row_shape or tensor.dtype != np.float32:
            raise RequestRejected(
                400,
                f"expected a float32 tensor [N,{','.join(map(str, self._row_shape))}], got {tensor.dtype} "
                f"{list(tensor.shape)}",
            )
        if not 1 <= len(tensor) <= SETTINGS.max_batch_images:
            raise RequestRejected(400, f"batch of {len(tensor)}: send 1 to {SETTINGS.max_batch_images} images")
        step = self.batcher.max_batch_size
        chunks = [tensor[start : start + step] for start in range(0, len(tensor), step)]
        submitted = [asyncio.ensure_future(self.batcher.submit(chunk, clock.deadline)) for chunk in chunks]
        try:
            return clock.merge(await asyncio.gather(*submitted))
        finally:
            for pending in submitted:
                pending.cancel()

    def _shed(self) -> tuple[int, dict[str, str], dict[str, str]]:
        reason = "shutting down" if self._draining else f"{self._held} requests in progress"
        message = (
            f"server busy ({reason}, limit SMALLNETS_MAX_QUEUE={SETTINGS.max_queue} per worker): "
            f"retry after {RETRY_AFTER_S} s"
        )
        return 503, {"error": message}, {"Retry-After": str(RETRY_AFTER_S)}

    def _reply(
        self,
        ctx: bentoml.Context,
        route: str,
        clock: RequestClock,
        status: int,
        body: Any,
        headers: dict[str, str],
    ) -> Response:
        # With a context parameter BentoML takes the status and headers from ctx.response.
        ctx.response.status_code = status
        ctx.response.headers.update(headers)
        ctx.response.headers["Server-Timing"] = clock.server_timing()
        if self.classifier.weights_note:  # RFC 7234 warn-code 299 (persistent): the answer's predictions mean nothing
            ctx.response.headers["Warning"] = f'299 smallnets "{RANDOM_WEIGHTS}"'
        metrics.observe_request(route, status, clock.elapsed(), clock.phases)
        if isinstance(body, Response):  # an endpoint that encodes its own answer (the v2 protocol's binary tensors)
            return body
        return Response(json.dumps(body, separators=(",", ":")), status_code=status, media_type="application/json")

    async def _read_one_image(self, request: Request) -> tuple[list[ImageUpload], int]:
        if is_raw_image(request):
            return [await read_raw_image(request, SETTINGS.max_upload_bytes)], parse_top_k(request.query_params)
        async with multipart_form(request, SETTINGS.max_upload_bytes, raw_allowed=True) as form:
            return await uploaded_images(form, "image", max_count=1), parse_top_k(form)

    async def _read_images(self, request: Request) -> tuple[list[ImageUpload], int]:
        async with multipart_form(request, SETTINGS.max_upload_bytes) as form:
            uploads = await uploaded_images(form, "images", max_count=SETTINGS.max_batch_images)
            return uploads, parse_top_k(form)

    async def _classify_one(self, request: tuple[list[ImageUpload], int], clock: RequestClock) -> dict[str, Any]:
        uploads, k = request
        return self._predictions(await self.logits_for_uploads(uploads, clock), k, clock)[0]

    async def _classify_many(self, request: tuple[list[ImageUpload], int], clock: RequestClock) -> dict[str, Any]:
        uploads, k = request
        return {
            "model": self.model_name,
            "results": self._predictions(await self.logits_for_uploads(uploads, clock), k, clock),
        }

    def _predictions(self, logits: np.ndarray, k: int, clock: RequestClock) -> list[dict[str, Any]]:
        labels = self.classifier.card.labels
        return [
            {
                "model": self.model_name,
                "predictions": [prediction.to_dict() for prediction in top_k(row, k, labels)],
                "inference_ms": round(clock.phases.get("inference", 0.0) * 1000.0, 3),
                "batch_size": clock.batch_size,
            }
            for row in softmax(logits)
        ]

    def _open(self, upload: ImageUpload) -> Image.Image:
        try:
            return open_image(upload.data, SETTINGS.max_pixels, self._decode_min_side)
        except ImageDecodeError as error:
            raise RequestRejected(400, f"{upload.filename}: {error}") from error

    def _decode_and_preprocess(
        self, filename: str, image: Image.Image, clock: RequestClock, queued_at: float
    ) -> np.ndarray:
        """One upload -> one model row, in a decode thread; the decoded pictures are freed before returning."""
        clock.add("queue", time.perf_counter() - queued_at)  # waiting for a decode thread
        if clock.expired():  # waited for a decode thread past the deadline: do not start
            raise DeadlineExceeded("deadline passed before decoding")
        picture: Image.Image | None = None
        try:
            with clock.phase("decode"):
                try:
                    picture = finish_decode(image, self._decode_min_side)
                except ImageDecodeError as error:
                    raise RequestRejected(400, f"{filename}: {error}") from error
            if picture is not image:  # shrunk or converted: the full-size pixels go now, before preprocessing
                image.close()
            with clock.phase("preprocess"):
                return self.classifier.preprocess([picture])
        finally:  # whatever happened: the pictures are freed now, not when the request ends
            image.close()
            if picture is not None:
                picture.close()
            release_after_decode(image.width * image.height)

    def _run_model(self, batch: np.ndarray) -> np.ndarray:
        return self.classifier.run(batch)

    def _observe_batch(self, batch_size: int, seconds: float) -> None:
        metrics.observe_batch(self.model_name, batch_size, seconds)

    @bentoml.on_shutdown
    async def _drain(self) -> None:
        """Answer what was accepted (new requests get 503 meanwhile), then stop the inference thread."""
        self._draining = True
        deadline = time.monotonic() + SETTINGS.request_timeout_s
        while self._held and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await self.batcher.drain()


@asynccontextmanager
async def cancelled_on_disconnect(request: Request) -> AsyncIterator[None]:
    """Cancel the current task if the client disconnects meanwhile (call once the body has been read whole).

    After the body, the ASGI server's ``receive`` only returns ``http.disconnect``; waiting on it costs nothing.
    """
    task = asyncio.current_task()
    assert task is not None

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        task.cancel()

    watcher = asyncio.create_task(watch())
    try:
        yield
    finally:
        watcher.cancel()
