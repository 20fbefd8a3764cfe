"""Events: facts observed by the runtime and fed to `step()`. Frozen values, no behaviour."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from supervisor.core.values import InstanceState, ObjectInfo


class Action(enum.StrEnum):
    """An action on the instance that the supervisor carries out."""

    STOP = "stop"
    TERMINATE = "terminate"


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


@dataclass(frozen=True, slots=True)
class PrefixListed:
    objects: tuple[ObjectInfo, ...]


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
)
