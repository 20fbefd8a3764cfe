"""Builders for the core tests: a valid spec, a run in any phase, a fixed clock, a seeded rng.

Nothing here reads a clock or touches I/O; every test passes the same `NOW`.
"""

from __future__ import annotations

import dataclasses
import random
from datetime import UTC, datetime, timedelta
from typing import Any

from supervisor.core.checkpoint import CommandKind, CommandResult, CommandStatus, Verification
from supervisor.core.completion import ListRequest
from supervisor.core.effects import ListPrefix
from supervisor.core.eta import without_eta
from supervisor.core.events import (
    CheckpointChecked,
    CommandFinished,
    Event,
    PrefixListed,
    SpotInterruptionWarning,
)
from supervisor.core.machine import Decision, Policy, new_run, step
from supervisor.core.run import AttemptState, CheckpointStatus, Outcome, Phase, ResumeStage, Run
from supervisor.core.spec import RunSpec
from supervisor.core.values import ObjectInfo

NOW = datetime(2026, 11, 22, 12, tzinfo=UTC)
GRACE_S = 600.0
GRACE_UNTIL = NOW + timedelta(seconds=GRACE_S)
POLICY = Policy()
POLL_WITHOUT_ETA = without_eta(POLICY.poll, POLICY.poll_max_without_eta_s)
"""The backoff of a run whose end has no estimate (no progress with a total): 30 s doubling to
the tighter cap."""
INSTANCE = "i-0123456789abcdef0"
LIST_TOP = ListPrefix(ListRequest("my-runs", "exp1/run42/", "/"))
"""The listing the default spec asks for: its markers all sit at the top of the run prefix."""
LIST_ALL = ListPrefix(ListRequest("my-runs", "exp1/run42/", None, with_uploads=True))
"""The recursive listing of the whole run prefix, with the uploads in progress, that an
until-quiet grace asks for."""
CHECKPOINT_DIR = "/home/ubuntu/ckpt"
PID_FILE = "/run/train.pid"
RESUME_COMMAND = ("python", "train.py", "--resume")
LAUNCH_TEMPLATE = {"id": "lt-0123456789abcdef0"}

SPEC_FIELDS: dict[str, Any] = {
    "run_id": "run-42",
    "instance_id": INSTANCE,
    "region": "us-east-1",
    "s3_prefix": "s3://my-runs/exp1/run42/",
    "grace_s": GRACE_S,
    "grace_mode": "fixed",
}
"""A run whose grace is the whole GRACE_S (`make_spec(grace_mode="until-quiet")`: the default
of an attached run, which ends grace once the prefix is quiet)."""


CHECKPOINT_FIELDS: dict[str, Any] = {
    "checkpoint_dir": CHECKPOINT_DIR,
    "pid_file": PID_FILE,
    "resume_command": RESUME_COMMAND,
    "grace_mode": "until-quiet",
}
"""Checkpointing on with an until-quiet grace, resumable on the same instance."""


def make_spec(**overrides: Any) -> RunSpec:
    return RunSpec.build(**{**SPEC_FIELDS, **overrides})


def checkpoint_spec(**overrides: Any) -> RunSpec:
    return make_spec(**{**CHECKPOINT_FIELDS, **overrides})


def spot_spec(**overrides: Any) -> RunSpec:
    """A checkpointed spot run; `on_interruption` stays "none" unless overridden."""
    return checkpoint_spec(**{"spot": True, **overrides})


_IN_ATTEMPT = {f.name for f in dataclasses.fields(AttemptState)}
_IN_RESUME = {
    "resume_stage": "stage",
    "from_scratch": "from_scratch",
    "command_tries": "command_tries",
}


def with_state(run: Run, **changes: Any) -> Run:
    """`run` with `changes`, where the fields of its sub-state values may be given by name:
    `AttemptState`'s (`checkpoint_tries=2`) and `Resume`'s (`resume_stage="start"`)."""
    attempt = {k: changes.pop(k) for k in _IN_ATTEMPT & changes.keys()}
    resume = {_IN_RESUME[k]: changes.pop(k) for k in _IN_RESUME.keys() & changes.keys()}
    if "stage" in resume:
        resume["stage"] = ResumeStage(resume["stage"])
    if attempt:
        changes["this_attempt"] = dataclasses.replace(run.this_attempt, **attempt)
    if resume:
        changes["resume"] = dataclasses.replace(run.resume, **resume)
    return run.evolve(**changes)


def state_of(run: Run, name: str) -> object:
    """A field of `run`, or of its sub-state values, by the names `with_state` takes."""
    if name in _IN_ATTEMPT:
        return getattr(run.this_attempt, name)
    if name in _IN_RESUME:
        return getattr(run.resume, _IN_RESUME[name])
    return getattr(run, name)


def make_run(phase: Phase = Phase.PENDING, *, spec: RunSpec | None = None, **changes: Any) -> Run:
    """A run in `phase`, attached an hour ago; a grace run has completed and waits until
    `GRACE_UNTIL`. Sub-state fields may be given by name (see `with_state`)."""
    run = new_run(spec or make_spec(), now=NOW - timedelta(hours=1)).run
    defaults: dict[str, Any] = {}
    if phase is Phase.GRACE:
        defaults = {"outcome": Outcome.COMPLETED, "grace_until": GRACE_UNTIL}
    if changes.get("checkpoint") is CheckpointStatus.VERIFIED:
        # As in step(): verifying the final checkpoint also makes it the one a resume restores.
        defaults["verified_attempt"] = changes.get("attempt", run.attempt)
    return with_state(run, phase=phase, version=3, **{**defaults, **changes})


def obj(key: str, etag: str = "e1", size: int = 10, *, at: datetime = NOW) -> ObjectInfo:
    return ObjectInfo(key=key, etag=etag, size=size, last_modified=at)


def listed(*keys: str) -> PrefixListed:
    return PrefixListed(tuple(obj(k) for k in keys))


def heartbeat(age_s: float, *keys: str, key: str = "status.json") -> PrefixListed:
    """A listing of `keys` beside the job's heartbeat, last written `age_s` before `NOW`."""
    beat = obj(key, at=NOW - timedelta(seconds=age_s))
    return PrefixListed((*(obj(k) for k in keys), beat))


def finished(kind: CommandKind, *, exited: bool = True, **result: object) -> CommandFinished:
    """A command that succeeded; a checkpoint result says whether the training process exited."""
    body: dict[str, object] = {"ok": True, **result}
    if kind is CommandKind.CHECKPOINT:
        body.setdefault("process", {"pid": 4242, "exited": exited})
    return CommandFinished(kind, CommandResult(CommandStatus.SUCCESS, 0, result=body))


def failed(kind: CommandKind, error: str = "upload failed: AccessDenied") -> CommandFinished:
    result = CommandResult(
        CommandStatus.FAILED, 1, stderr=error, result={"ok": False, "error": error}
    )
    return CommandFinished(kind, result)


def checked(*problems: str, files: int = 2, size: int = 300) -> CheckpointChecked:
    """The verification of the manifest in S3: verified unless problems are given."""
    return CheckpointChecked(Verification(not problems, files, size, problems), None, 0.25)


SPOT_NOTICE_S = 100.0
"""Seconds between `NOW` and the deadline of the default spot warning."""
DEADLINE = NOW + timedelta(seconds=SPOT_NOTICE_S)


def warning(
    seconds_left: float = SPOT_NOTICE_S, action: str = "terminate"
) -> SpotInterruptionWarning:
    """A spot interruption warning whose deadline is `seconds_left` after `NOW`."""
    return SpotInterruptionWarning(NOW + timedelta(seconds=seconds_left), action)


def seeded() -> random.Random:
    return random.Random(1234)


def run_step(run: Run, event: Event, *, now: datetime = NOW) -> Decision:
    return step(run, event, now=now, policy=POLICY, rng=seeded())
