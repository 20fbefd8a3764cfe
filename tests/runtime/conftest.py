"""An in-process daemon against the real moto server and a real SQLite file.

`Harness.start()` runs `Daemon.serve()` as a task with compressed timings; tests talk to it
through its control API and read the store, then `stop()` shuts it down the production way.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest

from supervisor.adapters.aws import Aws
from supervisor.adapters.faults import FaultPlan
from supervisor.adapters.pg_store import PgStore
from supervisor.adapters.protocol import AttachRequest, RunView
from supervisor.adapters.shell import LocalShell, SsmShell
from supervisor.adapters.sql_store import SqlStore
from supervisor.adapters.store import Store
from supervisor.core.run import Phase, Run
from supervisor.core.spec import Transport
from supervisor.runtime.daemon import Daemon
from supervisor.runtime.events import Queue
from supervisor.runtime.ports import Cloud, InstanceShell
from supervisor.runtime.settings import Settings
from tests.conftest import Fleet
from tests.runtime.trainers import Trainers
from tests.runtime.waiting import WAIT_S, wait_for

FAST = {
    "poll_initial_s": 0.05,
    "poll_max_s": 0.2,
    "grace_s": 0.05,
    "reconcile_interval_s": 0.1,
    "retry_base_s": 0.01,
    "shutdown_timeout_s": 2.0,
    # The zombie sweep's describes would blur the counts of the reconciler's: only the tests
    # of zombies (tests/runtime/test_zombies.py) turn it on, with their own interval.
    "zombie_interval_s": 3600.0,
}


class Harness:
    def __init__(self, fleet: Fleet, state_dir: Path) -> None:
        self.fleet = fleet
        self.state_dir = state_dir
        self.daemon: Daemon | None = None
        self.aws: Aws | None = None
        self.store: SqlStore | None = None
        self._task: asyncio.Task[None] | None = None
        self._stack = AsyncExitStack()
        self.local_shell: Callable[[], InstanceShell] = LocalShell
        """Makes the local transport's shell; a test may wrap `LocalShell` (our own port)."""
        self.queue: Callable[[Aws], Queue] | None = None
        """Makes the event queue; a test may wrap the AWS adapter's (our own port)."""
        self.daemon_options: dict[str, Any] = {}
        """More keyword arguments for `Daemon` (a restart policy, a sleep)."""
        self.db_path: Path | None = None
        """Another daemon's database (two replicas on one file); default: the state dir's."""

    def settings(self, **overrides: Any) -> Settings:
        return Settings.load(None, state_dir=self.state_dir, **{**FAST, **overrides})

    async def start(
        self,
        *,
        faults: str = "",
        wrap: Callable[[Aws], Cloud] | None = None,
        **overrides: Any,
    ) -> Daemon:
        await self._stack.__aenter__()
        settings = self.settings(**overrides)
        if settings.database_url:  # replicas on PostgreSQL (tests/runtime/test_routing.py)
            self.store = await PgStore.open(settings.database_url)
        else:
            self.store = await Store.open(self.db_path or settings.db_path)
        self._stack.push_async_callback(self.store.close)
        self.aws = await self._stack.enter_async_context(
            Aws(faults=FaultPlan.parse(faults) if faults else None)
        )
        cloud: Cloud = wrap(self.aws) if wrap else self.aws
        shells: dict[Transport, InstanceShell] = {
            Transport.LOCAL: self.local_shell(),
            Transport.SSM: SsmShell(self.aws),
        }
        self.daemon = Daemon(
            settings,
            self.store,
            cloud,
            shells=shells,
            queue=self.queue(self.aws) if self.queue else self.aws,
            **self.daemon_options,
        )
        ready = asyncio.Event()

        async def on_ready() -> None:
            ready.set()

        self._task = asyncio.create_task(self.daemon.serve(on_ready=on_ready))
        await asyncio.wait_for(ready.wait(), 10)
        return self.daemon

    async def stop(self) -> None:
        if self._task is not None and self.daemon is not None:
            self.daemon.request_shutdown("test")
            await asyncio.wait_for(self._task, 15)
            self._task = None
        await self._stack.aclose()
        self._stack = AsyncExitStack()

    async def attach(self, run_id: str, instance_id: str, **fields: Any) -> RunView:
        assert self.daemon is not None
        fields.setdefault("s3_prefix", self.fleet.prefix(run_id))
        request = AttachRequest(run_id=run_id, instance_id=instance_id, **fields)
        return await self.daemon.views.attach(request)

    async def run(self, run_id: str) -> Run:
        assert self.store is not None
        record = await self.store.get_run(run_id)
        assert record is not None, f"run {run_id} not in the store"
        return record.run

    async def wait_phase(self, run_id: str, *phases: Phase, within_s: float = WAIT_S) -> Run:
        async def reached() -> bool:
            return (await self.run(run_id)).phase in phases

        await wait_for(reached, within_s=within_s, what=f"{run_id} to reach {phases}")
        return await self.run(run_id)

    def calls(self, operation: str) -> int:
        assert self.aws is not None
        return self.aws.counter.count(operation)


@pytest.fixture
async def harness(fleet: Fleet) -> AsyncIterator[Harness]:
    state_dir = Path(tempfile.mkdtemp(prefix="sv-rt-", dir="/tmp"))  # short: socket path limit
    h = Harness(fleet, state_dir)
    try:
        yield h
    finally:
        await h.stop()
        shutil.rmtree(state_dir, ignore_errors=True)


@pytest.fixture
def trainers() -> Iterator[Trainers]:
    """Real training processes; every one (and any a resume started) is killed at teardown."""
    made = Trainers()
    try:
        yield made
    finally:
        made.close()
