"""The frame of every HTTP inference request (``/classify``, ``/classify_batch``, the protocol's ``/infer``).

1. an oversized declared body is refused (413) whatever the load; then admission (serve/admission.py): 503 +
   Retry-After at once, with a constant-shape body, before the body is read;
2. ``read`` the body (byte-capped), ``compute`` the answer under the request's deadline (504 past it) while
   watching for the client leaving (its remaining work is dropped, nothing is answered);
3. ``RequestRejected`` becomes its 4xx/5xx ``{"error": ...}``; timing goes to /metrics and ``Server-Timing``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import Response

from smallnets.serve import metrics
from smallnets.serve.admission import Overloaded, Ticket
from smallnets.serve.batching import BatcherStopped, DeadlineExceeded
from smallnets.serve.clock import RequestClock
from smallnets.serve.engine import Engine
from smallnets.serve.forms import RequestRejected, declared_length, too_large

Input = TypeVar("Input")


async def answer(
    engine: Engine,
    request: Request,
    route: str,
    read: Callable[[Request], Awaitable[Input]],
    compute: Callable[[Input, RequestClock, Ticket], Awaitable[Any]],
) -> Response:
    """The response of one inference request (see the module docstring); ``compute`` returns a JSON-able body or
    a ready ``Response`` (the protocol's binary tensors)."""
    settings = engine.settings
    clock = RequestClock.start(settings.request_timeout_s)
    declared = declared_length(request)
    status, body, headers = 200, None, {}
    try:
        if declared is not None and declared > settings.max_upload_bytes:
            raise too_large(declared, settings.max_upload_bytes)
        async with engine.admitted(declared) as ticket, asyncio.timeout_at(clock.deadline):
            payload = await read(request)
            async with cancelled_on_disconnect(request):
                body = await compute(payload, clock, ticket)
    except Overloaded as overloaded:
        status, body, headers = 503, {"error": overloaded.refusal.message}, _retry(overloaded.refusal.retry_after_s)
    except RequestRejected as rejected:
        status, body, headers = rejected.status, {"error": rejected.message}, rejected.headers
    except (TimeoutError, DeadlineExceeded):
        status = 504
        body = {
            "error": f"not answered within the {settings.request_timeout_s:g} s deadline "
            "(SMALLNETS_REQUEST_TIMEOUT_S); its remaining work was dropped: retry later or send less"
        }
    except BatcherStopped:
        status, body, headers = 503, {"error": "server busy: shutting down"}, _retry(1)
    except asyncio.CancelledError:
        metrics.observe_request(route, 499, clock.elapsed(), clock.phases)
        raise
    headers = {**headers, "Server-Timing": clock.server_timing()}
    if engine.warning:
        headers["Warning"] = engine.warning
    metrics.observe_request(route, status, clock.elapsed(), clock.phases)
    if isinstance(body, Response):
        body.headers.update(headers)
        return body
    content = json.dumps(body, separators=(",", ":"))
    return Response(content, status_code=status, media_type="application/json", headers=headers)


def _retry(seconds: int) -> dict[str, str]:
    return {"Retry-After": str(seconds)}


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
