"""Goodput under overload, against a real `smallnets serve`: past its knee the server keeps answering.

Closed-loop clients (bench-http's load loop, raw JPEG bodies) at 16 (about the knee on 2 cores) and at 64. With
admission by count (the policy before: 2 batches = 32 requests per worker) the 64 clients met hundreds of 503s
and goodput fell to about half of the peak; with admission by predicted wait, 64 clients wait ~0.5 s on a quiet
machine (a few seconds on a busy one) against the target, so none is refused and goodput holds. Behaviour, not
absolute speed: both levels are measured on the same server, back to back, and compared with each other.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from PIL import Image
from servers import smallnets_server
from test_serve import jpeg

from smallnets.benchmarks.http_load import Payload, endpoint_url, run_level, warm_up

PEAK_CLIENTS = 16
OVERLOAD_CLIENTS = 64
LEVEL_S = 4.0
# Goodput at 4x the knee's clients against the knee's own. The sharp check is "nobody refused" (count-based
# shedding refuses past 32 whatever the wait); this one catches a collapse, loosely: other work on a shared machine
# moves both levels (measured here: 0.6 to 1.0 under a load average of 10-15 on 2 cores).
KEPT_SHARE = 0.5


@pytest.fixture(scope="module")
def server(exported, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    model = exported("efficientnet_lite0", weights="imagenet")
    # A generous target: the test must hold on a machine busy with other work, where 64 clients may well wait a
    # few seconds; admission by count refuses past 32 whatever the wait.
    limits = {"SMALLNETS_LATENCY_TARGET_S": "20", "SMALLNETS_REQUEST_TIMEOUT_S": "40"}
    with smallnets_server(model, tmp_path_factory.mktemp("goodput"), limits) as url:
        yield endpoint_url(url)


def test_goodput_holds_at_four_times_the_knee(server: str, photos: dict[str, Image.Image]) -> None:
    payloads = [Payload("coffee.jpg", jpeg(photos["coffee"]), "image/jpeg")]
    warm_up(server, payloads, 20, 30.0, body="raw")
    peak = asyncio.run(run_level(server, payloads, PEAK_CLIENTS, LEVEL_S, 30.0, body="raw"))
    loaded = asyncio.run(run_level(server, payloads, OVERLOAD_CLIENTS, LEVEL_S, 30.0, body="raw"))
    assert peak.ok > 0 and peak.failed == 0, peak
    # The predicted wait of 64 clients is far under the target: nobody is refused, nothing fails.
    assert loaded.refused == 0 and loaded.failed == 0, loaded
    assert loaded.requests_per_s >= KEPT_SHARE * peak.requests_per_s, (peak, loaded)
    # The load loop was not the bottleneck (one thread: a share of one core).
    assert loaded.client_cpu_share is not None and loaded.client_cpu_share < 0.8, loaded
