"""A picture of a dashboard page for the demo: Debian's headless `chromium --screenshot`, when
it is installed (`apt-get install chromium`); without it the demo says so and goes on."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
)
WINDOW = (1280, 800)
TIMEOUT_S = 90.0


def find_chromium() -> str | None:
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def take_screenshot(url: str, path: Path, *, chromium: str | None = None) -> str | None:
    """Save a PNG of `url` at `path`; None when done, else why not (one line)."""
    program = chromium or find_chromium()
    if program is None:
        return "chromium is not installed (apt-get install chromium): no screenshot"
    with tempfile.TemporaryDirectory(prefix="supervisor-demo-chromium-") as profile:
        command = [
            program,
            *FLAGS,
            f"--user-data-dir={profile}",
            f"--window-size={WINDOW[0]},{WINDOW[1]}",
            f"--screenshot={path}",
            url,
        ]
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=TIMEOUT_S, check=False
            )
        except subprocess.TimeoutExpired:
            return f"chromium took longer than {TIMEOUT_S:.0f}s: no screenshot"
        except OSError as exc:
            return f"cannot run {program}: {exc.strerror or exc}: no screenshot"
    if done.returncode != 0 or not path.is_file():
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return f"chromium exited with status {done.returncode}: {last}"
    return None
