"""Headless Chromium for the HTML report tests (Debian's chromium + chromedriver driven by selenium).

The tests that use it are marked ``browser`` and skip when the browser or selenium is absent; ``.ci/run``
installs Debian's ``chromium`` and ``chromium-driver``.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import pytest


def _chromium() -> tuple[str, str]:
    browser = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)),
                   None)
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.skip("headless Chromium test needs `chromium` and `chromedriver` on PATH "
                    "(Debian: apt-get install chromium chromium-driver)")
    return browser, driver


@contextlib.contextmanager
def chrome(profile: Path, window: str = "1280,1400"):
    """A headless Chrome WebDriver (quit on exit); skips the test without chromium, chromedriver or selenium."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="browser test needs selenium (pip install selenium)")
    from selenium.webdriver.chrome.service import Service

    browser, driver_path = _chromium()
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--window-size={window}", f"--user-data-dir={profile}"):
        opts.add_argument(flag)
    drv = webdriver.Chrome(service=Service(driver_path), options=opts)
    try:
        drv.set_page_load_timeout(60)
        yield drv
    finally:
        drv.quit()
