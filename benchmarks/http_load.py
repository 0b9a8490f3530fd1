"""Bounded, self-stopping HTTP load against a running classification server (loopback only).

Closed-loop clients (each sends its next request when the previous answer arrives) at a fixed concurrency for a
fixed duration, each over its own keep-alive connection (benchmarks/http_wire.py: request bytes built once, so
the client costs the server's CPU next to nothing); per level it tells goodput from shedding: answered (200)
requests/s with their latency percentiles, refused (503/429) requests/s with how fast refusals came back, other
failures by status code or transport error, the server's own per-phase timing (median of its ``Server-Timing``
headers) and the peak resident memory of the server's processes (found through the listening socket, when the
server runs on this machine). A client told to back off (503/429 with ``Retry-After``) waits that long before its
next request, as a polite client would. Every request has a timeout, so a level ends within ``duration_s +
timeout_s`` whatever the server does.

The client checks it is not the bottleneck: its own CPU time over the level is recorded (``client_cpu_share``, of
one core; the load loop is one thread) and a share near 1 is flagged in the report. ``find_knee`` picks the
highest concurrency whose answered p99 meets a target.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import ipaddress
import mimetypes
import os
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np

from smallnets.benchmarks.http_wire import BODIES, Connection, multipart_request, post_request
from smallnets.core.images import iter_image_files, sample_photos

DEFAULT_ENDPOINT = "/classify"
# A refused connection fails instantly; pausing after transport errors keeps a dead server from being spun on.
ERROR_BACKOFF_S = 0.01
# A Retry-After longer than this is capped (a level must still end on time).
MAX_RETRY_AFTER_S = 5.0
RSS_SAMPLE_S = 0.05
REFUSED = ("429", "503")
# The load loop is one thread: past this share of a core, its own CPU may be what limits the level.
CLIENT_BUSY_SHARE = 0.8
# Levels tried by --find-knee when none are given: doubling up to 512 clients.
KNEE_LEVELS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


@dataclass(frozen=True)
class Payload:
    """One image upload: file name, bytes and content type of the multipart field."""

    name: str
    data: bytes
    content_type: str


@dataclass(frozen=True)
class LevelResult:
    """What one concurrency level measured."""

    concurrency: int
    duration_s: float
    requests: int
    ok: int
    requests_per_s: float  # answered (200) per second: the goodput
    p50_ms: float | None  # of answered requests only
    p90_ms: float | None
    p99_ms: float | None
    mean_ms: float | None
    errors: dict[str, int]  # every non-200 outcome by status or transport error (refusals included)
    server_timing_ms: dict[str, float] = field(default_factory=dict)  # median per Server-Timing entry (200s)
    server_rss_mb: float | None = None  # peak resident memory of the largest server process during the level
    refused: int = 0  # 503/429: shed by the server
    refused_per_s: float = 0.0
    refused_p99_ms: float | None = None  # how fast refusals came back
    failed: int = 0  # neither answered nor refused: 4xx/5xx errors, timeouts, transport errors
    client_cpu_share: float | None = None  # the load loop's CPU time / wall time (1.0 = a full core)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def endpoint_url(url: str) -> str:
    """The URL requests go to: ``url`` itself when it names a path, else ``url`` + /classify.

    Refuses anything but loopback hosts: this tool generates load, it must not be pointed at other machines.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"--url must look like http://127.0.0.1:3000 (got {url!r})")
    if not is_loopback(parts.hostname):
        raise ValueError(
            f"refusing to load {parts.hostname}: bench-http only drives servers on this machine (loopback); "
            f"run it on the server's host against http://127.0.0.1:{parts.port or 3000}"
        )
    return url if parts.path not in ("", "/") else url.rstrip("/") + DEFAULT_ENDPOINT


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_payloads(images: str) -> list[Payload]:
    """``samples`` (scikit-image photos, JPEG-encoded) or every image file under a folder, as uploads."""
    if images == "samples":
        payloads = []
        for name, photo in sample_photos().items():
            buffer = io.BytesIO()
            photo.save(buffer, format="JPEG", quality=90)
            payloads.append(Payload(f"{name}.jpg", buffer.getvalue(), "image/jpeg"))
        return payloads
    folder = Path(images)
    if not folder.is_dir():
        raise FileNotFoundError(f"--images {images}: not a folder; pass a folder of images or `samples`")
    payloads = [
        Payload(path.name, path.read_bytes(), mimetypes.guess_type(path.name)[0] or "application/octet-stream")
        for path in iter_image_files(folder)
    ]
    if not payloads:
        raise ValueError(f"--images {images}: no image files (jpg/png/webp/bmp/gif/tiff) found; or pass `samples`")
    return payloads


def check_reachable(url: str, timeout_s: float = 3.0) -> None:
    """Fail fast with a clear message when nothing answers at ``url`` (any HTTP answer, even 404, will do)."""
    try:
        with httpx.Client(timeout=timeout_s, trust_env=False) as client:
            client.get(url)
    except httpx.TimeoutException:
        raise TimeoutError(
            f"{url} accepted the connection but sent no answer within {timeout_s:.0f} s; if the server is still "
            "starting, wait until its /readyz answers 200, then retry"
        ) from None
    except httpx.TransportError as error:
        raise ConnectionError(
            f"cannot reach {url} ({type(error).__name__}: {error}); is the server running? "
            "start it with `smallnets serve MODEL.onnx --port PORT` and pass --url http://127.0.0.1:PORT"
        ) from None


def server_metadata(url: str, timeout_s: float = 5.0) -> dict[str, Any] | None:
    """What the server says it serves (smallnets' GET /metadata), recorded with the results; None if it won't say."""
    parts = urlsplit(url)
    try:
        with httpx.Client(timeout=timeout_s, trust_env=False) as client:
            response = client.get(f"{parts.scheme}://{parts.netloc}/metadata")
        metadata = response.json() if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None
    return metadata if isinstance(metadata, dict) else None


def request_bytes(url: str, payload: Payload, field: str, body: str) -> bytes:
    """One upload as request bytes: a multipart file ``field``, or (``body="raw"``) the body with its Content-Type."""
    if body == "raw":
        return post_request(url, payload.data, payload.content_type)
    return multipart_request(url, field, payload.name, payload.data, payload.content_type)


def warm_up(
    url: str,
    payloads: Sequence[Payload],
    requests: int,
    timeout_s: float,
    field: str = "image",
    body: str = "multipart",
) -> None:
    """A few untimed requests so lazy server-side setup is not billed to the first level."""

    async def send_all() -> None:
        connection = Connection(url)
        try:
            for index in range(requests):
                request = request_bytes(url, payloads[index % len(payloads)], field, body)
                await asyncio.wait_for(connection.exchange(request), timeout_s)
        finally:
            await connection.close()

    asyncio.run(send_all())


def server_timing(header: str) -> dict[str, float]:
    """A ``Server-Timing`` header as {name: milliseconds} (entries without a duration are skipped)."""
    timings = {}
    for entry in header.split(","):
        name, _, rest = entry.strip().partition(";")
        for parameter in rest.split(";"):
            key, _, value = parameter.strip().partition("=")
            if key == "dur" and name:
                with contextlib.suppress(ValueError):
                    timings[name] = float(value)
    return timings


def retry_after_s(status: int, headers: Mapping[str, str]) -> float | None:
    """How long a 503/429 asks the client to wait (the seconds form of Retry-After), capped; None if not asked."""
    if status not in (429, 503):
        return None
    try:
        return min(max(float(headers.get("retry-after", "")), 0.0), MAX_RETRY_AFTER_S)
    except ValueError:
        return None


def server_pids(url: str) -> list[int]:
    """Processes holding the listening socket of ``url``'s port (BentoML: its arbiter and workers); [] if unknown."""
    port = urlsplit(url).port or 80
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # state 0A = LISTEN
                inodes.add(f"socket:[{fields[9]}]")
    pids = []
    for entry in Path("/proc").iterdir() if inodes else ():
        if not entry.name.isdigit():
            continue
        try:
            if any(os.readlink(fd) in inodes for fd in (entry / "fd").iterdir()):
                pids.append(int(entry.name))
        except OSError:  # gone, or not ours to look at
            continue
    return pids


def resident_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


class PeakRss:
    """The largest resident size of any of ``pids`` while the block runs, sampled every 50 ms in a thread."""

    def __init__(self, pids: Sequence[int]) -> None:
        self.pids = list(pids)
        self.peak_mb: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> PeakRss:
        if self.pids:
            self._sample_once()
            self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _sample(self) -> None:
        while not self._stop.wait(RSS_SAMPLE_S):
            self._sample_once()

    def _sample_once(self) -> None:
        sizes = [size for size in map(resident_mb, self.pids) if size is not None]
        if sizes:
            self.peak_mb = max(self.peak_mb or 0.0, max(sizes))


def summarize(
    concurrency: int,
    wall_s: float,
    latencies_ms: Sequence[float],
    outcomes: Counter[str],
    timings: dict[str, list[float]] | None = None,
    rss_mb: float | None = None,
    refusals_ms: Sequence[float] = (),
    client_cpu_s: float | None = None,
) -> LevelResult:
    ok = len(latencies_ms)
    latencies = np.asarray(latencies_ms, dtype=float)
    p50, p90, p99 = (float(v) for v in np.percentile(latencies, [50, 90, 99])) if ok else (None, None, None)
    refused = sum(outcomes[key] for key in REFUSED)
    return LevelResult(
        concurrency=concurrency,
        duration_s=wall_s,
        requests=sum(outcomes.values()),
        ok=ok,
        requests_per_s=ok / wall_s if wall_s > 0 else 0.0,
        p50_ms=p50,
        p90_ms=p90,
        p99_ms=p99,
        mean_ms=float(latencies.mean()) if ok else None,
        errors={key: count for key, count in sorted(outcomes.items()) if key != "200"},
        server_timing_ms={name: float(np.median(values)) for name, values in (timings or {}).items()},
        server_rss_mb=rss_mb,
        refused=refused,
        refused_per_s=refused / wall_s if wall_s > 0 else 0.0,
        refused_p99_ms=float(np.percentile(refusals_ms, 99)) if len(refusals_ms) else None,
        failed=sum(outcomes.values()) - ok - refused,
        client_cpu_share=client_cpu_s / wall_s if client_cpu_s is not None and wall_s > 0 else None,
    )


def find_knee(levels: Sequence[LevelResult], p99_ms: float) -> int | None:
    """The highest concurrency whose answered p99 is within ``p99_ms`` (levels that answered nothing never
    qualify); None when none does."""
    meeting = [level.concurrency for level in levels if level.p99_ms is not None and level.p99_ms <= p99_ms]
    return max(meeting) if meeting else None


async def run_level(
    url: str,
    payloads: Sequence[Payload],
    concurrency: int,
    duration_s: float,
    timeout_s: float,
    field: str = "image",
    body: str = "multipart",
    watch_pids: Sequence[int] = (),
) -> LevelResult:
    """``concurrency`` closed-loop clients posting the payloads round-robin until ``duration_s`` has passed."""
    latencies_ms: list[float] = []
    refusals_ms: list[float] = []
    outcomes: Counter[str] = Counter()
    timings: dict[str, list[float]] = defaultdict(list)
    requests = [request_bytes(url, payload, field, body) for payload in payloads]
    started = time.perf_counter()
    deadline = started + duration_s

    async def client_loop(index: int) -> None:
        connection = Connection(url)
        sent = index
        while time.perf_counter() < deadline:
            request = requests[sent % len(requests)]
            sent += concurrency
            request_started = time.perf_counter()
            try:
                response = await asyncio.wait_for(connection.exchange(request), timeout_s)
            except OSError as error:  # refused, reset, closed mid-answer (WireError), timed out (TimeoutError)
                outcomes[type(error).__name__] += 1
                await asyncio.sleep(ERROR_BACKOFF_S)
                continue
            elapsed_ms = (time.perf_counter() - request_started) * 1000.0
            outcomes[str(response.status)] += 1
            if str(response.status) in REFUSED:
                refusals_ms.append(elapsed_ms)
            if response.status == 200:
                latencies_ms.append(elapsed_ms)
                for name, milliseconds in server_timing(response.headers.get("server-timing", "")).items():
                    timings[name].append(milliseconds)
            wait_s = retry_after_s(response.status, response.headers)
            if wait_s:
                # Backing off for seconds outlasts a server's keep-alive: come back on a fresh connection, as a
                # client would, instead of counting the server's idle close against it.
                await connection.close()
                await asyncio.sleep(min(wait_s, max(0.0, deadline - time.perf_counter())))
        await connection.close()

    cpu_started = time.process_time()  # the load loop's own CPU (the RSS sampler thread adds next to nothing)
    with PeakRss(watch_pids) as rss:
        await asyncio.gather(*(client_loop(index) for index in range(concurrency)))
    wall_s = time.perf_counter() - started
    client_cpu_s = time.process_time() - cpu_started
    return summarize(concurrency, wall_s, latencies_ms, outcomes, timings, rss.peak_mb, refusals_ms, client_cpu_s)


def run_load(
    url: str,
    payloads: Sequence[Payload],
    concurrency: Sequence[int] = (1, 4, 16, 64),
    duration_s: float = 10.0,
    timeout_s: float = 30.0,
    warmup_requests: int = 2,
    field: str = "image",
    progress: bool = True,
    body: str = "multipart",
    knee_p99_ms: float | None = None,
) -> list[LevelResult]:
    """Check the URL, warm the server up, then run each concurrency level in turn; with ``knee_p99_ms``, stop
    after the first level whose answered p99 is over it (the levels past the knee only cost time)."""
    from tqdm import tqdm

    if body not in BODIES:
        raise ValueError(f"body must be one of {BODIES}, got {body!r}")
    target = endpoint_url(url)
    check_reachable(target)
    warm_up(target, payloads, warmup_requests, timeout_s, field, body)
    pids = server_pids(target)
    results = []
    for level in tqdm(concurrency, desc="http load", unit="level", disable=None if progress else True):  # tty only
        results.append(asyncio.run(run_level(target, payloads, level, duration_s, timeout_s, field, body, pids)))
        if knee_p99_ms is not None and (results[-1].p99_ms is None or results[-1].p99_ms > knee_p99_ms):
            break
    return results
