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
    """Ask for a prompt, batched describe of the instance (the reconciler's next sweep)."""


@dataclass(frozen=True, slots=True)
class RunInstanceCommand:
    """Run the instance-side program through the run's transport; answers `CommandFinished`."""

    command: InstanceCommand
    timeout_s: float


@dataclass(frozen=True, slots=True)
class VerifyCheckpoint:
    """Read `_manifest.json` and check every file in S3; answers `CheckpointChecked`."""

    bucket: str
    manifest_key: str


@dataclass(frozen=True, slots=True)
class LaunchInstance:
    """RunInstances from the spec's launch template; answers `InstanceLaunched`."""


@dataclass(frozen=True, slots=True)
class AutoResume:
    """The interruption policy asks for a resume; answers `ResumeRequested`."""

    from_scratch: bool


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
)
