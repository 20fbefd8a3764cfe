"""What `tail` shows of a run, as domain values: its committed transitions and the notes its
monitor made (a check, an AWS call, a retry). Pure values; the control adapter turns them
into the protocol's lines."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

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


LogPieceKind = Literal["lines", "notice", "error"]


@dataclass(frozen=True, slots=True)
class LogPiece:
    """One piece of `supervisorctl tail --training`: text of the log, or a word about it."""

    kind: LogPieceKind
    """lines: text of the log; notice: what the reader is doing; error: why it stopped."""
    text: str
    offset: int
    """Bytes of the log read up to the end of this piece: pass it as `offset=` to go on."""
