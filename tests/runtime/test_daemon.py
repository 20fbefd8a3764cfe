"""The daemon in-process: monitors, reconciler, retries and faults, restart, shutdown."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

from supervisor.adapters.aws import Aws, QueueMessage
from supervisor.adapters.store import Store
from supervisor.core.completion import ListRequest
from supervisor.core.errors import InvalidInput
from supervisor.core.events import (
    Action,
    ActionSucceeded,
    Event,
    InstanceObserved,
    PrefixListed,
    Tick,
)
from supervisor.core.feed import MonitorNote
from supervisor.core.machine import Decision, Policy, new_run, step
from supervisor.core.run import Outcome, Phase, Run
from supervisor.core.spec import RunSpec
from supervisor.core.values import InstanceState, ObjectInfo
from tests.conftest import BUCKET, REGION
from tests.runtime.conftest import Harness
from tests.runtime.waiting import wait_for

P = Phase


async def test_a_completed_run_is_stopped_and_every_transition_is_recorded(
    harness: Harness,
) -> None:
    (instance,) = harness.fleet.launch()
    await harness.start()
    await harness.attach("r1", instance)
    await harness.wait_phase("r1", P.RUNNING)
    harness.fleet.put("runs/r1/COMPLETE")
    run = await harness.wait_phase("r1", P.STOPPED)
    assert run.outcome is Outcome.COMPLETED
    assert harness.fleet.state(instance) == "stopped"
    assert harness.store is not None
    chain = [t.transition.to_phase for t in await harness.store.transitions("r1")]
    assert chain == [P.PENDING, P.RUNNING, P.GRACE, P.STOPPING, P.STOPPED]
    assert harness.calls("StopInstances") == 1


async def test_throttled_twice_then_stopped_after_exactly_three_attempts(
    harness: Harness,
) -> None:
    (instance,) = harness.fleet.launch()
    await harness.start(faults="StopInstances=RequestLimitExceeded*2", retry_base_s=0.01)
    await harness.attach("r1", instance)
    await harness.wait_phase("r1", P.RUNNING)
    harness.fleet.put("runs/r1/COMPLETE")
    await harness.wait_phase("r1", P.STOPPED)
    assert harness.calls("StopInstances") == 3
    assert harness.store is not None
    (action,) = await harness.store.actions("r1")
    assert (action.outcome, action.attempts) == ("accepted", 3)


async def test_unauthorized_stop_is_not_retried_and_fails_the_run_with_its_code(
    harness: Harness,
) -> None:
    (instance,) = harness.fleet.launch()
    await harness.start(faults="StopInstances=UnauthorizedOperation*5")
    await harness.attach("r1", instance)
    await harness.wait_phase("r1", P.RUNNING)
    harness.fleet.put("runs/r1/COMPLETE")
    run = await harness.wait_phase("r1", P.FAILED)
    assert run.error_code == "UnauthorizedOperation"
    assert "UnauthorizedOperation" in run.reason
    assert harness.calls("StopInstances") == 1
    assert harness.fleet.state(instance) == "running"


async def test_instance_not_found_on_stop_finishes_the_run(harness: Harness) -> None:
    (instance,) = harness.fleet.launch()
    await harness.start(faults="StopInstances=InvalidInstanceID.NotFound")
    await harness.attach("r1", instance)
    await harness.wait_phase("r1", P.RUNNING)
    harness.fleet.put("runs/r1/COMPLETE")
    run = await harness.wait_phase("r1", P.TERMINATED)
    assert run.outcome is Outcome.COMPLETED
    assert "gone" in run.reason
    assert harness.calls("StopInstances") == 1


async def test_terminate_and_none_follow_on_complete(harness: Harness) -> None:
    first, second = harness.fleet.launch(2)
    await harness.start()
    await harness.attach("t", first, on_complete="terminate")
    await harness.attach("n", second, on_complete="none")
    await harness.wait_phase("t", P.RUNNING)
    await harness.wait_phase("n", P.RUNNING)
    harness.fleet.put("runs/t/done")
    harness.fleet.put("runs/n/training_complete.txt")
    await harness.wait_phase("t", P.TERMINATED)
    await harness.wait_phase("n", P.DONE)
    assert harness.fleet.state(first) == "terminated"
    assert harness.fleet.state(second) == "running"


async def test_failure_marker_crashes_the_run_with_its_body_as_reason(harness: Harness) -> None:
    (instance,) = harness.fleet.launch()
    await harness.start()
    await harness.attach("r1", instance, on_crash="keep")
    await harness.wait_phase("r1", P.RUNNING)
    harness.fleet.put("runs/r1/FAILED", "exit code 137: CUDA out of memory")
    run = await harness.wait_phase("r1", P.CRASHED)
    assert run.outcome is Outcome.CRASHED
    assert "CUDA out of memory" in run.reason
    assert harness.fleet.state(instance) == "running"


async def test_failure_marker_stops_the_crashed_runs_instance(harness: Harness) -> None:
    (instance,) = harness.fleet.launch()
    await harness.start()
    await harness.attach("r1", instance)
    await harness.wait_phase("r1", P.RUNNING)
    harness.fleet.put("runs/r1/FAILED", "exit code 137: CUDA out of memory")
    run = await harness.wait_phase("r1", P.STOPPED)
    assert run.outcome is Outcome.CRASHED
    assert harness.fleet.state(instance) == "stopped"
    assert harness.store is not None
    stopping = (await harness.store.transitions("r1"))[-2].transition
    assert (stopping.to_phase, stopping.reason) == (
        P.STOPPING,
        "failure marker FAILED: exit code 137: CUDA out of memory; on_crash=stop: stop requested",
    )


async def test_expected_outputs_complete_the_run_once_unchanged_across_two_checks(
    harness: Harness,
) -> None:
    (instance,) = harness.fleet.launch()
    await harness.start()
    await harness.attach("r1", instance, expect=["model.pt", "metrics.json"])
    await harness.wait_phase("r1", P.RUNNING)
    harness.fleet.put("runs/r1/model.pt", b"weights")
    harness.fleet.put("runs/r1/metrics.json", b"{}")
    run = await harness.wait_phase("r1", P.STOPPED)
    assert run.outcome is Outcome.COMPLETED
    assert harness.store is not None
    grace = (await harness.store.transitions("r1"))[2].transition
    assert grace.to_phase is P.GRACE
    assert "expected outputs" in grace.reason


async def test_an_instance_that_dies_while_running_without_a_marker_is_crashed(
    harness: Harness,
) -> None:
    (instance,) = harness.fleet.launch()
    await harness.start()
    await harness.attach("r1", instance)
    await harness.wait_phase("r1", P.RUNNING)
    harness.fleet.terminate(instance)
    run = await harness.wait_phase("r1", P.CRASHED)
    assert "without a request" in run.reason


async def test_an_instance_unknown_to_aws_crashes_the_run_before_training_started(
    harness: Harness,
) -> None:
    await harness.start()
    await harness.attach("ghost", "i-0123456789abcdef0", no_verify=True)
    run = await harness.wait_phase("ghost", P.CRASHED)
    assert "before training started" in run.reason


@dataclass
class ExplodingCloud:
    """Our own port, faked for one run: listing its prefix raises a bug-like error."""

    inner: Aws
    poisoned_prefix: str

    @property
    def default_region(self) -> str | None:
        return self.inner.default_region

    async def list_objects(self, request: ListRequest, region: str) -> tuple[ObjectInfo, ...]:
        if request.prefix.startswith(self.poisoned_prefix):
            raise RuntimeError("simulated bug in a monitor")
        return await self.inner.list_objects(request, region)

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


async def test_a_crashing_monitor_fails_only_its_own_run(harness: Harness) -> None:
    bad, good = harness.fleet.launch(2)
    await harness.start(wrap=lambda aws: ExplodingCloud(aws, "runs/bad/"))  # type: ignore[arg-type,return-value]
    await harness.attach("bad", bad)
    await harness.attach("good", good)
    failed = await harness.wait_phase("bad", P.FAILED)
    assert failed.error_code == "RuntimeError"
    assert "simulated bug" in failed.reason
    harness.fleet.put("runs/good/COMPLETE")
    await harness.wait_phase("good", P.STOPPED)


async def test_one_sweep_describes_every_watched_instance_in_one_call(harness: Harness) -> None:
    instances = harness.fleet.launch(20)
    await harness.start(reconcile_interval_s=3600)
    for i, instance in enumerate(instances):
        await harness.attach(f"r{i}", instance)
    for i in range(20):  # the sweep that attach asks for has run; none is pending now
        await harness.wait_phase(f"r{i}", P.RUNNING)
    assert harness.daemon is not None
    before = harness.calls("DescribeInstanceStatus")
    described = await harness.daemon.reconciler.sweep()
    assert described == 20
    assert harness.calls("DescribeInstanceStatus") - before == 1


async def _store_run_at(store: Store, spec: RunSpec, events: list[Event]) -> Run:
    """Drive a run through real events with the pure core and commit each decision."""
    now = datetime.now(UTC)
    decision: Decision = new_run(spec, now=now)
    await store.create_run(decision)
    run = decision.run
    for event in events:
        decision = step(run, event, now=now, policy=Policy(), rng=random.Random(0))
        await store.commit(run, decision, now=now)
        run = decision.run
    return run


def _spec(run_id: str, instance: str) -> RunSpec:
    return RunSpec.build(
        run_id=run_id,
        instance_id=instance,
        region=REGION,
        s3_prefix=f"s3://{BUCKET}/runs/{run_id}/",
        grace_s=0,
    )


async def test_restart_readopts_runs_without_an_aws_call_per_run(harness: Harness) -> None:
    instances = harness.fleet.launch(30)
    settings = harness.settings()
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    store = await Store.open(settings.db_path)
    running = InstanceObserved(InstanceState.RUNNING)
    for i, instance in enumerate(instances):
        await _store_run_at(store, _spec(f"r{i}", instance), [running])
    await store.close()

    # A long first interval: re-armed monitors spread their first checks over it.
    daemon = await harness.start(poll_initial_s=30, poll_max_s=60, reconcile_interval_s=3600)
    assert len(daemon.monitors) == 30
    first_checks = [m.run.next_check_at for m in daemon.monitors.values()]
    assert all(at is not None for at in first_checks)
    due = sum(1 for at in first_checks if at is not None and at <= datetime.now(UTC))
    assert harness.calls("ListObjectsV2") <= due  # only checks whose staggered time came
    spread = max(a for a in first_checks if a) - min(a for a in first_checks if a)
    assert spread.total_seconds() > 10  # spread over the 30 s initial interval

    async def swept() -> bool:
        return harness.calls("DescribeInstanceStatus") >= 1

    await wait_for(swept, what="the start-up sweep")
    assert harness.calls("DescribeInstanceStatus") == 1


async def test_restart_redrives_an_open_stop_intent_once_and_only_if_needed(
    harness: Harness,
) -> None:
    open_intent, already_stopped = harness.fleet.launch(2)
    harness.fleet.stop(already_stopped)
    settings = harness.settings()
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    store = await Store.open(settings.db_path)
    listed = PrefixListed(
        (ObjectInfo("COMPLETE", "etag", 0, datetime.now(UTC)),)
    )  # marker seen, grace 0
    to_stopping: list[Event] = [InstanceObserved(InstanceState.RUNNING), listed, Tick()]
    await _store_run_at(store, _spec("open", open_intent), to_stopping)
    acked = await _store_run_at(store, _spec("acked", already_stopped), to_stopping)
    assert acked.phase is P.STOPPING
    ack = step(
        acked,
        ActionSucceeded(Action.STOP, InstanceState.STOPPING),
        now=datetime.now(UTC),
        policy=Policy(),
        rng=random.Random(0),
    )
    await store.commit(acked, ack, now=datetime.now(UTC))
    await store.close()

    await harness.start()
    await harness.wait_phase("open", P.STOPPED)
    await harness.wait_phase("acked", P.STOPPED)
    assert harness.calls("StopInstances") == 1  # only the open intent needed a call
    assert harness.fleet.state(open_intent) == "stopped"


async def test_shutdown_lets_an_in_flight_action_finish(harness: Harness) -> None:
    (instance,) = harness.fleet.launch()
    await harness.start(
        faults="StopInstances=RequestLimitExceeded*2", retry_base_s=0.2, shutdown_timeout_s=5
    )
    await harness.attach("r1", instance)
    await harness.wait_phase("r1", P.RUNNING)
    harness.fleet.put("runs/r1/COMPLETE")
    await harness.wait_phase("r1", P.STOPPING)
    await harness.stop()  # requested while StopInstances is being retried
    store = await Store.open(harness.settings().db_path)
    try:
        record = await store.get_run("r1")
        actions = await store.actions("r1")
    finally:
        await store.close()
    assert record is not None
    assert [a.outcome for a in actions] == ["accepted"]
    assert record.run.action_acked_at is not None or record.run.phase is P.STOPPED


async def test_attach_refuses_an_instance_already_watched_by_another_run(
    harness: Harness,
) -> None:
    (instance,) = harness.fleet.launch()
    await harness.start()
    await harness.attach("first", instance)
    with pytest.raises(InvalidInput, match="already watched by run 'first'"):
        await harness.attach("second", instance)
    assert harness.store is not None
    assert await harness.store.get_run("second") is None


async def test_a_tail_follower_does_not_hold_the_shutdown(harness: Harness) -> None:
    (instance,) = harness.fleet.launch(1)
    daemon = await harness.start()
    await harness.attach("followed", instance)
    await harness.wait_phase("followed", P.RUNNING)
    items: list[object] = []

    async def follow() -> None:
        async for item in daemon.views.tail("followed", follow=True):
            items.append(item)

    follower = asyncio.create_task(follow())
    await asyncio.sleep(0.2)  # replaying the history; then it waits for news
    assert not follower.done() and items
    daemon.request_shutdown("test")
    await asyncio.wait_for(follower, 5)  # the stream ended with the daemon, not at a timeout
    await harness.stop()


async def test_routine_checks_reach_live_followers_but_stay_out_of_the_recent_ring(
    harness: Harness,
) -> None:
    """Ten thousand rings full of routine checks would cost hundreds of megabytes, and would
    push out the events a person looks for."""
    daemon = await harness.start()
    (instance,) = harness.fleet.launch(1)
    await harness.attach("ring", instance)
    await harness.wait_phase("ring", Phase.RUNNING)
    monitor = daemon.monitors["ring"]
    follower = monitor.subscribe()
    lists = harness.calls("ListObjectsV2")

    async def checked_thrice() -> bool:
        return harness.calls("ListObjectsV2") >= lists + 3

    await wait_for(checked_thrice, what="three more prefix checks")
    monitor.unsubscribe(follower)
    followed = [follower.get_nowait() for _ in range(follower.qsize())]
    assert any(isinstance(i, MonitorNote) and i.event == "prefix_checked" for i in followed)
    assert [e for e in monitor.recent if e.event == "prefix_checked"] == []


async def test_a_start_attaches_the_crash_report_a_killed_daemon_never_read(
    harness: Harness,
) -> None:
    """The report is read after the crash is committed; a daemon killed in between (the soak
    does it) would lose it for good, as an ended run is not watched again."""
    await harness.start()
    (instance,) = harness.fleet.launch(1)
    harness.fleet.terminate(instance)
    await harness.attach("late", instance)
    await harness.wait_phase("late", Phase.CRASHED)
    assert harness.store is not None
    await wait_for(lambda: _idle(harness), what="the crash to be handled")
    assert await harness.store.attachments("late") == []  # the job had left no report yet
    await harness.stop()

    # As if the report had been there and the daemon killed before it read it.
    harness.fleet.put("runs/late/crash/error.log", "ValueError: nan loss\n")
    await harness.start()
    assert harness.store is not None
    store = harness.store

    async def attached() -> bool:
        return bool(await store.attachments("late"))

    await wait_for(attached, what="the late crash report to be attached")
    (report,) = await store.attachments("late")
    assert (report.kind, report.excerpt) == ("crash-log", "ValueError: nan loss\n")


async def _idle(harness: Harness) -> bool:
    assert harness.daemon is not None
    return "late" not in harness.daemon.monitors


@dataclass
class ReceiveWatch:
    """Our own Queue port: a long poll that never brings a message, noting what the daemon
    looked like when the poll was cancelled."""

    harness: Harness
    polling: asyncio.Event
    monitors_closing_at_stop: list[bool] | None = None
    accepting_at_stop: bool | None = None

    async def receive_messages(
        self, queue_url: str, region: str, *, wait_s: int = 20, max_messages: int = 10
    ) -> list[QueueMessage]:
        self.polling.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            daemon = self.harness.daemon
            assert daemon is not None
            self.monitors_closing_at_stop = [m.closing for m in daemon.monitors.values()]
            self.accepting_at_stop = daemon.accepting
            raise
        return []

    async def delete_message(self, queue_url: str, receipt: str, region: str) -> None:
        raise AssertionError("no message was received")


async def test_shutdown_stops_the_queue_receive_before_the_monitors(harness: Harness) -> None:
    instances = harness.fleet.launch(2)
    watch = ReceiveWatch(harness, asyncio.Event())
    harness.queue = lambda aws: watch
    queue_url = f"https://sqs.{REGION}.amazonaws.com/123456789012/supervisor-events"
    await harness.start(events_queue_url=queue_url)
    for i, instance in enumerate(instances):
        await harness.attach(f"r{i}", instance)
        await harness.wait_phase(f"r{i}", Phase.RUNNING)
    await asyncio.wait_for(watch.polling.wait(), 10)

    await harness.stop()

    assert watch.accepting_at_stop is False, "the control API refuses new work first"
    assert watch.monitors_closing_at_stop == [False, False], "monitors still took events"
