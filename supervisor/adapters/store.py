"""SQLite persistence (aiosqlite): runs, the append-only transition log, instances, actions.

Durability rules: WAL, `synchronous=FULL`, one writer connection behind a lock
with explicit `BEGIN IMMEDIATE`, readers on their own connection. A transition is one
transaction that appends the transition row and updates the run row under a version check.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any, Self

import aiosqlite

from supervisor.core.errors import InvalidInput, StaleVersion
from supervisor.core.events import Action
from supervisor.core.machine import Decision, Transition, run_id_taken
from supervisor.core.reports import FinalMetrics, History, Report, StatusReport
from supervisor.core.run import TERMINAL_PHASES, CheckpointStatus, Outcome, Phase, Run
from supervisor.core.spec import RunSpec
from supervisor.core.values import InstanceId
from supervisor.core.zombies import (
    SUCCESSFUL_OUTCOMES,
    TERMINATED_OUTCOMES,
    ZOMBIE_PHASES,
    AttemptOutcome,
    Cause,
    Termination,
    Zombie,
    ZombieKind,
    ZombieState,
)

_RUN_COLUMNS = (
    "run_id, spec_json, phase, outcome, instance_id, region, reason, version, phase_since, "
    "grace_until, action_acked_at, error_code, created_at, updated_at, pending_action, "
    "checkpoint, attempt, started_at, process_exited, verified_attempt, verified_location, "
    "interrupt_deadline, report_etags"
)
_RUN_PLACEHOLDERS = ", ".join("?" for _ in _RUN_COLUMNS.split(","))


@dataclass(frozen=True, slots=True)
class TransitionRecord:
    """A committed transition as stored: the run's version after it (`seq`) and the facts."""

    run_id: str
    seq: int
    transition: Transition


@dataclass(frozen=True, slots=True)
class RunRecord:
    run: Run
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class ActionRecord:
    run_id: str
    instance_id: str
    action: str
    at: datetime
    attempts: int
    outcome: str
    error_code: str | None = None
    message: str | None = None


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
class ReportProblemRecord:
    """A report file that could not be read (table report_problems): the newest per file."""

    run_id: str
    key: str
    etag: str
    note: str
    """The problem, naming the file and where its shapes are documented."""
    noted_at: datetime


@dataclass(frozen=True, slots=True)
class AttachmentRecord:
    """A file or link attached to a run: a crash report found under its prefix, for one."""

    run_id: str
    kind: str
    uri: str
    added_at: datetime
    size: int | None = None
    excerpt: str | None = None


_TERMINAL = tuple(sorted(TERMINAL_PHASES))
_ACTIVE = f" WHERE phase NOT IN ({', '.join('?' * len(_TERMINAL))})"
"""The runs a daemon watches (parameters: `_TERMINAL`)."""


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value is not None else None


def _dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value is not None else None


def _migrations() -> list[tuple[int, str]]:
    folder = resources.files("supervisor.adapters") / "migrations"
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            found.append((int(entry.name.split("_", 1)[0]), entry.read_text(encoding="utf-8")))
    return sorted(found)


SCHEMA_VERSION = _migrations()[-1][0]


async def _connect(path: Path, *, readonly: bool = False) -> aiosqlite.Connection:
    if readonly:
        db = await aiosqlite.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    else:
        db = await aiosqlite.connect(path, isolation_level=None)
    db.row_factory = aiosqlite.Row
    await db.execute("PRAGMA busy_timeout = 10000")
    await db.execute("PRAGMA foreign_keys = ON")
    if not readonly:
        await db.execute("PRAGMA journal_mode = WAL")
        await db.execute("PRAGMA synchronous = FULL")
    return db


async def migrate(db: aiosqlite.Connection) -> int:
    """Apply every numbered migration above the file's `user_version`; return the new version."""
    async with db.execute("PRAGMA user_version") as cur:
        row = await cur.fetchone()
    current = int(row[0]) if row else 0
    for number, sql in _migrations():
        if number > current:
            await db.executescript(
                f"BEGIN IMMEDIATE;\n{sql}\nPRAGMA user_version = {number};\nCOMMIT;"
            )
            current = number
    return current


class Store:
    """The run database. Use `await Store.open(path)`; close with `await store.close()`."""

    def __init__(self, path: Path, writer: aiosqlite.Connection, reader: aiosqlite.Connection):
        self.path = path
        self._writer = writer
        self._reader = reader
        self._write_lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path) -> Self:
        path.parent.mkdir(parents=True, exist_ok=True)
        writer = await _connect(path)
        try:
            await migrate(writer)
            reader = await _connect(path)
        except BaseException:
            await writer.close()
            raise
        return cls(path, writer, reader)

    async def close(self) -> None:
        await self._reader.close()
        await self._writer.close()

    def __repr__(self) -> str:
        return f"<Store {self.path}>"

    # -- writes ---------------------------------------------------------------------------

    async def _write(
        self, statements: Iterable[tuple[str, tuple[Any, ...]]], *, stale_if_unchanged: str = ""
    ) -> None:
        """Run statements in one BEGIN IMMEDIATE transaction.

        With `stale_if_unchanged`, the first statement must change a row (a version-checked
        UPDATE); otherwise everything is rolled back and `StaleVersion` raised with that text.
        """
        async with self._write_lock:
            try:
                await self._writer.execute("BEGIN IMMEDIATE")
                for index, (sql, params) in enumerate(statements):
                    cursor = await self._writer.execute(sql, params)
                    if index == 0 and stale_if_unchanged and cursor.rowcount == 0:
                        raise StaleVersion(stale_if_unchanged)
            except BaseException:
                # Also after a cancellation while BEGIN was queued: it still runs on the
                # connection's thread, and this ROLLBACK, queued behind it, closes it.
                with contextlib.suppress(sqlite3.OperationalError):
                    await self._writer.execute("ROLLBACK")
                raise
            await self._writer.execute("COMMIT")

    async def create_run(self, decision: Decision) -> None:
        """Insert a new run with its first transition. Raises `InvalidInput` if it exists."""
        run, t = decision.run, decision.transition
        assert t is not None and run.version == 1
        now = _iso(t.at)
        spec = run.spec
        try:
            await self._write(
                [
                    (
                        f"INSERT INTO runs ({_RUN_COLUMNS}) VALUES ({_RUN_PLACEHOLDERS})",
                        (
                            spec.run_id,
                            spec.model_dump_json(),
                            run.phase,
                            run.outcome,
                            spec.instance_id,
                            spec.region,
                            run.reason,
                            run.version,
                            _iso(run.phase_since),
                            _iso(run.grace_until),
                            _iso(run.action_acked_at),
                            run.error_code,
                            now,
                            now,
                            run.pending_action,
                            run.checkpoint,
                            run.attempt,
                            _iso(run.started_at),
                            run.process_exited,
                            run.verified_attempt,
                            run.verified_location,
                            _iso(run.interrupt_deadline),
                            json.dumps(dict(run.report_etags)),
                        ),
                    ),
                    _insert_transition(spec.run_id, run.version, t),
                    (
                        "INSERT INTO instances (run_id, instance_id, region, attached_at) "
                        "VALUES (?, ?, ?, ?)",
                        (spec.run_id, spec.instance_id, spec.region, now),
                    ),
                ]
            )
        except aiosqlite.IntegrityError:
            existing = await self.get_run(spec.run_id)
            raise InvalidInput(
                run_id_taken(existing.run)
                if existing is not None
                else f"run id {spec.run_id!r} is taken: attach this run under a new run id"
            ) from None

    async def commit(self, before: Run, decision: Decision, *, now: datetime) -> None:
        """Persist a decision: the transition and run row together, or the changed fields
        alone (`persist`). Raises `StaleVersion` when `before` is not the stored version."""
        run, t = decision.run, decision.transition
        if t is None and not decision.persist:
            return
        update = (
            "UPDATE runs SET phase = ?, outcome = ?, reason = ?, version = ?, phase_since = ?, "
            "grace_until = ?, action_acked_at = ?, error_code = ?, updated_at = ?, "
            "instance_id = ?, pending_action = ?, checkpoint = ?, attempt = ?, started_at = ?, "
            "process_exited = ?, verified_attempt = ?, verified_location = ?, "
            "interrupt_deadline = ?, report_etags = ? "
            "WHERE run_id = ? AND version = ?",
            (
                run.phase,
                run.outcome,
                run.reason,
                run.version,
                _iso(run.phase_since),
                _iso(run.grace_until),
                _iso(run.action_acked_at),
                run.error_code,
                _iso(now),
                run.instance_id,
                run.pending_action,
                run.checkpoint,
                run.attempt,
                _iso(run.started_at),
                run.process_exited,
                run.verified_attempt,
                run.verified_location,
                _iso(run.interrupt_deadline),
                json.dumps(dict(run.report_etags)),
                run.spec.run_id,
                before.version,
            ),
        )
        statements: list[tuple[str, tuple[Any, ...]]] = [update]
        if run.instance_id != before.instance_id:  # a resume launched a new instance
            statements.append(
                (
                    "INSERT OR IGNORE INTO instances (run_id, instance_id, region, attached_at, "
                    "source) VALUES (?, ?, ?, ?, 'launched')",
                    (run.spec.run_id, run.instance_id, run.spec.region, _iso(now)),
                )
            )
        if t is not None:
            statements.append(_insert_transition(run.spec.run_id, run.version, t))
        await self._write(
            statements,
            stale_if_unchanged=f"run {run.spec.run_id} is no longer at version {before.version}",
        )

    async def record_action(self, record: ActionRecord) -> None:
        await self._write(
            [
                (
                    "INSERT INTO actions (run_id, instance_id, action, at, attempts, outcome, "
                    "error_code, message) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        record.run_id,
                        record.instance_id,
                        record.action,
                        _iso(record.at),
                        record.attempts,
                        record.outcome,
                        record.error_code,
                        record.message,
                    ),
                )
            ]
        )

    async def attach(self, record: AttachmentRecord) -> None:
        """Attach a file or link to a run; attaching the same one again refreshes it."""
        await self._write(
            [
                (
                    "INSERT INTO attachments (run_id, kind, uri, size, excerpt, added_at) "
                    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (run_id, kind, uri) DO UPDATE SET "
                    "size = excluded.size, excerpt = excluded.excerpt, "
                    "added_at = excluded.added_at",
                    (
                        record.run_id,
                        record.kind,
                        record.uri,
                        record.size,
                        record.excerpt,
                        _iso(record.added_at),
                    ),
                )
            ]
        )

    async def record_report(
        self, run_id: str, key: str, report: Report, *, read_at: datetime, now: datetime
    ) -> None:
        """Store what the job reported (one file's content, at `key`), replacing that file's
        last one; a note that an earlier version of the file could not be read goes."""
        match report:
            case StatusReport():
                sets = {
                    "status_json": report.model_dump_json(),
                    "status_at": _iso(read_at),
                    "step": report.step,
                    "wandb_run_id": report.wandb_run_id,
                    "wandb_url": report.wandb_url,
                }
            case FinalMetrics():
                wandb = report.wandb
                sets = {
                    "final_metrics_json": json.dumps(
                        {
                            "metrics": report.metrics,
                            "wandb": wandb.model_dump() if wandb else None,
                            "runtime_s": report.runtime_s,
                        }
                    ),
                    "total_steps": report.total_steps,
                }
                if wandb is not None and wandb.run_id:
                    sets |= {"wandb_run_id": wandb.run_id, "wandb_url": wandb.url}
            case History():
                sets = {"history_json": json.dumps(report.records)}
                if report.last_step is not None:
                    sets["history_last_step"] = report.last_step
        # total_steps: the final metrics' own count wins over the history's last step.
        last_step = sets.pop("history_last_step", None)
        columns = [*sets, "updated_at"]
        values = [*sets.values(), _iso(now)]
        updates = ", ".join(f"{c} = excluded.{c}" for c in columns)
        statements: list[tuple[str, tuple[Any, ...]]] = [
            (
                f"INSERT INTO run_data (run_id, {', '.join(columns)}) "
                f"VALUES (?, {', '.join('?' * len(columns))}) "
                f"ON CONFLICT (run_id) DO UPDATE SET {updates}",
                (run_id, *values),
            )
        ]
        if last_step is not None:
            statements.append(
                (
                    "UPDATE run_data SET total_steps = ? WHERE run_id = ? AND total_steps IS NULL",
                    (last_step, run_id),
                )
            )
        statements.append(
            ("DELETE FROM report_problems WHERE run_id = ? AND key = ?", (run_id, key))
        )
        await self._write(statements)

    async def record_report_problem(self, problem: ReportProblemRecord) -> None:
        """Note that a report file could not be read, replacing the note on its last version."""
        await self._write(
            [
                (
                    "INSERT INTO report_problems (run_id, key, etag, note, noted_at) "
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (run_id, key) DO UPDATE SET "
                    "etag = excluded.etag, note = excluded.note, noted_at = excluded.noted_at",
                    (
                        problem.run_id,
                        problem.key,
                        problem.etag,
                        problem.note,
                        _iso(problem.noted_at),
                    ),
                )
            ]
        )

    async def report_problems(self, run_id: str) -> list[ReportProblemRecord]:
        async with self._reader.execute(
            "SELECT run_id, key, etag, note, noted_at FROM report_problems "
            "WHERE run_id = ? ORDER BY noted_at, key",
            (run_id,),
        ) as cur:
            rows = await cur.fetchall()
        return [
            ReportProblemRecord(
                run_id=r["run_id"],
                key=r["key"],
                etag=r["etag"],
                note=r["note"],
                noted_at=datetime.fromisoformat(r["noted_at"]),
            )
            for r in rows
        ]

    async def run_data(self, run_id: str) -> RunDataRecord | None:
        async with self._reader.execute(
            "SELECT * FROM run_data WHERE run_id = ?", (run_id,)
        ) as cur:
            row = await cur.fetchone()
        if row is None:
            return None
        final = json.loads(row["final_metrics_json"]) if row["final_metrics_json"] else None
        return RunDataRecord(
            run_id=row["run_id"],
            status=json.loads(row["status_json"]) if row["status_json"] else None,
            status_at=_dt(row["status_at"]),
            step=row["step"],
            wandb_run_id=row["wandb_run_id"],
            wandb_url=row["wandb_url"],
            final_metrics=final["metrics"] if final else None,
            wandb=final["wandb"] if final else None,
            history=json.loads(row["history_json"]) if row["history_json"] else None,
            total_steps=row["total_steps"],
            updated_at=datetime.fromisoformat(row["updated_at"]),
        )

    async def record_audit(
        self, *, at: datetime, source: str, kind: str, subject: str | None, detail: dict[str, Any]
    ) -> None:
        """Something seen that caused nothing (a message no run owns, a malformed one)."""
        await self._write(
            [
                (
                    "INSERT INTO audit (at, source, kind, subject, detail_json) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (_iso(at), source, kind, subject, json.dumps(detail, default=str)),
                )
            ]
        )

    # -- reads ----------------------------------------------------------------------------

    async def audit(self, *, limit: int = 100) -> list[dict[str, Any]]:
        """The newest audit entries first."""
        async with self._reader.execute(
            "SELECT at, source, kind, subject, detail_json FROM audit ORDER BY id DESC LIMIT ?",
            (limit,),
        ) as cur:
            rows = await cur.fetchall()
        return [
            {
                "at": r["at"],
                "source": r["source"],
                "kind": r["kind"],
                "subject": r["subject"],
                "detail": json.loads(r["detail_json"]),
            }
            for r in rows
        ]

    async def get_run(self, run_id: str) -> RunRecord | None:
        async with self._reader.execute(
            f"SELECT {_RUN_COLUMNS} FROM runs WHERE run_id = ?", (run_id,)
        ) as cur:
            row = await cur.fetchone()
        return _run_record(row) if row else None

    async def runs(self, *, active_only: bool = False) -> list[RunRecord]:
        sql = f"SELECT {_RUN_COLUMNS} FROM runs"
        params: tuple[Any, ...] = ()
        if active_only:
            sql += _ACTIVE
            params = _TERMINAL
        async with self._reader.execute(sql + " ORDER BY created_at, run_id", params) as cur:
            rows = await cur.fetchall()
        return [_run_record(row) for row in rows]

    async def active_runs(self, *, page: int = 500) -> AsyncIterator[list[RunRecord]]:
        """Every run not in a terminal phase, `page` at a time: a restart starts each page's
        monitors while the next is read, and never holds all the rows at once."""
        sql = f"SELECT {_RUN_COLUMNS} FROM runs{_ACTIVE} ORDER BY created_at, run_id"
        async with self._reader.execute(sql, _TERMINAL) as cur:
            while rows := await cur.fetchmany(page):
                yield [_run_record(row) for row in rows]

    async def transitions(self, run_id: str, *, after_seq: int = 0) -> list[TransitionRecord]:
        async with self._reader.execute(
            "SELECT run_id, seq, from_phase, to_phase, at, reason, detail_json FROM transitions "
            "WHERE run_id = ? AND seq > ? ORDER BY seq",
            (run_id, after_seq),
        ) as cur:
            rows = await cur.fetchall()
        return [
            TransitionRecord(
                run_id=row["run_id"],
                seq=row["seq"],
                transition=Transition(
                    from_phase=Phase(row["from_phase"]) if row["from_phase"] else None,
                    to_phase=Phase(row["to_phase"]),
                    at=datetime.fromisoformat(row["at"]),
                    reason=row["reason"],
                    detail=json.loads(row["detail_json"]),
                ),
            )
            for row in rows
        ]

    async def instances(self, run_id: str) -> list[InstanceRecord]:
        """The run's instance history: the attached one, then any a resume launched."""
        return await _instances(self._reader, run_id)

    async def crashed_without_crash_log(self, *, since: datetime) -> list[RunRecord]:
        """Runs that crashed at `since` or later and have no crash log attached: a daemon
        killed between the crash's commit and reading the report leaves these."""
        sql = (
            f"SELECT {_RUN_COLUMNS} FROM runs WHERE phase = ? AND phase_since >= ? AND NOT "
            "EXISTS (SELECT 1 FROM attachments a WHERE a.run_id = runs.run_id AND "
            "a.kind = 'crash-log') ORDER BY phase_since"
        )
        async with self._reader.execute(sql, (Phase.CRASHED.value, _iso(since))) as cur:
            return [_run_record(row) for row in await cur.fetchall()]

    async def attachments(self, run_id: str) -> list[AttachmentRecord]:
        async with self._reader.execute(
            "SELECT run_id, kind, uri, size, excerpt, added_at FROM attachments "
            "WHERE run_id = ? ORDER BY id",
            (run_id,),
        ) as cur:
            rows = await cur.fetchall()
        return [
            AttachmentRecord(
                run_id=r["run_id"],
                kind=r["kind"],
                uri=r["uri"],
                size=r["size"],
                excerpt=r["excerpt"],
                added_at=datetime.fromisoformat(r["added_at"]),
            )
            for r in rows
        ]

    async def actions(self, run_id: str) -> list[ActionRecord]:
        async with self._reader.execute(
            "SELECT run_id, instance_id, action, at, attempts, outcome, error_code, message "
            "FROM actions WHERE run_id = ? ORDER BY id",
            (run_id,),
        ) as cur:
            rows = await cur.fetchall()
        return [
            ActionRecord(
                run_id=r["run_id"],
                instance_id=r["instance_id"],
                action=r["action"],
                at=datetime.fromisoformat(r["at"]),
                attempts=r["attempts"],
                outcome=r["outcome"],
                error_code=r["error_code"],
                message=r["message"],
            )
            for r in rows
        ]

    # -- zombies and terminations --------------------------------------------------------------

    async def save_zombie(self, zombie: Zombie, termination: Termination | None = None) -> None:
        """Upsert the zombie's row and append its terminations-log line, in one transaction."""
        statements: list[tuple[str, tuple[Any, ...]]] = [_upsert_zombie(zombie)]
        if termination is not None:
            statements.append(_insert_termination(termination))
        await self._write(statements)

    async def zombies(self, *, open_only: bool = True) -> list[Zombie]:
        """Zombie records, oldest mark first; by default only open ones (still zombies)."""
        sql = f"SELECT {_ZOMBIE_COLUMNS} FROM zombies"
        params: tuple[Any, ...] = ()
        if open_only:
            states = sorted(s for s in ZombieState if s.open)
            sql += f" WHERE state IN ({', '.join('?' * len(states))})"
            params = tuple(states)
        async with self._reader.execute(sql + " ORDER BY marked_at, instance_id", params) as cur:
            rows = await cur.fetchall()
        return [_zombie(row) for row in rows]

    async def terminations(self, *, since: datetime | None = None) -> list[Termination]:
        """The terminations log, oldest first."""
        async with self._reader.execute(
            f"SELECT {_TERMINATION_COLUMNS} FROM terminations WHERE at >= ? ORDER BY id",
            (_iso(since) if since is not None else "",),
        ) as cur:
            rows = await cur.fetchall()
        return [_termination(row) for row in rows]

    async def ended_run_instances(self, *, since: datetime) -> list[tuple[InstanceId, str]]:
        """(instance id, region) of the current instance of every run that entered a zombie
        phase (`ZOMBIE_PHASES`) at or after `since`."""
        phases = sorted(ZOMBIE_PHASES)
        async with self._reader.execute(
            "SELECT DISTINCT instance_id, region FROM runs "
            f"WHERE phase IN ({', '.join('?' * len(phases))}) AND phase_since >= ?",
            (*phases, _iso(since)),
        ) as cur:
            rows = await cur.fetchall()
        return [(InstanceId(r["instance_id"]), r["region"]) for r in rows]

    async def runs_on_instances(
        self, instance_ids: Iterable[str], run_ids: Iterable[str] = ()
    ) -> list[Run]:
        """Every run, in any phase, whose current instance is one of `instance_ids`, and every
        run named in `run_ids`."""
        found: dict[str, Run] = {}
        for column, values in (("instance_id", instance_ids), ("run_id", run_ids)):
            unique = sorted(set(values))
            for start in range(0, len(unique), _IN_CHUNK):
                chunk = unique[start : start + _IN_CHUNK]
                async with self._reader.execute(
                    f"SELECT {_RUN_COLUMNS} FROM runs "
                    f"WHERE {column} IN ({', '.join('?' * len(chunk))})",
                    tuple(chunk),
                ) as cur:
                    rows = await cur.fetchall()
                for row in rows:
                    run = _run_record(row).run
                    found[run.spec.run_id] = run
        return list(found.values())

    async def active_owner(self, instance_id: str, region: str) -> str | None:
        """The active run whose current instance this is, if there is one."""
        async with self._reader.execute(
            f"SELECT run_id FROM runs{_ACTIVE} AND instance_id = ? AND region = ? LIMIT 1",
            (*_TERMINAL, instance_id, region),
        ) as cur:
            row = await cur.fetchone()
        return str(row["run_id"]) if row else None

    async def runs_by_phase_and_outcome(self) -> dict[tuple[str, str | None], int]:
        """How many runs are in each (phase, outcome): one GROUP BY, for `/metrics` and
        `supervisord status` (no run is loaded)."""
        async with self._reader.execute(
            "SELECT phase, outcome, COUNT(*) FROM runs GROUP BY phase, outcome"
        ) as cur:
            return {(str(phase), outcome): int(n) for phase, outcome, n in await cur.fetchall()}

    async def run_regions(self) -> set[str]:
        async with self._reader.execute("SELECT DISTINCT region FROM runs") as cur:
            rows = await cur.fetchall()
        return {str(r["region"]) for r in rows}

    async def fleet_report(self, *, since: datetime) -> FleetReport:
        """Terminations per UTC day since `since`; runs attached since then, by outcome."""
        terminated = _sql_list(TERMINATED_OUTCOMES)
        succeeded = _sql_list(SUCCESSFUL_OUTCOMES)
        failed = _sql_list({AttemptOutcome.UNAUTHORIZED, AttemptOutcome.FAILED})
        async with self._reader.execute(
            "SELECT substr(at, 1, 10) AS day, "
            f"SUM(action = 'terminate' AND outcome IN ({terminated})) AS terminations, "
            f"SUM(action = 'stop' AND outcome IN ({terminated})) AS stops, "
            "SUM(calls > 0) AS attempts, "
            f"SUM(calls > 0 AND outcome IN ({succeeded})) AS succeeded, "
            f"SUM(outcome IN ({failed})) AS failed, "
            f"AVG(CASE WHEN action = 'terminate' AND outcome IN ({terminated}) "
            "THEN seconds_since_marked END) AS mean_s "
            "FROM terminations WHERE at >= ? GROUP BY day ORDER BY day",
            (_iso(since),),
        ) as cur:
            day_rows = await cur.fetchall()
        async with self._reader.execute(
            "SELECT outcome, COUNT(*) AS n FROM runs WHERE created_at >= ? GROUP BY outcome",
            (_iso(since),),
        ) as cur:
            outcome_rows = await cur.fetchall()
        open_states = sorted(s for s in ZombieState if s.open)
        async with self._reader.execute(
            f"SELECT COUNT(*) FROM zombies WHERE state IN ({', '.join('?' * len(open_states))})",
            tuple(open_states),
        ) as cur:
            count = await cur.fetchone()
        return FleetReport(
            since=since,
            days=tuple(
                TerminationDay(
                    day=r["day"],
                    terminations=int(r["terminations"]),
                    stops=int(r["stops"]),
                    attempts=int(r["attempts"]),
                    succeeded=int(r["succeeded"]),
                    failed_attempts=int(r["failed"]),
                    mean_s_to_terminated=r["mean_s"],
                )
                for r in day_rows
            ),
            runs_by_outcome={r["outcome"] or "none": int(r["n"]) for r in outcome_rows},
            open_zombies=int(count[0]) if count else 0,
        )


@dataclass(frozen=True, slots=True)
class InstanceRecord:
    instance_id: str
    region: str
    attached_at: datetime
    source: str


async def _instances(db: aiosqlite.Connection, run_id: str) -> list[InstanceRecord]:
    async with db.execute(
        "SELECT instance_id, region, attached_at, source FROM instances WHERE run_id = ? "
        "ORDER BY attached_at, rowid",
        (run_id,),
    ) as cur:
        rows = await cur.fetchall()
    return [
        InstanceRecord(
            r["instance_id"], r["region"], datetime.fromisoformat(r["attached_at"]), r["source"]
        )
        for r in rows
    ]


def _insert_transition(run_id: str, seq: int, t: Transition) -> tuple[str, tuple[Any, ...]]:
    return (
        "INSERT INTO transitions (run_id, seq, from_phase, to_phase, at, reason, detail_json) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            run_id,
            seq,
            t.from_phase,
            t.to_phase,
            _iso(t.at),
            t.reason,
            json.dumps(dict(t.detail), default=str),
        ),
    )


def _run_record(sql_row: aiosqlite.Row) -> RunRecord:
    # A plain dict first: each lookup by name in a sqlite3.Row scans its column names, which
    # cost more than the rest of this function when a restart loads ten thousand runs.
    row = dict(zip(sql_row.keys(), sql_row, strict=True))
    phase_since = _dt(row["phase_since"])
    assert phase_since is not None
    run = Run(
        spec=RunSpec.from_stored(row["spec_json"]),
        phase=Phase(row["phase"]),
        outcome=Outcome(row["outcome"]) if row["outcome"] else None,
        version=row["version"],
        phase_since=phase_since,
        reason=row["reason"],
        grace_until=_dt(row["grace_until"]),
        action_acked_at=_dt(row["action_acked_at"]),
        error_code=row["error_code"],
        instance_id=row["instance_id"],
        pending_action=Action(row["pending_action"]) if row["pending_action"] else None,
        checkpoint=CheckpointStatus(row["checkpoint"]) if row["checkpoint"] else None,
        attempt=row["attempt"],
        started_at=_dt(row["started_at"]),
        process_exited=bool(row["process_exited"]),
        verified_attempt=row["verified_attempt"],
        verified_location=row["verified_location"],
        interrupt_deadline=_dt(row["interrupt_deadline"]),
        report_etags=tuple(sorted(json.loads(row["report_etags"]).items())),
    )
    created, updated = _dt(row["created_at"]), _dt(row["updated_at"])
    assert created is not None and updated is not None
    return RunRecord(run=run, created_at=created, updated_at=updated)


# -- zombies and terminations ---------------------------------------------------------------------

_ZOMBIE_COLUMNS = (
    "instance_id, region, kind, run_id, run_phase, run_ended_at, keep_data, state, marked_at, "
    "action, attempts, last_attempt_at, last_error, resolved_at, note"
)
_TERMINATION_COLUMNS = (
    "at, instance_id, region, run_id, action, outcome, calls, error_code, message, "
    "seconds_since_marked"
)
_IN_CHUNK = 500  # ids per `IN (...)`: well under SQLite's limit on bound parameters


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


@dataclass(frozen=True, slots=True)
class FleetReport:
    since: datetime
    days: tuple[TerminationDay, ...]
    runs_by_outcome: dict[str, int]
    """Runs attached since `since`, by outcome; "none" for runs without one (yet)."""
    open_zombies: int

    @property
    def crash_rate(self) -> float | None:
        """Crashed runs among the runs with an outcome."""
        ended = sum(n for outcome, n in self.runs_by_outcome.items() if outcome != "none")
        return self.runs_by_outcome.get(Outcome.CRASHED, 0) / ended if ended else None


def _sql_list(values: Iterable[str]) -> str:
    """Our own enum values as an SQL list literal (never user input)."""
    return ", ".join(f"'{value}'" for value in sorted(values))


def _upsert_zombie(z: Zombie) -> tuple[str, tuple[Any, ...]]:
    columns = [c.strip() for c in _ZOMBIE_COLUMNS.split(",")]
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns[2:])
    return (
        f"INSERT INTO zombies ({_ZOMBIE_COLUMNS}) VALUES ({', '.join('?' * len(columns))}) "
        f"ON CONFLICT (instance_id, region) DO UPDATE SET {updates}",
        (
            z.instance_id,
            z.region,
            z.cause.kind,
            z.cause.run_id,
            z.cause.run_phase,
            _iso(z.cause.run_ended_at),
            int(z.cause.keep_data),
            z.state,
            _iso(z.marked_at),
            z.action,
            z.attempts,
            _iso(z.last_attempt_at),
            z.last_error,
            _iso(z.resolved_at),
            z.note,
        ),
    )


def _zombie(row: aiosqlite.Row) -> Zombie:
    marked_at = _dt(row["marked_at"])
    assert marked_at is not None
    return Zombie(
        instance_id=InstanceId(row["instance_id"]),
        region=row["region"],
        cause=Cause(
            kind=ZombieKind(row["kind"]),
            run_id=row["run_id"],
            run_phase=Phase(row["run_phase"]) if row["run_phase"] else None,
            run_ended_at=_dt(row["run_ended_at"]),
            keep_data=bool(row["keep_data"]),
        ),
        marked_at=marked_at,
        state=ZombieState(row["state"]),
        action=Action(row["action"]) if row["action"] else None,
        attempts=row["attempts"],
        last_attempt_at=_dt(row["last_attempt_at"]),
        last_error=row["last_error"],
        resolved_at=_dt(row["resolved_at"]),
        note=row["note"],
    )


def _insert_termination(t: Termination) -> tuple[str, tuple[Any, ...]]:
    return (
        f"INSERT INTO terminations ({_TERMINATION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            _iso(t.at),
            t.instance_id,
            t.region,
            t.run_id,
            t.action,
            t.outcome,
            t.calls,
            t.error_code,
            t.message,
            t.seconds_since_marked,
        ),
    )


def _termination(row: aiosqlite.Row) -> Termination:
    at = _dt(row["at"])
    assert at is not None
    return Termination(
        at=at,
        instance_id=InstanceId(row["instance_id"]),
        region=row["region"],
        run_id=row["run_id"],
        action=Action(row["action"]),
        outcome=AttemptOutcome(row["outcome"]),
        calls=row["calls"],
        seconds_since_marked=row["seconds_since_marked"],
        error_code=row["error_code"],
        message=row["message"],
    )
