"""A run's lifecycle state: phase, outcome, and the Run value that `step()` transforms."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import TYPE_CHECKING, Self, TypedDict, Unpack, cast

from supervisor.core.eta import Progress
from supervisor.core.values import InstanceId, InstanceState

if TYPE_CHECKING:  # annotations only: the phases stay importable without pydantic (the CLI)
    from supervisor.core.completion import OutputSnapshot
    from supervisor.core.events import Action
    from supervisor.core.idle import Utilisation
    from supervisor.core.spec import RunSpec


class Phase(enum.StrEnum):
    """Where the supervisor is in the run's lifecycle (the phase diagram in README.md)."""

    PENDING = "pending"  # attached; instance not yet seen running
    RUNNING = "running"  # instance running; the run prefix is polled with backoff
    STALLED = "stalled"  # running, but the job's heartbeat is older than the stall timeout
    CHECKPOINTING = "checkpointing"  # training asked to end; final checkpoint saved, verified
    GRACE = "grace"  # completed; waiting before acting on the instance
    STOPPING = "stopping"  # stop intent committed; StopInstances issued or to be re-driven
    TERMINATING = "terminating"  # terminate intent committed
    STOPPED = "stopped"
    TERMINATED = "terminated"
    DONE = "done"  # completed with on_complete=none: instance left running on purpose
    CRASHED = "crashed"  # the job failed or its instance died without our request
    FAILED = "failed"  # the supervisor hit a permanent error: a person must look
    DETACHED = "detached"  # a person stopped watching; instance untouched
    RESUMING = "resuming"  # a person asked to resume: start/launch, restore, restart training
    INTERRUPTING = "interrupting"  # spot warning: checkpoint inside the notice, no stop call
    INTERRUPTED = "interrupted"  # the spot instance was taken back

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_PHASES


TERMINAL_PHASES = frozenset(
    {
        Phase.STOPPED,
        Phase.TERMINATED,
        Phase.DONE,
        Phase.CRASHED,
        Phase.FAILED,
        Phase.DETACHED,
        Phase.INTERRUPTED,
    }
)

ACTIVE_PHASES = frozenset(Phase) - TERMINAL_PHASES
"""The phases a run is still watched in (anything not terminal)."""


class CheckpointStatus(enum.StrEnum):
    VERIFIED = "verified"
    UNVERIFIED = "unverified"  # the checkpoint step ran and failed: flagged on the run


class Outcome(enum.StrEnum):
    """How the training ended, once known; recorded beside the phase."""

    COMPLETED = "completed"
    CRASHED = "crashed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"
    STALLED = "stalled"  # the heartbeat stopped and the stall policy ended the run
    TIMED_OUT = "timed_out"  # it ran for its max_duration and was stopped


class ResumeStage(enum.StrEnum):
    """Where a resume is, while the run is resuming (one observation or result per stage)."""

    OBSERVE = "observe"  # describe the instance, then start, launch, restore or start training
    STARTING = "starting"  # StartInstances was called, or a new instance was launched
    LAUNCHING = "launching"  # RunInstances from the launch template is under way
    RESTORE = "restore"  # the verified checkpoint is being downloaded onto the instance
    START = "start"  # the resume command is being started on the instance
    WAIT_AGENT = "wait-agent"  # the instance runs, but its SSM agent has not registered yet


@dataclass(frozen=True, slots=True)
class Resume:
    """A resume's progress (not persisted: after a restart a resume looks again from OBSERVE,
    which is idempotent). A resume request starts a fresh one."""

    stage: ResumeStage = ResumeStage.OBSERVE
    from_scratch: bool = False
    command_tries: int = 0
    """Instance commands sent before the SSM agent had registered (bounded)."""


@dataclass(frozen=True, slots=True)
class AttemptState:
    """The current attempt's sub-state that no restart needs (rebuilt from the phase after
    one): a new attempt starts from `AttemptState()`, as one value."""

    instance_ended: InstanceState | None = None
    """Set when the instance was found ended while running: the next listing is the last."""
    checkpoint_tries: int = 0
    """Final-checkpoint steps run so far in this checkpointing or interrupting phase."""
    early_checkpoint: bool = False
    """A rebalance recommendation's checkpoint (training goes on) is under way."""
    seconds_left: float | None = None
    """Seconds to the spot deadline when the final checkpoint was verified (or given up)."""
    progress: Progress = Progress()  # noqa: RUF009 (a frozen value, shared safely)
    """The steps this attempt's heartbeats reported (core/eta.py)."""
    estimated_end: datetime | None = None
    """When training is estimated to end, from `progress` (None: no estimate)."""


class RunChanges(TypedDict, total=False):
    """The fields of `Run` as keywords, so that changes to a run are type-checked
    (`Run.evolve(**changes)`). tests/core/test_machine.py keeps it equal to `Run`'s fields."""

    spec: RunSpec
    phase: Phase
    outcome: Outcome | None
    version: int
    phase_since: datetime
    reason: str
    instance_id: InstanceId
    grace_until: datetime | None
    action_acked_at: datetime | None
    error_code: str | None
    pending_action: Action | None
    checkpoint: CheckpointStatus | None
    attempt: int
    started_at: datetime | None
    process_exited: bool
    verified_attempt: int | None
    verified_location: str | None
    interrupt_deadline: datetime | None
    report_etags: tuple[tuple[str, str], ...]
    running_s_before: float
    job_ended_at: datetime | None
    checks: int
    next_check_at: datetime | None
    outputs_seen: OutputSnapshot | None
    this_attempt: AttemptState
    resume: Resume
    utilisation: Utilisation | None


@dataclass(frozen=True, slots=True)
class Run:
    """Everything the core knows about one run.

    The fields above the marker are persisted with every transition (they are the ones
    `__eq__` compares, which is how `step()` knows a decision must be persisted); the polling
    state and sub-state values below it are rebuilt after a restart (the backoff resumes at
    the level its schedule has reached after that long in the phase), so a check costs no
    database write.
    """

    spec: RunSpec
    phase: Phase
    outcome: Outcome | None
    version: int
    phase_since: datetime
    reason: str
    instance_id: InstanceId = InstanceId("")  # noqa: RUF009 (NewType is the identity)
    """The run's current instance: the spec's, until a resume launches a new one."""
    grace_until: datetime | None = None
    action_acked_at: datetime | None = None
    """When the stop/terminate call of the current intent succeeded; never issue it again."""
    error_code: str | None = None
    pending_action: Action | None = None
    """What to do to the instance once the checkpoint step and grace are over."""
    checkpoint: CheckpointStatus | None = None
    attempt: int = 1
    """1 for the first instance's training, +1 for each resume."""
    started_at: datetime | None = None
    """When training (re)started: markers older than this belong to an earlier attempt."""
    process_exited: bool = False
    """The checkpoint step found the training process gone (grace may end early)."""
    verified_attempt: int | None = None
    """The attempt whose checkpoint was last verified in S3 (final or early): what a resume
    restores. `checkpoint` is only ever about the current attempt's final checkpoint."""
    verified_location: str | None = None
    """Where that checkpoint is (s3://...): the final location, or its `early/` folder."""
    interrupt_deadline: datetime | None = None
    """A spot warning's deadline (warning + 2 min - margin), while interrupting."""
    report_etags: tuple[tuple[str, str], ...] = ()
    """(key, ETag) of each report file already read: read again only when it changes."""
    running_s_before: float = 0.0
    """Seconds the earlier attempts ran (each from its start to its end): with this attempt's,
    what `max_duration` limits."""
    job_ended_at: datetime | None = None
    """When this attempt's job ended: its completion or failure marker's LastModified in the
    listing that found it. With `action_acked_at`, the idle instance-seconds after the end."""

    # -- volatile state, not persisted (rebuilt after a restart) --
    checks: int = field(default=0, compare=False)
    next_check_at: datetime | None = field(default=None, compare=False)
    outputs_seen: OutputSnapshot | None = field(default=None, compare=False)
    this_attempt: AttemptState = field(default=AttemptState(), compare=False)
    """The current attempt's sub-state: replaced as one, fresh, when a resume restarts training."""
    resume: Resume = field(default=Resume(), compare=False)
    """A resume's progress, while resuming: fresh at each resume request."""
    utilisation: Utilisation | None = field(default=None, compare=False)
    """The idle sweep's last judgement of the instance's utilisation (idle detection on)."""

    def __post_init__(self) -> None:
        if not self.instance_id:
            object.__setattr__(self, "instance_id", self.spec.instance_id)

    def evolve(self, **changes: Unpack[RunChanges]) -> Self:
        """A copy with `changes`. Every step makes one, so this skips `dataclasses.replace`'s
        per-call field introspection (about twice as slow); unknown names still raise."""
        new = object.__new__(type(self))
        given = cast(dict[str, object], changes)  # (a fresh dict: ours to empty)
        for name in _FIELD_NAMES:
            value = given.pop(name) if name in given else getattr(self, name)
            object.__setattr__(new, name, value)
        if given:
            raise TypeError(f"Run has no field(s) {', '.join(sorted(given))}")
        if not new.instance_id:
            object.__setattr__(new, "instance_id", new.spec.instance_id)
        return new

    def __repr__(self) -> str:
        return (
            f"<Run {self.spec.run_id} {self.phase}"
            f"{'/' + self.outcome if self.outcome else ''} v{self.version}"
            f" instance={self.instance_id}>"
        )


_FIELD_NAMES = tuple(f.name for f in fields(Run))
