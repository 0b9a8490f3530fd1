"""The BentoML service over real HTTP: one `smallnets serve` process (real-weights EfficientNet-Lite0) per module.

Every bad request must get a 4xx JSON ``{"error": ...}`` and leave the server serving the next good request.
"""

from __future__ import annotations

import io
import math
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from servers import smallnets_server
from test_images import png_header_only

MAX_UPLOAD_MB = 1  # small cap so the 413 case sends little
MAX_BATCH_IMAGES = 4
MAX_BATCH_SIZE = 2  # below MAX_BATCH_IMAGES, so a batch request is split across ONNX Runtime batches
MAX_REQUEST_PIXELS = 5_000_000  # decoded pixels per request: a 4000x3000 JPEG decodes at half scale (3 MP) and fits
CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967
JSON = {"content-type": "application/json"}


def jpeg(image: Image.Image, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=92, **options)
    return buffer.getvalue()


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


@dataclass
class Server:
    url: str

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60)


@pytest.fixture(scope="module")
def model(exported) -> Path:
    return exported("efficientnet_lite0", weights="imagenet")


@pytest.fixture(scope="module")
def server(model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`smallnets serve` on real-weights Lite0 with small caps, so the 413 and batch-split cases stay cheap."""
    limits = {
        "SMALLNETS_MAX_UPLOAD_MB": str(MAX_UPLOAD_MB),
        "SMALLNETS_MAX_BATCH_IMAGES": str(MAX_BATCH_IMAGES),
        "SMALLNETS_MAX_BATCH_SIZE": str(MAX_BATCH_SIZE),
        "SMALLNETS_MAX_REQUEST_PIXELS": str(MAX_REQUEST_PIXELS),
    }
    with smallnets_server(model, tmp_path_factory.mktemp("server"), limits) as url:
        yield Server(url)


@pytest.fixture(scope="module")
def http(server: Server) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


@pytest.fixture(scope="module")
def upright(photos: dict[str, Image.Image]) -> dict[str, bytes]:
    return {name: jpeg(photos[name]) for name in ("chelsea", "coffee", "astronaut", "rocket")}


def classify(http: httpx.Client, data: bytes, top_k: int | None = None, name: str = "photo.jpg") -> httpx.Response:
    fields = {} if top_k is None else {"top_k": str(top_k)}
    return http.post("/classify", files={"image": (name, data, "image/jpeg")}, data=fields)


def predictions(response: httpx.Response) -> list[dict]:
    assert response.status_code == 200, response.text
    return response.json()["predictions"]


def test_health_endpoints(http: httpx.Client) -> None:
    assert http.get("/livez").status_code == 200
    assert http.get("/readyz").status_code == 200


def test_metadata_describes_the_model(http: httpx.Client) -> None:
    response = http.get("/metadata")
    assert response.status_code == 200
    meta = response.json()
    assert meta["name"] == "efficientnet_lite0" and meta["precision"] == "fp32"
    assert meta["input_size"] == [3, 224, 224]
    assert meta["params"] > 4_000_000 and meta["macs"] > 300_000_000
    assert meta["model_tag"].startswith("efficientnet_lite0_fp32:")
    assert "CPUExecutionProvider" in meta["providers"] and meta["threads"] >= 1
    assert meta["max_upload_bytes"] == MAX_UPLOAD_MB * 1024 * 1024
    assert meta["max_batch_images"] == MAX_BATCH_IMAGES and meta["max_batch_size"] == MAX_BATCH_SIZE
    assert meta["max_request_pixels"] == MAX_REQUEST_PIXELS
    # Sized from the CPUs this process may use (affinity, capped by a cgroup quota when in a container).
    assert meta["workers"] >= 1 and meta["threads_per_worker"] >= 1 and meta["decode_threads"] >= 1
    assert meta["workers"] * meta["threads_per_worker"] <= meta["cores"]
    assert meta["cpu_quota"] is None or meta["cores"] <= max(1, math.ceil(meta["cpu_quota"]))
    assert meta["latency_target_s"] <= meta["request_timeout_s"] and meta["request_timeout_s"] > 0
    assert set(meta["raw_image_types"]) == {"image/jpeg", "image/png", "image/webp"}


def test_cat_photo_gives_a_cat(http: httpx.Client, upright: dict[str, bytes]) -> None:
    response = classify(http, upright["chelsea"])
    body = response.json()
    found = predictions(response)
    assert body["model"] == "efficientnet_lite0_fp32" and body["inference_ms"] > 0
    assert len(found) == 5
    scores = [p["score"] for p in found]
    assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1.0 + 1e-6
    assert any(p["class_id"] in CAT_CLASSES for p in found[:3]), found
    assert all("cat" in p["label"] for p in found[:3] if p["class_id"] in CAT_CLASSES)


def test_top_k_is_honoured(http: httpx.Client, upright: dict[str, bytes]) -> None:
    assert len(predictions(classify(http, upright["coffee"], top_k=1))) == 1
    found = predictions(classify(http, upright["coffee"], top_k=20))
    assert len(found) == 20 and found[0]["class_id"] == ESPRESSO


def test_batch_endpoint_answers_in_order(http: httpx.Client, upright: dict[str, bytes]) -> None:
    """Three images, batches of at most two: the request is split across batches and joined back in order."""
    names = ["coffee", "chelsea", "coffee"]
    files = [("images", (f"{name}.jpg", upright[name], "image/jpeg")) for name in names]
    response = http.post("/classify_batch", files=files, data={"top_k": "3"})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results) == len(names)
    for name, result in zip(names, results, strict=True):
        single = predictions(classify(http, upright[name], top_k=3))
        assert [p["class_id"] for p in result["predictions"]] == [p["class_id"] for p in single]
        np.testing.assert_allclose([p["score"] for p in result["predictions"]], [p["score"] for p in single], atol=1e-4)
        assert 1 <= result["batch_size"] <= MAX_BATCH_SIZE
    assert max(result["batch_size"] for result in results) == MAX_BATCH_SIZE
    assert results[0]["predictions"][0]["class_id"] == ESPRESSO
    assert any(p["class_id"] in CAT_CLASSES for p in results[1]["predictions"])


def test_concurrent_requests_get_their_own_answers(server: Server, upright: dict[str, bytes]) -> None:
    """Several threads, different photos at once: adaptive batching must not mix up answers."""
    with server.client() as client:
        expected = {name: predictions(classify(client, data)) for name, data in upright.items()}
    jobs = [name for _ in range(6) for name in upright]

    def run(name: str) -> tuple[str, list[dict], int]:
        with server.client() as client:
            response = classify(client, upright[name])
            return name, predictions(response), response.json()["batch_size"]

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(run, jobs))
    assert [name for name, _, _ in answers] == jobs
    # Eight clients against one inference at a time: requests queue while a batch runs and get merged.
    assert max(batch_size for _, _, batch_size in answers) > 1
    for name, found, _ in answers:
        assert [p["class_id"] for p in found] == [p["class_id"] for p in expected[name]], name
        np.testing.assert_allclose([p["score"] for p in found], [p["score"] for p in expected[name]], atol=1e-4)


@pytest.mark.parametrize("name", ["coffee", "rocket"])
def test_exif_orientation_matters(http: httpx.Client, photos: dict[str, Image.Image], name: str) -> None:
    """A sideways-stored photo with its EXIF tag classifies like the upright one; without the tag it does not."""
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    sideways = photos[name].transpose(Image.Transpose.ROTATE_90)
    reference = predictions(classify(http, jpeg(photos[name]), top_k=20))
    tagged = predictions(classify(http, jpeg(sideways, exif=exif.tobytes()), top_k=20))
    untagged = predictions(classify(http, jpeg(sideways), top_k=20))

    def distance(found: list[dict]) -> float:
        """L1 distance of the reference's top-20 probabilities (JPEG re-encoding alone gives ~0.01-0.04)."""
        scores = {p["class_id"]: p["score"] for p in found}
        return sum(abs(p["score"] - scores.get(p["class_id"], 0.0)) for p in reference)

    assert tagged[0]["class_id"] == reference[0]["class_id"]
    assert distance(tagged) < 0.1 < 0.3 < distance(untagged)


@pytest.mark.parametrize("kind", ["grayscale", "rgba", "palette", "cmyk", "png16", "gif_animated", "webp_animated"])
def test_unusual_valid_images_are_classified(http: httpx.Client, photos: dict[str, Image.Image], kind: str) -> None:
    coffee = photos["coffee"]
    second = Image.new("RGB", coffee.size, (0, 90, 200))
    third = Image.new("RGB", coffee.size, (200, 30, 0))
    data = {
        "grayscale": lambda: encode(coffee.convert("L"), "PNG"),
        "rgba": lambda: encode(coffee.convert("RGBA"), "PNG"),
        "palette": lambda: encode(coffee.convert("P", palette=Image.Palette.ADAPTIVE), "PNG"),
        "cmyk": lambda: jpeg(coffee.convert("CMYK")),
        "png16": lambda: encode(Image.fromarray(np.asarray(coffee.convert("L"), dtype=np.uint16) * 257), "PNG"),
        "gif_animated": lambda: encode(coffee, "GIF", save_all=True, append_images=[second, third], duration=50),
        "webp_animated": lambda: encode(coffee, "WEBP", save_all=True, append_images=[second, third], duration=50),
    }[kind]()
    found = predictions(classify(http, data, top_k=5))
    if kind not in ("grayscale", "png16"):  # colour survives: the espresso is still an espresso
        assert found[0]["class_id"] == ESPRESSO, found
    else:
        assert len(found) == 5


def assert_rejected(response: httpx.Response, status: int | tuple[int, ...], fragment: str) -> None:
    statuses = status if isinstance(status, tuple) else (status,)
    assert response.status_code in statuses, (response.status_code, response.text)
    body = response.json()
    assert isinstance(body, dict) and isinstance(body.get("error"), str), body
    assert fragment.lower() in body["error"].lower(), body["error"]


@pytest.fixture
def still_serving(http: httpx.Client, upright: dict[str, bytes]) -> Iterator[None]:
    """After each bad request, a good one still gets the right answer."""
    yield
    found = predictions(classify(http, upright["coffee"], top_k=1))
    assert found[0]["class_id"] == ESPRESSO


# A chunked upload (no Content-Length) whose file part never ends: the cap must stop it while streaming.
CHUNKED_PART_HEADER = (
    b'--x\r\nContent-Disposition: form-data; name="image"; filename="big.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
)

BAD_REQUESTS = {
    "empty_body": (lambda http: http.post("/classify"), 400, "multipart"),
    "json_body": (lambda http: http.post("/classify", json={"image": "x"}), 415, "multipart"),
    "missing_field": (lambda http: http.post("/classify", files={"photo": ("a.jpg", b"xx")}), 400, "'image'"),
    "empty_file": (lambda http: http.post("/classify", files={"image": ("a.jpg", b"")}), 400, "empty"),
    "not_an_image": (lambda http: http.post("/classify", files={"image": ("a.jpg", b"hello " * 100)}), 400, "a.jpg"),
    "bomb": (lambda http: http.post("/classify", files={"image": ("b.png", png_header_only(30000, 30000))}), 400, ""),
    "top_k_zero": (
        lambda http: http.post("/classify", files={"image": ("a", b"x")}, data={"top_k": "0"}),
        400,
        "top_k",
    ),
    "top_k_big": (
        lambda http: http.post("/classify", files={"image": ("a", b"x")}, data={"top_k": "21"}),
        400,
        "top_k",
    ),
    "top_k_text": (
        lambda http: http.post("/classify", files={"image": ("a", b"x")}, data={"top_k": "ab"}),
        400,
        "top_k",
    ),
    "too_large": (
        lambda http: http.post("/classify", files={"image": ("big.jpg", b"\xff" * (MAX_UPLOAD_MB * 1024 * 1024 + 1))}),
        413,
        "too large",
    ),
    "too_large_chunked": (
        lambda http: http.post(
            "/classify",
            content=iter([CHUNKED_PART_HEADER] + [b"\0" * 65536] * (MAX_UPLOAD_MB * 16 + 2)),
            headers={"content-type": "multipart/form-data; boundary=x"},
        ),
        413,
        "too large",
    ),
    "malformed_multipart": (
        lambda http: http.post(
            "/classify",
            content=b"--nope\r\ngarbage",
            headers={"content-type": "multipart/form-data; boundary=other"},
        ),
        400,
        "",
    ),
    "two_images_on_single": (
        lambda http: http.post("/classify", files=[("image", ("a", b"1")), ("image", ("b", b"2"))]),
        400,
        "too many",
    ),
    "too_many_batch_images": (
        lambda http: http.post(
            "/classify_batch", files=[("images", (f"{i}.jpg", b"x")) for i in range(MAX_BATCH_IMAGES + 1)]
        ),
        400,
        "too many",
    ),
    "batch_missing_field": (lambda http: http.post("/classify_batch", files={"image": ("a", b"x")}), 400, "'images'"),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_input_is_a_clear_4xx(http: httpx.Client, still_serving: None, case: str) -> None:
    send, status, fragment = BAD_REQUESTS[case]
    assert_rejected(send(http), status, fragment)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_image_is_a_clear_4xx(
    http: httpx.Client, still_serving: None, photos: dict[str, Image.Image], fmt: str
) -> None:
    data = encode(photos["chelsea"], fmt)
    response = http.post("/classify", files={"image": (f"cut.{fmt.lower()}", data[: len(data) // 2])})
    assert_rejected(response, 400, f"cut.{fmt.lower()}")


def test_one_bad_image_in_a_batch_names_it(http: httpx.Client, still_serving: None, upright: dict[str, bytes]) -> None:
    files = [("images", ("good.jpg", upright["coffee"])), ("images", ("broken.jpg", b"not a picture"))]
    assert_rejected(http.post("/classify_batch", files=files), 400, "broken.jpg")


def test_url_in_a_file_field_is_never_fetched(http: httpx.Client, still_serving: None) -> None:
    """A text value that looks like a URL must not make the server connect anywhere (no SSRF)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        listener.settimeout(1.0)
        target = f"http://127.0.0.1:{listener.getsockname()[1]}/x.jpg"
        for endpoint, field in (("/classify", "image"), ("/classify_batch", "images")):
            text_part = f'--b\r\nContent-Disposition: form-data; name="{field}"\r\n\r\n{target}\r\n--b--\r\n'.encode()
            multipart = {"content-type": "multipart/form-data; boundary=b"}
            assert_rejected(http.post(endpoint, content=text_part, headers=multipart), 400, "never downloads")
            assert_rejected(http.post(endpoint, data={field: target}), 415, "multipart")
            assert_rejected(http.post(endpoint, content=f'"{target}"', headers=JSON), 415, "multipart")
        with pytest.raises(TimeoutError):
            listener.accept()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_raw_image_body_classifies_like_multipart(
    http: httpx.Client, photos: dict[str, Image.Image], upright: dict[str, bytes], fmt: str
) -> None:
    """The bytes themselves as the body (Content-Type image/...), top_k in the query string."""
    data = (
        upright["coffee"]
        if fmt == "JPEG"
        else encode(photos["coffee"], fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    )
    raw = http.post("/classify", content=data, headers={"content-type": f"image/{fmt.lower()}"}, params={"top_k": 3})
    multipart = classify(http, data, top_k=3, name=f"coffee.{fmt.lower()}")
    assert [p["class_id"] for p in predictions(raw)] == [p["class_id"] for p in predictions(multipart)]
    assert predictions(raw)[0]["class_id"] == ESPRESSO and len(predictions(raw)) == 3
    np.testing.assert_allclose(
        [p["score"] for p in predictions(raw)], [p["score"] for p in predictions(multipart)], atol=1e-5
    )


RAW_BAD_REQUESTS = {
    "octet_stream": (
        lambda http: http.post("/classify", content=b"\xff\xd8", headers={"content-type": "application/octet-stream"}),
        415,
        "image/jpeg",
    ),
    "empty": (lambda http: http.post("/classify", content=b"", headers={"content-type": "image/png"}), 400, "empty"),
    "not_an_image": (
        lambda http: http.post("/classify", content=b"hello" * 50, headers={"content-type": "image/jpeg"}),
        400,
        "body",
    ),
    "top_k": (
        lambda http: http.post("/classify", content=b"x", headers={"content-type": "image/jpeg"}, params={"top_k": 99}),
        400,
        "top_k",
    ),
    "too_large": (
        lambda http: http.post(
            "/classify", content=b"\0" * (MAX_UPLOAD_MB * 1024 * 1024 + 1), headers={"content-type": "image/webp"}
        ),
        413,
        "too large",
    ),
    "too_large_chunked": (
        lambda http: http.post(
            "/classify",
            content=iter([b"\0" * 65536] * (MAX_UPLOAD_MB * 16 + 2)),
            headers={"content-type": "image/jpeg"},
        ),
        413,
        "too large",
    ),
}


@pytest.mark.parametrize("case", sorted(RAW_BAD_REQUESTS))
def test_bad_raw_body_is_a_clear_4xx(http: httpx.Client, still_serving: None, case: str) -> None:
    send, status, fragment = RAW_BAD_REQUESTS[case]
    assert_rejected(send(http), status, fragment)


def server_timing(response: httpx.Response) -> dict[str, float]:
    """The ``Server-Timing`` header as {name: milliseconds}."""
    timings = {}
    for entry in response.headers["server-timing"].split(","):
        name, _, duration = entry.strip().partition(";dur=")
        timings[name] = float(duration)
    return timings


def test_server_timing_says_where_the_time_went(http: httpx.Client, upright: dict[str, bytes]) -> None:
    response = classify(http, upright["chelsea"])
    assert response.status_code == 200
    timing = server_timing(response)
    assert set(timing) == {"queue", "decode", "preprocess", "inference", "total"}, timing
    assert timing["decode"] > 0 and timing["preprocess"] > 0 and timing["inference"] > 0
    phases = timing["queue"] + timing["decode"] + timing["preprocess"] + timing["inference"]
    assert phases <= timing["total"] * 1.01 + 0.1
    assert timing["inference"] == pytest.approx(response.json()["inference_ms"], abs=0.01)
    rejected = http.post("/classify", files={"image": ("a.jpg", b"junk")})
    assert rejected.status_code == 400 and "total" in server_timing(rejected)


def test_pixel_budget_refuses_a_request_before_decoding(http: httpx.Client, still_serving: None) -> None:
    """Headers declaring 4 x 1.5 MP (over the 5 MP budget) with no pixel data: 413 naming the limit, not a 400
    for the missing data, so nothing was decoded."""
    files = [("images", (f"{i}.png", png_header_only(1500, 1000))) for i in range(4)]
    response = http.post("/classify_batch", files=files)
    assert_rejected(response, 413, f"limit of {MAX_REQUEST_PIXELS}")
    assert "SMALLNETS_MAX_REQUEST_PIXELS" in response.json()["error"] and "6000000 pixels" in response.json()["error"]


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_large_photo_is_shrunk_while_decoding_and_still_right(
    http: httpx.Client, photos: dict[str, Image.Image], fmt: str
) -> None:
    """Big uploads give the small photo's answer: a 12 MP JPEG (decoded at half scale) and a 3 MP palette PNG
    (expanded to RGB, then box-reduced: palette indices cannot be averaged); both fit the 1 MB upload cap."""
    if fmt == "JPEG":
        data = jpeg(photos["chelsea"].resize((4000, 3000), Image.Resampling.BICUBIC))
    else:
        big = photos["chelsea"].resize((2048, 1536), Image.Resampling.BICUBIC)
        data = encode(big.convert("P", palette=Image.Palette.ADAPTIVE), "PNG", optimize=True)
    small = predictions(classify(http, jpeg(photos["chelsea"]), top_k=3))
    found = predictions(classify(http, data, top_k=3))
    assert found[0]["class_id"] in CAT_CLASSES and {p["class_id"] for p in found} & {p["class_id"] for p in small}


def metric_values(text: str, name: str) -> dict[str, float]:
    """Samples of one metric as {label string: value}."""
    values = {}
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            values[key[len(name) :]] = float(value)
    return values


def test_metrics_cover_requests_latency_phases_batches_queue_and_model(
    http: httpx.Client, upright: dict[str, bytes]
) -> None:
    predictions(classify(http, upright["rocket"]))
    http.post("/classify", files={"image": ("junk.jpg", b"junk")})
    text = http.get("/metrics").text
    requests = metric_values(text, "smallnets_requests_total")
    assert requests['{route="/classify",status="200"}'] >= 1 and requests['{route="/classify",status="400"}'] >= 1
    durations = metric_values(text, "smallnets_request_duration_seconds_count")
    assert durations['{route="/classify"}'] >= 2
    phases = metric_values(text, "smallnets_request_phase_seconds_count")
    assert {key.split('"')[1] for key in phases} == {"queue", "decode", "preprocess", "inference"}
    for metric in ("smallnets_inference_seconds_count", "smallnets_batch_size_count"):
        assert metric_values(text, metric)['{model="efficientnet_lite0_fp32"}'] >= 1
    assert metric_values(text, "smallnets_queue_depth") and metric_values(text, "smallnets_predicted_wait_seconds")
    (info,) = metric_values(text, "smallnets_model_info").items()
    assert 'model="efficientnet_lite0_fp32"' in info[0] and 'precision="fp32"' in info[0] and info[1] == 1.0
    assert "bentoml_service_request_total" in text


@pytest.mark.parametrize("body", ["multipart", "raw"])
def test_bench_http_reads_the_server_timing_and_memory(server: Server, body: str) -> None:
    """`smallnets bench-http`'s load loop against this server: phases from Server-Timing, RSS via the socket."""
    from smallnets.benchmarks.http_load import load_payloads, run_load

    (level,) = run_load(
        server.url, load_payloads("samples")[:2], (2,), 1.0, warmup_requests=1, progress=False, body=body
    )
    assert level.ok > 0 and level.errors == {}
    assert set(level.server_timing_ms) == {"queue", "decode", "preprocess", "inference", "total"}
    assert 0 < level.server_timing_ms["inference"] < level.server_timing_ms["total"] <= level.p99_ms
    assert level.server_rss_mb is not None and level.server_rss_mb > 50  # a worker holding a model session
