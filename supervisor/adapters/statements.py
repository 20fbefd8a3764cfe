"""The store's statements and row decoders, for any SQL backend: built from the column
declarations of `supervisor.adapters.schema`, with `?` placeholders (a backend renders them
with its `schema.Dialect`), mapping the records of `supervisor.core.records` and the core's
values to rows and back, one function per entity and direction.

No connection here: the SQLite adapter (`supervisor.adapters.store`) runs these, and a
PostgreSQL adapter runs the same ones.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import fields
from datetime import datetime
from typing import TYPE_CHECKING, Any

from supervisor.adapters.schema import (
    ACTIONS,
    ATTACHMENTS,
    AUDIT,
    INSTANCES,
    REPORT_PROBLEMS,
    RUN_DATA,
    RUNS,
    TERMINATIONS,
    TRANSITIONS,
    ZOMBIES,
    Row,
)
from supervisor.core.events import Action
from supervisor.core.machine import Transition
from supervisor.core.records import (
    ActionRecord,
    AttachmentRecord,
    InstanceRecord,
    ReportProblemRecord,
    RunDataRecord,
    RunRecord,
    TransitionRecord,
)
from supervisor.core.run import CheckpointStatus, Outcome, Phase, Run
from supervisor.core.spec import RunSpec
from supervisor.core.values import InstanceId
from supervisor.core.zombies import (
    AttemptOutcome,
    Cause,
    Termination,
    Zombie,
    ZombieKind,
    ZombieState,
)

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

Statement = tuple[str, tuple[Any, ...]]
"""SQL with `?` placeholders, and its parameters."""


# -- runs -----------------------------------------------------------------------------------------

RUN_CHANGES = tuple(
    name for name in RUNS.stored if name not in ("run_id", "spec_json", "region", "created_at")
)
"""What a committed decision may change on a run's row."""

# Built once: commits run these on the hot path.
_INSERT_RUN = RUNS.insert()
_INSERT_TRANSITION = TRANSITIONS.insert()
_INSERT_ACTION = ACTIONS.insert()
_INSERT_AUDIT = AUDIT.insert()
_INSERT_TERMINATION = TERMINATIONS.insert()
_UPSERT_ATTACHMENT = ATTACHMENTS.insert(on_conflict="update")
_UPSERT_REPORT_PROBLEM = REPORT_PROBLEMS.insert(on_conflict="update")
_UPSERT_ZOMBIE = ZOMBIES.insert(on_conflict="update")
_UPDATE_RUN = RUNS.update(RUN_CHANGES, where=("run_id", "version"))
RUN_SELECT = RUNS.project()
RUN_COLUMNS = RUN_SELECT.sql
"""The SELECT list `run_record` decodes."""


def run_values(run: Run, *, created_at: datetime, updated_at: datetime) -> dict[str, Any]:
    """A run as the values of its row (before encoding), by column name."""
    spec = run.spec
    return {
        "run_id": spec.run_id,
        "spec_json": spec.model_dump_json(),
        "region": spec.region,
        "created_at": created_at,
        **_run_changes(run, updated_at=updated_at),
    }


def _run_changes(run: Run, *, updated_at: datetime) -> dict[str, Any]:
    """The values of `RUN_CHANGES` (a commit serialises no spec)."""
    return {
        "phase": run.phase,
        "outcome": run.outcome,
        "instance_id": run.instance_id,
        "reason": run.reason,
        "version": run.version,
        "phase_since": run.phase_since,
        "grace_until": run.grace_until,
        "action_acked_at": run.action_acked_at,
        "error_code": run.error_code,
        "updated_at": updated_at,
        "pending_action": run.pending_action,
        "checkpoint": run.checkpoint,
        "attempt": run.attempt,
        "started_at": run.started_at,
        "process_exited": run.process_exited,
        "verified_attempt": run.verified_attempt,
        "verified_location": run.verified_location,
        "interrupt_deadline": run.interrupt_deadline,
        "report_etags": dict(run.report_etags),
        "running_s_before": run.running_s_before,
        "job_ended_at": run.job_ended_at,
    }


def run_record(row: Row) -> RunRecord:
    """A run from a row read with `RUN_COLUMNS`."""
    v = RUN_SELECT.decode(row)
    run = Run(
        spec=RunSpec.from_stored(v["spec_json"]),
        phase=Phase(v["phase"]),
        outcome=Outcome(v["outcome"]) if v["outcome"] else None,
        version=v["version"],
        phase_since=v["phase_since"],
        reason=v["reason"],
        grace_until=v["grace_until"],
        action_acked_at=v["action_acked_at"],
        error_code=v["error_code"],
        instance_id=InstanceId(v["instance_id"]),
        pending_action=Action(v["pending_action"]) if v["pending_action"] else None,
        checkpoint=CheckpointStatus(v["checkpoint"]) if v["checkpoint"] else None,
        attempt=v["attempt"],
        started_at=v["started_at"],
        process_exited=v["process_exited"],
        verified_attempt=v["verified_attempt"],
        verified_location=v["verified_location"],
        interrupt_deadline=v["interrupt_deadline"],
        report_etags=tuple(sorted(v["report_etags"].items())),
        running_s_before=v["running_s_before"],
        job_ended_at=v["job_ended_at"],
    )
    return RunRecord(run=run, created_at=v["created_at"], updated_at=v["updated_at"])


def insert_run(run: Run, *, now: datetime) -> Statement:
    values = run_values(run, created_at=now, updated_at=now)
    return _INSERT_RUN, RUNS.encode(values)


def update_run(run: Run, *, before_version: int, now: datetime) -> Statement:
    """The run's changed row, only if it is still at `before_version` (no row changes
    otherwise: the caller raises `StaleVersion`)."""
    values = _run_changes(run, updated_at=now)
    return (
        _UPDATE_RUN,
        (*RUNS.encode(values, RUN_CHANGES), run.spec.run_id, before_version),
    )


# -- transitions ----------------------------------------------------------------------------------

TRANSITION_SELECT = TRANSITIONS.project()


def insert_transition(run_id: str, seq: int, t: Transition) -> Statement:
    values = {
        "run_id": run_id,
        "seq": seq,
        "from_phase": t.from_phase,
        "to_phase": t.to_phase,
        "at": t.at,
        "reason": t.reason,
        "detail_json": dict(t.detail),
    }
    return _INSERT_TRANSITION, TRANSITIONS.encode(values)


def transition_record(row: Row) -> TransitionRecord:
    """A transition from a row read with `TRANSITION_SELECT`."""
    v = TRANSITION_SELECT.decode(row)
    transition = Transition(
        from_phase=Phase(v["from_phase"]) if v["from_phase"] else None,
        to_phase=Phase(v["to_phase"]),
        at=v["at"],
        reason=v["reason"],
        detail=v["detail_json"],
    )
    return TransitionRecord(run_id=v["run_id"], seq=v["seq"], transition=transition)


# -- instances, actions, attachments, report problems ---------------------------------------------


INSTANCE_SELECT = INSTANCES.project(("instance_id", "region", "attached_at", "source"))
ACTION_SELECT = ACTIONS.project()
ATTACHMENT_SELECT = ATTACHMENTS.project()
REPORT_PROBLEM_SELECT = REPORT_PROBLEMS.project()


def instance_record(row: Row) -> InstanceRecord:
    return InstanceRecord(**INSTANCE_SELECT.decode(row))


def action_record(row: Row) -> ActionRecord:
    return ActionRecord(**ACTION_SELECT.decode(row))


def attachment_record(row: Row) -> AttachmentRecord:
    return AttachmentRecord(**ATTACHMENT_SELECT.decode(row))


def report_problem_record(row: Row) -> ReportProblemRecord:
    return ReportProblemRecord(**REPORT_PROBLEM_SELECT.decode(row))


def insert_instance(run_id: str, record: InstanceRecord, *, if_new: bool = False) -> Statement:
    values = {"run_id": run_id, **_fields(record)}
    return INSTANCES.insert(on_conflict="ignore" if if_new else None), INSTANCES.encode(values)


def insert_action(record: ActionRecord) -> Statement:
    return _INSERT_ACTION, ACTIONS.encode(_fields(record))


def upsert_attachment(record: AttachmentRecord) -> Statement:
    """Attaching the same (run, kind, uri) again refreshes its size, excerpt and time."""
    return _UPSERT_ATTACHMENT, ATTACHMENTS.encode(_fields(record))


def upsert_report_problem(record: ReportProblemRecord) -> Statement:
    return _UPSERT_REPORT_PROBLEM, REPORT_PROBLEMS.encode(_fields(record))


def _fields(record: DataclassInstance) -> dict[str, Any]:
    """A record's fields by name (these records name their fields as their columns)."""
    return {f.name: getattr(record, f.name) for f in fields(record)}


# -- what the job reported ----------------------------------------------------------------------

RUN_DATA_SELECT = RUN_DATA.project()


def upsert_run_data(run_id: str, values: dict[str, Any], *, now: datetime) -> Statement:
    """Set the given columns of the run's reported data (creating its row)."""
    columns = ("run_id", *values, "updated_at")
    row = {"run_id": run_id, **values, "updated_at": now}
    return RUN_DATA.insert(columns, on_conflict="update"), RUN_DATA.encode(row, columns)


def run_data_record(row: Row) -> RunDataRecord:
    v = RUN_DATA_SELECT.decode(row)
    final = v["final_metrics_json"]
    return RunDataRecord(
        run_id=v["run_id"],
        status=v["status_json"],
        status_at=v["status_at"],
        step=v["step"],
        wandb_run_id=v["wandb_run_id"],
        wandb_url=v["wandb_url"],
        final_metrics=final["metrics"] if final else None,
        wandb=final["wandb"] if final else None,
        history=v["history_json"],
        total_steps=v["total_steps"],
        updated_at=v["updated_at"],
    )


# -- audit ----------------------------------------------------------------------------------------

AUDIT_SELECT = AUDIT.project(("at", "source", "kind", "subject", "detail_json"))


def insert_audit(
    *, at: datetime, source: str, kind: str, subject: str | None, detail: dict[str, Any]
) -> Statement:
    values = {"at": at, "source": source, "kind": kind, "subject": subject, "detail_json": detail}
    return _INSERT_AUDIT, AUDIT.encode(values)


def audit_entry(row: Row) -> dict[str, Any]:
    """An audit entry as the store has always given it: `at` as its stored text."""
    v = AUDIT_SELECT.decode(row)
    return {
        "at": row[0],  # the stored text, as the audit has always been given
        "source": v["source"],
        "kind": v["kind"],
        "subject": v["subject"],
        "detail": v["detail_json"],
    }


# -- zombies and terminations ---------------------------------------------------------------------

ZOMBIE_SELECT = ZOMBIES.project()
TERMINATION_SELECT = TERMINATIONS.project()


def upsert_zombie(z: Zombie) -> Statement:
    values = {
        "instance_id": z.instance_id,
        "region": z.region,
        "kind": z.cause.kind,
        "run_id": z.cause.run_id,
        "run_phase": z.cause.run_phase,
        "run_ended_at": z.cause.run_ended_at,
        "keep_data": z.cause.keep_data,
        "state": z.state,
        "marked_at": z.marked_at,
        "action": z.action,
        "attempts": z.attempts,
        "last_attempt_at": z.last_attempt_at,
        "last_error": z.last_error,
        "resolved_at": z.resolved_at,
        "note": z.note,
    }
    return _UPSERT_ZOMBIE, ZOMBIES.encode(values)


def zombie(row: Row) -> Zombie:
    v = ZOMBIE_SELECT.decode(row)
    return Zombie(
        instance_id=InstanceId(v["instance_id"]),
        region=v["region"],
        cause=Cause(
            kind=ZombieKind(v["kind"]),
            run_id=v["run_id"],
            run_phase=Phase(v["run_phase"]) if v["run_phase"] else None,
            run_ended_at=v["run_ended_at"],
            keep_data=v["keep_data"],
        ),
        marked_at=v["marked_at"],
        state=ZombieState(v["state"]),
        action=Action(v["action"]) if v["action"] else None,
        attempts=v["attempts"],
        last_attempt_at=v["last_attempt_at"],
        last_error=v["last_error"],
        resolved_at=v["resolved_at"],
        note=v["note"],
    )


def insert_termination(t: Termination) -> Statement:
    return _INSERT_TERMINATION, TERMINATIONS.encode(_fields(t))


def termination(row: Row) -> Termination:
    v = TERMINATION_SELECT.decode(row)
    return Termination(
        at=v["at"],
        instance_id=InstanceId(v["instance_id"]),
        region=v["region"],
        run_id=v["run_id"],
        action=Action(v["action"]),
        outcome=AttemptOutcome(v["outcome"]),
        calls=v["calls"],
        seconds_since_marked=v["seconds_since_marked"],
        error_code=v["error_code"],
        message=v["message"],
    )


def placeholders(values: Iterable[object]) -> str:
    """`?, ?, ?`: one placeholder per value, for `IN (...)`."""
    return ", ".join("?" for _ in values)
