"""A real browser for the console and API-docs tests: Debian's ``chromium`` driven through Debian's
``chromium-driver`` by Selenium (no browser or driver download: Selenium Manager is never asked, the
binaries are given by path). Headless, in a fresh profile, with the flags this sandbox needs.

``cut_off=True`` (the default) leaves the browser only loopback: every other host resolves to nothing and
every non-loopback connection goes to a dead proxy, so a page that needed a CDN would break. The
performance log records every request the page made (``requested_urls``), so a test can assert that
nothing but the server was asked for anything.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path(os.environ.get("TRUSTSERVE_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("TRUSTSERVE_CHROMEDRIVER", "/usr/bin/chromedriver"))
SANDBOX_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)
CUT_OFF_FLAGS = (
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
    "--proxy-server=http://127.0.0.1:9",  # nothing listens on the discard port; loopback bypasses proxies
)
DESKTOP, PHONE = (1280, 900), (390, 844)
# screenshots of every console page land here (not committed: /runs/ is in .gitignore)
SCREENSHOT_DIR = Path(os.environ.get("TRUSTSERVE_SCREENSHOT_DIR", REPO_ROOT / "runs" / "console-screenshots"))

needs_browser = pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
    reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver; .ci/run "
    "installs them)",
)

T = TypeVar("T")


@contextmanager
def chromium(*, cut_off: bool = True, size: tuple[int, int] = DESKTOP) -> Iterator[Any]:
    """A headless Chromium WebDriver in a fresh profile (deleted afterwards)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"  # belt and braces: Selenium Manager must never download anything
    profile = tempfile.mkdtemp(prefix="trustserve-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*SANDBOX_FLAGS, *(CUT_OFF_FLAGS if cut_off else ())):
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={size[0]},{size[1]}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    if size[0] < 500:  # below the smallest window headless Chromium makes: emulate the phone's viewport
        driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": size[0], "height": size[1], "deviceScaleFactor": 1, "mobile": True},
        )
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_for(condition: Callable[[], T], timeout_s: float = 30.0, what: str = "condition") -> T:
    """Poll ``condition`` until it returns something truthy (exceptions count as "not yet")."""
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except Exception as exc:  # an element not there yet, a stale element
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what} (last error: {last!r})")


def requested_urls(driver: Any) -> list[str]:
    """Every URL the browser sent a request for since the last call (from the performance log); requests
    the page's Content-Security-Policy refused never leave the browser and are not listed."""
    urls: dict[str, str] = {}
    refused: set[str] = set()
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        params = message.get("params", {})
        if message.get("method") == "Network.requestWillBeSent":
            urls[params["requestId"]] = params["request"]["url"]
        elif message.get("method") == "Network.loadingFailed" and params.get("blockedReason") == "csp":
            refused.add(params["requestId"])
    return [url for request_id, url in urls.items() if request_id not in refused]


def foreign_requests(driver: Any, origin: str) -> list[str]:
    """Network requests (http, https, ws, wss, ftp) to anywhere but ``origin``; the browser's own pages
    (chrome://), data: and blob: URLs never touch the network."""
    network = ("http:", "https:", "ws:", "wss:", "ftp:")
    return [u for u in requested_urls(driver) if u.startswith(network) and not u.startswith(origin + "/")]


def console_errors(driver: Any, allow: tuple[str, ...] = ()) -> list[str]:
    """SEVERE browser-console messages (failed requests, CSP violations, uncaught errors), minus ``allow``."""
    return [
        entry["message"]
        for entry in driver.get_log("browser")
        if entry["level"] == "SEVERE" and not any(a in entry["message"] for a in allow)
    ]


def unlabelled_controls(driver: Any) -> list[str]:
    """Visible form controls without an accessible name (label[for], a wrapping label, aria-label)."""
    return driver.execute_script(
        """
        const missing = [];
        for (const el of document.querySelectorAll("input, select, textarea")) {
          if (el.type === "hidden" || el.offsetParent === null) continue;
          const named = (el.labels && el.labels.length) || el.getAttribute("aria-label")
            || el.getAttribute("aria-labelledby");
          if (!named) missing.push(el.outerHTML.slice(0, 120));
        }
        return missing;
        """
    )


def horizontal_overflow(driver: Any) -> int:
    """Pixels the page is wider than the window (0 = readable without side-scrolling)."""
    return int(
        driver.execute_script(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
    )


def screenshot(driver: Any, name: str) -> Path:
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOT_DIR / f"{name}.png"
    driver.save_screenshot(str(path))
    return path


def full_page_screenshot(driver: Any, name: str, max_height: int = 5000) -> Path:
    """The whole page, not just the window: the window grows to the page's height for the shot."""
    width, height = driver.get_window_size()["width"], driver.get_window_size()["height"]
    page = int(driver.execute_script("return document.documentElement.scrollHeight"))
    driver.set_window_size(width, min(max(page + 120, height), max_height))
    driver.execute_script("window.scrollTo(0, 0)")
    try:
        return screenshot(driver, name)
    finally:
        driver.set_window_size(width, height)
