"""The effect executor on its own: each effect type carried out through fake ports (our own
`Cloud` and `InstanceShell`, runtime/ports.py) and a real SQLite store, without a daemon or
a monitor. For each: what it returns when the call succeeds, and the event an error becomes."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from supervisor.adapters.store import Store
from supervisor.core.checkpoint import (
    CommandKind,
    CommandResult,
    CommandStatus,
    InstanceCommand,
    StoredObject,
    expected_single_part_checksum,
)
from supervisor.core.completion import ListRequest
from supervisor.core.effects import (
    ActOnInstance,
    AttachCrashReport,
    AutoResume,
    IngestReport,
    LaunchInstance,
    ListPrefix,
    ObserveInstance,
    ReadObject,
    RunInstanceCommand,
    VerifyCheckpoint,
    WakeAt,
)
from supervisor.core.errors import NotFoundError, PermanentError, TransientError
from supervisor.core.eta import ProgressSample
from supervisor.core.events import (
    Action,
    ActionSucceeded,
    CheckpointChecked,
    CommandFinished,
    EffectFailed,
    InstanceLaunched,
    InstanceObserved,
    ObjectRead,
    PrefixListed,
    ReportIngested,
    ResumeRequested,
)
from supervisor.core.idle import Datapoint, IdleMetric
from supervisor.core.machine import new_run
from supervisor.core.run import Run
from supervisor.core.spec import LaunchTemplate, RunSpec, Transport
from supervisor.core.values import InstanceId, InstanceState, ObjectInfo
from supervisor.core.zombies import InstanceSeen
from supervisor.runtime.executor import Executor, ExecutorPorts
from supervisor.runtime.ports import InstanceShell

NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
BUCKET = "runs-bucket"
PREFIX = f"s3://{BUCKET}/exp/r1/"
INSTANCE = InstanceId("i-0123456789abcdef0")


class FixedClock:
    def now(self) -> datetime:
        return NOW


class NoCounts:
    outcomes: Mapping[tuple[str, str, str], int] = {}

    def count(self, operation: str) -> int:
        return 0

    def snapshot(self) -> dict[str, int]:
        return {}


@dataclass
class ScriptedCloud:
    """Our own Cloud port, answering from a script: an operation's answer, or the error it
    raises. An operation the script does not name is a test bug."""

    answers: dict[str, Any] = field(default_factory=dict)
    calls: Counter[str] = field(default_factory=Counter)
    counter: NoCounts = field(default_factory=NoCounts)

    @property
    def default_region(self) -> str | None:
        return "eu-west-1"

    def _answer(self, operation: str, *key: str) -> Any:
        self.calls[operation] += 1
        answer = self.answers.get(":".join((operation, *key)), self.answers.get(operation))
        if answer is None:
            raise AssertionError(f"unexpected {operation} {key}")
        if isinstance(answer, list):  # one answer per call, in order
            answer = answer.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def list_objects(self, request: ListRequest, region: str) -> tuple[ObjectInfo, ...]:
        return self._answer("ListObjectsV2")  # type: ignore[no-any-return]

    async def list_uploads(self, bucket: str, prefix: str, region: str) -> tuple[str, ...]:
        return self._answer("ListMultipartUploads", prefix)  # type: ignore[no-any-return]

    async def read_object(self, bucket: str, key: str, region: str, *, limit: int = 0) -> str:
        return self._answer("GetObject", key)  # type: ignore[no-any-return]

    async def read_tail(
        self, bucket: str, key: str, region: str, *, limit: int = 0
    ) -> tuple[str, int]:
        return self._answer("GetObject(tail)")  # type: ignore[no-any-return]

    async def read_range(
        self, bucket: str, key: str, region: str, start: int, *, limit: int = 0
    ) -> tuple[bytes, int]:
        return self._answer("GetObject(range)")  # type: ignore[no-any-return]

    async def describe_instances(
        self, ids: Sequence[InstanceId], region: str
    ) -> dict[InstanceId, InstanceState]:
        return self._answer("DescribeInstanceStatus")  # type: ignore[no-any-return]

    async def describe_tagged(self, tag_key: str, region: str) -> list[InstanceSeen]:
        return self._answer("DescribeInstances(tagged)")  # type: ignore[no-any-return]

    async def instance_exists(self, instance_id: InstanceId, region: str) -> bool:
        return self._answer("DescribeInstances")  # type: ignore[no-any-return]

    async def probe_prefix(self, bucket: str, prefix: str, region: str) -> None:
        self._answer("ListObjectsV2(probe)")

    async def stop_instance(self, instance_id: InstanceId, region: str) -> InstanceState:
        return self._answer("StopInstances")  # type: ignore[no-any-return]

    async def terminate_instance(self, instance_id: InstanceId, region: str) -> InstanceState:
        return self._answer("TerminateInstances")  # type: ignore[no-any-return]

    async def start_instance(self, instance_id: InstanceId, region: str) -> InstanceState:
        return self._answer("StartInstances")  # type: ignore[no-any-return]

    async def head_object(self, bucket: str, key: str, region: str) -> StoredObject | None:
        return self._answer("HeadObject", key)  # type: ignore[no-any-return]

    async def launch_from_template(
        self, template: LaunchTemplate, tags: Mapping[str, str], region: str, *, token: str
    ) -> InstanceId:
        return self._answer("RunInstances")  # type: ignore[no-any-return]

    async def create_tags(
        self, instance_id: InstanceId, tags: Mapping[str, str], region: str
    ) -> None:
        self._answer("CreateTags")

    async def utilisation(
        self,
        ids: Sequence[InstanceId],
        metric: IdleMetric,
        region: str,
        *,
        start: datetime,
        end: datetime,
    ) -> dict[InstanceId, tuple[Datapoint, ...]]:
        return self._answer("GetMetricData")  # type: ignore[no-any-return]


@dataclass
class ScriptedShell:
    """Our own InstanceShell port: one answer (or error) for every command."""

    answer: CommandResult | Exception
    commands: list[InstanceCommand] = field(default_factory=list)

    async def run(
        self,
        instance_id: str,
        region: str,
        command: InstanceCommand,
        *,
        timeout_s: float,
        comment: str,
    ) -> CommandResult:
        self.commands.append(command)
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


@dataclass
class Notes:
    """The monitor's `note`, kept: (name, level, fields) in order."""

    seen: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)

    def __call__(self, name: str, *, level: str = "info", **fields: Any) -> None:
        self.seen.append((name, level, fields))

    def names(self) -> list[str]:
        return [name for name, _, _ in self.seen]


@dataclass
class World:
    store: Store
    cloud: ScriptedCloud
    shell: ScriptedShell
    run: Run
    notes: Notes
    observed: list[None]
    executor: Executor

    async def execute(self, effect: Any) -> Any:
        return await self.executor.execute(effect, self.run, self.notes)


def _spec(**fields: Any) -> RunSpec:
    return RunSpec.build(
        run_id="r1",
        instance_id=INSTANCE,
        region="eu-west-1",
        s3_prefix=PREFIX,
        grace_s=0,
        **fields,
    )


async def _world(tmp_path: Path, spec: RunSpec) -> AsyncIterator[World]:
    store = await Store.open(tmp_path / "supervisor.db")
    try:
        decision = new_run(spec, now=NOW)
        await store.create_run(decision)
        cloud = ScriptedCloud()
        shell = ScriptedShell(CommandResult(CommandStatus.SUCCESS, 0, result={"ok": True}))
        observed: list[None] = []
        shells: dict[Transport, InstanceShell] = {Transport.LOCAL: shell, Transport.SSM: shell}
        ports = ExecutorPorts(
            store=store,
            cloud=cloud,
            clock=FixedClock(),
            shells=shells,
            retry_base_s=0.0,
            observe=lambda: observed.append(None),
        )
        yield World(store, cloud, shell, decision.run, Notes(), observed, Executor(ports))
    finally:
        await store.close()


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    async for w in _world(tmp_path, _spec()):
        yield w


@pytest.fixture
async def checkpointed(tmp_path: Path) -> AsyncIterator[World]:
    spec = _spec(checkpoint_dir="/ckpt", transport="local", launch_template={"name": "lt-runs"})
    async for w in _world(tmp_path, spec):
        yield w


def _obj(key: str, size: int = 1) -> ObjectInfo:
    return ObjectInfo(key=key, etag='"e"', size=size, last_modified=NOW)


# -- ObserveInstance --------------------------------------------------------------------------


async def test_an_indirect_observation_asks_the_reconciler_and_returns_nothing(
    world: World,
) -> None:
    assert await world.execute(ObserveInstance(direct=False)) is None
    assert world.observed == [None]
    assert world.cloud.calls == Counter()


async def test_a_direct_observation_describes_the_instance_now(world: World) -> None:
    world.cloud.answers["DescribeInstanceStatus"] = {INSTANCE: InstanceState.STOPPED}
    event = await world.execute(ObserveInstance(direct=True))
    assert event == InstanceObserved(InstanceState.STOPPED, source="event", instance_id=INSTANCE)


async def test_a_failed_direct_observation_leaves_it_to_the_next_sweep(world: World) -> None:
    world.cloud.answers["DescribeInstanceStatus"] = TransientError("Throttling", "slow down")
    assert await world.execute(ObserveInstance(direct=True)) is None
    assert world.observed == [None]
    assert world.notes.seen == [
        ("describe_failed", "warning", {"code": "Throttling", "message": "slow down"})
    ]


# -- ListPrefix -------------------------------------------------------------------------------


async def test_a_listing_returns_keys_relative_to_the_run_prefix(world: World) -> None:
    world.cloud.answers["ListObjectsV2"] = (_obj("exp/r1/COMPLETE"),)
    request = ListRequest(BUCKET, "exp/r1/", "/")
    event = await world.execute(ListPrefix(request))
    assert event == PrefixListed((_obj("COMPLETE"),))
    assert world.notes.seen == [("prefix_checked", "debug", {"objects": 1, "check": 1})]


async def test_a_failed_listing_becomes_effect_failed(world: World) -> None:
    world.cloud.answers["ListObjectsV2"] = TransientError("SlowDown", "busy")
    event = await world.execute(ListPrefix(ListRequest(BUCKET, "exp/r1/", "/")))
    assert event == EffectFailed("ListObjectsV2", "SlowDown", "busy", transient=True)
    assert world.notes.names() == ["prefix_check_failed"]


async def test_a_quiet_look_also_lists_the_uploads_in_progress_under_the_prefix(
    world: World,
) -> None:
    world.cloud.answers["ListObjectsV2"] = (_obj("exp/r1/COMPLETE"),)
    world.cloud.answers["ListMultipartUploads:exp/r1/"] = ("exp/r1/ckpt/big.pt",)
    event = await world.execute(ListPrefix(ListRequest(BUCKET, "exp/r1/", None, with_uploads=True)))
    assert event == PrefixListed((_obj("COMPLETE"),), ("ckpt/big.pt",))
    assert world.cloud.calls == Counter({"ListObjectsV2": 1, "ListMultipartUploads": 1})


async def test_a_failed_uploads_look_becomes_effect_failed(world: World) -> None:
    world.cloud.answers["ListObjectsV2"] = ()
    world.cloud.answers["ListMultipartUploads"] = PermanentError("AccessDenied", "no")
    event = await world.execute(ListPrefix(ListRequest(BUCKET, "exp/r1/", None, with_uploads=True)))
    assert event == EffectFailed("ListMultipartUploads", "AccessDenied", "no", transient=False)
    assert world.notes.names() == ["prefix_checked", "uploads_check_failed"]


# -- ReadObject -------------------------------------------------------------------------------


async def test_a_read_returns_the_body(world: World) -> None:
    world.cloud.answers["GetObject:exp/r1/FAILED"] = "exit 3"
    assert await world.execute(ReadObject("FAILED")) == ObjectRead("FAILED", "exit 3")


async def test_a_missing_object_reads_as_empty_and_another_error_as_a_note(world: World) -> None:
    world.cloud.answers["GetObject"] = [NotFoundError("NoSuchKey", "gone"),
                                        PermanentError("AccessDenied", "no")]  # fmt: skip
    assert await world.execute(ReadObject("FAILED")) == ObjectRead("FAILED", "")
    assert await world.execute(ReadObject("FAILED")) == ObjectRead(
        "FAILED", "(could not read FAILED: AccessDenied)"
    )


# -- IngestReport -----------------------------------------------------------------------------


async def test_a_report_is_read_and_stored(world: World) -> None:
    world.cloud.answers["GetObject:exp/r1/final_metrics.json"] = '{"loss": 0.5}'
    event = await world.execute(IngestReport("final_metrics.json", '"e1"', 13))
    assert event == ReportIngested("final_metrics.json", '"e1"')
    assert world.notes.names() == ["report_ingested"]


async def test_a_heartbeat_with_a_step_carries_its_progress_to_the_machine(
    world: World,
) -> None:
    world.cloud.answers["GetObject:exp/r1/status.json"] = (
        '{"state": "running", "step": 40, "total_steps": 1000, "time": "2026-11-22T11:59:00+00:00"}'
    )
    event = await world.execute(IngestReport("status.json", '"e2"', 90))
    assert event == ReportIngested(
        "status.json",
        '"e2"',
        progress=ProgressSample(40, 1000, datetime(2026, 11, 22, 11, 59, tzinfo=UTC)),
    )


async def test_a_heartbeat_without_a_step_carries_no_progress(world: World) -> None:
    world.cloud.answers["GetObject:exp/r1/status.json"] = '{"state": "started"}'
    event = await world.execute(IngestReport("status.json", '"e1"', 20))
    assert event == ReportIngested("status.json", '"e1"')


async def test_an_oversized_report_is_not_read_and_its_problem_is_stored(world: World) -> None:
    event = await world.execute(IngestReport("final_metrics.json", '"e1"', 10**9))
    assert isinstance(event, ReportIngested) and event.error is not None
    assert "bytes are not read" in event.error
    assert world.cloud.calls == Counter()
    [problem] = await world.store.report_problems("r1")
    assert problem.key == "final_metrics.json"


async def test_a_throttled_report_read_is_left_for_the_next_check(world: World) -> None:
    world.cloud.answers["GetObject"] = TransientError("SlowDown", "busy")
    assert await world.execute(IngestReport("final_metrics.json", '"e1"', 13)) is None
    assert world.notes.names() == ["report_unread"]
    assert await world.store.report_problems("r1") == []


# -- AttachCrashReport ------------------------------------------------------------------------


async def test_a_crash_report_is_attached_with_its_tail(world: World) -> None:
    world.cloud.answers["GetObject(tail)"] = ("Traceback: boom\n", 4096)
    assert await world.execute(AttachCrashReport("crash/error.log")) is None
    [attachment] = await world.store.attachments("r1")
    assert (attachment.kind, attachment.size, attachment.excerpt) == (
        "crash-log",
        4096,
        "Traceback: boom\n",
    )
    assert attachment.uri == f"{PREFIX}crash/error.log"


async def test_no_crash_report_attaches_nothing(world: World) -> None:
    world.cloud.answers["GetObject(tail)"] = NotFoundError("NoSuchKey", "none")
    assert await world.execute(AttachCrashReport("crash/error.log")) is None
    assert await world.store.attachments("r1") == []
    assert world.notes.names() == ["crash_report_absent"]


async def test_an_unreadable_crash_report_is_noted_after_the_retries(world: World) -> None:
    world.cloud.answers["GetObject(tail)"] = PermanentError("AccessDenied", "no")
    assert await world.execute(AttachCrashReport("crash/error.log")) is None
    assert await world.store.attachments("r1") == []
    assert world.notes.names() == ["crash_report_unread"]


# -- RunInstanceCommand -----------------------------------------------------------------------


async def test_a_command_runs_on_the_runs_transport(checkpointed: World) -> None:
    command = InstanceCommand(CommandKind.CHECKPOINT)
    event = await checkpointed.execute(RunInstanceCommand(command, timeout_s=5))
    assert isinstance(event, CommandFinished) and event.result.ok
    assert checkpointed.shell.commands == [command]
    assert checkpointed.notes.names() == ["command_sent", "command_finished"]


async def test_an_undelivered_command_becomes_a_failed_result(checkpointed: World) -> None:
    checkpointed.shell.answer = TransientError("InvalidInstanceId", "agent offline")
    event = await checkpointed.execute(
        RunInstanceCommand(InstanceCommand(CommandKind.CHECKPOINT), timeout_s=5)
    )
    assert isinstance(event, CommandFinished)
    assert event.result.status is CommandStatus.UNDELIVERED and not event.result.ok
    assert "agent offline" in checkpointed.notes.seen[-1][2]["error"]


# -- VerifyCheckpoint -------------------------------------------------------------------------


def _manifest(data: bytes, key: str) -> str:
    sha = hashlib.sha256(data).hexdigest()
    return (
        '{"run_id": "r1", "created_at": "2030-01-02T03:04:05Z", "checkpoint": "step_9.pt", '
        f'"kind": "file", "bucket": "{BUCKET}", "prefix": "exp/r1/checkpoints/", '
        f'"files": [{{"path": "step_9.pt", "key": "{key}", "size": {len(data)}, '
        f'"sha256": "{sha}", "s3_checksum_sha256": "{expected_single_part_checksum(sha)}"}}], '
        f'"total_bytes": {len(data)}}}'
    )


async def test_a_checkpoint_whose_files_match_is_verified(checkpointed: World) -> None:
    key = "exp/r1/checkpoints/step_9.pt"
    data = b"weights"
    checksum = expected_single_part_checksum(hashlib.sha256(data).hexdigest())
    checkpointed.cloud.answers["GetObject"] = _manifest(data, key)
    checkpointed.cloud.answers["HeadObject"] = StoredObject(key, len(data), checksum)
    event = await checkpointed.execute(
        VerifyCheckpoint(BUCKET, "exp/r1/checkpoints/_manifest.json")
    )
    assert isinstance(event, CheckpointChecked)
    assert event.verification.ok, event.verification.problems
    assert event.manifest is not None and event.manifest.checkpoint == "step_9.pt"


async def test_a_checkpoint_without_a_manifest_is_not_verified(checkpointed: World) -> None:
    checkpointed.cloud.answers["GetObject"] = NotFoundError("NoSuchKey", "none")
    event = await checkpointed.execute(VerifyCheckpoint(BUCKET, "exp/r1/checkpoints/_m.json"))
    assert isinstance(event, CheckpointChecked) and not event.verification.ok
    assert event.verification.problems == (
        f"no manifest at s3://{BUCKET}/exp/r1/checkpoints/_m.json",
    )


async def test_a_checkpoint_with_a_missing_file_is_not_verified(checkpointed: World) -> None:
    key = "exp/r1/checkpoints/step_9.pt"
    checkpointed.cloud.answers["GetObject"] = _manifest(b"weights", key)
    checkpointed.cloud.answers["HeadObject"] = [StoredObject(key, 1, None)]
    event = await checkpointed.execute(VerifyCheckpoint(BUCKET, "exp/r1/checkpoints/_m.json"))
    assert isinstance(event, CheckpointChecked) and not event.verification.ok


# -- LaunchInstance, AutoResume ---------------------------------------------------------------


async def test_a_launch_returns_the_new_instance(checkpointed: World) -> None:
    checkpointed.cloud.answers["RunInstances"] = InstanceId("i-0fedcba9876543210")
    event = await checkpointed.execute(LaunchInstance())
    assert event == InstanceLaunched(InstanceId("i-0fedcba9876543210"))


async def test_a_refused_launch_becomes_effect_failed(checkpointed: World) -> None:
    error = PermanentError("InsufficientInstanceCapacity", "none left")
    checkpointed.cloud.answers["RunInstances"] = error
    event = await checkpointed.execute(LaunchInstance())
    assert event == EffectFailed(
        "RunInstances", "InsufficientInstanceCapacity", "none left", transient=False
    )


async def test_an_automatic_resume_becomes_a_resume_request(world: World) -> None:
    event = await world.execute(AutoResume(from_scratch=True))
    assert event == ResumeRequested(from_scratch=True)
    assert world.notes.seen == [("resume_by_policy", "info", {"from_scratch": True})]


# -- ActOnInstance ----------------------------------------------------------------------------


async def test_an_accepted_stop_is_recorded_and_returned(world: World) -> None:
    world.cloud.answers["StopInstances"] = [TransientError("Throttling", "slow"),
                                            InstanceState.STOPPING]  # fmt: skip
    event = await world.execute(ActOnInstance(Action.STOP))
    assert event == ActionSucceeded(Action.STOP, InstanceState.STOPPING)
    [record] = await world.store.actions("r1")
    assert (record.action, record.outcome, record.attempts) == ("stop", "accepted", 2)
    assert world.notes.names() == ["action_requested", "action_retrying", "action_accepted"]


async def test_an_instance_already_gone_is_observed_as_unknown(world: World) -> None:
    world.cloud.answers["TerminateInstances"] = NotFoundError("InvalidInstanceID.NotFound", "x")
    event = await world.execute(ActOnInstance(Action.TERMINATE))
    assert event == InstanceObserved(
        InstanceState.UNKNOWN,
        source="TerminateInstances: InvalidInstanceID.NotFound",
        instance_id=INSTANCE,
    )
    [record] = await world.store.actions("r1")
    assert record.outcome == "gone"


async def test_a_refused_stop_becomes_effect_failed_and_is_recorded(world: World) -> None:
    world.cloud.answers["StopInstances"] = PermanentError("UnauthorizedOperation", "denied")
    event = await world.execute(ActOnInstance(Action.STOP))
    assert event == EffectFailed("StopInstances", "UnauthorizedOperation", "denied", False)
    [record] = await world.store.actions("r1")
    assert (record.outcome, record.error_code) == ("failed", "UnauthorizedOperation")
    assert world.cloud.calls["StopInstances"] == 1, "a permanent error is not retried"


# -- dispatch ---------------------------------------------------------------------------------


async def test_the_monitors_own_effects_are_not_the_executors(world: World) -> None:
    with pytest.raises(AssertionError, match="does not carry out"):
        await world.execute(WakeAt(NOW))


async def test_the_repr_names_the_effects_it_carries_out(world: World) -> None:
    assert repr(world.executor) == (
        "<Executor effects=['ActOnInstance', 'AttachCrashReport', 'AutoResume', "
        "'IngestReport', 'LaunchInstance', 'ListPrefix', 'ObserveInstance', 'ReadObject', "
        "'RunInstanceCommand', 'VerifyCheckpoint']>"
    )
