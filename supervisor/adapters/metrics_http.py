"""Prometheus text over HTTP (aiohttp): the `/metrics` route, served on the control socket
and, with `SUPERVISOR_METRICS_ADDR`, by a TCP listener that serves nothing else.

This module only serves the bytes a `MetricsSource` renders; what the metrics are, and their
rendering with prometheus-client, live in `supervisor.runtime.metrics`.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import structlog
from aiohttp import hdrs, web

from supervisor.core.errors import InvalidInput

log = structlog.get_logger("supervisor.metrics")


@dataclass(frozen=True, slots=True)
class Exposition:
    """One scrape's reply: the rendered metrics and their content type."""

    body: bytes
    content_type: str


class MetricsSource(Protocol):
    async def metrics(self, accept: str) -> Exposition:
        """Render every metric now, in the format the `Accept` header asks for."""
        ...


def metrics_handler(source: MetricsSource) -> Callable[[web.Request], Awaitable[web.Response]]:
    """The aiohttp handler of `GET /metrics`."""

    async def handle(request: web.Request) -> web.Response:
        page = await source.metrics(",".join(request.headers.getall(hdrs.ACCEPT, [])))
        return web.Response(body=page.body, headers={hdrs.CONTENT_TYPE: page.content_type})

    return handle


class MetricsServer:
    """`GET /metrics` on HOST:PORT, without authentication: keep it on loopback unless the
    network it is on may see the fleet's activity. Port 0 takes a free port (see `url`)."""

    def __init__(self, source: MetricsSource, host: str, port: int) -> None:
        self.host = host
        self.port = port
        app = web.Application()
        app.add_routes([web.get("/metrics", metrics_handler(source))])
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        self.url: str | None = None
        """http://HOST:PORT/metrics as bound, once started."""

    def __repr__(self) -> str:
        return f"<MetricsServer {self.url or f'{self.host}:{self.port} (not started)'}>"

    async def start(self) -> None:
        """Listen, or raise `InvalidInput` saying why the address cannot be used."""
        bound = await listen(
            self._runner, self.host, self.port, serving="metrics", setting="SUPERVISOR_METRICS_ADDR"
        )
        self.url = f"{bound}/metrics"
        log.info("metrics_listening", url=self.url)

    async def close(self) -> None:
        await self._runner.cleanup()


async def listen(runner: web.AppRunner, host: str, port: int, *, serving: str, setting: str) -> str:
    """Set `runner` up listening on HOST:PORT and return http://HOST:PORT as bound (port 0
    takes a free one), or raise `InvalidInput` naming `setting` and why the address cannot be
    used (the runner cleaned up)."""
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        # asyncio words a bind error at length; the errno's own text is enough here.
        why = os.strerror(exc.errno) if exc.errno and exc.errno > 0 else exc.strerror or exc
        raise InvalidInput(
            f"cannot serve {serving} on {host}:{port} ({setting}): "
            f"{why}; give a free port on an address of this machine, or unset it"
        ) from None
    bound_host, bound_port = runner.addresses[0][:2]
    shown = f"[{bound_host}]" if ":" in str(bound_host) else str(bound_host)
    return f"http://{shown}:{bound_port}"
