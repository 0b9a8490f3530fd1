"""The request path of one worker, whatever the front-end (REST or gRPC): admission, decoding, batching.

``Engine`` owns the model session, the batcher (serve/batching.py), the decode threads and the admission
(serve/admission.py); ``ModelInfo`` is what the front-ends say about the model, built once at start. The
front-ends only translate: their wire format in, ``logits_for_uploads`` / ``logits_for_tensor`` under an
``admitted`` ticket, their wire format out. So both apply the same limits, deadlines and overload answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import numpy as np
from PIL import Image

from smallnets.core.images import ImageDecodeError, finish_decode, open_image
from smallnets.core.metadata import RANDOM_WEIGHTS
from smallnets.core.preprocess import decode_min_side
from smallnets.core.runtime import OnnxClassifier, resolve_runtime
from smallnets.serve import metrics
from smallnets.serve.admission import Admission, Overloaded, Refusal, Ticket
from smallnets.serve.batching import Batcher
from smallnets.serve.clock import RequestClock
from smallnets.serve.forms import RAW_IMAGE_TYPES, ImageUpload, RequestRejected
from smallnets.serve.memory import LARGE_DECODE_PIXELS, map_large_blocks, release_after_decode
from smallnets.serve.settings import MAX_TOP_K, ServeSettings
from smallnets.serve.store import model_name

LOGGER = logging.getLogger(__name__)
# The prior of the admission's service rate: the warm single-image inference, times this (decode, overheads).
PRIOR_FACTOR = 2.0
PRIOR_RUNS = 3


@dataclass(frozen=True)
class ModelInfo:
    """The served model as the front-ends describe it; built once per worker from the card and the settings."""

    name: str  # <card name>_<precision>: the store name, e.g. efficientnet_lite0_int8
    base_name: str  # the card's name, also accepted: stays the same whether int8 or fp32 is served
    versions: tuple[str, ...]  # the model store version, when the model came from the store
    input_name: str
    output_name: str
    labels: tuple[str, ...]
    crop: int
    metadata: dict[str, Any] = field(repr=False)  # /metadata's static part

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def row_shape(self) -> tuple[int, int, int]:
        return (3, self.crop, self.crop)

    def serves(self, name: str, version: str | None = None) -> bool:
        """Whether ``name`` (and ``version``, when given) names this model."""
        return name in (self.name, self.base_name) and (version is None or version in self.versions)


def model_info(
    classifier: OnnxClassifier, model_file: Path, model_tag: str | None, settings: ServeSettings
) -> ModelInfo:
    """What the front-ends say about the model, computed once."""
    card = classifier.card
    served = model_name(card)
    metadata = {
        **classifier.describe(),
        "model": served,
        "model_names": [served, card.name],  # OIP clients may use either; the first changes with the precision
        "model_tag": model_tag,
        "model_file": str(model_file),
        "target": (card.quantization or {}).get("name"),  # the CPU target int8 was built for
        "provider_notes": classifier.provider_notes,
        "cpu_note": classifier.cpu_note,  # int8 built for another CPU kind than this one
        "preprocessing": asdict(card.preprocessing),  # shown by the /ui model card
        "workers": settings.workers,
        "threads_per_worker": classifier.threads,
        "decode_threads": settings.decode_threads,
        "cores": settings.cores,
        "cpu_quota": settings.cpu_quota,
        "max_upload_bytes": settings.max_upload_bytes,
        "max_batch_images": settings.max_batch_images,
        "max_batch_size": settings.max_batch_size,
        "max_pixels": settings.max_pixels,
        "max_request_pixels": settings.max_request_pixels,
        "max_queued_bytes": settings.max_queued_bytes,
        "max_queued_pixels": settings.max_queued_pixels,
        "request_timeout_s": settings.request_timeout_s,
        "latency_target_s": settings.latency_target_s,
        "grpc_port": settings.grpc_port or None,
        "max_top_k": MAX_TOP_K,
        "raw_image_types": list(RAW_IMAGE_TYPES),
    }
    return ModelInfo(
        name=served,
        base_name=card.name,
        versions=(model_tag.partition(":")[2],) if model_tag else (),
        input_name=card.input_name,
        output_name=card.output_name,
        labels=tuple(card.labels),
        crop=card.preprocessing.crop,
        metadata=metadata,
    )


class Engine:
    """One worker's model, batcher, decode threads and admission."""

    def __init__(self, model_file: Path, model_tag: str | None, settings: ServeSettings) -> None:
        map_large_blocks()  # before the first large picture: its blocks then never settle in an arena
        self.settings = settings
        self.classifier = OnnxClassifier.for_serving(
            model_file,
            threads=settings.threads,
            providers=list(settings.providers) or None,
            runtime=resolve_runtime(model_file, settings.runtime),
        )
        for note in self.classifier.provider_notes:
            LOGGER.warning("execution providers: %s", note)
        for note in filter(None, (self.classifier.cpu_note, self.classifier.weights_note)):
            LOGGER.warning("%s", note)
        self.info = model_info(self.classifier, model_file, model_tag, settings)
        self.batcher = Batcher(self.classifier.run, settings.max_batch_size, observe=self._observe_batch)
        self._decoders = anyio.CapacityLimiter(settings.decode_threads)
        # Large decodes take at most all but one decode thread: photos of other requests always find one free, and
        # at most that many full-size pictures are in memory at once.
        self._large_decoders = anyio.CapacityLimiter(max(1, settings.decode_threads - 1))
        self._decode_min_side = decode_min_side(self.classifier.card.preprocessing)
        self.admission = Admission(
            settings.latency_target_s,
            settings.max_queued_bytes,
            settings.max_queued_pixels,
            self._warm_up(),
            large_pixels=LARGE_DECODE_PIXELS,
        )
        self.draining = False
        # RFC 7234 warn-code 299 (persistent) on every answer of a random-weight model: its predictions mean nothing.
        self.warning = f'299 smallnets "{RANDOM_WEIGHTS}"' if self.classifier.weights_note else None

    def _warm_up(self) -> float:
        """Warm the session; returns the admission's prior seconds per image (the fastest of a few warm runs)."""
        self.classifier.warm_up()
        runs = []
        for _ in range(PRIOR_RUNS):
            started = time.perf_counter()
            self.classifier.warm_up()
            runs.append(time.perf_counter() - started)
        return PRIOR_FACTOR * min(runs)

    def metadata(self) -> dict[str, Any]:
        return {**self.info.metadata, "admission": self.admission.describe()}

    @contextlib.asynccontextmanager
    async def admitted(self, declared_bytes: int | None) -> AsyncIterator[Ticket]:
        """Hold a ticket for one request while the block runs; ``Overloaded`` if it is not admitted.

        ``declared_bytes``: the body's length when known before reading it (else the upload cap counts).
        """
        if self.draining:
            raise Overloaded(Refusal("server busy: shutting down", 1))
        ticket = self.admission.admit(self.settings.max_upload_bytes if declared_bytes is None else declared_bytes)
        metrics.QUEUE_DEPTH.inc()
        answered = False
        try:
            yield ticket
            answered = True
        finally:
            metrics.QUEUE_DEPTH.dec()
            self.admission.release(ticket, answered)
            metrics.PREDICTED_WAIT.set(self.admission.predicted_wait_s())

    async def logits_for_uploads(
        self, uploads: Sequence[ImageUpload], clock: RequestClock, ticket: Ticket
    ) -> np.ndarray:
        """Logits (N, classes) of encoded images, in order: pixel budget (413), bad image (400 naming it), one
        upload decoded at a time on the decode pool, its rows sent to the batcher in model-sized chunks (merged
        there with other requests' rows)."""
        opened: list[Image.Image | None] = [self._open(upload) for upload in uploads]
        sizes = [image.width * image.height for image in opened if image is not None]
        if sum(sizes) > self.settings.max_request_pixels:
            raise RequestRejected(
                413,
                f"request too large: its {len(uploads)} image(s) decode to {sum(sizes)} pixels, over the per-request "
                f"limit of {self.settings.max_request_pixels} (SMALLNETS_MAX_REQUEST_PIXELS): send fewer or smaller "
                "images",
            )
        self.admission.weigh(ticket, sizes)
        submitted: list[asyncio.Future] = []
        rows: list[np.ndarray] = []
        try:
            for index, upload in enumerate(uploads):
                image, opened[index] = opened[index], None  # once decoded, nothing keeps the full-size pixels
                rows.append(await self._decode(upload.filename, image, clock, ticket))
                if len(rows) == self.batcher.max_batch_size or index == len(uploads) - 1:
                    # A full model batch runs while the next images decode; a lone photo goes at once.
                    chunk, rows = np.concatenate(rows) if len(rows) > 1 else rows[0], []
                    submitted.append(asyncio.ensure_future(self.batcher.submit(chunk, clock.deadline)))
            return clock.merge(await asyncio.gather(*submitted))
        finally:
            for pending in submitted:
                pending.cancel()

    async def logits_for_tensor(self, tensor: np.ndarray, clock: RequestClock, ticket: Ticket) -> np.ndarray:
        """Logits (N, classes) of an already preprocessed float32 (N, 3, crop, crop) tensor, N <= the batch-request
        limit; split into model-sized batches and merged with other requests'."""
        if tensor.ndim != 4 or tensor.shape[1:] != self.info.row_shape or tensor.dtype != np.float32:
            raise RequestRejected(
                400,
                f"expected a float32 tensor [N,{','.join(map(str, self.info.row_shape))}], got {tensor.dtype} "
                f"{list(tensor.shape)}",
            )
        if not 1 <= len(tensor) <= self.settings.max_batch_images:
            raise RequestRejected(400, f"batch of {len(tensor)}: send 1 to {self.settings.max_batch_images} images")
        self.admission.weigh(ticket, [0] * len(tensor))
        step = self.batcher.max_batch_size
        chunks = [tensor[start : start + step] for start in range(0, len(tensor), step)]
        submitted = [asyncio.ensure_future(self.batcher.submit(chunk, clock.deadline)) for chunk in chunks]
        try:
            return clock.merge(await asyncio.gather(*submitted))
        finally:
            for pending in submitted:
                pending.cancel()

    def _open(self, upload: ImageUpload) -> Image.Image:
        try:
            return open_image(upload.data, self.settings.max_pixels, self._decode_min_side)
        except ImageDecodeError as error:
            raise RequestRejected(400, f"{upload.filename}: {error}") from error

    async def _decode(self, filename: str, image: Image.Image, clock: RequestClock, ticket: Ticket) -> np.ndarray:
        pixels = image.width * image.height
        try:
            async with self._large_decoders if pixels > LARGE_DECODE_PIXELS else contextlib.nullcontext():
                return await anyio.to_thread.run_sync(
                    self._decode_and_preprocess, filename, image, clock, time.perf_counter(), limiter=self._decoders
                )
        finally:
            self.admission.decoded(ticket, pixels)

    def _decode_and_preprocess(
        self, filename: str, image: Image.Image, clock: RequestClock, queued_at: float
    ) -> np.ndarray:
        """One upload -> one model row, in a decode thread; the decoded pictures are freed before returning."""
        clock.add("queue", time.perf_counter() - queued_at)  # waiting for a decode thread
        if clock.expired():  # waited for a decode thread past the deadline: do not start
            raise TimeoutError("deadline passed before decoding")
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

    def _observe_batch(self, batch_size: int, seconds: float) -> None:
        metrics.observe_batch(self.info.name, batch_size, seconds)
        self.admission.batches.observe(batch_size, seconds)

    async def drain(self, timeout_s: float) -> None:
        """Answer what was admitted (newcomers are refused meanwhile), then stop the inference thread."""
        self.draining = True
        deadline = time.monotonic() + timeout_s
        while self.admission.held and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await self.batcher.drain()
