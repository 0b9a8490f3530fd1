"""Starting a real `smallnets serve` process on a free loopback port, for the tests that talk HTTP to it."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from smallnets.benchmarks.goodput import free_port, is_ready, stop_group

READY_TIMEOUT_S = 180
# Base URL -> pid of the `smallnets serve` process behind it (for tests that watch the worker processes).
SERVER_PIDS: dict[str, int] = {}


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
        SERVER_PIDS[url] = process.pid
        yield url
    finally:
        SERVER_PIDS.pop(url, None)
        stop_group(process)  # a test may have stopped it already


def worker_pids(url: str) -> list[int]:
    """The BentoML worker processes (the ones running the service and its model) of the server at ``url``."""
    server = SERVER_PIDS[url]
    children = Path(f"/proc/{server}/task/{server}/children").read_text().split()
    return [int(pid) for pid in children if b"_bentoml_impl.worker" in Path(f"/proc/{pid}/cmdline").read_bytes()]


def resident_mb(pid: int) -> float:
    """Current resident memory (VmRSS) of a process, MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise ValueError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (all its threads), seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
