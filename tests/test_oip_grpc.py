"""The Open Inference Protocol over gRPC, tested with clients the project did not write: ``tritonclient.grpc``
unchanged, and its own copy of the protocol's messages sent through its stub (typed ``contents``, malformed
requests). One real `smallnets serve` with gRPC on (SMALLNETS_GRPC_PORT), a 2 MB message cap and a tight latency
target (0.05 s: a request arriving alone always gets in; a crowd of requests of 3 rows fills it as soon as about
6 of them are held, even at 2.5 ms an image, this machine's quiet batched figure, however fast they are drained).
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from PIL import Image
from servers import free_port, smallnets_server
from test_serve import jpeg
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException

MODEL = "efficientnet_lite0"  # the card's name; the store name adds the precision
MAX_UPLOAD_MB = 2
MAX_REQUEST_PIXELS = 3_000_000
LATENCY_TARGET_S = 0.05
HEAVY_REQUESTS = 60
HEAVY_ROWS = 3  # 1.8 MB of FP32: under the message cap


@pytest.fixture(scope="module")
def server(exported, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(REST base URL, gRPC address)."""
    model = exported("efficientnet_lite0", weights="imagenet")
    port = free_port()
    env = {
        "SMALLNETS_GRPC_PORT": str(port),
        "SMALLNETS_MAX_UPLOAD_MB": str(MAX_UPLOAD_MB),
        "SMALLNETS_MAX_REQUEST_PIXELS": str(MAX_REQUEST_PIXELS),
        "SMALLNETS_LATENCY_TARGET_S": str(LATENCY_TARGET_S),
    }
    with smallnets_server(model, tmp_path_factory.mktemp("grpc"), env) as url:
        yield url, f"127.0.0.1:{port}"


@pytest.fixture(scope="module")
def client(server: tuple[str, str]) -> Iterator[triton_grpc.InferenceServerClient]:
    with triton_grpc.InferenceServerClient(server[1]) as connected:
        yield connected


@pytest.fixture(scope="module")
def photo(photos: dict[str, Image.Image]) -> bytes:
    return jpeg(photos["chelsea"])


def images_input(*photos: bytes) -> triton_grpc.InferInput:
    tensor = triton_grpc.InferInput("images", [len(photos)], "BYTES")
    tensor.set_data_from_numpy(np.array(photos, dtype=object))
    return tensor


def test_health_and_metadata(client: triton_grpc.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    server = client.get_server_metadata()
    assert server.name == "smallnets" and "classification" in server.extensions
    for name in (MODEL, f"{MODEL}_fp32"):  # the card's name and the store name answer alike
        assert client.is_model_ready(name)
        metadata = client.get_model_metadata(name)
        assert metadata.name == f"{MODEL}_fp32" and len(metadata.versions) == 1
        assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [
            ("images", "BYTES", [-1]),
            ("input", "FP32", [-1, 3, 224, 224]),
        ]
        assert [(t.name, list(t.shape)) for t in metadata.outputs] == [("logits", [-1, 1000])]
    with pytest.raises(InferenceServerException) as unknown:
        client.get_model_metadata("resnet50")
    assert unknown.value.status() == "StatusCode.NOT_FOUND" and MODEL in unknown.value.message()


def test_same_logits_as_rest(server: tuple[str, str], client: triton_grpc.InferenceServerClient, photo: bytes) -> None:
    """Photos (BYTES) and preprocessed tensors (FP32 in raw_input_contents): the logits REST gives, within 1e-4."""
    rest_url, _ = server
    over_grpc = client.infer(MODEL, [images_input(photo, photo)]).as_numpy("logits")
    with triton_http.InferenceServerClient(rest_url.removeprefix("http://")) as http:
        rest_input = triton_http.InferInput("images", [2], "BYTES")
        rest_input.set_data_from_numpy(np.array([photo, photo], dtype=object))
        over_rest = http.infer(MODEL, [rest_input]).as_numpy("logits")
    assert over_grpc.shape == (2, 1000) and np.abs(over_grpc - over_rest).max() < 1e-4
    tensor = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    fp32 = triton_grpc.InferInput("input", [1, 3, 224, 224], "FP32")
    fp32.set_data_from_numpy(tensor)
    outputs = [triton_grpc.InferRequestedOutput("logits", class_count=3)]
    top = client.infer(MODEL, [fp32], outputs=outputs).as_numpy("logits")
    with triton_http.InferenceServerClient(rest_url.removeprefix("http://")) as http:
        rest_fp32 = triton_http.InferInput("input", [1, 3, 224, 224], "FP32")
        rest_fp32.set_data_from_numpy(tensor)
        rest_logits = http.infer(MODEL, [rest_fp32]).as_numpy("logits")
    best = int(np.argmax(rest_logits[0]))
    assert top.shape == (1, 3) and top[0][0].decode().split(":")[1] == str(best)
    # Typed contents (no raw_input_contents) give the same answer.
    typed = service_pb2.ModelInferRequest(model_name=MODEL)
    entry = typed.inputs.add(name="input", datatype="FP32", shape=[1, 3, 224, 224])
    entry.contents.fp32_contents.extend(tensor.reshape(-1).tolist())
    answer = client._client_stub.ModelInfer(typed)
    logits = np.frombuffer(answer.raw_output_contents[0], dtype="<f4").reshape(1, 1000)
    assert np.abs(logits - rest_logits).max() < 1e-4


def _request(**fields: object) -> service_pb2.ModelInferRequest:
    return service_pb2.ModelInferRequest(model_name=MODEL, **fields)


def _images(*photos: bytes, name: str = "images", datatype: str = "BYTES") -> service_pb2.ModelInferRequest:
    request = _request()
    entry = request.inputs.add(name=name, datatype=datatype, shape=[len(photos)])
    entry.contents.bytes_contents.extend(photos)
    return request


def _tensor(shape: list[int], raw: bytes) -> service_pb2.ModelInferRequest:
    request = _request(raw_input_contents=[raw])
    request.inputs.add(name="input", datatype="FP32", shape=shape)
    return request


def _with_parameter(request: service_pb2.ModelInferRequest, key: str, value: int) -> service_pb2.ModelInferRequest:
    request.parameters[key].int64_param = value
    return request


def _with_output(request: service_pb2.ModelInferRequest, name: str) -> service_pb2.ModelInferRequest:
    request.outputs.add(name=name)
    return request


def _big_png(side: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (10, 200, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def malformed(photo: bytes) -> dict[str, tuple[service_pb2.ModelInferRequest, grpc.StatusCode, str]]:
    """Ten bad requests: what each is, its status code and a word of its message."""
    good_row = np.zeros((1, 3, 224, 224), dtype="<f4")
    nan_row = good_row.copy()
    nan_row[0, 0, 0, 0] = np.nan
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    two_inputs = _images(photo)
    two_inputs.inputs.add(name="input", datatype="FP32", shape=[1, 3, 224, 224])
    return {
        "no input": (_request(), invalid, "exactly one input"),
        "two inputs": (two_inputs, invalid, "exactly one input"),
        "unknown input": (_images(photo, name="pixels"), invalid, "unknown input"),
        "photos as FP32": (_images(photo, datatype="FP32"), invalid, "datatype BYTES"),
        "not an image": (_images(b"these bytes are no picture"), invalid, "images[0]"),
        "wrong tensor shape": (_tensor([1, 3, 200, 200], good_row.tobytes()), invalid, "shape"),
        "short tensor data": (_tensor([1, 3, 224, 224], good_row.tobytes()[:-4]), invalid, "bytes of FP32"),
        "NaN in the tensor": (_tensor([1, 3, 224, 224], nan_row.tobytes()), invalid, "NaN"),
        "top_k out of range": (_with_parameter(_images(photo), "top_k", 99), invalid, "top_k"),
        "unknown output": (_with_output(_images(photo), "embeddings"), invalid, "unknown output"),
        "unknown model": (service_pb2.ModelInferRequest(model_name="resnet50"), grpc.StatusCode.NOT_FOUND, "unknown"),
        "over the pixel budget": (
            _images(_big_png(1300), _big_png(1300)),  # 2 x 1.69 MP > 3 MP for the request
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "SMALLNETS_MAX_REQUEST_PIXELS",
        ),
    }


def test_malformed_requests_get_the_right_codes(client: triton_grpc.InferenceServerClient, photo: bytes) -> None:
    for what, (request, code, fragment) in malformed(photo).items():
        with pytest.raises(grpc.RpcError) as refused:
            client._client_stub.ModelInfer(request, timeout=60)
        assert refused.value.code() == code, (what, refused.value.code(), refused.value.details())
        assert fragment.lower() in refused.value.details().lower(), (what, refused.value.details())
    assert client.infer(MODEL, [images_input(photo)]).as_numpy("logits").shape == (1, 1000)  # still serving


def test_an_oversized_message_is_refused_before_decoding(
    client: triton_grpc.InferenceServerClient, photo: bytes
) -> None:
    padding = b"\0" * (MAX_UPLOAD_MB * 1024 * 1024 + 1)
    with pytest.raises(InferenceServerException) as refused:
        client.infer(MODEL, [images_input(photo, padding)])
    assert refused.value.status() == "StatusCode.RESOURCE_EXHAUSTED", refused.value
    assert client.infer(MODEL, [images_input(photo)]).as_numpy("logits").shape == (1, 1000)


def test_a_predicted_wait_over_the_target_is_unavailable_with_retry_after(
    client: triton_grpc.InferenceServerClient, photo: bytes
) -> None:
    """Sixty requests of 3 preprocessed rows at once, and photos sent while they are held: those that would wait past
    the target are refused with UNAVAILABLE and a Retry-After (whichever they are: how many of the crowd are held at
    once depends on how fast the machine drains them), the others answered."""
    rows = np.zeros((HEAVY_ROWS, 3, 224, 224), dtype=np.float32).tobytes()
    heavy = _tensor([HEAVY_ROWS, 3, 224, 224], rows)
    stub = client._client_stub
    with ThreadPoolExecutor(HEAVY_REQUESTS) as pool:
        held = [pool.submit(_outcome, stub, heavy) for _ in range(HEAVY_REQUESTS)]
        probes = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not all(future.done() for future in held):
            probes.append(_outcome(stub, _images(photo)))
        outcomes = [future.result() for future in held]
    refusals = [outcome for outcome in outcomes + probes if isinstance(outcome, grpc.RpcError)]
    assert refusals, "nothing was refused while the crowd was held"
    for refused in refusals:
        assert refused.code() == grpc.StatusCode.UNAVAILABLE, (refused.code(), refused.details())
        assert "SMALLNETS_LATENCY_TARGET_S" in refused.details()
        assert 1 <= int(dict(refused.trailing_metadata() or ())["retry-after"]) <= 30
    answered = [outcome for outcome in outcomes if not isinstance(outcome, grpc.RpcError)]
    assert answered and set(answered) == {(HEAVY_ROWS, 1000)}, answered


def _outcome(stub: object, request: service_pb2.ModelInferRequest) -> tuple[int, ...] | grpc.RpcError:
    """The logits' shape of an answered request, or the error it was refused with."""
    try:
        return tuple(stub.ModelInfer(request, timeout=120).outputs[0].shape)
    except grpc.RpcError as error:
        return error


def test_a_random_weight_model_says_so_in_every_grpc_answer(
    client: triton_grpc.InferenceServerClient, photo: bytes, exported, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The gRPC twin of REST's `Warning: 299` header: trailing metadata "warning" on a random-weight model's answers,
    none on a real-weight model's."""
    _, real = client._client_stub.ModelInfer.with_call(_images(photo), timeout=60)
    assert "warning" not in dict(real.trailing_metadata() or ())
    port = free_port()
    model = exported("mobilenet_v2", width=0.35, resolution=96)  # random weights, the cheapest MobileNet
    settings = {"SMALLNETS_GRPC_PORT": str(port)}
    with (
        smallnets_server(model, tmp_path_factory.mktemp("grpc-random"), settings),
        triton_grpc.InferenceServerClient(f"127.0.0.1:{port}") as random_client,
    ):
        request = service_pb2.ModelInferRequest(model_name="mobilenet_v2")
        request.inputs.add(name="images", datatype="BYTES", shape=[1]).contents.bytes_contents.append(photo)
        answer, call = random_client._client_stub.ModelInfer.with_call(request, timeout=60)
    assert list(answer.outputs[0].shape)[:1] == [1]
    assert "random weights" in dict(call.trailing_metadata() or ())["warning"]
