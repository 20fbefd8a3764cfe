"""What `tail` shows of a run, as domain values: its committed transitions and the notes its
monitor made (a check, an AWS call, a retry). Pure values; the control adapter turns them
into the protocol's lines."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from supervisor.core.machine import Transition


@dataclass(frozen=True, slots=True)
class FeedTransition:
    """A committed transition and the run's version after it (`seq`)."""

    seq: int
    transition: Transition

    @property
    def at(self) -> datetime:
        return self.transition.at


@dataclass(frozen=True, slots=True)
class MonitorNote:
    """Something a monitor did that is not a transition (a check, an AWS call, a retry)."""

    at: datetime
    run_id: str
    event: str
    fields: Mapping[str, Any] = field(default_factory=dict)


FeedItem = FeedTransition | MonitorNote
