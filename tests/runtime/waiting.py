"""Polling a condition with a deadline: how runtime tests wait (never a fixed sleep).

The deadline only bounds a failure: a test goes on as soon as its condition holds. It is wide
because a loaded 2-core machine can take many times the usual seconds; where a test tells two
behaviours apart by time (an event against a 60 s poll), its own bound stays below that."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

WAIT_S = 60.0


async def wait_for(
    condition: Callable[[], Awaitable[bool]], *, within_s: float = WAIT_S, what: str = "condition"
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while not await condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {within_s}s waiting for {what}")
        await asyncio.sleep(0.02)
