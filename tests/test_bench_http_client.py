"""bench-http's client side: the lean HTTP/1.1 client on crafted answers from a real socket, Server-Timing, and
backing off as a 503/429 asks."""

from __future__ import annotations

import asyncio
import re
from email.parser import BytesParser

import pytest

from smallnets.benchmarks.http_load import MAX_RETRY_AFTER_S, retry_after_s, server_timing
from smallnets.benchmarks.http_wire import Connection, WireError, WireResponse, multipart_request, post_request


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
    assert retry_after_s(status, headers) == wait


async def answering(answers: list[bytes]) -> tuple[asyncio.Server, list[bytes], list[int]]:
    """A loopback server that reads one request per answer and writes the next crafted answer; it records each
    request's bytes and how many connections were opened."""
    requests: list[bytes] = []
    connections = [0]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections[0] += 1
        while answers:
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"Content-Length: (\d+)", head).group(1))  # type: ignore[union-attr]
            requests.append(head + await reader.readexactly(length))
            answer = answers.pop(0)
            writer.write(answer)
            await writer.drain()
            if b"Connection: close" in answer or not answer.startswith(b"HTTP/1.1"):
                break
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0), requests, connections


def exchange_all(answers: list[bytes], count: int) -> tuple[list[WireResponse | Exception], list[bytes], int]:
    async def run() -> tuple[list[WireResponse | Exception], list[bytes], int]:
        server, requests, connections = await answering(answers)
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/classify"
        connection, results = Connection(url), []
        for _ in range(count):
            try:
                results.append(await asyncio.wait_for(connection.exchange(post_request(url, b"abc", "image/png")), 5))
            except OSError as error:
                results.append(error)
        await connection.close()
        server.close()
        return results, requests, connections[0]

    return asyncio.run(run())


def test_wire_client_reads_length_and_chunked_bodies_on_one_connection() -> None:
    answers = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nServer-Timing: total;dur=1.5\r\n\r\nhi",
        b"HTTP/1.1 503 Busy\r\nTransfer-Encoding: chunked\r\nRetry-After: 1\r\n\r\n"
        b"3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
    ]
    (first, second), requests, connections = exchange_all(answers, 2)
    assert isinstance(first, WireResponse) and (first.status, first.body) == (200, b"hi")
    assert server_timing(first.headers["server-timing"]) == {"total": 1.5}
    assert isinstance(second, WireResponse) and (second.status, second.body) == (503, b"abcde")
    assert retry_after_s(second.status, second.headers) == 1.0 and connections == 1
    assert requests[0].startswith(b"POST /classify HTTP/1.1\r\n") and requests[0].endswith(b"\r\n\r\nabc")


def test_wire_client_reconnects_after_connection_close() -> None:
    answers = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\ny",
    ]
    results, _, connections = exchange_all(answers, 2)
    assert [r.body for r in results if isinstance(r, WireResponse)] == [b"x", b"y"] and connections == 2


@pytest.mark.parametrize(
    "answer",
    [b"SSH-2.0-OpenSSH\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"],
    ids=["not-http", "cut-short"],
)
def test_wire_client_turns_a_bad_answer_into_a_transport_error(answer: bytes) -> None:
    (result,), _, _ = exchange_all([answer], 1)
    assert isinstance(result, WireError)


def test_multipart_request_is_a_form_a_parser_reads() -> None:
    request = multipart_request("http://127.0.0.1:1/classify", "image", "cat.jpg", b"\xff\xd8jpeg", "image/jpeg")
    head, body = request.split(b"\r\n\r\n", 1)
    content_type = re.search(rb"Content-Type: (.+)", head).group(1).decode().strip()  # type: ignore[union-attr]
    assert int(re.search(rb"Content-Length: (\d+)", head).group(1)) == len(body)  # type: ignore[union-attr]
    message = BytesParser().parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    (part,) = message.get_payload()
    assert part.get_param("name", header="content-disposition") == "image" and part.get_filename() == "cat.jpg"
    assert part.get_content_type() == "image/jpeg" and part.get_payload(decode=True) == b"\xff\xd8jpeg"
