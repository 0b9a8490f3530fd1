"""Goodput of `smallnets serve` against the plain BentoML service over the same model, in one command:

    python -m smallnets.benchmarks.goodput MODEL [--levels 1,16,64,128,512] [--duration 15] [-o results/goodput]

Each server runs alone on a free loopback port (never both at once: they would share the cores), is warmed up,
then loaded by bench-http's closed-loop clients at each level (multipart uploads of the same photos). The table
gives, per level and server, answered requests/s, refused/s, failures and the answered p50/p99, with the CPU kind,
the load average before and after (other work on the machine shows there), the client's own CPU share and the
server's peak resident memory per level.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx

from smallnets.benchmarks.http_load import LevelResult, load_payloads, run_load
from smallnets.benchmarks.machine import cpu_kind
from smallnets.benchmarks.plain_service import ENV_MODEL
from smallnets.core.artifacts import resolve_model_file
from smallnets.core.hardware import detect_cpu

READY_TIMEOUT_S = 180
DEFAULT_LEVELS = "1,16,64,128,512"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def running(command: list[str], port: int, env: dict[str, str], log: Path) -> Iterator[str]:
    """A server process (own session, stopped with its group) whose /readyz answers 200; yields its URL."""
    url = f"http://127.0.0.1:{port}"
    with log.open("wb") as output:
        process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not is_ready(url):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{command[:4]} did not get ready; its log: {log}")
            time.sleep(0.5)
        yield url
    finally:
        stop_group(process)


def stop_group(process: subprocess.Popen) -> None:
    """Stop a server started in its own session, workers included: SIGTERM to its group, SIGKILL after 30 s."""
    with contextlib.suppress(ProcessLookupError):  # it may have been stopped already
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def is_ready(url: str) -> bool:
    """Whether the server at ``url`` answers /readyz with 200 (not yet listening counts as not ready)."""
    try:
        return httpx.get(f"{url}/readyz", timeout=2, trust_env=False).status_code == 200
    except httpx.TransportError:
        return False


def servers(model: Path, workdir: Path) -> dict[str, tuple[list[str], dict[str, str]]]:
    """name -> (command without --port, environment) of the two servers compared."""
    env = {**os.environ, "BENTOML_HOME": str(workdir / "bentoml_home"), "BENTOML_DO_NOT_TRACK": "true"}
    return {
        "smallnets serve": ([sys.executable, "-m", "smallnets", "serve", str(model), "--port"], env),
        "plain BentoML": (
            [sys.executable, "-m", "bentoml", "serve", "smallnets.benchmarks.plain_service:PlainClassifier", "--port"],
            {**env, ENV_MODEL: str(model)},
        ),
    }


def measure(model: Path, levels: Sequence[int], duration_s: float, images: str, workdir: Path) -> dict[str, Any]:
    payloads = load_payloads(images)
    runs: dict[str, list[dict[str, Any]]] = {}
    for name, (command, env) in servers(model, workdir).items():
        port = free_port()
        with running([*command, str(port)], port, env, workdir / f"{name.split()[0]}.log") as url:
            results: list[LevelResult] = run_load(url, payloads, levels, duration_s, timeout_s=30.0, warmup_requests=20)
            runs[name] = [result.to_dict() for result in results]
    return {"model": str(model), "levels": list(levels), "duration_s": duration_s, "runs": runs}


def markdown(result: dict[str, Any], load_before: tuple[float, ...], load_after: tuple[float, ...]) -> str:
    names = list(result["runs"])
    columns = "answered/s | refused/s | refusal p99 ms | failed | p50 ms | p99 ms | peak RSS MB"
    head = "| clients | " + " | ".join(f"{name}: {columns}" for name in names) + " |"
    lines = [head, "|" + "---:|" * (1 + 7 * len(names))]
    for index, clients in enumerate(result["levels"]):
        cells = [str(clients)]
        for name in names:
            level = result["runs"][name][index]
            cells += [f"{level['requests_per_s']:.1f}", f"{level['refused_per_s']:.1f}", _ms(level["refused_p99_ms"])]
            cells += [str(level["failed"]), _ms(level["p50_ms"]), _ms(level["p99_ms"]), _ms(level["server_rss_mb"])]
        lines.append("| " + " | ".join(cells) + " |")
    cpu = detect_cpu()
    shares = [level["client_cpu_share"] or 0.0 for run in result["runs"].values() for level in run]
    return "\n".join(
        [
            f"Model {result['model']}, {result['duration_s']:g} s per level, closed-loop clients, multipart uploads.",
            f"CPU: {cpu.model} ({cpu_kind()}), {cpu.usable_cores} usable cores; load average before "
            f"{'/'.join(f'{x:.2f}' for x in load_before)}, after {'/'.join(f'{x:.2f}' for x in load_after)}; "
            f"client CPU at most {max(shares):.0%} of one core.",
            "",
            *lines,
        ]
    )


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m smallnets.benchmarks.goodput", description=__doc__.split("\n")[0])
    parser.add_argument("model", type=Path, help="an .onnx file or a `smallnets optimize` output folder")
    parser.add_argument("--levels", default=DEFAULT_LEVELS, help=f"client counts (default: {DEFAULT_LEVELS})")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per level (default: 15)")
    parser.add_argument("--images", default="samples", help="a folder of images, or `samples` (default: samples)")
    parser.add_argument("-o", "--output", type=Path, default=Path("results/goodput"), help="output folder")
    args = parser.parse_args(argv)
    levels = [int(level) for level in args.levels.split(",")]
    model = resolve_model_file(args.model)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="smallnets-goodput-") as scratch:
        result = measure(model, levels, args.duration, args.images, Path(scratch))
    load_after = os.getloadavg()
    table = markdown(result, load_before, load_after)
    args.output.mkdir(parents=True, exist_ok=True)
    payload = {**result, "load_average": {"before": load_before, "after": load_after}}
    (args.output / "goodput.json").write_text(json.dumps(payload, indent=2) + "\n")
    (args.output / "goodput.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
