"""Effects: commands from `step()` that the runtime's executor carries out."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from supervisor.core.checkpoint import InstanceCommand
from supervisor.core.completion import ListRequest
from supervisor.core.events import Action


@dataclass(frozen=True, slots=True)
class ListPrefix:
    """One ListObjectsV2 call; answers with `PrefixListed` or `EffectFailed`."""

    request: ListRequest


@dataclass(frozen=True, slots=True)
class ReadObject:
    """GET one small object under the run prefix; answers with `ObjectRead` or `EffectFailed`."""

    key: str


@dataclass(frozen=True, slots=True)
class ActOnInstance:
    """StopInstances / TerminateInstances with retries on transient errors; answers with
    `ActionSucceeded`, `InstanceObserved(UNKNOWN)` when the instance is gone, or `EffectFailed`."""

    action: Action


@dataclass(frozen=True, slots=True)
class WakeAt:
    """Deliver a `Tick` at `at` (replaces any earlier timer of this run)."""

    at: datetime


@dataclass(frozen=True, slots=True)
class ObserveInstance:
    """Ask for a prompt, batched describe of the instance (the reconciler's next sweep).

    `direct`: describe this one instance now instead (one call), answering with
    `InstanceObserved`; for an event from the queue, whose message is deleted only once what
    it caused is committed."""

    direct: bool = False


@dataclass(frozen=True, slots=True)
class RunInstanceCommand:
    """Run the instance-side program through the run's transport; answers `CommandFinished`."""

    command: InstanceCommand
    timeout_s: float
    background: bool = False
    """Run it beside the run's other events (an early checkpoint): the result arrives later
    as an event, and leaving running/stalled cancels it."""


@dataclass(frozen=True, slots=True)
class VerifyCheckpoint:
    """Read `_manifest.json` and check every file in S3; answers `CheckpointChecked`."""

    bucket: str
    manifest_key: str
    early: bool = False
    """An early checkpoint: its files must sit under the spec's early location."""


@dataclass(frozen=True, slots=True)
class LaunchInstance:
    """RunInstances from the spec's launch template; answers `InstanceLaunched`."""


@dataclass(frozen=True, slots=True)
class AutoResume:
    """The interruption policy asks for a resume; answers `ResumeRequested`."""

    from_scratch: bool


@dataclass(frozen=True, slots=True)
class IngestReport:
    """GET a report file the job wrote (its ETag changed), parse and store it; answers
    `ReportIngested`."""

    key: str
    etag: str
    size: int


@dataclass(frozen=True, slots=True)
class AttachCrashReport:
    """Look for the job's crash report under the run prefix; attach its tail to the run."""

    key: str


Effect = (
    ListPrefix
    | ReadObject
    | ActOnInstance
    | WakeAt
    | ObserveInstance
    | RunInstanceCommand
    | VerifyCheckpoint
    | LaunchInstance
    | AutoResume
    | AttachCrashReport
    | IngestReport
)
