"""`smallnets serve` on a shared machine: servers side by side keep their own metrics; bad ports fail in one line."""

from __future__ import annotations

import argparse
import io
import re
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from PIL import Image
from servers import free_port, smallnets_server

from smallnets.cli import EXIT_PORT_IN_USE, EXIT_USAGE

COUNT = re.compile(r'^smallnets_inference_seconds_count\{model="(?P<model>[^"]+)"\} (?P<count>[\d.]+)$', re.MULTILINE)


@pytest.fixture(scope="module")
def cat_jpeg(photos: dict[str, Image.Image]) -> bytes:
    buffer = io.BytesIO()
    photos["chelsea"].save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def inference_counts(url: str) -> dict[str, float]:
    """Inferences per model, as the server's /metrics reports them."""
    text = httpx.get(f"{url}/metrics", timeout=10, trust_env=False).text
    return {match["model"]: float(match["count"]) for match in COUNT.finditer(text)}


def classify(url: str, image: bytes, times: int) -> None:
    for _ in range(times):
        response = httpx.post(f"{url}/classify", files={"image": ("cat.jpg", image)}, timeout=60, trust_env=False)
        assert response.status_code == 200, response.text


def test_two_servers_keep_their_own_metrics(exported, tmp_path: Path, cat_jpeg: bytes) -> None:
    """Same BENTOML_HOME (one model store, as for a user): the second server must not wipe or join the first's."""
    first_model, second_model = exported("squeezenet1_1"), exported("squeezenet1_0")
    shared = {"BENTOML_HOME": str(tmp_path / "bentoml_home")}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with smallnets_server(first_model, tmp_path / "a", env=shared) as first:
        classify(first, cat_jpeg, 2)
        before = inference_counts(first)
        assert list(before) == ["squeezenet1_1_fp32"] and before["squeezenet1_1_fp32"] >= 2
        with smallnets_server(second_model, tmp_path / "b", env=shared) as second:
            classify(second, cat_jpeg, 3)
            assert list(inference_counts(second)) == ["squeezenet1_0_fp32"]
            classify(first, cat_jpeg, 1)
            assert inference_counts(first) == {"squeezenet1_1_fp32": before["squeezenet1_1_fp32"] + 1}
        classify(first, cat_jpeg, 1)  # the second server has stopped: the first still counts, alone
        assert inference_counts(first) == {"squeezenet1_1_fp32": before["squeezenet1_1_fp32"] + 2}


def serve(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "smallnets", "serve", *args], capture_output=True, text=True, timeout=120
    )


def test_a_port_in_use_is_one_line_naming_the_port(exported) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = serve(str(exported("squeezenet1_1")), "--port", str(port))
    assert result.returncode == EXIT_PORT_IN_USE, result.stderr
    assert result.stderr.count("\n") == 1 and f"port {port}" in result.stderr and "--port" in result.stderr


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--port", "99999"], "--port must be from 1 to 65535"),
        (["--port", "0"], "--port must be from 1 to 65535"),
        (["--grpc-port", "70000"], "--grpc-port must be from 1 to 65535"),
        (["--port", "3999", "--grpc-port", "3999"], "--grpc-port must differ from --port"),
    ],
)
def test_a_bad_port_is_refused_before_starting(exported, args: list[str], fragment: str) -> None:
    result = serve(str(exported("squeezenet1_1")), *args)
    assert result.returncode == EXIT_USAGE and fragment in result.stderr and result.stderr.count("\n") == 1


def test_an_unknown_host_is_one_line(exported) -> None:
    result = serve(str(exported("squeezenet1_1")), "--host", "no-such-host.invalid")
    assert result.returncode == EXIT_USAGE and "--host" in result.stderr and result.stderr.count("\n") == 1


def test_help_states_the_default_host() -> None:
    result = serve("--help")
    assert "127.0.0.1" in result.stdout and "0.0.0.0" in result.stdout


def test_a_grpc_port_in_use_is_one_line_naming_the_option(exported) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = serve(str(exported("squeezenet1_1")), "--port", str(free_port()), "--grpc-port", str(port))
    assert result.returncode == EXIT_PORT_IN_USE, result.stderr
    assert result.stderr.count("\n") == 1 and f"port {port}" in result.stderr and "--grpc-port" in result.stderr


def test_the_grpc_access_log_and_runtime_flags_reach_the_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    """--grpc-port (on --host), --access-log and --runtime travel to the workers as their settings variables; off
    (or left to the environment) by default."""
    from smallnets.serve.cli import serve_environment

    for name in ("SMALLNETS_GRPC_PORT", "SMALLNETS_GRPC_HOST", "SMALLNETS_ACCESS_LOG", "SMALLNETS_RUNTIME"):
        monkeypatch.delenv(name, raising=False)
    limits = {"workers": None, "threads": None, "providers": None, "max_upload_mb": None, "host": "0.0.0.0"}
    env = serve_environment(argparse.Namespace(**limits, grpc_port=8001, access_log=True, runtime="openvino"))
    assert (env["SMALLNETS_GRPC_PORT"], env["SMALLNETS_GRPC_HOST"], env["SMALLNETS_ACCESS_LOG"]) == (
        "8001",
        "0.0.0.0",
        "1",
    )
    assert env["SMALLNETS_RUNTIME"] == "openvino"
    quiet = serve_environment(argparse.Namespace(**limits, grpc_port=0, access_log=False, runtime=None))
    assert not {"SMALLNETS_GRPC_PORT", "SMALLNETS_ACCESS_LOG", "SMALLNETS_RUNTIME"} & set(quiet)


def test_the_openvino_runtime_serves_over_http(exported, tmp_path: Path, cat_jpeg: bytes) -> None:
    """SMALLNETS_RUNTIME=openvino: the workers run the file on OpenVINO, say so in /metadata and answer as
    onnxruntime does for real Lite0 weights (a cat photo's top class is a cat)."""
    from smallnets.core.runtime import OnnxClassifier

    model = exported("efficientnet_lite0", weights="imagenet")
    with smallnets_server(model, tmp_path, env={"SMALLNETS_RUNTIME": "openvino"}) as url:
        metadata = httpx.get(f"{url}/metadata", timeout=10, trust_env=False).json()
        response = httpx.post(f"{url}/classify", files={"image": ("cat.jpg", cat_jpeg)}, timeout=60, trust_env=False)
    assert metadata["runtime"] == "openvino" and metadata["providers"][0].startswith("openvino-"), metadata
    assert response.status_code == 200, response.text
    served = [prediction["class_id"] for prediction in response.json()["predictions"]]
    local = OnnxClassifier(model).classify(Image.open(io.BytesIO(cat_jpeg)), k=len(served))[0]
    assert served[0] == local[0].class_id and 281 <= served[0] <= 285, (served, local)


def test_a_file_openvino_cannot_read_is_refused_before_the_server_starts(exported, tmp_path: Path) -> None:
    """A QOperator int8 (com.microsoft ops) asked to run on OpenVINO: one line naming the ops and the fix, not a
    traceback from every worker."""
    import numpy as np
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    from smallnets.core.metadata import card_of, write_card

    class Photos(CalibrationDataReader):
        def __init__(self) -> None:
            rng = np.random.default_rng(0)
            self.feeds = iter([{"input": rng.standard_normal((1, 3, 128, 128)).astype(np.float32)} for _ in range(2)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.feeds, None)

    # Its classifier's Gemm becomes com.microsoft QGemm, which OpenVINO has no conversion for.
    source, int8 = exported("mobilenet_v1", width=0.25, resolution=128), tmp_path / "qoperator.onnx"
    quantize_static(str(source), str(int8), Photos(), quant_format=QuantFormat.QOperator)
    model = onnx.load(str(int8))
    onnx.save(write_card(model, card_of(onnx.load(str(source)))), str(int8))
    result = serve(str(int8), "--runtime", "openvino", "--port", str(free_port()))
    assert result.returncode == EXIT_USAGE, result.stderr
    assert result.stderr.count("\n") == 1 and "QGemm" in result.stderr and "--runtime onnxruntime" in result.stderr
