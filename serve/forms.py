"""Reading image uploads out of untrusted multipart requests, with size and count caps and clear 4xx reasons.

The service parses its own forms instead of BentoML's file inputs for two reasons: BentoML downloads a URL given
as the text value of a file field (a server-side request forgery hole), and its 4xx error bodies are not the
``{"error": ...}`` objects clients expect. Everything here raises ``RequestRejected``; nothing fetches anything.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from starlette.datastructures import FormData, QueryParams, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from smallnets.serve.settings import DEFAULT_TOP_K, MAX_TOP_K

# Non-file form fields (top_k) are tiny; a bigger text part is a misuse, not a photo.
MAX_TEXT_FIELD_BYTES = 64 * 1024
# The byte cap bounds the work; the per-endpoint image cap gives the clear message.
MAX_FILES = 1000
# Raw-body uploads (``curl --data-binary @photo.jpg -H 'Content-Type: image/jpeg'``), as inference servers take them.
RAW_IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp")
UPLOAD_HINT = "raise it with SMALLNETS_MAX_UPLOAD_MB when serving"


class RequestRejected(Exception):
    """The request cannot be served as sent; ``status`` is the HTTP code, the message says what to change."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


@dataclass(frozen=True)
class ImageUpload:
    """The raw bytes of one uploaded file, and the name the client gave it (for error messages)."""

    filename: str
    data: bytes


def media_type(request: Request) -> str:
    """The request's Content-Type without parameters, lower case ('' when absent)."""
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def is_raw_image(request: Request) -> bool:
    return media_type(request) in RAW_IMAGE_TYPES


async def read_raw_image(request: Request, max_bytes: int) -> ImageUpload:
    """The whole body of a raw image upload (Content-Type image/jpeg|png|webp), capped at ``max_bytes`` (413)."""
    return ImageUpload("body", await read_body(request, max_bytes))


async def read_body(request: Request, max_bytes: int, hint: str = UPLOAD_HINT) -> bytes:
    """The whole request body, refused with 413 as soon as it passes ``max_bytes`` (compressed bodies: 415);
    ``hint`` ends the 413 message."""
    encoding = request.headers.get("content-encoding", "identity").lower()
    if encoding != "identity":
        raise RequestRejected(415, f"Content-Encoding {encoding!r} is not accepted: send the request uncompressed")
    _refuse_declared_oversize(request, max_bytes, hint)
    return b"".join([chunk async for chunk in _capped_stream(request, max_bytes, hint)])


def declared_length(request: Request) -> int | None:
    """The body length the client announced (Content-Length), None when it did not (chunked) or lied in form."""
    declared = request.headers.get("content-length")
    return int(declared) if declared is not None and declared.isdigit() else None


async def read_form(request: Request, max_bytes: int, raw_allowed: bool = False) -> FormData:
    """Parse a multipart/form-data body, refusing bodies over ``max_bytes`` (413) before reading them whole."""
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        shown = content_type or "no Content-Type"
        raw = f", or the bytes themselves with Content-Type {' / '.join(RAW_IMAGE_TYPES)}" if raw_allowed else ""
        raise RequestRejected(
            415 if content_type else 400,
            f"expected a multipart/form-data upload, got {shown}: send the photo as a file field, "
            f"e.g. curl -F image=@photo.jpg{raw}",
        )
    _refuse_declared_oversize(request, max_bytes)
    parser = MultiPartParser(
        request.headers,
        _capped_stream(request, max_bytes),
        max_files=MAX_FILES,
        max_fields=16,
        max_part_size=MAX_TEXT_FIELD_BYTES,
    )
    try:
        return await parser.parse()
    except MultiPartException as error:
        raise RequestRejected(400, f"malformed multipart body: {error}") from error


@asynccontextmanager
async def multipart_form(request: Request, max_bytes: int, raw_allowed: bool = False) -> AsyncIterator[FormData]:
    """``read_form`` whose uploads (spooled to temporary files past 1 MB) are closed when the request is done."""
    form = await read_form(request, max_bytes, raw_allowed)
    try:
        yield form
    finally:
        await form.close()


async def uploaded_images(form: FormData, field: str, max_count: int) -> list[ImageUpload]:
    """The files sent under ``field``, in request order; text values are refused, never treated as URLs."""
    values = form.getlist(field)
    if not values:
        present = sorted(set(form.keys()))
        raise RequestRejected(
            400,
            f"missing multipart file field {field!r} (fields sent: {present or 'none'}): "
            f"upload the photo as curl -F {field}=@photo.jpg",
        )
    if len(values) > max_count:
        raise RequestRejected(
            400,
            f"too many images: {len(values)} sent in {field!r}, at most {max_count} per request",
        )
    uploads = []
    for index, value in enumerate(values):
        if not isinstance(value, UploadFile):
            raise RequestRejected(
                400,
                f"field {field!r} (item {index}) is a text value, not an uploaded file; the server never "
                f"downloads URLs: upload the bytes with curl -F {field}=@photo.jpg",
            )
        uploads.append(ImageUpload(value.filename or f"{field}[{index}]", await value.read()))
    return uploads


def parse_top_k(form: FormData | QueryParams) -> int:
    """``top_k`` from the form (or the query string of a raw upload): an integer in 1..MAX_TOP_K, default 5."""
    raw = form.get("top_k")
    if raw is None or raw == "":
        return DEFAULT_TOP_K
    if isinstance(raw, UploadFile):
        raise RequestRejected(400, "top_k must be a plain form value (curl -F top_k=5), not a file")
    try:
        value = int(raw.strip())
    except ValueError:
        value = None
    if value is None or not 1 <= value <= MAX_TOP_K:
        raise RequestRejected(400, f"top_k must be an integer from 1 to {MAX_TOP_K}, got {raw!r}")
    return value


def _refuse_declared_oversize(request: Request, max_bytes: int, hint: str = UPLOAD_HINT) -> None:
    declared = declared_length(request)
    if declared is not None and declared > max_bytes:
        raise too_large(declared, max_bytes, hint)


def too_large(size: int, max_bytes: int, hint: str = UPLOAD_HINT) -> RequestRejected:
    """The 413 of a body over the byte cap."""
    return RequestRejected(413, f"upload too large: {size} bytes exceeds the limit of {max_bytes} bytes ({hint})")


async def _capped_stream(request: Request, max_bytes: int, hint: str = UPLOAD_HINT) -> AsyncIterator[bytes]:
    """The request body chunk by chunk, stopping with 413 as soon as it passes ``max_bytes`` (chunked uploads)."""
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > max_bytes:
            raise too_large(received, max_bytes, hint)
        yield chunk
