"""The run inbox's values: what one replica hands to the replica that owns a run (a person's
command, or an event from the queue), and the owner's answer. Pure: no I/O.

An event travels as a small JSON object (`encode_event` / `decode_event`); only the events
the queue consumer hands over are encodable. A command names the control API's action.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from supervisor.core.events import Nudge, RebalanceRecommended, SpotInterruptionWarning

if TYPE_CHECKING:
    from supervisor.core.run import Run

INBOX_CHANNEL = "supervisor_inbox"
"""The notice channel of a new inbox row (payload: its run id)."""
ANSWER_CHANNEL = "supervisor_answer"
"""The notice channel of an answered inbox row (payload: its id)."""
TRANSITION_CHANNEL = "supervisor_transition"
"""The notice channel of a committed transition (payload: its run id), for `tail -f` on
another replica."""
NOTICE_CHANNELS: tuple[str, ...] = (INBOX_CHANNEL, ANSWER_CHANNEL, TRANSITION_CHANNEL)
RELEASED_CHANNEL = "supervisor_released"
"""The notice channel of runs handed back (payload: the replica that released them): the
other replicas claim at once, not at their next round (a clean stop's hand-over)."""
NOTICE_CHANNELS += (RELEASED_CHANNEL,)


class InboxKind(enum.StrEnum):
    COMMAND = "command"  # a person's request: its writer waits for the answer
    EVENT = "event"  # a fact from the queue: nobody waits


class InboxState(enum.StrEnum):
    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"


HandedEvent = Nudge | SpotInterruptionWarning | RebalanceRecommended
"""The events the queue consumer hands to another replica."""


@dataclass(frozen=True, slots=True)
class Command:
    """A control-API request on one run: stop, terminate, detach or resume."""

    action: str
    from_scratch: bool = False


@dataclass(frozen=True, slots=True)
class InboxItem:
    """A pending row: for `run_id`, from replica `created_by`."""

    id: str
    run_id: str
    kind: InboxKind
    body: Command | HandedEvent
    created_at: datetime
    created_by: str


@dataclass(frozen=True, slots=True)
class InboxAnswer:
    """The owner's answer: the run after the request's decision, or the error it raised
    (`error`: the error class's name, as `supervisor.core.errors` has it)."""

    state: InboxState
    run: Run | None = None
    error: str | None = None
    message: str = ""
    answered_by: str | None = None


def encode_body(body: Command | HandedEvent) -> dict[str, Any]:
    """The body as JSON values."""
    match body:
        case Command(action=action, from_scratch=from_scratch):
            return {"type": "command", "action": action, "from_scratch": from_scratch}
        case Nudge(target=target, key=key, state=state):
            return {"type": "nudge", "target": target, "key": key, "state": state}
        case SpotInterruptionWarning(deadline=deadline, action=action):
            return {"type": "spot-warning", "deadline": deadline.isoformat(), "action": action}
        case RebalanceRecommended():
            return {"type": "rebalance"}
    raise TypeError(f"not an inbox body: {body!r}")  # pragma: no cover (the match is total)


def decode_body(value: dict[str, Any]) -> Command | HandedEvent:
    """A body written by `encode_body`; raises ValueError for anything else."""
    match value.get("type"):
        case "command":
            return Command(str(value["action"]), bool(value.get("from_scratch", False)))
        case "nudge":
            return Nudge(str(value["target"]), key=value.get("key"), state=value.get("state"))
        case "spot-warning":
            return SpotInterruptionWarning(
                datetime.fromisoformat(value["deadline"]), action=str(value["action"])
            )
        case "rebalance":
            return RebalanceRecommended()
    raise ValueError(f"unknown inbox body {value!r}")
