"""The Open Inference Protocol (KServe v2 / Triton HTTP) through a client the project did not write.

One real `smallnets serve` process (real-weights EfficientNet-Lite0) over real HTTP, driven by NVIDIA's
``tritonclient.http`` as a Triton user would, unchanged. Its logits must equal those of the same ONNX file run
in-process by ``OnnxClassifier``; every refusal must come back as the protocol's ``{"error": ...}``.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from PIL import Image
from servers import smallnets_server
from tritonclient.utils import InferenceServerException

import smallnets
from smallnets.core.images import decode_image
from smallnets.core.runtime import OnnxClassifier, softmax, top_k

MAX_UPLOAD_MB = 4  # a binary FP32 batch of 4 fits (2.4 MB), the same batch as JSON numbers does not
MAX_BATCH_IMAGES = 4
MODEL = "efficientnet_lite0_fp32"
CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
# Same file, same onnxruntime: a row's logits may differ only by the batch it ran in (kernel blocking).
ATOL = 1e-4


def jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def model(exported) -> Path:
    return exported("efficientnet_lite0", weights="imagenet")


@pytest.fixture(scope="module")
def url(model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    limits = {"SMALLNETS_MAX_UPLOAD_MB": str(MAX_UPLOAD_MB), "SMALLNETS_MAX_BATCH_IMAGES": str(MAX_BATCH_IMAGES)}
    with smallnets_server(model, tmp_path_factory.mktemp("oip-server"), limits) as base_url:
        yield base_url


@pytest.fixture(scope="module")
def client(url: str) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(url.removeprefix("http://"), network_timeout=120.0)
    yield client
    client.close()


@pytest.fixture(scope="module")
def local(model: Path) -> OnnxClassifier:
    return OnnxClassifier(model)


@pytest.fixture(scope="module")
def photos_jpeg(photos: dict[str, Image.Image]) -> list[bytes]:
    return [jpeg(photos[name]) for name in ("chelsea", "coffee")]


def images_input(encoded: list[bytes], binary: bool = True) -> triton.InferInput:
    tensor = triton.InferInput("images", [len(encoded)], "BYTES")
    if binary:
        tensor.set_data_from_numpy(np.array(encoded, dtype=object))
    else:  # JSON cannot hold raw bytes: the protocol's JSON form of a photo is its base64 text
        tensor.set_data_from_numpy(np.array([base64.b64encode(item) for item in encoded], dtype=object), False)
    return tensor


def tensor_input(batch: np.ndarray, binary: bool = True) -> triton.InferInput:
    tensor = triton.InferInput("input", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch, binary_data=binary)
    return tensor


def refusal(case: str, call: Callable[[], object]) -> InferenceServerException:
    try:
        call()
    except InferenceServerException as error:
        return error
    pytest.fail(f"{case}: the server accepted the request")


def test_health_and_metadata(client: triton.InferenceServerClient, local: OnnxClassifier) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(MODEL)
    assert not client.is_model_ready("resnet50")
    server = client.get_server_metadata()
    assert server["version"] == smallnets.__version__
    assert {"binary_tensor_data", "classification"} <= set(server["extensions"])
    metadata = client.get_model_metadata(MODEL)
    assert metadata["name"] == MODEL and len(metadata["versions"]) == 1
    assert {"name": "images", "datatype": "BYTES", "shape": [-1]} in metadata["inputs"]
    assert {"name": "input", "datatype": "FP32", "shape": [-1, 3, 224, 224]} in metadata["inputs"]
    assert metadata["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, local.card.num_classes]}]
    version = metadata["versions"][0]
    assert client.get_model_metadata(MODEL, model_version=version)["name"] == MODEL
    assert client.is_model_ready(MODEL, model_version=version)
    assert refusal("version", lambda: client.get_model_metadata(MODEL, model_version="0")).status() == "404"


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json-base64"])
def test_encoded_photos_give_the_in_process_logits(
    client: triton.InferenceServerClient, local: OnnxClassifier, photos_jpeg: list[bytes], binary: bool
) -> None:
    outputs = [triton.InferRequestedOutput("logits", binary_data=binary)]
    result = client.infer(MODEL, [images_input(photos_jpeg, binary)], outputs=outputs, request_id="r-1")
    logits = result.as_numpy("logits")
    expected = local.logits([decode_image(data) for data in photos_jpeg])
    assert logits.dtype == np.float32 and logits.shape == (2, local.card.num_classes)
    np.testing.assert_allclose(logits, expected, atol=ATOL, rtol=0)
    assert int(logits[0].argmax()) in CAT_CLASSES
    response = result.get_response()
    assert response["id"] == "r-1" and response["model_name"] == MODEL
    assert response["parameters"]["batch_size"] >= 1


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_preprocessed_tensor_gives_the_in_process_logits(
    client: triton.InferenceServerClient, local: OnnxClassifier, photos_jpeg: list[bytes], binary: bool
) -> None:
    count = 3 if binary else 1  # JSON numbers take ~12 bytes each: one 224x224 image is ~1.8 MB of text
    batch = local.preprocess([decode_image(photos_jpeg[index % 2]) for index in range(count)])
    result = client.infer(MODEL, [tensor_input(batch, binary)])
    np.testing.assert_allclose(result.as_numpy("logits"), local.run(batch), atol=ATOL, rtol=0)


def test_top_k_through_the_protocol_parameters(
    client: triton.InferenceServerClient, local: OnnxClassifier, photos_jpeg: list[bytes]
) -> None:
    expected_logits = local.logits([decode_image(data) for data in photos_jpeg])
    expected = [top_k(row, 3, local.card.labels) for row in softmax(expected_logits)]

    # Triton's classification extension: "<logit>:<class id>:<label>" per class, best first.
    classified = client.infer(
        MODEL, [images_input(photos_jpeg)], outputs=[triton.InferRequestedOutput("logits", class_count=3)]
    ).as_numpy("logits")
    assert classified.shape == (2, 3)
    for row, predictions in zip(classified, expected, strict=True):
        fields = [item.decode().split(":", 2) for item in row]
        assert [int(class_id) for _, class_id, _ in fields] == [p.class_id for p in predictions]
        assert [label for _, _, label in fields] == [p.label for p in predictions]

    # The request parameter top_k: logits plus ids, labels and softmax scores.
    result = client.infer(MODEL, [images_input(photos_jpeg)], parameters={"top_k": 3})
    np.testing.assert_allclose(result.as_numpy("logits"), expected_logits, atol=ATOL, rtol=0)
    ids, labels, scores = (result.as_numpy(name) for name in ("top_k_class_ids", "top_k_labels", "top_k_scores"))
    assert ids.tolist() == [[p.class_id for p in row] for row in expected]
    assert [[label.decode() for label in row] for row in labels] == [[p.label for p in row] for row in expected]
    np.testing.assert_allclose(scores, [[p.score for p in row] for row in expected], atol=1e-5)


def test_refusals_come_back_as_protocol_errors(
    client: triton.InferenceServerClient, local: OnnxClassifier, photos_jpeg: list[bytes]
) -> None:
    noise = np.random.default_rng(0).standard_normal((4, 3, 224, 224), dtype=np.float32)  # ~12 MB as JSON
    cases = {
        "404": lambda: client.infer("resnet50", [images_input(photos_jpeg)]),
        "400-image": lambda: client.infer(MODEL, [images_input([b"not a photo"])]),
        "400-count": lambda: client.infer(MODEL, [images_input(photos_jpeg * 3)]),
        "400-top_k": lambda: client.infer(MODEL, [images_input(photos_jpeg)], parameters={"top_k": 0}),
        "400-output": lambda: client.infer(
            MODEL, [images_input(photos_jpeg)], outputs=[triton.InferRequestedOutput("probabilities")]
        ),
        "400-shape": lambda: client.infer(MODEL, [tensor_input(np.zeros((1, 3, 192, 192), np.float32))]),
        "413-json": lambda: client.infer(MODEL, [tensor_input(noise, False)]),
    }
    messages = {}
    for case, call in cases.items():
        error = refusal(case, call)
        assert error.status() == case.split("-")[0], (case, error)
        messages[case] = error.message()
    assert "resnet50" in messages["404"] and MODEL in messages["404"]
    assert "images[0]" in messages["400-image"]
    assert f"from 1 to {MAX_BATCH_IMAGES}" in messages["400-count"]
    assert "top_k" in messages["400-top_k"]
    assert "probabilities" in messages["400-output"]
    assert "[N,3,224,224]" in messages["400-shape"]
    assert "SMALLNETS_MAX_UPLOAD_MB" in messages["413-json"]
    # Still serving.
    assert int(client.infer(MODEL, [images_input(photos_jpeg[:1])]).as_numpy("logits")[0].argmax()) in CAT_CLASSES


def binary_body(data: bytes, binary_data_size: int) -> tuple[bytes, dict[str, str]]:
    """A request in the binary tensor data extension: JSON header, then ``data`` (an FP32 [1,3,224,224] input)."""
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [1, 3, 224, 224],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": binary_data_size},
                }
            ]
        }
    ).encode()
    return header + data, {"Inference-Header-Content-Length": str(len(header))}


@pytest.mark.parametrize(
    ("body", "headers", "status", "needle"),
    [
        (b"{not json", {}, 400, "not valid JSON"),
        (b"[1, 2]", {}, 400, "JSON object"),
        (b'{"inputs": []}', {}, 400, "exactly one input"),
        (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}', {}, 400, "unknown input"),
        (b'{"inputs": [{"name": "images", "shape": [1], "datatype": "BYTES", "data": ["%%"]}]}', {}, 400, "base64"),
        (b'{"inputs": []}', {"Inference-Header-Content-Length": "999"}, 400, "Inference-Header-Content-Length"),
        (*binary_body(b"12345678", binary_data_size=16), 400, "binary_data_size 16 does not match"),
        (*binary_body(b"12345678", binary_data_size=8), 400, "8 bytes of FP32 data"),
        (gzip.compress(b'{"inputs": []}'), {"Content-Encoding": "gzip"}, 415, "uncompressed"),
    ],
    ids=[
        "malformed",
        "not-object",
        "no-input",
        "unknown-input",
        "bad-base64",
        "header-length",
        "size-mismatch",
        "short-tensor",
        "gzip",
    ],
)
def test_malformed_requests(url: str, body: bytes, headers: dict[str, str], status: int, needle: str) -> None:
    response = httpx.post(f"{url}/v2/models/{MODEL}/infer", content=body, headers=headers, timeout=60)
    assert response.status_code == status, response.text
    assert needle in response.json()["error"]


def test_infer_requests_share_the_classify_path(url: str, photos_jpeg: list[bytes]) -> None:
    """Counted by the same request metrics as /classify, under the protocol's route."""
    payload = {
        "inputs": [
            {"name": "images", "shape": [1], "datatype": "BYTES", "data": [base64.b64encode(photos_jpeg[0]).decode()]}
        ]
    }
    response = httpx.post(f"{url}/v2/models/{MODEL}/infer", content=json.dumps(payload), timeout=60)
    assert response.status_code == 200 and "Server-Timing" in response.headers
    metrics = httpx.get(f"{url}/metrics", timeout=30).text
    counted = [line for line in metrics.splitlines() if line.startswith("smallnets_requests_total{")]
    assert any("/v2/models/{model}/infer" in line and 'status="200"' in line for line in counted), counted


def test_the_model_also_answers_to_its_cards_name(client: triton.InferenceServerClient, url: str) -> None:
    """A client that hard-codes the card's name keeps working whether int8 or fp32 is served."""
    assert client.is_model_ready("efficientnet_lite0") and client.is_model_ready(MODEL)
    assert client.get_model_metadata("efficientnet_lite0")["name"] == MODEL
    assert httpx.get(f"{url}/metadata", trust_env=False).json()["model_names"] == [MODEL, "efficientnet_lite0"]


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/classify", 405),
        ("GET", "/classify_batch", 405),
        ("POST", f"/v2/models/{MODEL}/ready", 405),
        ("GET", f"/v2/models/{MODEL}/infer", 405),
        ("GET", f"/v2/models/{MODEL}/versions/nope/ready", 404),
        ("GET", "/v2/models/resnet50/versions/1/ready", 404),
        ("GET", "/v2/no/such/path", 404),
    ],
)
def test_wrong_paths_and_methods_answer_json_errors(url: str, method: str, path: str, status: int) -> None:
    """As the OpenAPI document says: every error under these routes is {"error": ...}, never plain text."""
    response = httpx.request(method, f"{url}{path}", trust_env=False)
    assert response.status_code == status and response.headers["content-type"] == "application/json"
    assert isinstance(response.json()["error"], str) and response.json()["error"]
    if status == 405:
        assert response.headers["allow"]
