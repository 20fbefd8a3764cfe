"""The replicated soak's PostgreSQL database: its schema migrated before any replica starts,
the lease log the harness adds to it, and the rows the checks read.

The run database keeps only each run's current lease (owner, epoch, expiry) and the leader
duty's; the check "no action by a replica without a valid lease" needs their history. So the
harness adds a table of its own, `soak_lease_log`, and triggers on `runs` and `duty_leases`
that append a row to it, stamped with PostgreSQL's clock, whenever a lease's owner, epoch or
expiry changes (a claim, a renewal, a hand-back, a new run's first lease). A stamp is taken
inside the writing transaction, a moment before its commit: a claim may be stamped before it
is visible, never after, so the history never shows a lease as held before it was.
Nothing of the daemon reads this table; the triggers only append to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from supervisor.adapters.pg_store import PgStore

LEASE_LOG = """
CREATE TABLE soak_lease_log (
    id          BIGSERIAL PRIMARY KEY,
    kind        TEXT NOT NULL,         -- run | duty
    name        TEXT NOT NULL,         -- the run id, or the duty's name
    owner       TEXT,
    epoch       BIGINT,
    lease_until TEXT,
    logged_at   TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);
CREATE FUNCTION soak_log_run_lease() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' OR NEW.owner IS DISTINCT FROM OLD.owner
       OR NEW.epoch IS DISTINCT FROM OLD.epoch
       OR NEW.lease_until IS DISTINCT FROM OLD.lease_until THEN
        INSERT INTO soak_lease_log (kind, name, owner, epoch, lease_until)
        VALUES ('run', NEW.run_id, NEW.owner, NEW.epoch, NEW.lease_until);
    END IF;
    RETURN NULL;
END;
$$;
CREATE TRIGGER soak_run_lease AFTER INSERT OR UPDATE ON runs
FOR EACH ROW EXECUTE FUNCTION soak_log_run_lease();
CREATE FUNCTION soak_log_duty_lease() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO soak_lease_log (kind, name, owner, epoch, lease_until)
    VALUES ('duty', NEW.name, NEW.owner, NEW.epoch, NEW.lease_until);
    RETURN NULL;
END;
$$;
CREATE TRIGGER soak_duty_lease AFTER INSERT OR UPDATE ON duty_leases
FOR EACH ROW EXECUTE FUNCTION soak_log_duty_lease();
"""
TABLES = {
    "runs": "created_at, run_id",
    "transitions": "id",
    "instances": "run_id, instance_id",
    "actions": "id",
    "zombies": "instance_id",
    "terminations": "id",
}
"""The tables the checks read, each with an order (SQLite's is its rowid's)."""


@dataclass(frozen=True, slots=True)
class LeaseState:
    """A lease as it was from `logged_at` until the next state of the same lease."""

    logged_at: float
    owner: str | None
    epoch: int | None
    until: float | None
    """Its expiry as a POSIX time; None: nobody holds it."""

    def valid_for(self, replica_id: str, at: float) -> bool:
        return self.owner == replica_id and self.until is not None and at < self.until


LeaseHistory = dict[tuple[str, str], list[LeaseState]]
"""(kind, name) -> the lease's states, oldest first. kind: `run` or `duty`."""


def prepare(url: str) -> None:
    """Migrate the empty database as a replica would (so no replica has claimed anything
    yet), then add the lease log and its triggers."""

    async def migrate() -> None:
        store = await PgStore.open(url)
        await store.close()

    with contextlib.redirect_stdout(io.StringIO()):  # the store's log lines, not the soak's
        asyncio.run(migrate())
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(LEASE_LOG.encode())


def read_tables(url: str) -> dict[str, list[dict[str, Any]]]:
    """Every row the checks need, as `checks.read_database` reads them from SQLite."""
    with psycopg.connect(url, row_factory=dict_row) as conn:
        return {
            table: [dict(row) for row in conn.execute(f"SELECT * FROM {table} ORDER BY {order}")]
            for table, order in TABLES.items()
        }


def read_lease_history(url: str) -> LeaseHistory:
    history: LeaseHistory = defaultdict(list)
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT kind, name, owner, epoch, lease_until, logged_at FROM soak_lease_log "
            "ORDER BY logged_at, id"
        ).fetchall()
    for kind, name, owner, epoch, until, logged_at in rows:
        history[(kind, name)].append(
            LeaseState(
                logged_at.timestamp(),
                owner,
                epoch,
                datetime.fromisoformat(until).timestamp() if owner and until else None,
            )
        )
    return dict(history)


class Phases:
    """Each run's phase, read from the database the replicas share (the harness's view of
    progress); a failed read keeps the last answer and reconnects next time."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._conn: psycopg.Connection[Any] | None = None
        self.last: dict[str, str] = {}

    def read(self) -> dict[str, str]:
        try:
            if self._conn is None or self._conn.closed:
                self._conn = psycopg.connect(self.url, autocommit=True, connect_timeout=5)
            rows = self._conn.execute("SELECT run_id, phase FROM runs").fetchall()
        except psycopg.Error:
            self.close()
            return self.last
        self.last = {str(run_id): str(phase) for run_id, phase in rows}
        return self.last

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
            self._conn = None
