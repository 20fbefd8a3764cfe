"""The demo's screenshot: headless chromium saves a PNG of a real dashboard page (a real
listener on 127.0.0.1 over a seeded run database); without chromium, one line says why."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from supervisor.adapters.web.server import HttpServer
from supervisor.demo.screenshot import find_chromium, take_screenshot
from tests.adapters.dashboard_source import Source
from tests.adapters.run_database import SEEDS, seed

PNG = b"\x89PNG\r\n\x1a\n"


async def test_the_runs_page_is_saved_as_a_png(tmp_path: Path) -> None:
    if find_chromium() is None:
        pytest.fail("chromium is needed: `make system-tools` installs it")
    db = tmp_path / "supervisor.db"
    await seed(db, SEEDS)
    server = HttpServer(Source(), db, "127.0.0.1", 0)
    await server.start()
    try:
        assert server.url is not None
        path = tmp_path / "runs.png"
        why_not = await asyncio.to_thread(take_screenshot, server.url, path)
    finally:
        await server.close()
    assert why_not is None
    assert path.read_bytes().startswith(PNG)


def test_without_chromium_it_says_so_in_one_line(tmp_path: Path) -> None:
    why_not = take_screenshot("http://127.0.0.1:1/", tmp_path / "x.png", chromium="/nonexistent")
    assert why_not is not None and why_not.startswith("cannot run /nonexistent")
    assert "\n" not in why_not
    assert not (tmp_path / "x.png").exists()
