"""bench-http's client side: reading Server-Timing headers and backing off as a 503/429 asks."""

from __future__ import annotations

import httpx
import pytest

from smallnets.benchmarks.http_load import MAX_RETRY_AFTER_S, retry_after_s, server_timing


def test_server_timing_header_is_parsed_by_name() -> None:
    header = 'queue;dur=0.50, decode;dur=3.25,inference;desc="ORT";dur=7, cache;desc=hit, total;dur=12.5'
    assert server_timing(header) == {"queue": 0.5, "decode": 3.25, "inference": 7.0, "total": 12.5}
    assert server_timing("") == {} and server_timing("bad;dur=x") == {}


@pytest.mark.parametrize(
    ("status", "retry_after", "wait"),
    [(503, "1", 1.0), (429, "0.25", 0.25), (503, "3600", MAX_RETRY_AFTER_S), (503, None, None), (200, "1", None)],
)
def test_only_a_shed_answer_with_retry_after_makes_the_client_wait(
    status: int, retry_after: str | None, wait: float | None
) -> None:
    headers = {"retry-after": retry_after} if retry_after is not None else {}
    assert retry_after_s(httpx.Response(status, headers=headers)) == wait
