"""bench-http's load tool against a real local HTTP server (stdlib, loopback) whose answers we control.

The server counts what it answered, so the client's request, success and per-status error counts can be checked
exactly. One last test drives the project's real BentoML service (`smallnets serve`) end to end.
"""

from __future__ import annotations

import json
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image
from servers import free_port, smallnets_server

from smallnets.benchmarks.http_load import (
    LevelResult,
    Payload,
    endpoint_url,
    find_knee,
    load_payloads,
    run_load,
    summarize,
)
from smallnets.cli import main

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FAIL_EVERY = 3  # every third upload gets a 503


class CountingServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), ClassifyHandler)
        self.answered: Counter[int] = Counter()
        self.uploads = 0
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class ClassifyHandler(BaseHTTPRequestHandler):
    """POST /classify: reads the multipart body, answers JSON 200, or 503 for every FAIL_EVERY-th upload.

    GET /metadata describes the "model", like smallnets' service does.
    """

    protocol_version = "HTTP/1.1"
    server: CountingServer

    def do_GET(self) -> None:
        if self.path == "/metadata":
            self.answer(200, {"model": "stub-net", "precision": "int8"})
        else:
            self.answer(404, {"error": "not found"})

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with self.server.lock:
            self.server.uploads += 1
            failing = self.server.uploads % FAIL_EVERY == 0
        if self.path != "/classify" or b'name="image"' not in body:
            self.answer(400, {"error": "missing image field"})
        elif failing:
            self.answer(503, {"error": "overloaded"})
        else:
            self.answer(200, {"predictions": [{"class_id": 1, "label": "x", "score": 1.0}]})

    def answer(self, status: int, payload: dict[str, object]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        with self.server.lock:
            self.server.answered[status] += 1

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the test output is not the place for an access log."""


@pytest.fixture
def server() -> Iterator[CountingServer]:
    server = CountingServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def payloads() -> list[Payload]:
    return load_payloads("samples")[:3]


def test_counts_match_what_the_server_answered(server: CountingServer, payloads: list[Payload]) -> None:
    levels = run_load(server.url, payloads, concurrency=(1, 4), duration_s=0.5, warmup_requests=0, progress=False)
    assert [level.concurrency for level in levels] == [1, 4]
    assert sum(level.requests for level in levels) == server.uploads  # the reachability probe is a GET
    assert sum(level.ok for level in levels) == server.answered[200]
    assert sum(level.errors.get("503", 0) for level in levels) == server.answered[503] > 0
    for level in levels:
        assert level.requests == level.ok + sum(level.errors.values())
        assert level.requests_per_s == pytest.approx(level.ok / level.duration_s)
        assert 0 < level.p50_ms <= level.p90_ms <= level.p99_ms
        assert level.duration_s >= 0.5
        # Goodput apart from shedding: refusals are counted and timed on their own, nothing else failed here.
        assert level.refused == level.errors.get("503", 0) and level.failed == 0
        assert level.refused_per_s == pytest.approx(level.refused / level.duration_s)
        assert (level.refused_p99_ms is not None) == (level.refused > 0)
        assert level.client_cpu_share is not None and 0 <= level.client_cpu_share < 1.5


def test_the_knee_is_the_highest_level_within_the_p99_target() -> None:
    def level(concurrency: int, p99_ms: float | None) -> LevelResult:
        return summarize(concurrency, 1.0, [p99_ms] if p99_ms else [], Counter({"200": 1 if p99_ms else 0}))

    levels = [level(1, 10.0), level(2, 12.0), level(4, 30.0), level(8, None), level(16, 25.0)]
    assert find_knee(levels, 20.0) == 2 and find_knee(levels, 30.0) == 16 and find_knee(levels, 5.0) is None


def test_unreachable_url_fails_fast_with_a_clear_error(payloads: list[Payload]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ConnectionError, match=r"cannot reach .*is the server running"):
        run_load(url, payloads, concurrency=(1,), duration_s=30, progress=False)


def test_silent_server_times_out_instead_of_hanging(payloads: list[Payload]) -> None:
    with socket.socket() as silent:  # the kernel completes connections on the backlog; nobody ever answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with pytest.raises(TimeoutError, match="sent no answer"):
            run_load(url, payloads, concurrency=(1,), duration_s=30, progress=False)


@pytest.mark.parametrize("url", ["http://example.com:3000", "http://10.1.2.3:3000/classify", "ftp://127.0.0.1"])
def test_only_loopback_http_urls_are_accepted(url: str) -> None:
    with pytest.raises(ValueError, match=r"loopback|must look like"):
        endpoint_url(url)


def test_endpoint_defaults_to_classify() -> None:
    assert endpoint_url("http://localhost:3000") == "http://localhost:3000/classify"
    assert endpoint_url("http://[::1]:3000/classify_batch") == "http://[::1]:3000/classify_batch"


def test_image_folder_without_images_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("no pictures here")
    with pytest.raises(ValueError, match="no image files"):
        load_payloads(str(tmp_path))


def test_cli_writes_results_report_and_plot(
    server: CountingServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (32, 24), (200, 10, 10)).save(images / "red.png")
    outdir = tmp_path / "http"
    argv = ["bench-http", "--url", server.url, "--images", str(images), "--concurrency", "1,2", "--duration", "0.3"]
    assert main([*argv, "-o", str(outdir)]) == 0
    data = json.loads((outdir / "http_results.json").read_text())
    assert [level["concurrency"] for level in data["levels"]] == [1, 2]
    assert data["machine"]["cpu"]["arch"]
    assert data["server"] == {"model": "stub-net", "precision": "int8"}
    report = (outdir / "http_report.md").read_text()
    assert "| concurrency | answered/s | refused/s |" in report and "503" in report and "model stub-net" in report
    plot = outdir / "http_throughput_vs_p99.png"
    assert plot.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(plot) as image:
        image.verify()
    assert "requests/s" in capsys.readouterr().out


def test_in_process_needs_a_server_that_names_its_model(
    server: CountingServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["bench-http", "--url", server.url, "--duration", "0.2", "--in-process", "-o", str(tmp_path / "http")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--in-process needs a smallnets server" in err and "model_file" in err and "drop --in-process" in err


def test_cli_unreachable_url_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    assert main(["bench-http", "--url", url, "--duration", "1", "-o", str(tmp_path / "http")]) == 6  # network
    err = capsys.readouterr().err
    assert err.startswith("smallnets bench-http: error: cannot reach") and "smallnets serve" in err


@pytest.fixture(scope="module")
def bento_url(exported, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`smallnets serve` on the cheapest model, on a free loopback port, once /readyz answers 200."""
    model = exported("mobilenet_v1", width=0.25, resolution=128)
    with smallnets_server(model, tmp_path_factory.mktemp("bento-serve")) as url:
        yield url


@pytest.mark.parametrize("body", ["multipart", "raw"])
def test_load_on_the_real_bento_service(bento_url: str, body: str, tmp_path: Path) -> None:
    argv = ["bench-http", "--url", bento_url, "--concurrency", "1,4", "--duration", "1", "--body", body]
    assert main([*argv, "-o", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "http_results.json").read_text())
    assert data["server"]["name"] == "mobilenet_v1" and data["body"] == body
    assert ("raw bodies" in (tmp_path / "http_report.md").read_text()) is (body == "raw")
    for level in data["levels"]:
        assert level["ok"] > 0 and level["errors"] == {}, level
        assert 0 < level["p50_ms"] <= level["p90_ms"] <= level["p99_ms"]


def test_the_in_process_floor_is_the_servers_own_model(bento_url: str, tmp_path: Path) -> None:
    """--in-process times the file, runtime and thread count the server reports, and sets every level against it."""
    argv = ["bench-http", "--url", bento_url, "--concurrency", "1,4", "--duration", "1", "--in-process"]
    assert main([*argv, "-o", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "http_results.json").read_text())
    floor, server = data["floor"], data["server"]
    assert floor["model_file"] == server["model_file"] and floor["threads"] == server["threads_per_worker"]
    assert floor["runtime"] == server["runtime"]
    assert 0 < floor["single_p50_ms"] <= floor["single_p99_ms"] and floor["single_runs"] >= 3
    assert floor["batch"] == 16 and floor["batched_images_per_s"] > 0 and floor["batched_runs"] >= 3
    report = (tmp_path / "http_report.md").read_text()
    assert f"In-process floor (same model file, on {server['runtime']}, " in report
    for level in data["levels"]:
        share = level["requests_per_s"] / floor["batched_images_per_s"]
        assert f"| {level['concurrency']} | {level['p50_ms'] - floor['single_p50_ms']:+.2f} | {share:.0%} |" in report
