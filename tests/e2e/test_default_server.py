"""End to end: exactly the README's ``trustserve serve`` on the embedded offline model, over real HTTP."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image
from skimage import data

from tests.support.browser import needs_browser
from tests.support.live_server import LiveServer, default_server

LABELS = ["espresso", "a cat", "a rocket"]
# the first test also starts the server, which on a fresh machine exports and measures the towers
pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("default-server")
    srv = default_server(root / "store", log_path=root / "server.log").start()
    # /readyz must be red while the model loads and warms up, then green
    first = None
    for _ in range(50):
        try:
            first = httpx.get(f"{srv.url}/readyz", timeout=2)
            break
        except httpx.HTTPError:
            import time

            time.sleep(0.1)
    # the first start on a fresh machine exports the towers (ONNX, OpenVINO) and measures them (~2.5 min
    # on a loaded 2-core box); later starts read the export cache
    srv.wait_ready(timeout_s=600)
    srv.first_readyz = first  # type: ignore[attr-defined]
    yield srv
    srv.stop()


def _jpeg(photo: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(getattr(data, photo)()).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _classify(url: str, image: bytes, labels: list[str] = LABELS) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/classify",
        files={"image": ("photo.jpg", image, "image/jpeg")},
        data={"labels": json.dumps(labels)},
        timeout=60,
    )


def test_readyz_was_red_before_warm_up(server: LiveServer) -> None:
    first = server.first_readyz  # type: ignore[attr-defined]
    assert first is None or first.status_code == 503
    assert httpx.get(f"{server.url}/readyz").json()["status"] == "ok"


@pytest.mark.parametrize(
    ("photo", "expected"), [("coffee", "espresso"), ("chelsea", "a cat"), ("rocket", "a rocket")]
)
def test_real_photos_are_classified_correctly(server: LiveServer, photo: str, expected: str) -> None:
    r = _classify(server.url, _jpeg(photo))
    assert r.status_code == 200, r.text
    result = r.json()["results"][0]
    assert result["prediction"]["label"] == expected
    assert r.json()["model"] == "offline-conse"


@pytest.mark.parametrize(
    "payload",
    [b"", b"GIF89a garbage", b"\x89PNG\r\n\x1a\n" + b"\x00" * 50, b"<html>not an image</html>"],
)
def test_hostile_images_get_4xx_and_the_server_keeps_serving(server: LiveServer, payload: bytes) -> None:
    r = _classify(server.url, payload)
    assert 400 <= r.status_code < 500, r.text
    assert r.json()["error"]["message"]
    assert _classify(server.url, _jpeg("chelsea")).status_code == 200


def test_json_body_with_base64_images(server: LiveServer) -> None:
    import base64

    body = {"images": [base64.b64encode(_jpeg("coffee")).decode()], "labels": LABELS, "top_k": 2}
    r = httpx.post(f"{server.url}/v1/classify", json=body, timeout=60)
    assert r.status_code == 200
    top = r.json()["results"][0]["top_k"]
    assert len(top) == 2 and top[0]["label"] == "espresso"


def test_models_and_metrics(server: LiveServer) -> None:
    models = httpx.get(f"{server.url}/v1/models").json()["models"]
    assert models[0]["id"] == "offline-conse" and models[0]["device"] == "cpu"
    assert "trustserve_http_requests_total" in httpx.get(f"{server.url}/metrics").text


def test_server_log_is_json_and_carries_request_ids(server: LiveServer) -> None:
    _classify(server.url, _jpeg("rocket"))
    lines = [
        json.loads(line)
        for line in Path(server.log_path).read_text().splitlines()  # type: ignore[arg-type]
        if line.startswith("{")
    ]
    assert any(entry.get("route") == "/v1/classify" and entry.get("request_id") for entry in lines)


@needs_browser
def test_the_web_console_classifies_coffee_as_espresso(server: LiveServer, tmp_path: Path) -> None:
    """The README's server in a real browser (network cut off): coffee.jpg against the README's labels."""
    from selenium.webdriver.common.by import By

    from tests.support.browser import (
        chromium,
        console_errors,
        foreign_requests,
        full_page_screenshot,
        wait_for,
    )

    coffee = tmp_path / "coffee.jpg"
    coffee.write_bytes(_jpeg("coffee"))
    with chromium() as browser:
        browser.get(f"{server.url}/")  # redirects to the console
        image = wait_for(lambda: browser.find_element(By.CSS_SELECTOR, "[data-testid=image-input]"))
        assert browser.current_url == f"{server.url}/ui/"
        image.send_keys(str(coffee))
        labels = browser.find_element(By.CSS_SELECTOR, "[data-testid=labels]")
        labels.clear()
        labels.send_keys(", ".join(LABELS))
        browser.find_element(By.CSS_SELECTOR, "[data-testid=classify]").click()
        shown = wait_for(
            lambda: browser.find_element(By.CSS_SELECTOR, "[data-testid=prediction]").text, what="the answer"
        )
        assert shown == "espresso"
        assert "offline-conse" in browser.find_element(By.CSS_SELECTOR, "[data-testid=result]").text
        full_page_screenshot(browser, "console-try-it-offline-model")
        assert foreign_requests(browser, server.url) == []
        assert console_errors(browser) == []
