"""The daemon's answers as the CLI prints them: frozen values read from the JSON of the control
protocol (supervisor.adapters.protocol), without pydantic, so `supervisorctl status` answers
within a few times a bare interpreter's start.

The daemon validated these with the protocol's models before sending them; here they are
only read. Each class has the fields of the protocol model of the same name (a test keeps
them in step); `--json` prints the daemon's JSON itself, not these.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


def _when(value: Any) -> datetime:
    return datetime.fromisoformat(value)


def _maybe_when(value: Any) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


@dataclass(frozen=True)
class RunView:
    run_id: str
    phase: str
    outcome: str | None
    instance_id: str
    region: str
    s3_prefix: str
    on_complete: str
    reason: str
    version: int
    phase_since: datetime
    grace_until: datetime | None = None
    next_check_at: datetime | None = None
    error_code: str | None = None
    checkpoint: str | None = None
    attempt: int = 1
    verified_attempt: int | None = None
    estimated_end: datetime | None = None
    utilisation: str | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunView:
        return cls(**_run_fields(data))


def _run_fields(data: dict[str, Any]) -> dict[str, Any]:
    return {
        "run_id": data["run_id"],
        "phase": data["phase"],
        "outcome": data["outcome"],
        "instance_id": data["instance_id"],
        "region": data["region"],
        "s3_prefix": data["s3_prefix"],
        "on_complete": data["on_complete"],
        "reason": data["reason"],
        "version": data["version"],
        "phase_since": _when(data["phase_since"]),
        "grace_until": _maybe_when(data.get("grace_until")),
        "next_check_at": _maybe_when(data.get("next_check_at")),
        "error_code": data.get("error_code"),
        "checkpoint": data.get("checkpoint"),
        "attempt": data.get("attempt", 1),
        "verified_attempt": data.get("verified_attempt"),
        "estimated_end": _maybe_when(data.get("estimated_end")),
        "utilisation": data.get("utilisation"),
    }


@dataclass(frozen=True)
class TransitionView:
    seq: int
    from_: str | None
    to: str
    at: datetime
    reason: str
    detail: dict[str, Any]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TransitionView:
        return cls(
            seq=data["seq"],
            from_=data["from"],
            to=data["to"],
            at=_when(data["at"]),
            reason=data["reason"],
            detail=data.get("detail", {}),
        )


@dataclass(frozen=True)
class ActionView:
    action: str
    instance_id: str
    at: datetime
    attempts: int
    outcome: str
    error_code: str | None = None
    message: str | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ActionView:
        return cls(**{**data, "at": _when(data["at"])})


@dataclass(frozen=True)
class InstanceView:
    instance_id: str
    region: str
    attached_at: datetime
    source: str

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> InstanceView:
        return cls(**{**data, "attached_at": _when(data["attached_at"])})


@dataclass(frozen=True)
class AttachmentView:
    kind: str
    uri: str
    added_at: datetime
    size: int | None = None
    excerpt: str | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AttachmentView:
        return cls(**{**data, "added_at": _when(data["added_at"])})


@dataclass(frozen=True)
class ReportProblemView:
    key: str
    note: str
    noted_at: datetime

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ReportProblemView:
        return cls(**{**data, "noted_at": _when(data["noted_at"])})


@dataclass(frozen=True)
class RunDetail(RunView):
    spec: dict[str, Any] = field(default_factory=dict)
    transitions: tuple[TransitionView, ...] = ()
    actions: tuple[ActionView, ...] = ()
    instances: tuple[InstanceView, ...] = ()
    attachments: tuple[AttachmentView, ...] = ()
    report_problems: tuple[ReportProblemView, ...] = ()
    max_duration_at: datetime | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunDetail:
        return cls(
            **_run_fields(data),
            spec=data["spec"],
            transitions=tuple(TransitionView.from_json(t) for t in data["transitions"]),
            actions=tuple(ActionView.from_json(a) for a in data.get("actions", ())),
            instances=tuple(InstanceView.from_json(i) for i in data.get("instances", ())),
            attachments=tuple(AttachmentView.from_json(a) for a in data.get("attachments", ())),
            report_problems=tuple(
                ReportProblemView.from_json(p) for p in data.get("report_problems", ())
            ),
            max_duration_at=_maybe_when(data.get("max_duration_at")),
        )


@dataclass(frozen=True)
class DaemonStatus:
    pid: int
    version: str
    started_at: datetime
    state_dir: str
    socket: str
    runs_by_phase: dict[str, int]
    monitors: int
    aws_calls: dict[str, int]
    metrics_url: str | None = None
    root_task_restarts: dict[str, int] = field(default_factory=dict)
    replica_id: str = ""
    role: str = ""
    runs_owned: int = 0
    replicas: tuple[ReplicaLine, ...] = ()
    notifications: dict[str, Any] | None = None
    """Issue 15: the daemon's JSON of its notification sender (`NotificationsView`)."""
    http_url: str | None = None
    database: str = ""

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DaemonStatus:
        return cls(
            **{
                **data,
                "started_at": _when(data["started_at"]),
                "replicas": tuple(ReplicaLine.from_json(r) for r in data.get("replicas", ())),
            }
        )


@dataclass(frozen=True)
class ReplicaLine:
    """One replica in `supervisord status` (issue 14)."""

    replica_id: str
    host: str
    pid: int
    state: str
    started_at: datetime
    heartbeat_at: datetime
    alive: bool
    runs_owned: int

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ReplicaLine:
        return cls(
            **{
                **data,
                "started_at": _when(data["started_at"]),
                "heartbeat_at": _when(data["heartbeat_at"]),
            }
        )
