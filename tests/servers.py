"""Starting a real `smallnets serve` process on a free loopback port, for the tests that talk HTTP to it."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import httpx
import pytest

READY_TIMEOUT_S = 180


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def is_ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2, trust_env=False).status_code == 200
    except httpx.TransportError:
        return False


@contextlib.contextmanager
def smallnets_server(model: Path, workdir: Path, env: Mapping[str, str] | None = None) -> Iterator[str]:
    """`smallnets serve MODEL` (model-store import + `bentoml serve`) with its own BENTOML_HOME under ``workdir``.

    Yields the base URL once /readyz answers 200; the whole process group is stopped afterwards. The server log
    is ``workdir/serve.log`` and its tail is shown when the server dies or never gets ready.
    """
    port = free_port()
    log = workdir / "serve.log"
    environment = {
        **os.environ,
        "BENTOML_HOME": str(workdir / "bentoml_home"),
        "BENTOML_DO_NOT_TRACK": "true",
        **(env or {}),
    }
    command = [sys.executable, "-m", "smallnets", "serve", str(model), "--host", "127.0.0.1", "--port", str(port)]
    with log.open("wb") as output:
        process = subprocess.Popen(
            command, env=environment, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not is_ready(url):
            if process.poll() is not None:
                pytest.fail(f"server exited with {process.returncode}:\n{log.read_text()[-4000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"server not ready after {READY_TIMEOUT_S} s:\n{log.read_text()[-4000:]}")
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
