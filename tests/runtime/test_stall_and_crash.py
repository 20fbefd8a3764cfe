"""Heartbeat stalls, crash reports, and what a restart keeps: in-process against the real moto
server, real SQLite and (for checkpoints) a real stand-in trainer over the local transport.

Time is the daemon's injected clock (`MovableClock`), never a sleep. moto stamps status.json with
the real time in whole seconds, so the test ages a heartbeat by moving the daemon's clock
forward from the LastModified that S3 reports; with the clock frozen, each prefix check
happens because the test moved the clock past the next scheduled one.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import shutil
import tempfile
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from supervisor.adapters.aws import Aws
from supervisor.adapters.faults import FaultPlan
from supervisor.adapters.shell import SsmShell
from supervisor.adapters.store import AttachmentRecord, Store
from supervisor.core.machine import Transition
from supervisor.core.run import CheckpointStatus, Outcome, Phase, Run
from supervisor.core.spec import Transport
from supervisor.runtime.daemon import Daemon
from supervisor.runtime.executor import CRASH_TAIL_BYTES
from supervisor.runtime.ports import InstanceShell
from tests.conftest import BUCKET, Fleet
from tests.runtime.conftest import Harness
from tests.runtime.test_events import (
    REACT_S,
    SLOW,
    Events,
    handled,
    s3_put,
    spot_warning,
)
from tests.runtime.trainers import Trainers
from tests.runtime.waiting import wait_for

P = Phase
STALL_S = 60.0
"""The stall timeout of the runs here: far beyond anything real time adds during a test."""
S3_SLACK = timedelta(seconds=1)
"""S3 keeps whole seconds: the daemon takes a heartbeat to be up to 1 s older than stamped."""
CHECK_STEP = timedelta(seconds=0.25)
"""Moves a frozen clock past the next prefix check (the harness polls at most 0.2 s apart)."""
END_S = 30.0


# -- the injected clock -----------------------------------------------------------------------


class MovableClock:
    """The daemon's clock: real time plus an offset, or frozen. It only ever moves forward."""

    def __init__(self) -> None:
        self._offset = timedelta()
        self._frozen: datetime | None = None

    def now(self) -> datetime:
        if self._frozen is not None:
            return self._frozen
        return datetime.now(UTC) + self._offset

    def freeze(self) -> None:
        self._frozen = self.now()

    def jump_to(self, at: datetime) -> None:
        assert at >= self.now(), f"the clock may not go back from {self.now()} to {at}"
        if self._frozen is not None:
            self._frozen = at
        else:
            self._offset = at - datetime.now(UTC)


class ClockedHarness(Harness):
    """`Harness`, with `clock` injected into every daemon it starts (kept across restarts)."""

    def __init__(self, fleet: Fleet, state_dir: Path) -> None:
        super().__init__(fleet, state_dir)
        self.clock = MovableClock()

    async def start(self, faults: str | None = None, **overrides: Any) -> Daemon:
        """`Harness.start` with the clock injected (no wrapped cloud here)."""
        await self._stack.__aenter__()
        settings = self.settings(**overrides)
        self.store = await Store.open(settings.db_path)
        self._stack.push_async_callback(self.store.close)
        plan = FaultPlan.parse(faults) if faults else None
        self.aws = await self._stack.enter_async_context(Aws(faults=plan))
        shells: dict[Transport, InstanceShell] = {
            Transport.LOCAL: self.local_shell(),
            Transport.SSM: SsmShell(self.aws),
        }
        self.daemon = Daemon(
            settings, self.store, self.aws, clock=self.clock, shells=shells, queue=self.aws
        )
        ready = asyncio.Event()

        async def on_ready() -> None:
            ready.set()

        self._task = asyncio.create_task(self.daemon.serve(on_ready=on_ready))
        await asyncio.wait_for(ready.wait(), 10)
        return self.daemon

    async def history(self, run_id: str) -> list[Transition]:
        assert self.store is not None
        return [record.transition for record in await self.store.transitions(run_id)]

    async def attachments(self, run_id: str) -> list[AttachmentRecord]:
        assert self.store is not None
        return await self.store.attachments(run_id)

    async def settled(self, run_id: str, within_s: float = REACT_S) -> Run:
        """Wait until the run ended and its monitor finished (every effect carried out)."""
        daemon = self.daemon
        assert daemon is not None

        async def done() -> bool:
            return (await self.run(run_id)).phase.is_terminal and run_id not in daemon.monitors

        await wait_for(done, within_s=within_s, what=f"{run_id} to end and its monitor to finish")
        return await self.run(run_id)

    async def check_now(self, run_id: str) -> Run:
        """Move a frozen clock past the run's next prefix check; wait for the check's result."""
        assert self.daemon is not None
        monitor = self.daemon.monitors[run_id]

        async def idle() -> bool:
            return not monitor.busy

        # A check still under way would be counted before the move, and answer after it.
        await wait_for(idle, within_s=REACT_S, what=f"{run_id}'s monitor to be idle")
        lists = self.calls("ListObjectsV2")
        self.clock.jump_to(self.clock.now() + CHECK_STEP)

        async def checked() -> bool:
            return self.calls("ListObjectsV2") > lists and not monitor.busy

        await wait_for(checked, within_s=REACT_S, what=f"a prefix check of {run_id}")
        return await self.run(run_id)

    def heartbeat(self, run_id: str, step: int) -> datetime:
        """The job writes its heartbeat; returns the LastModified S3 gave it."""
        key = f"runs/{run_id}/status.json"
        self.fleet.put(key, json.dumps({"step": step, "phase": "train"}))
        stamped: datetime = self.fleet.s3.head_object(Bucket=BUCKET, Key=key)["LastModified"]
        return stamped


@pytest.fixture
async def timed(fleet: Fleet) -> AsyncIterator[ClockedHarness]:
    state_dir = Path(tempfile.mkdtemp(prefix="sv-st-", dir="/tmp"))  # short: socket path limit
    h = ClockedHarness(fleet, state_dir)
    try:
        yield h
    finally:
        await h.stop()
        shutil.rmtree(state_dir, ignore_errors=True)


def phases(transitions: list[Transition]) -> list[Phase]:
    return [t.to_phase for t in transitions]


def only(transitions: list[Transition], to: Phase) -> Transition:
    found = [t for t in transitions if t.to_phase is to]
    assert len(found) == 1, f"expected one transition to {to}, got {phases(transitions)}"
    return found[0]


# -- the heartbeat ----------------------------------------------------------------------------


async def test_a_stale_heartbeat_makes_the_run_stalled_and_a_fresh_one_running_again(
    timed: ClockedHarness,
) -> None:
    timed.clock.freeze()
    await timed.start()
    (instance,) = timed.fleet.launch()
    await timed.attach("hb", instance, stall_timeout_s=STALL_S)
    await timed.wait_phase("hb", P.RUNNING)

    first = timed.heartbeat("hb", step=1)
    run = await timed.check_now("hb")
    assert run.phase is P.RUNNING, run.reason

    # The clock moves on; the job does not write again: its heartbeat is 0.25 s too old.
    timed.clock.jump_to(first + S3_SLACK + timedelta(seconds=STALL_S))
    run = await timed.check_now("hb")
    assert (run.phase, run.outcome) == (P.STALLED, None), run.reason
    stalled = only(await timed.history("hb"), P.STALLED)
    assert stalled.reason == (
        f"heartbeat status.json is {STALL_S + 0.25:.0f}s old (stall timeout {STALL_S:g}s) "
        "while the instance runs; on_stall=notify"
    )
    assert stalled.detail == {"heartbeat_age_s": STALL_S + 0.25, "stall_timeout_s": STALL_S}

    # notify keeps watching: later checks leave it stalled, with no second transition.
    run = await timed.check_now("hb")
    assert run.phase is P.STALLED
    assert phases(await timed.history("hb")) == [P.PENDING, P.RUNNING, P.STALLED]

    # The job writes its heartbeat again; at the same clock it is within the timeout (the old
    # one, seen by the check above, was not): S3's whole seconds have to move on by two.
    async def rewritten() -> bool:
        return timed.heartbeat("hb", step=2) >= first + timedelta(seconds=2)

    await wait_for(rewritten, what="S3 to stamp the heartbeat two seconds later")
    run = await timed.check_now("hb")
    assert (run.phase, run.outcome) == (P.RUNNING, None), run.reason
    transitions = await timed.history("hb")
    assert phases(transitions) == [P.PENDING, P.RUNNING, P.STALLED, P.RUNNING]
    fresh = transitions[-1]
    assert fresh.reason.startswith("heartbeat status.json is fresh again"), fresh.reason
    assert fresh.detail["heartbeat_age_s"] <= STALL_S
    assert timed.fleet.state(instance) == "running"
    assert (timed.calls("StopInstances"), timed.calls("TerminateInstances")) == (0, 0)


async def test_a_run_without_a_stall_timeout_never_stalls_on_an_old_heartbeat(
    timed: ClockedHarness,
) -> None:
    timed.clock.freeze()
    await timed.start()
    (instance,) = timed.fleet.launch()
    await timed.attach("nohb", instance)
    await timed.wait_phase("nohb", P.RUNNING)
    first = timed.heartbeat("nohb", step=1)

    timed.clock.jump_to(first + timedelta(days=1))
    run = await timed.check_now("nohb")

    assert run.phase is P.RUNNING, run.reason
    assert phases(await timed.history("nohb")) == [P.PENDING, P.RUNNING]


async def test_checkpoint_stop_on_a_stall_saves_the_final_checkpoint_then_stops(
    timed: ClockedHarness, trainers: Trainers
) -> None:
    trainer = trainers.start("t1")
    await timed.start()
    await trainer.started()
    (instance,) = timed.fleet.launch()
    spec = trainer.spec(stall_timeout_s=STALL_S, on_stall="checkpoint-stop")
    await timed.attach("ck", instance, **spec)
    await timed.wait_phase("ck", P.RUNNING)
    first = timed.heartbeat("ck", step=1)

    # The clock runs on from 5 s past the timeout: the next check finds the job stalled.
    timed.clock.jump_to(first + S3_SLACK + timedelta(seconds=STALL_S + 5))
    run = await timed.settled("ck", within_s=END_S)

    assert (run.phase, run.outcome) == (P.STOPPED, Outcome.STALLED), run.reason
    assert (run.checkpoint, run.verified_attempt) == (CheckpointStatus.VERIFIED, 1)
    transitions = await timed.history("ck")
    assert phases(transitions) == [
        P.PENDING, P.RUNNING, P.STALLED, P.CHECKPOINTING, P.STOPPING, P.STOPPED,
    ]  # fmt: skip
    assert "on_stall=checkpoint-stop" in only(transitions, P.STALLED).reason
    assert only(transitions, P.CHECKPOINTING).reason == (
        "stalled; on_stall=checkpoint-stop: saving the final checkpoint, then stop"
    )
    assert await trainer.exited() == 0  # SIGTERM: it saved a final checkpoint and exited
    (final,) = trainer.checkpoint_dir.glob("step_*_final.pt")
    manifest = json.loads(
        timed.fleet.s3.get_object(Bucket=BUCKET, Key="runs/ck/checkpoints/_manifest.json")[
            "Body"
        ].read()
    )
    assert manifest["checkpoint"] == final.name
    assert timed.fleet.state(instance) == "stopped"
    assert (timed.calls("StopInstances"), timed.calls("TerminateInstances")) == (1, 0)


async def test_terminate_on_a_stall_without_checkpointing_terminates_at_once(
    timed: ClockedHarness,
) -> None:
    await timed.start()
    (instance,) = timed.fleet.launch()
    await timed.attach("term", instance, stall_timeout_s=STALL_S, on_stall="terminate")
    await timed.wait_phase("term", P.RUNNING)
    first = timed.heartbeat("term", step=1)

    timed.clock.jump_to(first + S3_SLACK + timedelta(seconds=STALL_S + 5))
    run = await timed.settled("term", within_s=END_S)

    assert (run.phase, run.outcome, run.checkpoint) == (P.TERMINATED, Outcome.STALLED, None)
    transitions = await timed.history("term")
    assert phases(transitions) == [P.PENDING, P.RUNNING, P.STALLED, P.TERMINATING, P.TERMINATED]
    assert only(transitions, P.TERMINATING).reason == (
        "stalled; on_stall=terminate: terminate requested"
    )
    assert timed.fleet.state(instance) == "terminated"
    assert (timed.calls("StopInstances"), timed.calls("TerminateInstances")) == (0, 1)


# -- crash reports ----------------------------------------------------------------------------


def long_crash_log() -> bytes:
    """A crash report longer than the tail the daemon reads, numbered lines of varying length,
    so the tail begins in the middle of a line."""
    lines = [f"{n:05d} step {n} " + "x" * (n % 70) + "\n" for n in range(3000)]
    lines.append("Traceback (most recent call last):\n")
    lines.append("RuntimeError: CUDA error: an illegal memory access was encountered\n")
    data = "".join(lines).encode()
    assert len(data) > CRASH_TAIL_BYTES
    assert data[-CRASH_TAIL_BYTES - 1 : -CRASH_TAIL_BYTES] != b"\n", "the cut must split a line"
    return data


async def test_a_failure_marker_crash_attaches_the_tail_of_the_crash_report(
    timed: ClockedHarness,
) -> None:
    await timed.start()
    long_run, short_run, no_report = timed.fleet.launch(3)
    await timed.attach("long", long_run)
    await timed.attach("short", short_run)
    await timed.attach("none", no_report)
    for run_id in ("long", "short", "none"):
        await timed.wait_phase(run_id, P.RUNNING)
    data = long_crash_log()
    short = 'Traceback (most recent call last):\n  File "train.py", line 9\nValueError: nan loss\n'
    timed.fleet.put("runs/long/crash/error.log", data)
    timed.fleet.put("runs/short/crash/error.log", short)

    for run_id in ("long", "short", "none"):
        timed.fleet.put(f"runs/{run_id}/FAILED", "exit code 1")
    crashed = [await timed.settled(run_id) for run_id in ("long", "short", "none")]

    for run in crashed:  # (on_crash=stop, the default: the report attached, the instance stopped)
        assert (run.phase, run.outcome) == (P.STOPPED, Outcome.CRASHED), run.reason
        assert timed.fleet.state(run.instance_id) == "stopped"
    (attached,) = await timed.attachments("long")
    tail = data[-CRASH_TAIL_BYTES:].decode()
    whole_lines = tail.partition("\n")[2]
    assert (attached.kind, attached.uri) == (
        "crash-log",
        f"s3://{BUCKET}/runs/long/crash/error.log",
    )
    assert (attached.size, attached.excerpt) == (len(data), whole_lines)
    assert attached.excerpt is not None and data.decode().count(attached.excerpt) == 1
    assert attached.excerpt[:6].rstrip().isdigit(), "the partial first line is dropped"
    assert attached.excerpt.endswith("RuntimeError: CUDA error: an illegal memory access was "
                                     "encountered\n")  # fmt: skip
    (attached,) = await timed.attachments("short")
    assert (attached.size, attached.excerpt) == (len(short), short)
    assert attached.uri == f"s3://{BUCKET}/runs/short/crash/error.log"
    assert await timed.attachments("none") == []


async def test_an_instance_gone_before_training_crashes_the_run_with_its_report_attached(
    timed: ClockedHarness,
) -> None:
    (instance,) = timed.fleet.launch()
    timed.fleet.terminate(instance)  # e.g. user-data failed and shut the instance down
    report = "cloud-init: pip install failed\nERROR: No matching distribution for torch==9.9\n"
    timed.fleet.put("runs/early/logs/boot-error.txt", report)
    await timed.start()

    await timed.attach("early", instance, crash_report="logs/boot-error.txt")
    run = await timed.settled("early")

    assert (run.phase, run.outcome) == (P.CRASHED, Outcome.CRASHED)
    assert run.reason == "instance ended before training started (instance terminated)"
    assert phases(await timed.history("early")) == [P.PENDING, P.CRASHED]
    (attached,) = await timed.attachments("early")
    assert attached == AttachmentRecord(
        run_id="early",
        kind="crash-log",
        uri=f"s3://{BUCKET}/runs/early/logs/boot-error.txt",
        added_at=attached.added_at,
        size=len(report),
        excerpt=report,
    )


async def test_a_throttled_crash_report_read_is_retried_not_lost(timed: ClockedHarness) -> None:
    """Found by the soak: the run has ended when the report is read, so a read lost to
    throttling was never tried again."""
    (instance,) = timed.fleet.launch()
    timed.fleet.terminate(instance)
    timed.fleet.put("runs/throttled/crash/error.log", "RuntimeError: CUDA out of memory\n")
    await timed.start(faults="GetObject=Throttling*2")

    await timed.attach("throttled", instance)
    run = await timed.settled("throttled")

    assert run.phase is P.CRASHED
    (attached,) = await timed.attachments("throttled")
    assert attached.excerpt == "RuntimeError: CUDA out of memory\n"
    assert timed.calls("GetObject") == 3


# -- what a restart keeps ---------------------------------------------------------------------


async def test_a_restart_keeps_process_exited_verified_attempt_and_interrupt_deadline(
    timed: ClockedHarness, trainers: Trainers
) -> None:
    graced, warned = trainers.start("graced"), trainers.start("warned")
    events = Events(timed.fleet, "st-restart")
    daemon = await timed.start(events_queue_url=events.url, **SLOW)
    await graced.started()
    await warned.started()
    first, second = timed.fleet.launch(2)
    # A long grace that may end early once the prefix has been quiet for 30 s.
    await timed.attach("graced", first, **graced.spec(grace_s=600.0, quiet_s=30.0))
    await timed.attach("warned", second, **warned.spec(spot=True))
    await timed.wait_phase("graced", P.RUNNING)
    await timed.wait_phase("warned", P.RUNNING)

    timed.fleet.put("runs/graced/COMPLETE")
    events.send(s3_put("runs/graced/COMPLETE"))
    events.send(spot_warning(second))
    await handled(daemon, 2, within_s=END_S)  # each deleted once its checkpoint is verified
    before = {run_id: await timed.run(run_id) for run_id in ("graced", "warned")}
    assert (before["graced"].phase, before["warned"].phase) == (P.GRACE, P.INTERRUPTING)
    assert before["graced"].process_exited and before["graced"].verified_attempt == 1
    assert before["warned"].verified_attempt == 1
    deadline = before["warned"].interrupt_deadline
    assert deadline is not None
    await timed.stop()

    store = await Store.open(timed.settings().db_path)
    try:
        for run_id, run in before.items():
            record = await store.get_run(run_id)
            assert record is not None
            assert record.run == run  # every persisted field, these three included
            kept = (record.run.process_exited, record.run.verified_attempt)
            assert kept == (run_id == "graced", 1)
            assert record.run.interrupt_deadline == (deadline if run_id == "warned" else None)
    finally:
        await store.close()

    # Down for a while: past the warned run's deadline by more than AWS ever takes, and past
    # the graced run's quiet time (but not its 600 s grace).
    timed.clock.jump_to(deadline + timedelta(seconds=310))
    # A queue of its own: the stopped daemon's last long poll may still take messages off the
    # first one (it ends on moto's side only after its 20 s).
    events = Events(timed.fleet, "st-restart-2")
    daemon = await timed.start(events_queue_url=events.url, **SLOW)
    # Re-armed from the database as stored; a monitor may already have acted on its first
    # look (the graced prefix is quiet by now), so each is as stored or has moved on from it.
    for run_id, stored in before.items():
        readopted = daemon.monitors[run_id].run
        assert readopted == stored or readopted.version > stored.version, run_id
        assert readopted.verified_attempt == 1

    # The deadline came back: AWS never took the instance, so it is stopped, not left running.
    run = await timed.settled("warned")
    assert (run.phase, run.outcome, run.checkpoint) == (
        P.STOPPED, Outcome.INTERRUPTED, CheckpointStatus.VERIFIED,
    )  # fmt: skip
    stopping = only(await timed.history("warned"), P.STOPPING)
    assert "after the interruption deadline; training was ended for the checkpoint" in (
        stopping.reason
    )
    assert timed.fleet.state(second) == "stopped"

    # process_exited came back: the marker's notification, delivered again, ends the grace
    # early on the quiet prefix instead of 600 s later.
    events.send(s3_put("runs/graced/COMPLETE"))
    run = await timed.settled("graced")
    assert (run.phase, run.outcome) == (P.STOPPED, Outcome.COMPLETED), run.reason
    stopping = only(await timed.history("graced"), P.STOPPING)
    assert "prefix quiet for 30s" in stopping.reason, stopping.reason
    assert timed.fleet.state(first) == "stopped"
    assert timed.calls("TerminateInstances") == 0


async def test_a_restarted_until_quiet_grace_ends_early_without_an_event(
    timed: ClockedHarness, trainers: Trainers
) -> None:
    trainer = trainers.start("t1")
    await timed.start()
    await trainer.started()
    (instance,) = timed.fleet.launch()
    await timed.attach("graced", instance, **trainer.spec(grace_s=600.0, quiet_s=30.0))
    await timed.wait_phase("graced", P.RUNNING)
    timed.fleet.put("runs/graced/COMPLETE")
    run = await timed.wait_phase("graced", P.GRACE, within_s=END_S)
    assert (run.checkpoint, run.process_exited) == (CheckpointStatus.VERIFIED, True)
    await timed.stop()

    timed.clock.jump_to(timed.clock.now() + timedelta(seconds=60))  # quiet for 30 s and more
    await timed.start()
    run = await timed.settled("graced", within_s=20.0)  # the first check ends it, not 600 s

    assert (run.phase, run.outcome) == (P.STOPPED, Outcome.COMPLETED), run.reason


# -- a maximum duration (issue 13) ------------------------------------------------------------


async def test_the_monitor_wakes_at_the_max_duration_and_stops_the_run_timed_out(
    timed: ClockedHarness,
) -> None:
    timed.clock.freeze()
    await timed.start()
    (instance,) = timed.fleet.launch()
    await timed.attach("capped", instance, max_duration="2h")
    run = await timed.wait_phase("capped", P.RUNNING)
    assert run.started_at is not None
    await timed.check_now("capped")  # a check without a verdict: the next is scheduled

    # The clock reaches the deadline (no marker, no heartbeat): the monitor's next wake-up,
    # which never comes later than the deadline, ends the run like a person's stop.
    timed.clock.jump_to(run.started_at + timedelta(hours=2))
    ended = await timed.settled("capped")

    assert (ended.phase, ended.outcome) == (P.STOPPED, Outcome.TIMED_OUT), ended.reason
    assert timed.fleet.state(instance) == "stopped"
    stopping = only(await timed.history("capped"), P.STOPPING)
    assert stopping.reason == (
        "max_duration 7200s reached (running 7200s over 1 attempt(s)): stop requested"
    )


async def test_the_monitor_wakes_for_the_max_duration_before_its_next_check_is_due(
    timed: ClockedHarness,
) -> None:
    timed.clock.freeze()
    await timed.start(poll_initial_s=600.0, poll_max_s=600.0)  # the next check: minutes away
    (instance,) = timed.fleet.launch()
    await timed.attach("capped", instance, max_duration="60s")
    run = await timed.wait_phase("capped", P.RUNNING)
    assert timed.daemon is not None and run.started_at is not None
    monitor = timed.daemon.monitors["capped"]

    async def first_check_done() -> bool:
        return monitor.run.next_check_at is not None and not monitor.busy

    await wait_for(first_check_done, within_s=REACT_S, what="the first check of capped")
    assert monitor.run.next_check_at is not None
    assert monitor.run.next_check_at > run.started_at + timedelta(seconds=120)

    timed.clock.jump_to(run.started_at + timedelta(seconds=60))
    ended = await timed.settled("capped")

    assert (ended.phase, ended.outcome) == (P.STOPPED, Outcome.TIMED_OUT), ended.reason
    assert timed.fleet.state(instance) == "stopped"


# -- a crashed job without progress is found on the capped backoff (issue 13) ----------------

PRODUCTION_POLL: dict[str, Any] = {"poll_initial_s": 30.0, "poll_max_s": 300.0}
"""The default check schedule; `poll_max_without_eta_s` keeps its default (100 s)."""
CAP_S = 100.0
JITTER = 0.1


async def next_check(timed: ClockedHarness, run_id: str) -> datetime:
    """Move the frozen clock to the run's next scheduled check; return once it was made."""
    assert timed.daemon is not None
    monitor = timed.daemon.monitors[run_id]

    async def idle() -> bool:
        return not monitor.busy and monitor.run.next_check_at is not None

    await wait_for(idle, within_s=REACT_S, what=f"{run_id}'s next check to be scheduled")
    due = monitor.run.next_check_at
    assert due is not None
    lists = timed.calls("ListObjectsV2")
    timed.clock.jump_to(max(due, timed.clock.now()))

    async def checked() -> bool:
        moved_on = monitor.run.next_check_at != due or monitor.run.phase is not P.RUNNING
        return timed.calls("ListObjectsV2") > lists and moved_on and not monitor.busy

    await wait_for(checked, within_s=REACT_S, what=f"the check of {run_id} due at {due}")
    return due


async def test_a_crashed_job_without_progress_is_stopped_within_one_capped_interval_of_failed(
    timed: ClockedHarness,
) -> None:
    timed.clock.freeze()
    daemon = await timed.start(**PRODUCTION_POLL)
    (instance,) = timed.fleet.launch()
    await timed.attach("dies", instance)
    run = await timed.wait_phase("dies", P.RUNNING)
    started = timed.clock.now()

    # An hour without a heartbeat: the backoff climbs from 30 s and stays at the tighter cap.
    checks = [started]
    while checks[-1] < started + timedelta(hours=1):
        checks.append(await next_check(timed, "dies"))
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(checks)]
    assert gaps[0] == pytest.approx(30.0, rel=JITTER) and gaps[1] == pytest.approx(60, rel=JITTER)
    assert all(CAP_S * (1 - JITTER) <= gap <= CAP_S * (1 + JITTER) for gap in gaps[2:]), gaps
    assert len(gaps) <= 3600 / (CAP_S * (1 - JITTER)) + 2  # about 36 listings an hour

    # The job dies: its crash report, then FAILED, written at the daemon's (frozen) now.
    failed_at = timed.clock.now()
    timed.fleet.put("runs/dies/crash/error.log", "RuntimeError: CUDA out of memory\n")
    timed.fleet.put("runs/dies/FAILED", "exit code 1")
    due = daemon.monitors["dies"].run.next_check_at
    assert due is not None and (due - failed_at).total_seconds() <= CAP_S * (1 + JITTER)

    # The clock moves to the next check and no further: that check stops the instance.
    timed.clock.jump_to(due)
    ended = await timed.settled("dies")
    assert timed.clock.now() == due
    assert (ended.phase, ended.outcome) == (P.STOPPED, Outcome.CRASHED), ended.reason
    assert timed.fleet.state(instance) == "stopped"
    stopping = only(await timed.history("dies"), P.STOPPING)
    assert stopping.at == due
    assert stopping.reason.startswith("failure marker FAILED: exit code 1; on_crash=stop")
    (report,) = await timed.attachments("dies")
    assert report.kind == "crash-log"
    assert run.instance_id == instance
