"""What the run database holds, as values: one record type per stored entity.

Pure (no I/O): the store port (`supervisor.runtime.ports.RunStore`) takes and returns these,
its adapters map them to rows through the column declarations of
`supervisor.adapters.schema`, and the read-only query path builds its rows from them. The
types of a run and its transitions are imported for annotations only, so this module loads
without pydantic (the CLI's query verbs import it).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from supervisor.core.run import Outcome

if TYPE_CHECKING:
    from supervisor.core.machine import Transition
    from supervisor.core.run import Run


@dataclass(frozen=True, slots=True)
class RunRecord:
    """A run as stored, with when its row was created and last written."""

    run: Run
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class TransitionRecord:
    """A committed transition as stored: the run's version after it (`seq`) and the facts."""

    run_id: str
    seq: int
    transition: Transition


@dataclass(frozen=True, slots=True)
class InstanceRecord:
    """One instance of a run's history: the attached one, or one a resume launched."""

    instance_id: str
    region: str
    attached_at: datetime
    source: str
    """attached (given at attach), or launched by a resume."""


@dataclass(frozen=True, slots=True)
class ActionRecord:
    """A stop or terminate carried out on a run's instance, and how it ended."""

    run_id: str
    instance_id: str
    action: str
    at: datetime
    attempts: int
    outcome: str
    error_code: str | None = None
    message: str | None = None


@dataclass(frozen=True, slots=True)
class AttachmentRecord:
    """A file or link attached to a run: a crash report found under its prefix, for one."""

    run_id: str
    kind: str
    uri: str
    added_at: datetime
    size: int | None = None
    excerpt: str | None = None


@dataclass(frozen=True, slots=True)
class ReportProblemRecord:
    """A report file that could not be read (table report_problems): the newest per file."""

    run_id: str
    key: str
    etag: str
    note: str
    """The problem, naming the file and where its shapes are documented."""
    noted_at: datetime


@dataclass(frozen=True, slots=True)
class RunDataRecord:
    """What the job reported: its heartbeat, final metrics and history (table run_data)."""

    run_id: str
    updated_at: datetime
    status: dict[str, Any] | None = None
    status_at: datetime | None = None
    step: int | None = None
    wandb_run_id: str | None = None
    wandb_url: str | None = None
    final_metrics: dict[str, float] | None = None
    wandb: dict[str, Any] | None = None
    history: list[dict[str, Any]] | None = None
    total_steps: int | None = None


@dataclass(frozen=True, slots=True)
class TerminationDay:
    """One UTC day of the terminations log."""

    day: str
    """YYYY-MM-DD (UTC)."""
    terminations: int
    """Zombies confirmed terminated (NotFound included)."""
    stops: int
    """Zombies stopped instead, under the checkpoint invariant."""
    attempts: int
    succeeded: int
    failed_attempts: int
    mean_s_to_terminated: float | None
    """Mean seconds from marking to the confirmed termination."""

    @property
    def success_rate(self) -> float | None:
        return self.succeeded / self.attempts if self.attempts else None


def idle_after_end_s(
    job_ended_at: datetime | None, action_acked_at: datetime | None
) -> float | None:
    """Idle instance-seconds after the end: from the job's end (its marker's LastModified) to
    the accepted stop/terminate call. None when either is unknown (the instance was kept, or
    ended without our call, or the end was never seen): no figure, rather than a zero. Never
    negative (S3's clock and ours may disagree by a little)."""
    if job_ended_at is None or action_acked_at is None:
        return None
    return max(0.0, (action_acked_at - job_ended_at).total_seconds())


@dataclass(frozen=True, slots=True)
class IdleDay:
    """One UTC day (of the jobs' ends) of idle instance-seconds after the end."""

    day: str
    """YYYY-MM-DD (UTC)."""
    runs: int
    """Runs whose job ended that day and whose instance was then stopped by our call."""
    idle_s: float
    """Their idle instance-seconds after the end, summed."""


@dataclass(frozen=True, slots=True)
class FleetReport:
    since: datetime
    days: tuple[TerminationDay, ...]
    runs_by_outcome: dict[str, int]
    """Runs attached since `since`, by outcome; "none" for runs without one (yet)."""
    open_zombies: int
    idle_days: tuple[IdleDay, ...] = ()
    """Idle instance-seconds after the end, per UTC day of the jobs' ends since `since`."""

    @property
    def crash_rate(self) -> float | None:
        """Crashed runs among the runs with an outcome."""
        ended = sum(n for outcome, n in self.runs_by_outcome.items() if outcome != "none")
        return self.runs_by_outcome.get(Outcome.CRASHED, 0) / ended if ended else None
