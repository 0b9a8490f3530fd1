"""Memory and recovery under heavy requests, over real HTTP with the default limits.

- A request's peak memory is about one decoded upload, whatever the number of uploads; two heavy requests at
  once decode their large images one at a time.
- The issue's worst request (32 flat 7071x7071 PNGs, 5 MB sent, 1.6 gigapixels) is refused at once.
- Pictures freed after decoding go back to the OS, large ones (trimmed) and medium ones (mapped) alike.
- A soak (~1 min): normal clients next to heavy, hung-up and over-budget requests; afterwards normal latency is
  back to the same run's own baseline and the worker's memory is back near where it was.
"""

from __future__ import annotations

import io
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from PIL import Image
from servers import resident_mb, smallnets_server, worker_pids
from test_serve import jpeg

BASELINE_S = 8.0
MIXED_S = 45.0
# Normal latency after the soak may differ from before by noise (other processes share the cores), not by 50%.
RECOVERY_RATIO = 1.5
MEMORY_LIMIT_MB = 1024  # the target for the worst legal request with the default limits


def flat_png(side: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (200, 120, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def server(exported, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    # Admission is tested elsewhere (test_serve_overload.py, test_serve_goodput.py): here every legal heavy request
    # must reach its decoding, whatever a busy machine makes of the predicted waits.
    model = exported("efficientnet_lite0", weights="imagenet")
    with smallnets_server(model, tmp_path_factory.mktemp("soak"), {"SMALLNETS_LATENCY_TARGET_S": "600"}) as url:
        yield url


@pytest.fixture(scope="module")
def normal_photos(photos: dict[str, Image.Image]) -> list[bytes]:
    return [jpeg(photos[name]) for name in ("chelsea", "coffee", "astronaut", "rocket")]


class PeakMemory:
    """Samples a process's resident memory every 20 ms in a thread; ``peak_mb`` is the largest seen."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_mb = resident_mb(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak_mb = max(self.peak_mb, resident_mb(self.pid))


def batch(side: int, count: int) -> list[tuple[str, tuple[str, bytes, str]]]:
    data = flat_png(side)
    return [("images", (f"flat{index}.png", data, "image/png")) for index in range(count)]


def test_peak_memory_is_one_upload_not_all_of_them(server: str) -> None:
    (worker,) = worker_pids(server)
    growth = {}
    with httpx.Client(timeout=120, trust_env=False) as client:
        for count in (1, 4, 1):
            idle = resident_mb(worker)
            with PeakMemory(worker) as memory:
                response = client.post(f"{server}/classify_batch", files=batch(4000, count))  # 48 MB decoded each
            assert response.status_code == 200, response.text
            growth[count] = memory.peak_mb - idle
    # Decoding all four before shrinking (the old way) would grow ~4x as much as one.
    assert growth[4] < 1.6 * max(growth[1], 48.0), growth


def test_two_heavy_requests_at_once_decode_one_large_image_at_a_time(server: str) -> None:
    """Large decodes leave one decode thread to everyone else, so two heavy requests hold one full-size picture."""
    (worker,) = worker_pids(server)
    files = batch(4000, 2)

    def heavy() -> int:
        return httpx.post(f"{server}/classify_batch", files=files, timeout=120, trust_env=False).status_code

    growth = {}
    for parallel in (1, 2):
        idle = resident_mb(worker)
        with PeakMemory(worker) as memory, ThreadPoolExecutor(parallel) as pool:
            statuses = list(pool.map(lambda _: heavy(), range(parallel)))
        assert statuses == [200] * parallel
        growth[parallel] = memory.peak_mb - idle
    assert growth[2] < 1.5 * max(growth[1], 48.0), growth


def test_the_issue_worst_request_is_refused_at_once(server: str, normal_photos: list[bytes]) -> None:
    (worker,) = worker_pids(server)
    files = batch(7071, 32)
    with httpx.Client(timeout=120, trust_env=False) as client, PeakMemory(worker) as memory:
        idle = resident_mb(worker)
        started = time.perf_counter()
        refused = client.post(f"{server}/classify_batch", files=files)
        refused_s = time.perf_counter() - started
        started = time.perf_counter()
        normal = client.post(f"{server}/classify", files={"image": ("a.jpg", normal_photos[0], "image/jpeg")})
        normal_s = time.perf_counter() - started
    assert refused.status_code == 413 and "SMALLNETS_MAX_REQUEST_PIXELS" in refused.json()["error"], refused.text
    assert normal.status_code == 200
    assert refused_s < 20 * normal_s  # header reads only: the cost of a few normal requests, not of 1.6 GP
    assert memory.peak_mb - idle < 64  # only the 5 MB of upload was held


def test_medium_pictures_go_back_to_the_os(server: str) -> None:
    """Pictures too small for a trim after decoding (2500x2500: 19 MB each) are mapped blocks, unmapped when freed:
    in the decode threads' malloc arenas they stayed (measured without the fixed mmap threshold: +137 MB)."""
    (worker,) = worker_pids(server)
    files = batch(2500, 8)

    def medium() -> int:
        return httpx.post(f"{server}/classify_batch", files=files, timeout=120, trust_env=False).status_code

    idle = resident_mb(worker)
    with ThreadPoolExecutor(2) as pool:
        statuses = list(pool.map(lambda _: medium(), range(4)))
    assert statuses == [200] * 4
    assert resident_mb(worker) - idle < 64


def closed_loop(url: str, until: float, send: Callable[[httpx.Client, int], httpx.Response]) -> list[tuple[int, float]]:
    """One client sending requests back to back until ``until``: [(status or 0 for a hang-up, seconds)]."""
    answers = []
    with httpx.Client(timeout=60, trust_env=False) as client:
        index = 0
        while time.monotonic() < until:
            started = time.perf_counter()
            try:
                status = send(client, index).status_code
            except httpx.ReadTimeout:
                status = 0
            answers.append((status, time.perf_counter() - started))
            index += 1
    return answers


def test_normal_latency_recovers_after_a_heavy_soak(server: str, normal_photos: list[bytes]) -> None:
    (worker,) = worker_pids(server)
    heavy = {"legal": batch(4000, 3), "hang_up": batch(3000, 11), "over_budget": batch(7071, 32)}

    def normal(client: httpx.Client, index: int) -> httpx.Response:
        data = normal_photos[index % len(normal_photos)]
        return client.post(f"{server}/classify", files={"image": ("photo.jpg", data, "image/jpeg")})

    def heavy_mix(client: httpx.Client, index: int) -> httpx.Response:
        kind = ("legal", "hang_up", "over_budget")[index % 3]
        timeout = 1.0 if kind == "hang_up" else 60.0
        return client.post(f"{server}/classify_batch", files=heavy[kind], timeout=timeout)

    before = closed_loop(server, time.monotonic() + BASELINE_S, normal)
    memory_before = resident_mb(worker)
    until = time.monotonic() + MIXED_S
    with PeakMemory(worker) as memory, ThreadPoolExecutor(4) as pool:
        normals = [pool.submit(closed_loop, server, until, normal) for _ in range(2)]
        heavies = [pool.submit(closed_loop, server, until, heavy_mix) for _ in range(2)]
        mixed_normal = [answer for future in normals for answer in future.result()]
        mixed_heavy = [answer for future in heavies for answer in future.result()]
    after = closed_loop(server, time.monotonic() + BASELINE_S, normal)

    assert {status for status, _ in before + mixed_normal + after} == {200}
    assert {status for status, _ in mixed_heavy} <= {0, 200, 413, 504} and len(mixed_heavy) >= 3
    baseline = statistics.median(seconds for _, seconds in before)
    recovered = statistics.median(seconds for _, seconds in after)
    assert recovered < RECOVERY_RATIO * baseline, (baseline, recovered)
    assert memory.peak_mb < MEMORY_LIMIT_MB
    # Bounded, not a leak. What stays is per-thread malloc arenas and kernel buffers: 30-130 MB above the pre-soak RSS
    # in 2-core VNNI runs. What must not pass: every legal or hung-up heavy request decodes 27-48 MB pictures, so
    # keeping one picture of every second such request would add well over 16 x 27 / 2 = 216 MB.
    decoding = [status for status, _ in mixed_heavy if status != 413]
    assert len(decoding) >= 16, mixed_heavy
    assert resident_mb(worker) < memory_before + 200
