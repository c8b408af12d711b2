"""Fixtures for browser tests: headless Chromium (Debian's, driven by Selenium) against the running console.

The console is the one ``make up`` starts (``CONSOLE_URL``, default http://127.0.0.1:8090), logged into with an
operator key (``CONSOLE_API_KEY``, else the local stack's ``.local/console/operator-key``). A missing browser,
driver, console or key fails the test with what to do; nothing is skipped.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from tests.e2e.conftest import system  # noqa: F401  (the real stack's fixture, reused)

REPO = Path(__file__).resolve().parents[2]
OUTPUT = REPO / ".local" / "test-output" / "console"
CHROMIUM = os.environ.get("CHROMIUM_BINARY", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")


@pytest.fixture(scope="session")
def console_url() -> str:
    url = os.environ.get("CONSOLE_URL", "http://127.0.0.1:8090").rstrip("/")
    try:
        ok = httpx.get(f"{url}/health", timeout=5).status_code == 200
    except httpx.HTTPError:
        ok = False
    if not ok:
        pytest.fail(f"the ops console does not answer at {url}/health: run `make up` (it starts it)", pytrace=False)
    return url


@pytest.fixture(scope="session")
def operator_key() -> str:
    key = os.environ.get("CONSOLE_API_KEY", "").strip()
    path = Path(os.environ.get("FULFIL_STATE_DIR") or REPO / ".local") / "console" / "operator-key"  # as stack.py
    if not key and path.exists():
        key = path.read_text().strip()
    if not key:
        pytest.fail(f"no operator key: set CONSOLE_API_KEY, or run `make up` (it writes {path})", pytrace=False)
    return key


@pytest.fixture(scope="session")
def browser() -> Iterator[WebDriver]:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not (Path(p).exists() or shutil.which(p))]
    if missing:
        pytest.fail(
            f"no headless browser: {', '.join(missing)} missing; `apt-get install -y chromium chromium-driver` "
            "(make up installs them when it may)",
            pytrace=False,
        )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1100"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.implicitly_wait(0)
    try:
        yield driver
    finally:
        driver.quit()


def screenshot(driver: WebDriver, name: str) -> Path:
    """Save a full-window PNG under .local/test-output/console/ and print where."""
    OUTPUT.mkdir(parents=True, exist_ok=True)
    path = OUTPUT / f"{name}.png"
    height = driver.execute_script("return document.body.scrollHeight")
    driver.set_window_size(1400, max(1100, min(int(height) + 40, 6000)))
    driver.save_screenshot(str(path))
    driver.set_window_size(1400, 1100)
    print(f"\nscreenshot: {path}")
    return path


def log_in(driver: WebDriver, console_url: str, key: str, *, then: str = "/") -> None:
    driver.delete_all_cookies()
    driver.get(f"{console_url}/login?next={then}")
    driver.find_element(By.ID, "key").send_keys(key)
    driver.find_element(By.ID, "login").click()
