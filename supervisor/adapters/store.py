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
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any, Self

import aiosqlite

from supervisor.core.errors import InvalidInput, StaleVersion
from supervisor.core.events import Action
from supervisor.core.machine import Decision, Transition
from supervisor.core.run import TERMINAL_PHASES, CheckpointStatus, Outcome, Phase, Run
from supervisor.core.spec import RunSpec

_RUN_COLUMNS = (
    "run_id, spec_json, phase, outcome, instance_id, region, reason, version, phase_since, "
    "grace_until, action_acked_at, error_code, created_at, updated_at, pending_action, "
    "checkpoint, attempt, started_at"
)


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
                        f"INSERT INTO runs ({_RUN_COLUMNS}) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
            phase = existing.run.phase if existing else "unknown"
            raise InvalidInput(
                f"run {spec.run_id!r} is already attached (phase {phase}): "
                "choose another run id, or `supervisorctl detach` the old one first"
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
            "instance_id = ?, pending_action = ?, checkpoint = ?, attempt = ?, started_at = ? "
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
            terminal = sorted(TERMINAL_PHASES)
            sql += f" WHERE phase NOT IN ({', '.join('?' * len(terminal))})"
            params = tuple(terminal)
        async with self._reader.execute(sql + " ORDER BY created_at, run_id", params) as cur:
            rows = await cur.fetchall()
        return [_run_record(row) for row in rows]

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


def _run_record(row: aiosqlite.Row) -> RunRecord:
    phase_since = _dt(row["phase_since"])
    assert phase_since is not None
    run = Run(
        spec=RunSpec.model_validate_json(row["spec_json"]),
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
    )
    created, updated = _dt(row["created_at"]), _dt(row["updated_at"])
    assert created is not None and updated is not None
    return RunRecord(run=run, created_at=created, updated_at=updated)
