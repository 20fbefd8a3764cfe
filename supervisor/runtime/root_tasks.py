"""The daemon's root tasks (the reconcile sweep, the zombie sweep, the event consumer): each
one restarted with backoff when it ends, and given up on when it keeps ending.

Nothing runs half-alive (kopf's `run_tasks`): a root loop that raises, or returns, is logged
at error level with its traceback, counted, and started again after a backoff. One that ends
`max_restarts + 1` times within `window_s` gives up: the daemon shuts down and exits with
an error, so its service manager (systemd's `Restart=on-failure`) starts a fresh process,
which cures what a restart inside the process cannot (a wedged client, a broken pool).
Cancellation passes through: it is how the daemon stops its root tasks.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import structlog

from supervisor.core.backoff import BackoffPolicy, delay
from supervisor.core.errors import SupervisorError
from supervisor.runtime.ports import Clock

log = structlog.get_logger("supervisor.root_tasks")

Sleep = Callable[[float], Awaitable[None]]
RootLoop = Callable[[], Coroutine[Any, Any, None]]
"""Makes a fresh run of the loop: a coroutine cannot be awaited twice."""


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """When a root task is started again, and when the daemon gives up on it.

    The defaults: waits of 1, 2, 4, 8, 16 s, so a loop that fails as soon as it starts ends
    the daemon within a minute, and systemd starts a fresh one; a loop that fails now and
    then (five times in ten minutes is far beyond a rare bug) is restarted for ever."""

    backoff: BackoffPolicy = field(
        default_factory=lambda: BackoffPolicy(initial_s=1.0, max_s=60.0, multiplier=2.0)
    )
    max_restarts: int = 5
    window_s: float = 600.0


class RootTaskFailed(SupervisorError):
    """A root task kept failing: the daemon ends with this error (exit status 1)."""


class RootTasks:
    """Runs root loops under `keep_running`. `restarts` counts each task's restarts (every
    task started appears, at 0 until it is restarted); `failed` is set once one gave up,
    after `on_give_up` was called with it."""

    def __init__(
        self,
        clock: Clock,
        *,
        policy: RestartPolicy | None = None,
        rng: random.Random | None = None,
        sleep: Sleep = asyncio.sleep,
        on_restart: Callable[[str], None] = lambda _: None,
        on_give_up: Callable[[RootTaskFailed], None] = lambda _: None,
    ) -> None:
        self.policy = policy or RestartPolicy()
        self.restarts: Counter[str] = Counter()
        self.failed: RootTaskFailed | None = None
        self._clock = clock
        self._rng = rng or random.Random()
        self._sleep = sleep
        self._on_restart = on_restart
        self._on_give_up = on_give_up

    def __repr__(self) -> str:
        restarts = ", ".join(f"{name}={n}" for name, n in sorted(self.restarts.items()))
        return f"<RootTasks restarts={{{restarts}}} failed={self.failed is not None}>"

    async def keep_running(self, name: str, loop: RootLoop) -> None:
        """Run `loop()` until cancelled, starting it again each time it ends; return once it
        has ended too often (see `RestartPolicy`), after calling `on_give_up`."""
        self.restarts[name] += 0  # listed from the start, so a status shows every root task
        failures: deque[datetime] = deque()
        while True:
            try:
                await loop()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception("root_task_failed", task=name)
                why = f"{type(exc).__name__}: {exc}"
            else:
                log.error("root_task_finished_unexpectedly", task=name)
                why = "it returned"
            now = self._clock.now()
            failures.append(now)
            while (now - failures[0]).total_seconds() > self.policy.window_s:
                failures.popleft()
            if len(failures) > self.policy.max_restarts:
                self.failed = RootTaskFailed(
                    f"root task {name!r} ended {len(failures)} times within "
                    f"{self.policy.window_s:g}s (last: {why[:300]}); supervisord exits so "
                    "that its service manager starts it afresh"
                )
                log.error(
                    "root_task_gave_up", task=name, failures=len(failures),
                    window_s=self.policy.window_s, last=why[:300],
                )  # fmt: skip
                self._on_give_up(self.failed)
                return
            wait = delay(len(failures) - 1, self.policy.backoff, self._rng)
            self.restarts[name] += 1
            self._on_restart(name)
            log.error(
                "root_task_restarting", task=name, in_s=round(wait, 3),
                restarts=self.restarts[name], failures_in_window=len(failures),
            )  # fmt: skip
            await self._sleep(wait)
