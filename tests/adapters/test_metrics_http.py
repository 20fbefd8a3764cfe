"""The TCP metrics listener: a real aiohttp server on loopback, a source with canned bytes."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import aiohttp
import pytest

from supervisor.adapters.metrics_http import Exposition, MetricsServer
from supervisor.core.errors import InvalidInput

PAGE = Exposition(b"supervisor_monitors 2.0\n", "text/plain; version=0.0.4; charset=utf-8")


class Source:
    def __init__(self) -> None:
        self.accepts: list[str] = []

    async def metrics(self, accept: str) -> Exposition:
        self.accepts.append(accept)
        return PAGE


@pytest.fixture
async def server() -> AsyncIterator[MetricsServer]:
    started = MetricsServer(Source(), "127.0.0.1", 0)
    await started.start()
    yield started
    await started.close()


async def test_port_0_takes_a_free_port_and_says_which(server: MetricsServer) -> None:
    assert server.url is not None
    assert server.url.startswith("http://127.0.0.1:")
    assert server.url.endswith("/metrics")
    assert int(server.url.rsplit(":", 1)[1].removesuffix("/metrics")) > 0
    assert repr(server) == f"<MetricsServer {server.url}>"


async def test_get_metrics_returns_the_rendered_page_with_its_content_type(
    server: MetricsServer,
) -> None:
    assert server.url is not None
    async with aiohttp.ClientSession() as session, session.get(server.url) as reply:
        assert reply.status == 200
        assert reply.headers["Content-Type"] == PAGE.content_type
        assert await reply.read() == PAGE.body


async def test_nothing_but_metrics_is_served_over_tcp(server: MetricsServer) -> None:
    assert server.url is not None
    base = server.url.removesuffix("/metrics")
    async with aiohttp.ClientSession() as session:
        for method, path in (("GET", "/v1/status"), ("GET", "/v1/runs"), ("POST", "/v1/runs")):
            async with session.request(method, base + path) as reply:
                assert reply.status in (404, 405), (method, path, reply.status)


async def test_an_address_in_use_is_refused_naming_it_and_the_setting() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        server = MetricsServer(Source(), "127.0.0.1", port)
        with pytest.raises(InvalidInput) as caught:
            await server.start()

    message = str(caught.value)
    assert message.startswith(f"cannot serve metrics on 127.0.0.1:{port} (SUPERVISOR_METRICS_ADDR)")
    assert message.endswith(
        ": Address already in use; give a free port on an address of this machine, or unset it"
    )
    assert server.url is None
