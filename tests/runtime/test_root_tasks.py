"""Root tasks never leave the daemon half-alive: a reconcile sweep that raises is restarted
with backoff and counted (in `/metrics` and the status), and one that keeps failing ends the
daemon with an error. First `RootTasks` alone with an injected clock and sleep, then the
in-process daemon against the real moto server and SQLite.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from supervisor.adapters.aws import Aws
from supervisor.cli import supervisord
from supervisor.core.backoff import BackoffPolicy
from supervisor.core.run import Phase
from supervisor.core.values import InstanceId, InstanceState
from supervisor.runtime import service
from supervisor.runtime.root_tasks import RestartPolicy, RootTaskFailed, RootTasks
from supervisor.runtime.settings import Settings
from tests.runtime.conftest import Harness
from tests.runtime.test_metrics import scrape_socket
from tests.runtime.test_zombies import FakeClock
from tests.runtime.waiting import wait_for

P = Phase
NO_JITTER = BackoffPolicy(initial_s=1.0, max_s=8.0, multiplier=2.0, jitter=0.0)


@dataclass
class Sleeps:
    """The injected sleep: records each wait, moves the fake clock by it, returns at once."""

    clock: FakeClock
    waits: list[float] = field(default_factory=list)

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.clock.advance(seconds)
        await asyncio.sleep(0)


def tasks(clock: FakeClock, sleeps: Sleeps, **policy: float) -> tuple[RootTasks, list[str]]:
    restarted: list[str] = []
    root = RootTasks(
        clock,
        policy=RestartPolicy(backoff=NO_JITTER, **policy),  # type: ignore[arg-type]
        rng=random.Random(1),
        sleep=sleeps,
        on_restart=restarted.append,
    )
    return root, restarted


# -- RootTasks --------------------------------------------------------------------------------


async def test_a_failing_loop_is_restarted_with_backoff_until_it_runs() -> None:
    clock = FakeClock()
    sleeps = Sleeps(clock)
    root, restarted = tasks(clock, sleeps)
    runs = 0
    running = asyncio.Event()

    async def loop() -> None:
        nonlocal runs
        runs += 1
        if runs <= 3:
            raise RuntimeError(f"bug {runs}")
        running.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(root.keep_running("sweep", loop))
    await asyncio.wait_for(running.wait(), 10)
    assert (runs, sleeps.waits, restarted) == (4, [1.0, 2.0, 4.0], ["sweep"] * 3)
    assert root.restarts == {"sweep": 3} and root.failed is None
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_loop_that_returns_is_restarted_like_one_that_raised() -> None:
    clock = FakeClock()
    sleeps = Sleeps(clock)
    root, _ = tasks(clock, sleeps)
    runs = 0

    async def loop() -> None:
        nonlocal runs
        runs += 1
        if runs > 1:
            await asyncio.Event().wait()

    task = asyncio.create_task(root.keep_running("events", loop))
    await wait_for(lambda: _true(runs == 2), what="the second run")
    assert root.restarts == {"events": 1}
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def _true(value: bool) -> bool:
    return value


async def test_cancellation_passes_through_and_counts_no_restart() -> None:
    clock = FakeClock()
    root, restarted = tasks(clock, Sleeps(clock))
    started = asyncio.Event()

    async def loop() -> None:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(root.keep_running("zombies", loop))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (restarted, root.restarts, root.failed) == ([], {"zombies": 0}, None)


async def test_too_many_failures_within_the_window_give_up() -> None:
    clock = FakeClock()
    sleeps = Sleeps(clock)
    given_up: list[RootTaskFailed] = []
    root = RootTasks(
        clock,
        policy=RestartPolicy(backoff=NO_JITTER, max_restarts=3, window_s=600),
        sleep=sleeps,
        on_give_up=given_up.append,
    )

    async def loop() -> None:
        raise RuntimeError("broken for good")

    await asyncio.wait_for(root.keep_running("reconciler", loop), 10)  # returns: gave up
    assert sleeps.waits == [1.0, 2.0, 4.0]
    assert root.restarts == {"reconciler": 3}
    assert given_up == [root.failed]
    assert str(root.failed) == (
        "root task 'reconciler' ended 4 times within 600s (last: RuntimeError: broken for "
        "good); supervisord exits so that its service manager starts it afresh"
    )


async def test_failures_further_apart_than_the_window_never_give_up() -> None:
    clock = FakeClock()
    sleeps = Sleeps(clock)
    root, _ = tasks(clock, sleeps, max_restarts=2, window_s=60)
    runs = 0

    async def loop() -> None:
        nonlocal runs
        runs += 1
        if runs > 10:
            await asyncio.Event().wait()
        clock.advance(61)  # each run lasts longer than the window
        raise RuntimeError("rare bug")

    task = asyncio.create_task(root.keep_running("reconciler", loop))
    await wait_for(lambda: _true(runs == 11), what="ten restarts")
    assert root.failed is None and root.restarts == {"reconciler": 10}
    assert set(sleeps.waits) == {1.0}  # the backoff starts over once the window is clear
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


# -- in the daemon ----------------------------------------------------------------------------


@dataclass
class FailingSweeps:
    """Our own `Cloud` port around the real adapter: the reconciler's describe raises a
    bug-like error (not an AWS error, which the sweep handles) `failures` times."""

    inner: Aws
    failures: int
    raised: int = 0

    async def describe_instances(
        self, ids: Sequence[InstanceId], region: str
    ) -> dict[InstanceId, InstanceState]:
        if self.raised < self.failures:
            self.raised += 1
            raise RuntimeError("simulated bug in the sweep")
        return await self.inner.describe_instances(ids, region)

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


async def test_a_sweep_that_raises_is_restarted_and_the_restart_counted(
    harness: Harness,
) -> None:
    (instance,) = harness.fleet.launch()
    sleeps = Sleeps(FakeClock())
    harness.daemon_options = {"sleep": sleeps}
    failing: list[FailingSweeps] = []

    def wrap(aws: Aws) -> FailingSweeps:
        failing.append(FailingSweeps(aws, failures=1))
        return failing[0]

    daemon = await harness.start(wrap=wrap)  # type: ignore[arg-type]
    await harness.attach("r1", instance)
    # Only the sweep observes the instance: running, then crashed, means sweeping went on.
    await harness.wait_phase("r1", P.RUNNING)
    harness.fleet.terminate(instance)
    await harness.wait_phase("r1", P.CRASHED)

    assert failing[0].raised == 1
    assert daemon.root_tasks.restarts["reconciler"] == 1
    assert len(sleeps.waits) == 1 and 0.9 <= sleeps.waits[0] <= 1.1  # 1 s ± jitter
    status = await daemon.views.status()
    assert status.root_task_restarts == {
        "reconciler": 1,
        "zombies": 0,
        "idle": 0,
        "duties": 0,
        "inbox": 0,
        "leases": 0,
    }
    scrape = await scrape_socket(daemon)
    assert scrape.value("supervisor_root_task_restarts_total", task="reconciler") == 1
    assert scrape.has("supervisor_root_task_restarts_total", task="zombies")
    assert scrape.value("supervisor_root_task_restarts_total", task="zombies") == 0


async def test_a_sweep_that_keeps_failing_ends_the_daemon_with_an_error(
    harness: Harness,
) -> None:
    (instance,) = harness.fleet.launch()
    clock = FakeClock()
    harness.daemon_options = {
        "sleep": Sleeps(clock),
        "restart_policy": RestartPolicy(backoff=NO_JITTER, max_restarts=2, window_s=600),
    }
    daemon = await harness.start(wrap=lambda aws: FailingSweeps(aws, failures=10**6))  # type: ignore[arg-type,return-value]
    await harness.attach("r1", instance)
    serving = harness._task
    assert serving is not None

    with pytest.raises(RootTaskFailed, match="root task 'reconciler' ended 3 times"):
        await asyncio.wait_for(serving, 15)
    harness._task = None  # ended: nothing left for the fixture to stop

    assert daemon.root_tasks.restarts == {
        "reconciler": 2,
        "zombies": 0,
        "idle": 0,
        "duties": 0,
        "inbox": 0,
        "leases": 0,
    }
    assert not daemon.accepting
    assert not daemon.settings.socket_path.exists()  # shut down the orderly way
    assert (await harness.run("r1")).phase is P.PENDING  # the run is kept for the next start


def test_supervisord_ends_with_exit_status_1_and_one_line_when_a_root_task_gave_up(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    gave_up = RootTaskFailed("root task 'reconciler' ended 6 times within 600s (last: ...)")

    def serve_until_it_gives_up(settings: Settings, *, console: bool) -> None:
        raise gave_up  # what `run_foreground` raises once `Daemon.serve` did

    # supervisord imports the daemon side when `start` runs: patch it where it lives.
    monkeypatch.setattr(service, "run_foreground", serve_until_it_gives_up)
    monkeypatch.setattr("sys.argv", ["supervisord", "start", "--foreground"])
    monkeypatch.setenv("SUPERVISOR_STATE_DIR", str(tmp_path))
    with pytest.raises(SystemExit) as exited:
        supervisord.main(["start", "--foreground"])

    assert exited.value.code == 1  # systemd's Restart=on-failure starts it again
    assert capsys.readouterr().err.strip().splitlines() == [f"supervisord: {gave_up}"]
