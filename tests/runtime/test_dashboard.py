"""The daemon's dashboard listener in-process (issue 15): started with the daemon on a free
loopback port, shown by its status, serving the runs it watches with their estimated end,
and closed at shutdown."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import aiohttp
import pytest

from supervisor.core.errors import InvalidInput
from supervisor.core.eta import Progress, ProgressSample
from supervisor.core.run import Phase
from tests.conftest import Fleet
from tests.runtime.conftest import Harness


async def test_the_listener_serves_the_watched_runs_with_their_estimated_end(
    harness: Harness, fleet: Fleet
) -> None:
    (instance,) = fleet.launch()
    daemon = await harness.start(http_addr="127.0.0.1:0", poll_initial_s=600, poll_max_s=600)
    status = await daemon.views.status()
    assert daemon.http_server is not None and status.http_url == daemon.http_server.url
    url = status.http_url
    assert url is not None and url.startswith("http://127.0.0.1:")

    await harness.attach("eta-1", instance)
    await harness.wait_phase("eta-1", Phase.RUNNING)
    # What the monitor holds after two heartbeats 100 s apart, 100 steps each, 800 to go: the
    # end ~800 s away (core/eta.py). Checks are slowed down so that none replaces it meanwhile.
    monitor = daemon.monitors["eta-1"]
    now = daemon.clock.now()
    estimate = now + timedelta(seconds=800)
    samples = (
        ProgressSample(100, 1000, now - timedelta(seconds=100)),
        ProgressSample(200, 1000, now),
    )
    attempt = replace(monitor.run.this_attempt, progress=Progress(samples), estimated_end=estimate)
    monitor.run = replace(monitor.run, this_attempt=attempt)
    assert daemon.estimated_end("eta-1") == estimate
    assert daemon.estimated_end("no-such-run") is None

    async with aiohttp.ClientSession() as session, session.get(url) as reply:
        assert reply.status == 200
        page = await reply.text()
    row = page[page.index('data-run-id="eta-1"') :]
    assert "ends in ~13 min" in row[: row.index("</tr>")]

    await harness.stop()
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectionError):
            await session.get(url)


async def test_beyond_loopback_without_a_token_the_daemon_is_not_built(
    harness: Harness,
) -> None:
    with pytest.raises(InvalidInput, match="SUPERVISOR_HTTP_TOKEN"):
        await harness.start(http_addr="0.0.0.0:0")
