"""The web console and the API docs in a real browser (Debian's chromium via Selenium; tests/support/
browser.py), against the real server process on the tiny model, with the network cut off. Screenshots of
every console page go to runs/console-screenshots/ (not committed)."""

from __future__ import annotations

import json
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select

from tests.labelsets.conftest import colour_image
from tests.support.browser import (
    PHONE,
    chromium,
    console_errors,
    foreign_requests,
    full_page_screenshot,
    horizontal_overflow,
    needs_browser,
    screenshot,
    unlabelled_controls,
    wait_for,
)
from tests.support.live_server import LiveServer, tiny_server
from tests.support.uploads import write_class_folders

pytestmark = [needs_browser, pytest.mark.timeout(600)]
COLOURS = ["blue", "green", "red"]
READ_KEY, ADMIN_KEY = "console-read-key-7c1d", "console-admin-key-93fe"
MONITOR_PATH = "/v1/label-sets/{label_set_id}/monitor"  # the monitoring issue adds it
REDOC_BADGE = "cdn.redoc.ly"  # ReDoc's footer logo: refused by the page's CSP, so never requested


def class_folders(root: Path, per_class: int, seed: int) -> Path:
    extras = {"notes.txt": "not an image: skipped"}
    return write_class_folders(root, COLOURS, per_class, seed, colour_image, extras)


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("class-folders")
    return {
        "support": class_folders(root / "support", 3, seed=0),
        "calibration": class_folders(root / "calibration", 10, seed=1000),
    }


@pytest.fixture(scope="module")
def server(tiny_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """The real server (loopback, no keys: a local user's own server) on the tiny model."""
    root = tmp_path_factory.mktemp("console-server")
    with tiny_server(tiny_models_dir, root / "store", log_path=root / "server.log") as srv:
        yield srv


@pytest.fixture(scope="module")
def keyed_server(tiny_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("console-keyed")
    env = {"TRUSTSERVE_API_KEYS": f"{READ_KEY}:read,{ADMIN_KEY}:admin"}
    with tiny_server(tiny_models_dir, root / "store", log_path=root / "server.log", env=env) as srv:
        yield srv


@pytest.fixture()
def browser() -> Iterator[Any]:
    with chromium() as driver:
        yield driver


def png_file(path: Path, label: str, seed: int) -> Path:
    colour_image(label, seed).save(path)
    return path


def css(driver: Any, selector: str) -> Any:
    return driver.find_element(By.CSS_SELECTOR, selector)


def text_of(driver: Any, selector: str) -> str:
    return css(driver, selector).text


def open_page(driver: Any, url: str, heading: str) -> None:
    driver.get(url)
    wait_for(lambda: css(driver, "main:not([aria-busy]) h1").text == heading, what=f"the {heading!r} page")


def classify_in_console(
    driver: Any, image: Path, *, labels: str | None = None, label_set: str | None = None
) -> str:
    wait_for(lambda: css(driver, "[data-testid=image-input]"), what="the Try it form").send_keys(str(image))
    wait_for(lambda: css(driver, "img.preview"), what="the image preview")
    if label_set is not None:
        css(driver, "[data-testid=use-label-set]").click()
        Select(css(driver, "[data-testid=label-set]")).select_by_value(label_set)
    if labels is not None:
        field = css(driver, "[data-testid=labels]")
        field.clear()
        field.send_keys(labels)
    top_k = css(driver, "[data-testid=top-k]")
    top_k.send_keys(Keys.ENTER)  # the keyboard submits the form
    return wait_for(lambda: text_of(driver, "[data-testid=prediction]"), what="the prediction")


# -- API docs --------------------------------------------------------------------------------------------
def test_api_docs_render_every_operation_with_the_network_cut_off(server: LiveServer, browser: Any) -> None:
    document = httpx.get(f"{server.url}/openapi.json").json()
    operations = [(m.upper(), p) for p, ops in document["paths"].items() for m in ops]
    # the control: this browser cannot reach the internet (so a CDN-loaded page would stay blank)
    with pytest.raises(WebDriverException, match="net::ERR_"):
        browser.get("https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui.css")
    browser.get_log("performance")

    browser.get(f"{server.url}/docs")
    wait_for(
        lambda: len(browser.find_elements(By.CSS_SELECTOR, ".opblock")) == len(operations), what="Swagger UI"
    )
    rendered = {
        (block.find_element(By.CSS_SELECTOR, ".opblock-summary-method").text,
         block.find_element(By.CSS_SELECTOR, ".opblock-summary-path").get_attribute("data-path"))
        for block in browser.find_elements(By.CSS_SELECTOR, ".opblock")
    }  # fmt: skip
    assert rendered == set(operations)
    screenshot(browser, "docs-swagger")
    assert foreign_requests(browser, server.url) == []
    assert console_errors(browser) == []

    browser.get(f"{server.url}/redoc")
    page_text = lambda: browser.find_element(By.TAG_NAME, "body").text  # noqa: E731
    wait_for(lambda: "/v1/label-sets/{label_set_id}/risk-coverage" in page_text(), what="ReDoc")
    body = page_text()
    assert all(summary in body for summary in ("Classify images among labels", "Create a label set"))
    screenshot(browser, "docs-redoc")
    assert foreign_requests(browser, server.url) == []
    assert console_errors(browser, allow=(REDOC_BADGE,)) == []


# -- the console -----------------------------------------------------------------------------------------
def test_console_classifies_an_image_like_the_api_does(
    server: LiveServer, browser: Any, tmp_path: Path
) -> None:
    image = png_file(tmp_path / "red.png", "red", 7)
    answer = httpx.post(
        f"{server.url}/v1/classify",
        files={"image": ("red.png", image.read_bytes(), "image/png")},
        data={"labels": json.dumps(COLOURS)},
    ).json()["results"][0]
    open_page(browser, f"{server.url}/ui/", "Try it")
    assert unlabelled_controls(browser) == []
    shown = classify_in_console(browser, image, labels=", ".join(COLOURS))
    assert shown == answer["prediction"]["label"]
    decision = text_of(browser, "[data-testid=decision]")
    assert "No decision" in decision and "(not calibrated)" in decision
    result = text_of(browser, "[data-testid=result]")
    for item in answer["top_k"]:
        assert item["label"] in result and f"{100 * item['probability']:.1f} %" in result
    assert "msp" in result and "No prediction set" in text_of(browser, "[data-testid=prediction-set]")
    full_page_screenshot(browser, "console-try-it")
    assert foreign_requests(browser, server.url) == []
    assert console_errors(browser) == []


def test_label_set_from_a_folder_calibrated_then_a_calibrated_decision(
    server: LiveServer, browser: Any, folders: dict[str, Path], tmp_path: Path
) -> None:
    open_page(browser, f"{server.url}/ui/#/label-sets", "Label sets")
    css(browser, "[data-testid=new-id]").send_keys("colours")
    css(browser, "[data-testid=new-folder]").send_keys(str(folders["support"]))
    wait_for(lambda: css(browser, "[data-testid=new-labels]").get_attribute("value") == "\n".join(COLOURS),
             what="labels filled from the folder names")  # fmt: skip
    assert unlabelled_controls(browser) == []
    css(browser, "[data-testid=create]").click()
    wait_for(
        lambda: css(browser, "main:not([aria-busy]) h1").text == "Label set colours",
        what="the label set's page",
    )
    classes = text_of(browser, "[data-testid=classes]")
    assert all(f"{label} 3 yes" in classes for label in COLOURS), classes

    css(browser, "[data-testid=calib-folder]").send_keys(str(folders["calibration"]))
    target = css(browser, "[data-testid=target]")
    target.clear()
    target.send_keys("0.8")
    css(browser, "[data-testid=calibrate]").click()
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "[data-testid=risk-coverage] svg polyline"),
             timeout_s=90, what="the risk-coverage curve")  # fmt: skip
    stored = httpx.get(f"{server.url}/v1/label-sets/colours").json()["calibration"]
    assert stored["rule"] == "target_coverage" and stored["n"] == 30
    evidence = text_of(browser, "[data-testid=calibration]")
    assert f"{stored['threshold']:.4f}" in evidence and "coverage ≥ 80.0 %" in evidence
    assert re.search(r"applies now\s+yes", evidence), evidence
    basis, shown_basis = stored["basis"], text_of(browser, "[data-testid=calibration-basis]")
    assert basis["towers"] and basis["arrays_sha256"][:16] in shown_basis
    for tower, t in basis["towers"].items():  # where each per-request tower computed
        assert f"{tower} {t['runtime']} {t['precision']} {t['dtype']} {t['device']}" in shown_basis
    assert "logit scale, bias" in shown_basis and f"{basis['logit_scale']:.4f}" in shown_basis
    chosen = httpx.get(f"{server.url}/v1/label-sets/colours").json()["selection"]
    shown = text_of(browser, "[data-testid=selection]")
    if chosen is None:  # fixed settings (selection_mode "fixed" or a score that selects nothing)
        assert "No selection recorded: the label set serves its own α = 1" in shown
    else:
        assert chosen["evidence"] in shown and chosen["policy"] in shown
    curve = text_of(browser, "[data-testid=risk-coverage]")
    assert "Risk-coverage of trustvlm on 30 calibration images" in curve
    assert "the calibrated rule accepts" in curve and f"{round(stored['coverage'] * 30)} of 30" in curve
    full_page_screenshot(browser, "console-label-set")

    open_page(browser, f"{server.url}/ui/#/label-sets", "Label sets")
    assert "colours" in text_of(browser, "[data-testid=label-set-list]")
    screenshot(browser, "console-label-sets")

    open_page(browser, f"{server.url}/ui/#/try", "Try it")
    classify_in_console(browser, png_file(tmp_path / "green.png", "green", 4242), label_set="colours")
    decision = text_of(browser, "[data-testid=decision]")
    assert "(calibrated)" in decision and ("Accept" in decision or "Reject" in decision)
    assert f"{stored['threshold']:.4f}" in decision and stored["guarantee"] in decision
    full_page_screenshot(browser, "console-try-it-label-set")

    open_page(browser, f"{server.url}/ui/#/monitoring/colours", "Monitoring")
    monitor = wait_for(lambda: text_of(browser, "[data-testid=monitor]"), what="the monitoring panel")
    assert "calibration coverage" in monitor and f"{100 * stored['coverage']:.1f} %" in monitor
    if MONITOR_PATH in httpx.get(f"{server.url}/openapi.json").json()["paths"]:
        assert (
            "acceptance rate (live)" in monitor
            and len(browser.find_elements(By.CSS_SELECTOR, "svg.chart")) == 3
        )
        expected_errors: tuple[str, ...] = ()
    else:  # before the monitoring issue's endpoint exists, the page says so (the 404 is the browser's log)
        assert "Live monitoring (GET /v1/label-sets/{id}/monitor): not available on this server" in monitor
        expected_errors = ("/v1/label-sets/colours/monitor - Failed to load resource: the server responded",)
    assert browser.find_element(By.LINK_TEXT, "/metrics").get_attribute("href") == f"{server.url}/metrics"
    screenshot(browser, "console-monitoring")
    assert foreign_requests(browser, server.url) == []
    assert console_errors(browser, allow=expected_errors) == []


def test_delete_needs_the_id_typed_in(server: LiveServer, browser: Any) -> None:
    r = httpx.post(f"{server.url}/v1/label-sets", json={"id": "to-delete", "labels": ["a", "b"]})
    assert r.status_code == 201, r.text
    open_page(browser, f"{server.url}/ui/#/label-sets/to-delete", "Label set to-delete")
    css(browser, "[data-testid=delete]").click()
    css(browser, "[data-testid=delete-confirm]").send_keys("wrong")
    css(browser, "[data-testid=delete-confirmed]").click()
    wait_for(lambda: "exactly" in css(browser, "dialog").text, what="the refusal")
    assert httpx.get(f"{server.url}/v1/label-sets/to-delete").status_code == 200
    field = css(browser, "[data-testid=delete-confirm]")
    field.clear()
    field.send_keys("to-delete", Keys.ENTER)
    wait_for(lambda: css(browser, "main:not([aria-busy]) h1").text == "Label sets", what="back to the list")
    assert httpx.get(f"{server.url}/v1/label-sets/to-delete").status_code == 404


def test_support_from_a_zip_of_class_folders_then_export_and_import(
    server: LiveServer, browser: Any, folders: dict[str, Path], tmp_path: Path
) -> None:
    r = httpx.post(f"{server.url}/v1/label-sets", json={"id": "zipped", "labels": COLOURS})
    assert r.status_code == 201, r.text
    archive = tmp_path / "support.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(folders["support"].rglob("*")):
            zf.write(path, path.relative_to(folders["support"]).as_posix())
    open_page(browser, f"{server.url}/ui/#/label-sets/zipped", "Label set zipped")
    css(browser, "[data-testid=support-archive]").send_keys(str(archive))
    css(browser, "[data-testid=add-support]").click()
    wait_for(lambda: all(f"{label} 3 yes" in text_of(browser, "[data-testid=classes]") for label in COLOURS),
             what="support counts after the archive")  # fmt: skip
    counts = {
        c["label"]: c["support_images"]
        for c in httpx.get(f"{server.url}/v1/label-sets/zipped").json()["classes"]
    }
    assert counts == dict.fromkeys(COLOURS, 3)

    # calibrated with tuning (through the API): the page shows how policy and α were chosen, every candidate
    calibration = sorted(folders["calibration"].glob("*/*.png"))
    r = httpx.post(
        f"{server.url}/v1/label-sets/zipped/calibrate",
        files=[("images", (p.name, p.read_bytes(), "image/png")) for p in calibration],
        data={"labels": json.dumps([p.parent.name for p in calibration]), "rule": "target_coverage",
              "target_coverage": "0.8", "tune": "true"},
        timeout=120,
    )  # fmt: skip
    assert r.status_code == 200, r.text
    chosen = r.json()["calibration"]["selection"]
    browser.refresh()  # the same URL: load the page again
    open_page(browser, f"{server.url}/ui/#/label-sets/zipped", "Label set zipped")
    wait_for(lambda: css(browser, "[data-testid=selection] table"), what="the selection evidence")
    selection = text_of(browser, "[data-testid=selection]")
    assert chosen["evidence"] == "calibration" and "calibration" in selection
    assert f"{chosen['selection']['n']} images" in selection
    rows = browser.find_elements(By.CSS_SELECTOR, "[data-testid=selection] table:last-of-type tbody tr")
    assert len(rows) == len(chosen["selection"]["candidates"]) > 1
    full_page_screenshot(browser, "console-label-set-tuned")

    # the export button downloads the archive the API serves (the same bytes: exports are deterministic)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    browser.execute_cdp_cmd(
        "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)}
    )
    css(browser, "[data-testid=export]").click()
    exported = downloads / "zipped.tar.gz"
    wait_for(lambda: exported.exists() and not list(downloads.glob("*.crdownload")), what="the download")
    assert exported.read_bytes() == httpx.get(f"{server.url}/v1/label-sets/zipped/export").content
    open_page(browser, f"{server.url}/ui/#/label-sets", "Label sets")
    css(browser, "[data-testid=import-file]").send_keys(str(exported))
    css(browser, "[data-testid=import-id]").send_keys("zipped-copy")
    css(browser, "[data-testid=import]").click()
    wait_for(
        lambda: css(browser, "main:not([aria-busy]) h1").text == "Label set zipped-copy", what="the import"
    )
    assert all(f"{label} 3 yes" in text_of(browser, "[data-testid=classes]") for label in COLOURS)
    assert foreign_requests(browser, server.url) == []
    assert console_errors(browser) == []


def test_monitor_answers_of_the_monitoring_issue_are_charted(server: LiveServer, browser: Any) -> None:
    """The page maps GET /v1/label-sets/{id}/monitor to its charts in one function; fed an answer of the
    endpoint's own schema (validated by ``MonitorOut``), it finds all three series and the window."""
    from app.api.schemas_label_sets import MonitorOut

    open_page(browser, f"{server.url}/ui/", "Try it")
    snapshot = MonitorOut.model_validate({
        "id": "x", "version": 3, "calibrated": True, "score": "trustvlm",
        "window": {"samples": 240, "undefined_scores": 0, "max_samples": 1000, "max_age_s": 3600.0,
                   "min_samples": 100, "start": "2026-09-21T13:33:20+00:00",
                   "end": "2026-09-21T13:43:20+00:00"},
        "live_acceptance_rate": 0.61, "calibration_coverage": 0.8, "estimated_accuracy": 0.83,
        "calibration_accuracy": 0.9, "drift": {"psi": 0.42, "ks": 0.2}, "note": None,
    }).model_dump(mode="json")  # fmt: skip
    numbers = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "import('/ui/static/js/render/monitor.js').then((m) => done(m.monitorNumbers(arguments[0])))"
        ".catch((e) => done(String(e)));",
        snapshot,
    )
    assert isinstance(numbers, dict), numbers
    assert numbers["acceptanceRate"] == 0.61 and numbers["calibrationCoverage"] == 0.8
    assert numbers["estimatedAccuracy"] == 0.83
    assert (numbers["drift"], numbers["driftName"]) == (0.42, "PSI")
    assert numbers["window"]["samples"] == 240 and numbers["window"]["from"].startswith("2026-09-21")


def test_the_pages_are_reachable_with_the_keyboard_alone(server: LiveServer, browser: Any) -> None:
    open_page(browser, f"{server.url}/ui/", "Try it")
    active = lambda: browser.switch_to.active_element  # noqa: E731
    assert active().tag_name == "h1"  # a new page moves the focus to its heading
    for _ in range(12):  # back from the heading through the header: key form, then the page links
        ActionChains(browser).key_down(Keys.SHIFT).send_keys(Keys.TAB).key_up(Keys.SHIFT).perform()
        if active().text == "Label sets":
            break
    assert active().text == "Label sets", "the navigation is not reachable with Tab"
    active().send_keys(Keys.ENTER)
    wait_for(
        lambda: css(browser, "main:not([aria-busy]) h1").text == "Label sets", what="Label sets by keyboard"
    )
    assert active().text == "Label sets" and active().tag_name == "h1"
    ActionChains(browser).send_keys(Keys.TAB).perform()  # the next stop is the page's first control
    assert browser.execute_script("return document.querySelector('main').contains(document.activeElement)")
    assert active().tag_name in ("a", "input", "button")


def test_readable_on_a_phone(server: LiveServer) -> None:
    r = httpx.post(f"{server.url}/v1/label-sets", json={"id": "phone", "labels": COLOURS})
    assert r.status_code == 201, r.text  # the pages then show a label set, not an empty list
    with chromium(size=PHONE) as phone:
        pages = (("try", "Try it"), ("label-sets", "Label sets"), ("monitoring", "Monitoring"))
        for page, heading in pages:
            open_page(phone, f"{server.url}/ui/#/{page}", heading)
            assert phone.execute_script("return document.documentElement.clientWidth") == PHONE[0]
            assert horizontal_overflow(phone) <= 0, f"{heading} is wider than a phone"
            assert unlabelled_controls(phone) == []
            screenshot(phone, f"console-phone-{page}")


# -- API keys --------------------------------------------------------------------------------------------
def test_a_read_only_key_cannot_reach_the_write_controls(keyed_server: LiveServer, browser: Any) -> None:
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    r = httpx.post(
        f"{keyed_server.url}/v1/label-sets", json={"id": "shared", "labels": COLOURS}, headers=admin
    )
    assert r.status_code == 201, r.text

    open_page(browser, f"{keyed_server.url}/ui/#/label-sets", "Label sets")
    wait_for(lambda: text_of(browser, "#access") == "key required", what="the access line")
    assert "API key" in text_of(browser, "main")  # the list answered 401: the page says so
    css(browser, "#api-key").send_keys(READ_KEY, Keys.ENTER)
    wait_for(lambda: text_of(browser, "#access") == "read-only key", what="the read-only state")
    wait_for(lambda: "shared" in text_of(browser, "[data-testid=label-set-list]"), what="the list")
    assert browser.find_elements(By.CSS_SELECTOR, "[data-write]") == []
    assert "Read-only" in text_of(browser, "[data-testid=read-only]")
    screenshot(browser, "console-read-only")

    open_page(browser, f"{keyed_server.url}/ui/#/label-sets/shared", "Label set shared")
    assert browser.find_elements(By.CSS_SELECTOR, "[data-write], [data-testid=delete], main form") == []
    assert css(browser, "[data-testid=export]").is_displayed()  # reading is allowed
    assert READ_KEY not in browser.current_url

    # the docs pages keep their setting (a key is needed), the console's API page uses the session's key
    browser.get(f"{keyed_server.url}/docs")
    assert "unauthorized" in browser.find_element(By.TAG_NAME, "body").text
    browser.get(f"{keyed_server.url}/ui/api")
    wait_for(
        lambda: len(browser.find_elements(By.CSS_SELECTOR, ".opblock")) > 10, what="Swagger UI with the key"
    )

    open_page(browser, f"{keyed_server.url}/ui/#/label-sets", "Label sets")
    css(browser, "#forget-key").click()
    wait_for(lambda: text_of(browser, "#access") == "key required", what="the key forgotten")
    assert browser.execute_script("return sessionStorage.length") == 0
    log = keyed_server.log_tail(10**7)
    assert READ_KEY not in log and ADMIN_KEY not in log
