"""Wake-ups between replicas on PostgreSQL: LISTEN on one connection of its own (the
`runtime.ports.Notices` port). The store sends the NOTIFY in the transaction that writes an
inbox row, its answer, or a transition, so a notice never arrives before what it announces is
visible.

A notice that arrives while nobody waits on its channel is kept (one per channel), so a
replica busy reading the inbox when it came does not sleep through it. Losing the connection
loses nothing but speed: waits end at their timeout (the poll), and the listener reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from types import TracebackType
from typing import Self

import psycopg
import structlog

from supervisor.adapters.database_url import redact_text

log = structlog.get_logger("supervisor.notices")

RECONNECT_S = 1.0


class PgNotices:
    """Use `async with PgNotices(url, channels) as notices`."""

    def __init__(self, url: str, channels: Iterable[str]) -> None:
        self._url = url
        self._channels = tuple(channels)
        self._waiters: dict[str, set[asyncio.Future[None]]] = {c: set() for c in self._channels}
        self._kept: set[str] = set()
        self._listening = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.received = 0

    def __repr__(self) -> str:
        return f"<PgNotices {', '.join(self._channels)} received={self.received}>"

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self._listen_forever(), name="pg-notices")
        await asyncio.wait(
            [asyncio.ensure_future(self._listening.wait()), self._task],
            timeout=10,
            return_when=asyncio.FIRST_COMPLETED,
        )
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def wait(self, channel: str, timeout_s: float) -> None:
        if channel in self._kept:
            self._kept.discard(channel)
            return
        waiter = asyncio.get_running_loop().create_future()
        waiters = self._waiters.setdefault(channel, set())
        waiters.add(waiter)
        try:
            await asyncio.wait({waiter}, timeout=timeout_s)
        finally:
            waiters.discard(waiter)
            if not waiter.done():
                waiter.cancel()

    def _arrived(self, channel: str) -> None:
        self.received += 1
        waiters = self._waiters.get(channel)
        if not waiters:
            self._kept.add(channel)
            return
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def _listen_forever(self) -> None:
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._url, autocommit=True
                ) as conn:
                    for channel in self._channels:
                        # Our own channel names (constants), never user input.
                        await conn.execute(f"LISTEN {channel}".encode())
                    self._listening.set()
                    log.info("notices_listening", channels=list(self._channels))
                    async for notice in conn.notifies():
                        self._arrived(notice.channel)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("notices_lost", error=redact_text(str(exc), self._url)[:300])
            self._listening.clear()
            await asyncio.sleep(RECONNECT_S)
