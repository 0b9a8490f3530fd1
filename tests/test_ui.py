"""The service's pages: `/` and `/docs` load nothing from another host, the OpenAPI document is complete and
versioned, and the classifier page classifies a real photo in a real headless Chromium.

One real `smallnets serve` process (real-weights EfficientNet-Lite0) per module. The browser test needs Debian's
``chromium`` and ``chromium-driver`` (``.ci/run`` installs them) and skips, naming them, where they are missing.
"""

from __future__ import annotations

import base64
import io
import os
import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx
import pytest
from PIL import Image
from servers import smallnets_server

import smallnets
from smallnets.core.images import decode_image
from smallnets.core.runtime import OnnxClassifier
from smallnets.serve.oip import oip_app
from smallnets.serve.ui.pages import pages_app

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
REMOTE_URL = re.compile(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", re.IGNORECASE)
WAIT_S = 90


@pytest.fixture(scope="module")
def model(exported) -> Path:
    return exported("efficientnet_lite0", weights="imagenet")


@pytest.fixture(scope="module")
def url(model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with smallnets_server(model, tmp_path_factory.mktemp("ui-server")) as base_url:
        yield base_url


class LoadedResources(HTMLParser):
    """What a page makes the browser load (src/href/srcset/... attributes) and its inline script/style code."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.inline_code: list[str] = []
        self._in_code = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        loaded = {"src", "href", "srcset", "data", "action", "poster", "background"}
        self.urls += [value for name, value in attrs if name in loaded and value and tag != "a"]
        self._in_code = tag in ("script", "style")

    def handle_endtag(self, tag: str) -> None:
        self._in_code = False

    def handle_data(self, data: str) -> None:
        if self._in_code:
            self.inline_code.append(data)


def page_resources(base: str, path: str) -> tuple[LoadedResources, str]:
    response = httpx.get(f"{base}{path}", follow_redirects=True, timeout=30)
    assert response.status_code == 200, (path, response.status_code)
    assert response.headers["content-type"].startswith("text/html")
    parser = LoadedResources()
    parser.feed(response.text)
    return parser, str(response.url)


@pytest.mark.parametrize("path", ["/", "/ui", "/docs"])
def test_pages_load_nothing_from_other_hosts(url: str, path: str) -> None:
    resources, final_url = page_resources(url, path)
    assert resources.urls, "the page loads its script and style from this server"
    for link in resources.urls:
        if link.startswith("data:"):  # inline (the empty favicon): loads nothing
            continue
        absolute = urljoin(final_url, link)
        assert urlsplit(absolute).netloc == urlsplit(url).netloc, f"{path} loads {link} from another host"
        if link.startswith("/ui/static/"):  # our own scripts and styles: no remote URL in them at all
            assert not REMOTE_URL.search(httpx.get(absolute, timeout=30).text), link
        else:
            assert httpx.get(absolute, timeout=30).status_code == 200, link
    for code in resources.inline_code:
        assert not REMOTE_URL.search(code), f"{path} has inline code referring to another host: {code[:200]}"


def test_root_redirects_to_the_classifier_page(url: str) -> None:
    response = httpx.get(f"{url}/", timeout=30)
    assert response.status_code == 307 and response.headers["location"] == "/ui"


def test_openapi_document_is_complete_and_versioned(url: str) -> None:
    spec = httpx.get(f"{url}/docs.json", timeout=30).json()
    assert spec["info"]["version"] == smallnets.__version__
    assert not REMOTE_URL.search(spec["info"]["description"]), "the description renders images from other hosts"
    paths = set(spec["paths"])
    assert {"/classify", "/classify_batch", "/metadata", "/ui", "/docs", "/livez", "/readyz", "/metrics"} <= paths
    mounted = {
        route.path
        for app in (oip_app, pages_app)
        for route in app.routes
        if "methods" in dir(route)
        and route.methods  # routes, not static-file mounts
        and not route.path.endswith(":path}")  # the catch-all that answers unknown /v2 paths with a JSON 404
    }
    assert mounted - paths == set(), "every mounted route is documented"
    infer = spec["paths"]["/v2/models/{model}/infer"]["post"]
    assert infer["requestBody"]["content"]["application/json"]["schema"]["required"] == ["inputs"]


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Headless Chromium from Debian's packages; every host but this machine unresolvable (an offline machine)."""
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
    if missing:
        pytest.skip(
            f"{', '.join(missing)} missing: install Debian's browser with `apt-get install -y chromium "
            "chromium-driver` (.ci/run does)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-dev-shm-usage",
        "--window-size=1280,1000",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(WAIT_S)
    yield driver
    driver.quit()


# A drop event carrying a file, as a user dragging a photo from their desktop makes (WebDriver cannot drag files).
DROP_FILE = """
const [zone, data, name] = arguments;
const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
const transfer = new DataTransfer();
transfer.items.add(new File([bytes], name, { type: "image/jpeg" }));
zone.dispatchEvent(new DragEvent("drop", { dataTransfer: transfer, bubbles: true, cancelable: true }));
"""


def loaded_origins(driver) -> set[str]:
    """Origins of every resource the page requested (the Resource Timing entries, failed loads included)."""
    entries = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    return {urlsplit(name).netloc for name in entries if not name.startswith(("data:", "blob:"))}


def jpeg_file(image: Image.Image, path: Path) -> Path:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=92)
    path.write_bytes(buffer.getvalue())
    return path


def test_classifier_page_in_a_browser(
    browser, url: str, model: Path, photos: dict[str, Image.Image], tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, WAIT_S)
    photo = jpeg_file(photos["chelsea"], tmp_path / "chelsea.jpg")
    local = OnnxClassifier(model)
    expected = local.classify([decode_image(photo.read_bytes())], k=5)[0]

    browser.get(f"{url}/")
    assert urlsplit(browser.current_url).path == "/ui"
    wait.until(lambda d: d.find_element(By.ID, "card-architecture").text not in ("", "…"))
    shots = screenshots(tmp_path)
    assert browser.save_screenshot(str(shots / "ui-before-upload.png"))
    assert nothing_of_a_photo_shown(browser), "before any upload: no latency labels, no picture, no classes"
    assert not browser.find_element(By.ID, "weights-warning").is_displayed()  # real weights
    weights = browser.find_element(By.ID, "card-weights").text
    assert weights.startswith("imagenet") and not re.search(r"[0-9a-f]{20}", weights), "no full checksum"
    card = {key: browser.find_element(By.ID, f"card-{key}").text for key in ("architecture", "precision", "accuracy")}
    assert "efficientnet_lite0" in card["architecture"] and card["precision"] == "fp32"
    # The card's own status for a published checkpoint: the quoted figure's source, never a figure measured here.
    assert card["accuracy"].startswith("published (source: ImageNet-1k val") and "not measured" in card["accuracy"]
    assert "resize 256 (bicubic), center-crop 224" in browser.find_element(By.ID, "card-preprocessing").text

    # A random-weights model has no accuracy, whatever else its card says.
    metadata = httpx.get(f"{url}/metadata", timeout=30).json()
    browser.execute_script("renderCard(arguments[0])", {**metadata, "weights": "random seed 0"})
    assert browser.find_element(By.ID, "card-accuracy").text.startswith("unvalidated (random weights)")
    assert "random weights" in browser.find_element(By.ID, "weights-warning").text
    # An unvalidated card's source is advice to whoever runs the server: a visitor sees the status only.
    advice = "optimize: not validated (none given: set SMALLNETS_EVAL_DIR or --eval-dir); cosine 0.9947"
    unvalidated = {**metadata, "accuracy": {"status": "unvalidated", "top1": None, "source": advice}}
    browser.execute_script("renderCard(arguments[0])", unvalidated)
    accuracy = browser.find_element(By.ID, "card-accuracy").text
    assert accuracy.startswith("unvalidated") and "SMALLNETS_EVAL_DIR" not in accuracy and "cosine" not in accuracy
    verdict = "imagenet-dev, 248 photos; not validated: --max-drop 1.0 needs about 798 labelled report photos"
    measured = {**metadata, "accuracy": {"status": "measured", "top1": 89.516, "source": f"optimize, {verdict}"}}
    browser.execute_script("renderCard(arguments[0])", measured)
    accuracy = browser.find_element(By.ID, "card-accuracy").text
    assert accuracy == "top-1 89.5% measured (optimize, imagenet-dev, 248 photos)", accuracy
    browser.execute_script("renderCard(arguments[0])", metadata)

    browser.find_element(By.ID, "file-input").send_keys(str(photo))
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#predictions li")) == 5)
    rows = browser.find_elements(By.CSS_SELECTOR, "#predictions li")
    shown = [(int(row.get_attribute("data-class-id")), row.find_element(By.CLASS_NAME, "label").text) for row in rows]
    assert shown == [(p.class_id, p.label) for p in expected]
    assert shown[0][0] in CAT_CLASSES
    widths = [row.find_element(By.CLASS_NAME, "fill").size["width"] for row in rows]
    assert widths == sorted(widths, reverse=True) and widths[0] > widths[-1], "bars follow the scores"
    assert re.fullmatch(r"\d+\.\d ms", browser.find_element(By.ID, "latency-total").text)
    screenshot = tmp_path / "ui-chelsea.png"
    assert browser.save_screenshot(str(screenshot))
    print(f"screenshot: {screenshot}")
    assert loaded_origins(browser) == {urlsplit(url).netloc}

    # Dropped instead of picked: the same answer.
    browser.execute_script(
        DROP_FILE,
        browser.find_element(By.ID, "drop-zone"),
        base64.b64encode(photo.read_bytes()).decode(),
        "dropped.jpg",
    )
    wait.until(lambda d: d.find_element(By.ID, "status").text.startswith("dropped.jpg:"))
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#predictions li")) == 5)
    dropped = browser.find_elements(By.CSS_SELECTOR, "#predictions li")
    assert [int(row.get_attribute("data-class-id")) for row in dropped] == [p.class_id for p in expected]

    assert browser.find_element(By.ID, "latency").is_displayed()
    not_a_photo = tmp_path / "notes.jpg"
    not_a_photo.write_text("not a photo")
    browser.find_element(By.ID, "file-input").send_keys(str(not_a_photo))
    wait.until(lambda d: d.find_element(By.ID, "error").is_displayed())
    assert "notes.jpg" in browser.find_element(By.ID, "error").text
    assert browser.save_screenshot(str(shots / "ui-after-failed-upload.png"))
    print(f"screenshots: {shots}")
    assert nothing_of_a_photo_shown(browser), "after a failed upload: no broken picture, no earlier latency"
    assert browser.find_element(By.ID, "drop-hint").is_displayed()


def screenshots(tmp_path: Path) -> Path:
    """Where the page's screenshots go: $SMALLNETS_SCREENSHOTS (to look at them), else the test's folder."""
    folder = Path(os.environ.get("SMALLNETS_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def nothing_of_a_photo_shown(driver) -> bool:
    """No picture (nor a broken-image icon), no classes and no latency labels are on screen."""
    from selenium.webdriver.common.by import By

    latency_labels = [e for e in driver.find_elements(By.CSS_SELECTOR, "#latency dt, #latency dd") if e.is_displayed()]
    return (
        not driver.find_element(By.ID, "preview").is_displayed()
        and not driver.find_elements(By.CSS_SELECTOR, "#predictions li")
        and not latency_labels
    )


def test_a_random_weights_server_says_so_in_its_log_answers_metrics_and_page(
    browser, exported, photos: dict[str, Image.Image], tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    photo = jpeg_file(photos["chelsea"], tmp_path / "chelsea.jpg")
    with smallnets_server(exported("squeezenet1_1"), tmp_path) as random_url:
        answer = httpx.post(f"{random_url}/classify", files={"image": photo.read_bytes()}, timeout=60)
        assert answer.status_code == 200 and "random weights" in answer.headers["Warning"]
        (info,) = [
            line for line in httpx.get(f"{random_url}/metrics").text.splitlines() if "smallnets_model_info{" in line
        ]
        assert 'weights="random"' in info
        browser.get(f"{random_url}/ui")
        wait = WebDriverWait(browser, WAIT_S)
        wait.until(lambda d: d.find_element(By.ID, "weights-warning").is_displayed())
        browser.find_element(By.ID, "file-input").send_keys(str(photo))
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#predictions li")) == 5)
        assert "mean nothing" in browser.find_element(By.ID, "weights-warning").text
        assert browser.save_screenshot(str(screenshots(tmp_path) / "ui-random-weights.png"))
    log = (tmp_path / "serve.log").read_text()
    assert log.index("random weights") < log.index("serving "), "said before the server starts"


def test_docs_page_renders_offline_in_a_browser(browser, url: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(f"{url}/docs")
    WebDriverWait(browser, WAIT_S).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".opblock-summary-path"))
    shown = {
        element.text.replace("\u200b", "")
        for element in browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")
    }
    assert {"/classify", "/metadata", "/v2/models/{model}/infer", "/ui"} <= shown
    assert smallnets.__version__ in browser.find_element(By.CSS_SELECTOR, ".info .version").text
    assert loaded_origins(browser) == {urlsplit(url).netloc}
