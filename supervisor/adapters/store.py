"""The run database on SQLite (aiosqlite): the store port's embedded adapter.

Durability rules: WAL, `synchronous=FULL`, one writer connection behind a lock
with explicit `BEGIN IMMEDIATE`, readers on their own connection. A transition is one
transaction that appends the transition row and updates the run row under a version check.

What is SQLite's here: the connections, the transaction, the migrations' bookkeeping
(`user_version`) and the error it raises for a taken key. The statements and row decoders
come from `supervisor.adapters.statements` (built from the declarations of
`supervisor.adapters.schema`), which a PostgreSQL adapter shares. The record types live in
`supervisor.core.records` and are re-exported here.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any, Self

import aiosqlite

from supervisor.adapters import statements as sql
from supervisor.adapters.schema import SCHEMA_VERSION as SCHEMA_VERSION
from supervisor.adapters.schema import migration_files
from supervisor.adapters.schema import timestamp as _iso
from supervisor.core.errors import InvalidInput, StaleVersion
from supervisor.core.machine import Decision, run_id_taken
from supervisor.core.records import ActionRecord as ActionRecord
from supervisor.core.records import AttachmentRecord as AttachmentRecord
from supervisor.core.records import FleetReport as FleetReport
from supervisor.core.records import InstanceRecord as InstanceRecord
from supervisor.core.records import ReportProblemRecord as ReportProblemRecord
from supervisor.core.records import RunDataRecord as RunDataRecord
from supervisor.core.records import RunRecord as RunRecord
from supervisor.core.records import TerminationDay as TerminationDay
from supervisor.core.records import TransitionRecord as TransitionRecord
from supervisor.core.reports import FinalMetrics, History, Report, StatusReport
from supervisor.core.run import TERMINAL_PHASES, Phase, Run
from supervisor.core.values import InstanceId
from supervisor.core.zombies import (
    SUCCESSFUL_OUTCOMES,
    TERMINATED_OUTCOMES,
    ZOMBIE_PHASES,
    AttemptOutcome,
    Termination,
    Zombie,
    ZombieState,
)

_TERMINAL = tuple(sorted(TERMINAL_PHASES))
_ACTIVE = f" WHERE phase NOT IN ({sql.placeholders(_TERMINAL)})"
"""The runs a daemon watches (parameters: `_TERMINAL`)."""
_IN_CHUNK = 500  # ids per `IN (...)`: well under SQLite's limit on bound parameters


def _migrations() -> list[tuple[int, str]]:
    return [(number, path.read_text(encoding="utf-8")) for number, path in migration_files()]


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
    for number, text in _migrations():
        if number > current:
            await db.executescript(
                f"BEGIN IMMEDIATE;\n{text}\nPRAGMA user_version = {number};\nCOMMIT;"
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
        self, statements: Iterable[sql.Statement], *, stale_if_unchanged: str = ""
    ) -> None:
        """Run statements in one BEGIN IMMEDIATE transaction.

        With `stale_if_unchanged`, the first statement must change a row (a version-checked
        UPDATE); otherwise everything is rolled back and `StaleVersion` raised with that text.
        """
        async with self._write_lock:
            try:
                await self._writer.execute("BEGIN IMMEDIATE")
                for index, (text, params) in enumerate(statements):
                    cursor = await self._writer.execute(text, params)
                    if index == 0 and stale_if_unchanged and cursor.rowcount == 0:
                        raise StaleVersion(stale_if_unchanged)
            except BaseException:
                # Also after a cancellation while BEGIN was queued: it still runs on the
                # connection's thread, and this ROLLBACK, queued behind it, closes it.
                with contextlib.suppress(sqlite3.OperationalError):
                    await self._writer.execute("ROLLBACK")
                raise
            await self._writer.execute("COMMIT")

    async def _read(self, text: str, params: Iterable[Any] = ()) -> list[aiosqlite.Row]:
        async with self._reader.execute(text, tuple(params)) as cur:
            return list(await cur.fetchall())

    async def create_run(self, decision: Decision) -> None:
        """Insert a new run with its first transition. Raises `InvalidInput` if it exists."""
        run, t = decision.run, decision.transition
        assert t is not None and run.version == 1
        spec = run.spec
        first = InstanceRecord(spec.instance_id, spec.region, t.at, "attached")
        try:
            await self._write(
                [
                    sql.insert_run(run, now=t.at),
                    sql.insert_transition(spec.run_id, run.version, t),
                    sql.insert_instance(spec.run_id, first),
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
        run_id = run.spec.run_id
        statements = [sql.update_run(run, before_version=before.version, now=now)]
        if run.instance_id != before.instance_id:  # a resume launched a new instance
            launched = InstanceRecord(run.instance_id, run.spec.region, now, "launched")
            statements.append(sql.insert_instance(run_id, launched, if_new=True))
        if t is not None:
            statements.append(sql.insert_transition(run_id, run.version, t))
        await self._write(
            statements,
            stale_if_unchanged=f"run {run_id} is no longer at version {before.version}",
        )

    async def record_action(self, record: ActionRecord) -> None:
        await self._write([sql.insert_action(record)])

    async def attach(self, record: AttachmentRecord) -> None:
        """Attach a file or link to a run; attaching the same one again refreshes it."""
        await self._write([sql.upsert_attachment(record)])

    async def record_report(
        self, run_id: str, key: str, report: Report, *, read_at: datetime, now: datetime
    ) -> None:
        """Store what the job reported (one file's content, at `key`), replacing that file's
        last one; a note that an earlier version of the file could not be read goes."""
        last_step: int | None = None
        match report:
            case StatusReport():
                sets: dict[str, Any] = {
                    "status_json": report.model_dump(mode="json"),
                    "status_at": read_at,
                    "step": report.step,
                    "wandb_run_id": report.wandb_run_id,
                    "wandb_url": report.wandb_url,
                }
            case FinalMetrics():
                wandb = report.wandb
                sets = {
                    "final_metrics_json": {
                        "metrics": report.metrics,
                        "wandb": wandb.model_dump() if wandb else None,
                        "runtime_s": report.runtime_s,
                    },
                    "total_steps": report.total_steps,
                }
                if wandb is not None and wandb.run_id:
                    sets |= {"wandb_run_id": wandb.run_id, "wandb_url": wandb.url}
            case History():
                sets = {"history_json": report.records}
                last_step = report.last_step
        statements = [sql.upsert_run_data(run_id, sets, now=now)]
        if last_step is not None:
            # total_steps: the final metrics' own count wins over the history's last step.
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
        await self._write([sql.upsert_report_problem(problem)])

    async def report_problems(self, run_id: str) -> list[ReportProblemRecord]:
        rows = await self._read(
            f"SELECT {sql.REPORT_PROBLEM_SELECT.sql} FROM report_problems "
            "WHERE run_id = ? ORDER BY noted_at, key",
            (run_id,),
        )
        return [sql.report_problem_record(row) for row in rows]

    async def run_data(self, run_id: str) -> RunDataRecord | None:
        rows = await self._read(
            f"SELECT {sql.RUN_DATA_SELECT.sql} FROM run_data WHERE run_id = ?", (run_id,)
        )
        return sql.run_data_record(rows[0]) if rows else None

    async def record_audit(
        self, *, at: datetime, source: str, kind: str, subject: str | None, detail: dict[str, Any]
    ) -> None:
        """Something seen that caused nothing (a message no run owns, a malformed one)."""
        await self._write(
            [sql.insert_audit(at=at, source=source, kind=kind, subject=subject, detail=detail)]
        )

    # -- reads ----------------------------------------------------------------------------

    async def audit(self, *, limit: int = 100) -> list[dict[str, Any]]:
        """The newest audit entries first."""
        rows = await self._read(
            f"SELECT {sql.AUDIT_SELECT.sql} FROM audit ORDER BY id DESC LIMIT ?", (limit,)
        )
        return [sql.audit_entry(row) for row in rows]

    async def get_run(self, run_id: str) -> RunRecord | None:
        rows = await self._read(f"SELECT {sql.RUN_COLUMNS} FROM runs WHERE run_id = ?", (run_id,))
        return sql.run_record(rows[0]) if rows else None

    async def runs(self, *, active_only: bool = False) -> list[RunRecord]:
        text = f"SELECT {sql.RUN_COLUMNS} FROM runs"
        params: tuple[Any, ...] = ()
        if active_only:
            text += _ACTIVE
            params = _TERMINAL
        rows = await self._read(text + " ORDER BY created_at, run_id", params)
        return [sql.run_record(row) for row in rows]

    async def active_runs(self, *, page: int = 500) -> AsyncIterator[list[RunRecord]]:
        """Every run not in a terminal phase, `page` at a time: a restart starts each page's
        monitors while the next is read, and never holds all the rows at once."""
        text = f"SELECT {sql.RUN_COLUMNS} FROM runs{_ACTIVE} ORDER BY created_at, run_id"
        async with self._reader.execute(text, _TERMINAL) as cur:
            while rows := await cur.fetchmany(page):
                yield [sql.run_record(row) for row in rows]

    async def transitions(self, run_id: str, *, after_seq: int = 0) -> list[TransitionRecord]:
        rows = await self._read(
            f"SELECT {sql.TRANSITION_SELECT.sql} FROM transitions "
            "WHERE run_id = ? AND seq > ? ORDER BY seq",
            (run_id, after_seq),
        )
        return [sql.transition_record(row) for row in rows]

    async def instances(self, run_id: str) -> list[InstanceRecord]:
        """The run's instance history: the attached one, then any a resume launched."""
        rows = await self._read(
            f"SELECT {sql.INSTANCE_SELECT.sql} FROM instances WHERE run_id = ? "
            "ORDER BY attached_at, rowid",
            (run_id,),
        )
        return [sql.instance_record(row) for row in rows]

    async def crashed_without_crash_log(self, *, since: datetime) -> list[RunRecord]:
        """Runs that crashed at `since` or later and have no crash log attached: a daemon
        killed between the crash's commit and reading the report leaves these."""
        rows = await self._read(
            f"SELECT {sql.RUN_COLUMNS} FROM runs WHERE phase = ? AND phase_since >= ? AND NOT "
            "EXISTS (SELECT 1 FROM attachments a WHERE a.run_id = runs.run_id AND "
            "a.kind = 'crash-log') ORDER BY phase_since",
            (Phase.CRASHED.value, _iso(since)),
        )
        return [sql.run_record(row) for row in rows]

    async def attachments(self, run_id: str) -> list[AttachmentRecord]:
        rows = await self._read(
            f"SELECT {sql.ATTACHMENT_SELECT.sql} FROM attachments WHERE run_id = ? ORDER BY id",
            (run_id,),
        )
        return [sql.attachment_record(row) for row in rows]

    async def actions(self, run_id: str) -> list[ActionRecord]:
        rows = await self._read(
            f"SELECT {sql.ACTION_SELECT.sql} FROM actions WHERE run_id = ? ORDER BY id",
            (run_id,),
        )
        return [sql.action_record(row) for row in rows]

    # -- zombies and terminations --------------------------------------------------------------

    async def save_zombie(self, zombie: Zombie, termination: Termination | None = None) -> None:
        """Upsert the zombie's row and append its terminations-log line, in one transaction."""
        statements = [sql.upsert_zombie(zombie)]
        if termination is not None:
            statements.append(sql.insert_termination(termination))
        await self._write(statements)

    async def zombies(self, *, open_only: bool = True) -> list[Zombie]:
        """Zombie records, oldest mark first; by default only open ones (still zombies)."""
        text = f"SELECT {sql.ZOMBIE_SELECT.sql} FROM zombies"
        params: tuple[Any, ...] = ()
        if open_only:
            states = sorted(s for s in ZombieState if s.open)
            text += f" WHERE state IN ({sql.placeholders(states)})"
            params = tuple(states)
        rows = await self._read(text + " ORDER BY marked_at, instance_id", params)
        return [sql.zombie(row) for row in rows]

    async def terminations(self, *, since: datetime | None = None) -> list[Termination]:
        """The terminations log, oldest first."""
        rows = await self._read(
            f"SELECT {sql.TERMINATION_SELECT.sql} FROM terminations WHERE at >= ? ORDER BY id",
            (_iso(since) if since is not None else "",),
        )
        return [sql.termination(row) for row in rows]

    async def ended_run_instances(self, *, since: datetime) -> list[tuple[InstanceId, str]]:
        """(instance id, region) of the current instance of every run that entered a zombie
        phase (`ZOMBIE_PHASES`) at or after `since`."""
        phases = sorted(ZOMBIE_PHASES)
        rows = await self._read(
            "SELECT DISTINCT instance_id, region FROM runs "
            f"WHERE phase IN ({sql.placeholders(phases)}) AND phase_since >= ?",
            (*phases, _iso(since)),
        )
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
                rows = await self._read(
                    f"SELECT {sql.RUN_COLUMNS} FROM runs "
                    f"WHERE {column} IN ({sql.placeholders(chunk)})",
                    chunk,
                )
                for row in rows:
                    run = sql.run_record(row).run
                    found[run.spec.run_id] = run
        return list(found.values())

    async def active_owner(self, instance_id: str, region: str) -> str | None:
        """The active run whose current instance this is, if there is one."""
        rows = await self._read(
            f"SELECT run_id FROM runs{_ACTIVE} AND instance_id = ? AND region = ? LIMIT 1",
            (*_TERMINAL, instance_id, region),
        )
        return str(rows[0]["run_id"]) if rows else None

    async def runs_by_phase_and_outcome(self) -> dict[tuple[str, str | None], int]:
        """How many runs are in each (phase, outcome): one GROUP BY, for `/metrics` and
        `supervisord status` (no run is loaded)."""
        rows = await self._read("SELECT phase, outcome, COUNT(*) FROM runs GROUP BY phase, outcome")
        return {(str(phase), outcome): int(n) for phase, outcome, n in rows}

    async def run_regions(self) -> set[str]:
        rows = await self._read("SELECT DISTINCT region FROM runs")
        return {str(r["region"]) for r in rows}

    async def fleet_report(self, *, since: datetime) -> FleetReport:
        """Terminations per UTC day since `since`; runs attached since then, by outcome."""
        terminated = _sql_list(TERMINATED_OUTCOMES)
        succeeded = _sql_list(SUCCESSFUL_OUTCOMES)
        failed = _sql_list({AttemptOutcome.UNAUTHORIZED, AttemptOutcome.FAILED})
        day_rows = await self._read(
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
        )
        outcome_rows = await self._read(
            "SELECT outcome, COUNT(*) AS n FROM runs WHERE created_at >= ? GROUP BY outcome",
            (_iso(since),),
        )
        open_states = sorted(s for s in ZombieState if s.open)
        count = await self._read(
            f"SELECT COUNT(*) FROM zombies WHERE state IN ({sql.placeholders(open_states)})",
            open_states,
        )
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
            open_zombies=int(count[0][0]) if count else 0,
        )


def _sql_list(values: Iterable[str]) -> str:
    """Our own enum values as an SQL list literal (never user input)."""
    return ", ".join(f"'{value}'" for value in sorted(values))
