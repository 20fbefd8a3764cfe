"""A real headless Chromium for the dashboard's tests: Debian's `chromium` driven through its
`chromedriver` with Selenium (`make test` installs both; Selenium Manager's own download
cannot work here, so both paths are given and it is told to stay offline).

`requests_made` reads Chrome's performance log (DevTools `Network.requestWillBeSent`): every
URL the page asked for, to prove none leaves the machine.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from supervisor.demo.screenshot import FLAGS as HEADLESS_FLAGS

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = (*HEADLESS_FLAGS, "--window-size=1280,900")
"""The demo's headless flags (no network of its own, no sandbox as root), a laptop's window."""


def installed() -> bool:
    return os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)


def start_chromium(user_data_dir: Path) -> webdriver.Chrome:
    """Chromium with a fresh profile in `user_data_dir`, its network log on. Without the
    browser the test fails (never skips): `make test` installs it first."""
    if not installed():
        pytest.fail(
            f"{CHROMIUM} and {CHROMEDRIVER} are needed: `make system-tools` installs Debian's "
            "chromium and chromium-driver"
        )
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager: never download anything
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={user_data_dir}")
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


def requests_made(driver: webdriver.Chrome) -> list[str]:
    """The URLs the browser requested since the last call (the log is drained)."""
    urls = []
    log = driver.get_log("performance")  # type: ignore[no-untyped-call]
    for entry in log:
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls
