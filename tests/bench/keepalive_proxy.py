"""A keep-alive HTTP proxy in front of moto, for figure 3.

moto's server closes the connection after every response, so a daemon talking to it opens a
TCP connection per AWS call; against AWS its pooled connections are kept alive. Figure 3
measures the daemon's own CPU, so the daemon talks to this proxy instead: connections to it
are kept alive, and the proxy (a process of its own, not measured) pays for moto's.

Requests go upstream unchanged (method, path, query, headers, body; moto checks no
signatures); responses come back without hop-by-hop headers.

    python -m tests.bench.keepalive_proxy PORT UPSTREAM_URL
"""

from __future__ import annotations

import sys

import aiohttp
from aiohttp import web

from tests.bench.local_server import LocalServer

_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "content-length", "upgrade", "te"}
)


def app(upstream: str) -> web.Application:
    session: aiohttp.ClientSession | None = None

    async def forward(request: web.Request) -> web.Response:
        nonlocal session
        if session is None:
            session = aiohttp.ClientSession(auto_decompress=False)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        async with session.request(
            request.method,
            upstream + request.rel_url.path_qs,
            headers=headers,
            data=await request.read(),
            allow_redirects=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
        ) as reply:
            body = await reply.read()
            kept = {k: v for k, v in reply.headers.items() if k.lower() not in _HOP_BY_HOP}
            return web.Response(status=reply.status, headers=kept, body=body)

    async def close(_: web.Application) -> None:
        if session is not None:
            await session.close()

    application = web.Application(client_max_size=64 * 1024 * 1024)
    application.router.add_route("*", "/{tail:.*}", forward)
    application.on_cleanup.append(close)
    return application


class KeepAliveProxy:
    """The proxy as a process of its own, in front of `upstream`. A context manager."""

    def __init__(self, upstream: str, start_timeout_s: float = 30.0) -> None:
        self._server = LocalServer(
            lambda port: [sys.executable, "-m", "tests.bench.keepalive_proxy", str(port), upstream],
            name="the keep-alive proxy",
            start_timeout_s=start_timeout_s,
        )
        self.url = self._server.url

    def __enter__(self) -> KeepAliveProxy:
        return self

    def __exit__(self, *_: object) -> None:
        self._server.close()


def main(argv: list[str]) -> None:
    port, upstream = int(argv[0]), argv[1].rstrip("/")
    web.run_app(app(upstream), host="127.0.0.1", port=port, print=None)


if __name__ == "__main__":
    main(sys.argv[1:])
