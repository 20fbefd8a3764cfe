"""Events: facts observed by the runtime and fed to `step()`. Frozen values, no behaviour."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from supervisor.core.checkpoint import CommandKind, CommandResult, Manifest, Verification
from supervisor.core.eta import ProgressSample
from supervisor.core.idle import Datapoint, IdleMetric
from supervisor.core.values import InstanceId, InstanceState, ObjectInfo


class Action(enum.StrEnum):
    """An action on the instance that the supervisor carries out."""

    STOP = "stop"
    TERMINATE = "terminate"
    START = "start"


class UserAction(enum.StrEnum):
    STOP = "stop"
    TERMINATE = "terminate"
    DETACH = "detach"


@dataclass(frozen=True, slots=True)
class Armed:
    """The monitor started (after attach or a daemon restart)."""


@dataclass(frozen=True, slots=True)
class Tick:
    """A timer the run asked for (`WakeAt`) fired."""


@dataclass(frozen=True, slots=True)
class InstanceObserved:
    state: InstanceState
    source: str = "describe"
    instance_id: InstanceId | None = None
    """Which instance was seen; an observation of another instance (a sweep that began
    before a resume switched instances) is stale and ignored."""


@dataclass(frozen=True, slots=True)
class PrefixListed:
    objects: tuple[ObjectInfo, ...]
    uploads_in_progress: tuple[str, ...] = ()
    """Keys (relative to the run prefix) of multipart uploads under way, when asked for."""


@dataclass(frozen=True, slots=True)
class ObjectRead:
    key: str
    body: str


@dataclass(frozen=True, slots=True)
class ActionSucceeded:
    action: Action
    state_after: InstanceState


@dataclass(frozen=True, slots=True)
class EffectFailed:
    """An effect's I/O failed. `transient` errors were already retried as far as policy allows."""

    operation: str
    code: str
    message: str
    transient: bool


@dataclass(frozen=True, slots=True)
class UserRequested:
    action: UserAction


@dataclass(frozen=True, slots=True)
class MonitorFailed:
    """The run's monitor raised; the run needs a person."""

    error_type: str
    message: str


@dataclass(frozen=True, slots=True)
class CommandFinished:
    """An instance command (checkpoint, restore, start) ended, well or not."""

    kind: CommandKind
    result: CommandResult
    early: bool = False
    """The result of an early checkpoint (`checkpoint --mode early`), not of the final one."""


@dataclass(frozen=True, slots=True)
class CheckpointChecked:
    """The supervisor compared the manifest in S3 with what S3 holds."""

    verification: Verification
    manifest: Manifest | None
    seconds: float


@dataclass(frozen=True, slots=True)
class ResumeRequested:
    from_scratch: bool = False


@dataclass(frozen=True, slots=True)
class InstanceLaunched:
    instance_id: InstanceId


@dataclass(frozen=True, slots=True)
class Nudge:
    """An event from the queue says something changed: look now instead of at the next
    scheduled check. `target` is "prefix" (an S3 object appeared) or "instance" (EC2 state).

    `key` is the object's full key (a prefix nudge), `state` the state the event reports (an
    instance nudge): the core uses them only to skip a look that could show nothing new.
    `etag` and `size` are the object's, as the notification says them: a report the job
    rewrote is read without a listing."""

    target: str
    key: str | None = None
    state: str | None = None
    etag: str | None = None
    size: int | None = None


@dataclass(frozen=True, slots=True)
class SpotInterruptionWarning:
    """The instance will be taken back at about `deadline` (warning time + 2 min - margin)."""

    deadline: datetime
    action: str = "terminate"


@dataclass(frozen=True, slots=True)
class RebalanceRecommended:
    """EC2 says the spot instance is at elevated risk of interruption (no deadline yet)."""


@dataclass(frozen=True, slots=True)
class ReportIngested:
    """A report file was read (or found unreadable, with `error`): don't read this ETag again."""

    key: str
    etag: str
    error: str | None = None
    progress: ProgressSample | None = None
    """The heartbeat's step (with the total steps, if it says) and its time."""


@dataclass(frozen=True, slots=True)
class UtilisationObserved:
    """The idle sweep's CloudWatch datapoints for the run's instance (`metric`, over the
    run's idle window): the core judges them (`core.idle.judge`)."""

    metric: IdleMetric
    datapoints: tuple[Datapoint, ...]
    instance_id: InstanceId | None = None
    """Which instance was measured; another instance's datapoints (a sweep that began
    before a resume switched instances) are stale and ignored."""


Event = (
    Armed
    | Tick
    | InstanceObserved
    | PrefixListed
    | ObjectRead
    | ActionSucceeded
    | EffectFailed
    | UserRequested
    | MonitorFailed
    | CommandFinished
    | CheckpointChecked
    | ResumeRequested
    | InstanceLaunched
    | Nudge
    | SpotInterruptionWarning
    | RebalanceRecommended
    | ReportIngested
    | UtilisationObserved
)
