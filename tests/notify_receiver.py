"""A real local HTTP receiver of notifications (issue 15): aiohttp on 127.0.0.1 at a free port,
in a thread of its own, recording every request. Paths under `/fail` answer 500, the rest 200:
`json://127.0.0.1:PORT/ok` is a receiver that works, `json://127.0.0.1:PORT/fail` one that
keeps failing."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class Receiver:
    port: int = 0
    requests: list[Received] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str = "ok") -> str:
        return f"json://127.0.0.1:{self.port}/{path}"

    def got(self, path: str | None = None) -> list[Received]:
        with self._lock:
            return [r for r in self.requests if path is None or r.path == f"/{path}"]

    def _record(self, received: Received) -> None:
        with self._lock:
            self.requests.append(received)


@contextmanager
def running_receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    runner: web.AppRunner | None = None

    async def handle(request: web.Request) -> web.Response:
        text = await request.text()
        try:
            body = json.loads(text)
        except ValueError:
            body = {"raw": text}
        receiver._record(Received(request.path, dict(request.headers), body))
        return web.Response(status=500 if request.path.startswith("/fail") else 200)

    async def start() -> None:
        nonlocal runner
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        receiver.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        ready.set()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        loop.run_forever()

    thread = threading.Thread(target=serve, name="notify-receiver", daemon=True)
    thread.start()
    assert ready.wait(10), "the receiver did not start"
    try:
        yield receiver
    finally:
        if runner is not None:
            asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
