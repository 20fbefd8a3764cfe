"""The dashboard in a real headless Chromium, served by the real daemon on 127.0.0.1 (an
ephemeral port, found through `supervisord status`), over runs the daemon really watched
(moto's instances and S3): the runs page follows phase changes without a reload and filters;
the run page draws its metric history; the compare page draws one series per group; a job's
markup stays text; no request leaves 127.0.0.1. Also the listener's start-up rules."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from supervisor.report import Reporter
from tests.conftest import BUCKET, Fleet
from tests.e2e.browser import requests_made, start_chromium
from tests.e2e.conftest import SUPERVISORD, Cli

pytestmark = pytest.mark.e2e

PAGE_WAIT_S = 90.0
"""A bound for a condition in the browser, not a budget: this machine is shared and slow."""
MARKUP = '<img src=x onerror="document.title=1">'
TOKEN = "dashboard-e2e-token-0123456789"
LOADED = (
    "return location.search === '{search}' && document.readyState === 'complete' "
    "&& document.querySelector('#runs') !== null;"
)
"""The page at `search` has loaded (not the one before it, still on screen)."""
NETWORK_SCHEMES = frozenset({"http", "https", "ws", "wss", "ftp"})


@pytest.fixture(scope="session")
def chromium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[webdriver.Chrome]:
    """One headless Chromium for the session (its start costs seconds of CPU)."""
    driver = start_chromium(tmp_path_factory.mktemp("chromium-profile"))
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def browser(chromium: webdriver.Chrome) -> webdriver.Chrome:
    """The session's Chromium on a blank page, its logs drained: what a test finds in them
    is its own."""
    chromium.get("about:blank")
    chromium.delete_all_cookies()
    requests_made(chromium)
    chromium.get_log("browser")  # type: ignore[no-untyped-call]
    return chromium


def wait(browser: webdriver.Chrome, script: str, what: str) -> Any:
    """Wait until `script` (JavaScript returning a value) returns something true; that."""
    return WebDriverWait(browser, PAGE_WAIT_S, poll_frequency=0.2).until(
        lambda driver: driver.execute_script(script), message=f"waiting for {what}"
    )


def rows(browser: webdriver.Chrome) -> dict[str, str]:
    """run id -> phase, as the runs table shows them now."""
    found = browser.execute_script(
        "return Array.from(document.querySelectorAll('#runs tr[data-run-id]'))"
        ".map(r => [r.dataset.runId, r.dataset.phase]);"
    )
    return dict(found)


def assert_stayed_local(browser: webdriver.Chrome, host: str) -> list[str]:
    """Every request the page made since the last look went to the daemon's own address."""
    urls = requests_made(browser)
    # The browser's own pages (chrome://, its new tab) and data: URLs use no network.
    network = [u for u in urls if urlsplit(u).scheme in NETWORK_SCHEMES]
    outside = [u for u in network if urlsplit(u).netloc != host]
    assert outside == [], f"requests left {host}: {outside}"
    assert any(u.startswith(f"http://{host}/static/") for u in network), network
    return network


def assert_no_console_errors(browser: webdriver.Chrome) -> None:
    """Nothing the page did failed in the console since the last look: no script error, no
    resource refused by the Content-Security-Policy, no missing asset."""
    log = browser.get_log("browser")  # type: ignore[no-untyped-call]
    errors = [entry["message"] for entry in log if entry["level"] == "SEVERE"]
    assert errors == [], errors


def start_with_dashboard(cli: Cli, **env: str) -> tuple[str, str]:
    """Start the daemon with a dashboard on a free loopback port: its URL and host:port."""
    cli.start_daemon(SUPERVISOR_HTTP_ADDR="127.0.0.1:0", **env)
    url = str(cli.daemon_status()["http_url"])
    assert url.startswith("http://127.0.0.1:") and url.endswith("/"), url
    return url, urlsplit(url).netloc


def test_the_runs_page_follows_live_runs_without_a_reload_filters_and_shows_markup_as_text(
    cli: Cli, fleet: Fleet, browser: webdriver.Chrome
) -> None:
    first, second, third = fleet.launch(3)
    url, host = start_with_dashboard(cli)
    cli.attach("live-a", first, fleet.prefix("live-a"), "--name", MARKUP)
    cli.attach("live-b", second, fleet.prefix("live-b"), "--project", "nlp")
    cli.attach("live-c", third, fleet.prefix("live-c"))
    for run_id in ("live-a", "live-b", "live-c"):
        cli.wait_db_phase(run_id, "running")

    browser.get(url)
    wait(
        browser,
        "return document.querySelectorAll('#runs tr[data-phase=running]').length === 3",
        "three running runs in the table",
    )
    # A mark on this page's window: a full reload would take it away.
    browser.execute_script("window.sameDocument = 'yes';")

    fleet.put("runs/live-a/COMPLETE")
    fleet.put("runs/live-c/FAILED", f"exit 3 {MARKUP}")
    wait(
        browser,
        "const r = document.querySelector('#runs tr[data-run-id=\"live-a\"]');"
        "return r && r.dataset.phase === 'stopped';",
        "live-a to show stopped",
    )
    wait(
        browser,
        "const r = document.querySelector('#runs tr[data-run-id=\"live-c\"]');"
        "return r && r.dataset.phase !== 'running';",
        "live-c to show its crash",
    )
    assert browser.execute_script("return window.sameDocument;") == "yes"
    assert rows(browser)["live-b"] == "running"

    # The name with markup is text in its cell, and no element came of it.
    name = browser.find_element(By.CSS_SELECTOR, '#runs tr[data-run-id="live-a"] td.name')
    assert name.text == MARKUP
    assert browser.execute_script("return document.querySelectorAll('main img').length") == 0
    assert browser.title != "1"

    # The filter box: a name, a tag, a project, an id.
    box = browser.find_element(By.ID, "filter-text")
    box.clear()
    box.send_keys("nlp")
    box.submit()
    wait(browser, LOADED.format(search="?q=nlp"), "the filtered page")
    assert rows(browser) == {"live-b": "running"}

    # A count is a filter: the stopped runs.
    browser.get(url)
    wait(browser, "return document.querySelector('a.count.phase-stopped')", "the stopped count")
    browser.find_element(By.CSS_SELECTOR, "a.count.phase-stopped").click()
    wait(browser, LOADED.format(search="?phase=stopped"), "the phase filter")
    stopped = rows(browser)
    assert "live-a" in stopped and "live-b" not in stopped  # live-c: stopped after its crash
    assert set(stopped.values()) == {"stopped"}

    # A phone's width: nothing wider than the screen but the table, which scrolls in its box.
    browser.set_window_size(390, 844)
    try:
        for page in ("", "runs/live-c", "fleet"):
            browser.get(url + page)
            overflow = browser.execute_script(
                "return document.documentElement.scrollWidth - window.innerWidth;"
            )
            assert overflow <= 0, f"/{page} is {overflow}px wider than a phone's screen"
    finally:
        browser.set_window_size(1280, 900)

    # A dark system theme gives a dark page, a light one a light page.
    background = "return getComputedStyle(document.body).backgroundColor;"
    for theme, colour in (("dark", "rgb(13, 17, 23)"), ("light", "rgb(255, 255, 255)")):
        browser.execute_cdp_cmd(
            "Emulation.setEmulatedMedia",
            {"features": [{"name": "prefers-color-scheme", "value": theme}]},
        )
        browser.get(url)
        assert browser.execute_script(background) == colour, theme
    browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": []})

    # The crashed run's page: the failure's text in the timeline, as text.
    browser.get(f"{url}runs/live-c")
    timeline = browser.find_element(By.CSS_SELECTOR, "ol.timeline").text
    assert f"exit 3 {MARKUP}" in timeline
    assert browser.execute_script("return document.querySelectorAll('main img').length") == 0

    assert_stayed_local(browser, host)
    assert_no_console_errors(browser)


def report_job(fleet: Fleet, run_id: str, losses: list[float], final: float) -> None:
    job = Reporter(f"s3://{BUCKET}/runs/{run_id}/", client=fleet.s3)
    job.started()
    for step, loss in enumerate(losses, start=1):
        job.log(step * 10, val_loss=loss, lr=0.001)
    job.completed({"val_loss": final})


def config_file(tmp_path: Path, method: str) -> str:
    path = tmp_path / f"{method}.json"
    path.write_text(json.dumps({"gradient_method": method, "lr": 0.001}))
    return str(path)


def test_behind_the_token_the_run_page_charts_the_history_and_compare_draws_each_group(
    cli: Cli, fleet: Fleet, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    instances = fleet.launch(3)
    url, host = start_with_dashboard(cli, SUPERVISOR_HTTP_TOKEN=TOKEN)
    runs = {"mgda-1": "mgda", "mgda-2": "mgda", "pcgrad-1": "pcgrad"}
    histories = {
        "mgda-1": [0.9, 0.6, 0.4, 0.3],
        "mgda-2": [0.8, 0.5, 0.35],
        "pcgrad-1": [1.0, 0.7, 0.5, 0.45, 0.4],
    }
    for (run_id, method), instance in zip(runs.items(), instances, strict=True):
        cli.attach(
            run_id, instance, fleet.prefix(run_id),
            "--config-file", config_file(tmp_path, method), "--objective", "val_loss:min",
        )  # fmt: skip
    for run_id in runs:
        cli.wait_db_phase(run_id, "running")
        report_job(fleet, run_id, histories[run_id], histories[run_id][-1])
    for run_id in runs:
        cli.wait_db_phase(run_id, "stopped")

    # The token first: the login form, then its cookie.
    browser.get(url)
    wait(browser, "return location.pathname === '/login'", "the login form")
    field = browser.find_element(By.NAME, "token")
    field.send_keys(TOKEN)
    field.submit()
    wait(browser, "return location.pathname === '/' && !!document.querySelector('#runs')", "/")
    assert TOKEN not in browser.page_source
    cookie = browser.get_cookie("supervisor_session")
    assert cookie is not None and cookie["httpOnly"] and cookie.get("sameSite") == "Strict"
    assert TOKEN not in cookie["value"]

    # The run page: one chart per metric, the history's points in it.
    browser.get(f"{url}runs/mgda-1")
    points = wait(
        browser,
        "const c = window.supervisorCharts && window.supervisorCharts['metric:val_loss'];"
        "return c && [c.data[0], c.data[1]];",
        "the val_loss chart",
    )
    assert points == [[10, 20, 30, 40], histories["mgda-1"]]
    assert browser.execute_script("return Object.keys(window.supervisorCharts).sort()") == [
        "metric:lr",
        "metric:val_loss",
    ]
    canvases = browser.find_elements(By.CSS_SELECTOR, "#chart-area canvas")
    assert len(canvases) == 2
    # Unticking a metric takes its chart away.
    browser.find_element(By.CSS_SELECTOR, "#metric-picks input[value=lr]").click()
    wait(browser, "return !('metric:lr' in window.supervisorCharts)", "the lr chart to go")

    # The compare page: the table, a chart with one series per group, chosen runs overlaid.
    browser.get(f"{url}compare?by=config.gradient_method&metric=val_loss&run=pcgrad-1")
    groups = wait(
        browser,
        "const c = window.supervisorCharts && window.supervisorCharts['compare-groups'];"
        "return c && c.series.slice(1).map(s => s.label);",
        "the groups' chart",
    )
    assert sorted(groups) == ["mgda", "pcgrad"]
    table = browser.find_element(By.ID, "compare-table").text
    assert "mgda" in table and "pcgrad" in table
    overlaid = wait(
        browser,
        "const c = window.supervisorCharts['compare-runs'];"
        "return c && c.series.slice(1).map(s => s.label);",
        "the chosen runs' chart",
    )
    assert overlaid == ["pcgrad-1 (pcgrad)"]
    browser.find_element(By.CSS_SELECTOR, "#run-picks input[value='mgda-2']").click()
    wait(
        browser,
        "return window.supervisorCharts['compare-runs'].series.length === 3",
        "mgda-2 overlaid too",
    )

    # The fleet page answers with the AWS calls the daemon made.
    browser.get(f"{url}fleet")
    assert "ec2:" in browser.find_element(By.ID, "aws-calls").text

    assert_stayed_local(browser, host)
    assert_no_console_errors(browser)


def test_status_shows_the_dashboard_and_beyond_loopback_it_needs_the_token(cli: Cli) -> None:
    cli.start_daemon(SUPERVISOR_HTTP_ADDR=":0")
    url = cli.daemon_status()["http_url"]
    shown = cli.supervisord("status")
    assert f"dashboard: {url}" in shown.stdout.splitlines()
    cli.stop_daemon()

    refused = cli.supervisord("start", SUPERVISOR_HTTP_ADDR="0.0.0.0:0")
    assert refused.returncode == 1
    (line,) = refused.stderr.strip().splitlines()
    assert "SUPERVISOR_HTTP_TOKEN" in line and "SUPERVISOR_HTTP_ADDR=0.0.0.0:0" in line

    foreground = subprocess.run(
        [SUPERVISORD, "start", "--foreground"],
        env={**cli.env, "SUPERVISOR_HTTP_ADDR": "0.0.0.0:0"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert foreground.returncode == 1
    assert "SUPERVISOR_HTTP_TOKEN" in foreground.stderr

    secret = "a-secret-that-must-not-leak-0123"
    cli.start_daemon(SUPERVISOR_HTTP_ADDR="0.0.0.0:0", SUPERVISOR_HTTP_TOKEN=secret)
    status = cli.supervisord("status", "--json")
    assert json.loads(status.stdout)["http_url"].startswith("http://0.0.0.0:")
    cli.stop_daemon()
    assert secret not in cli.log_path.read_text()
    assert secret not in status.stdout
