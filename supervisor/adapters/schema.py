"""The run database's tables, declared once: each column's name, stored type and codec.

The writer (`supervisor.adapters.store`) and the read-only query path
(`supervisor.adapters.query`) build their SQL (SELECT lists, INSERT, UPDATE, upserts) and
decode their rows from these declarations, so a column is named in one place; a test holds
them equal to the migrated schema (`PRAGMA table_info`). The migrations in `migrations/` are
the one schema history and the one source of the schema version.

Statements are built with `?` placeholders; a backend whose driver numbers them (PostgreSQL's
`$1`) renders them with its `Dialect`, the one place the dialects differ in parameters.

Only the standard library here (no records, no pydantic): the CLI's query verbs import this
module, and must start fast.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, NamedTuple

MIGRATIONS = Path(__file__).with_name("migrations")
"""Numbered SQL files, `NNNN_what.sql`: applied in order above the database's version."""


def migration_files() -> list[tuple[int, Path]]:
    """The migrations, by number."""
    return sorted(
        (int(name.split("_", 1)[0]), MIGRATIONS / name)
        for name in os.listdir(MIGRATIONS)
        if name.endswith(".sql")
    )


SCHEMA_VERSION = migration_files()[-1][0]
"""The newest migration's number: what this code writes and reads."""


# -- codecs -----------------------------------------------------------------------------------


def timestamp(value: datetime) -> str:
    """A datetime as stored: ISO 8601 in UTC (also for comparing with stored ones)."""
    return value.astimezone(UTC).isoformat()


def _json_text(value: Any) -> str:
    return json.dumps(value, default=str)


Encode = Callable[[Any], Any]


class Codec(NamedTuple):
    """How one column's Python value is stored: its SQL type, and the conversions each way
    (None: stored as it is). NULL stays None both ways."""

    sql_type: str
    encode: Encode | None = None
    decode: Callable[[Any], Any] | None = None


TEXT = Codec("TEXT")
INTEGER = Codec("INTEGER")
REAL = Codec("REAL")
BOOL = Codec("INTEGER", int, bool)
TIMESTAMP = Codec("TEXT", timestamp, datetime.fromisoformat)
"""An aware datetime, stored as ISO 8601 text in UTC (so text order is time order)."""
JSON = Codec("TEXT", _json_text, json.loads)
"""A JSON value (dict, list...) stored as its text; what JSON cannot say is written as str."""


# -- tables -----------------------------------------------------------------------------------


class Column(NamedTuple):
    name: str
    codec: Codec = TEXT
    nullable: bool = False
    generated: bool = False
    """Filled by the database (an autoincrement id), or written only by statements of its own
    (a run's lease: owner, epoch, expiry): never in a row's INSERT, UPDATE or default SELECT."""


# Projection and Table are plain classes, not dataclasses: the CLI's query verbs build them at
# start-up, and a dataclass costs that start-up most of a millisecond to create. Never changed
# after they are made.


class Projection:
    """Some columns of a table, in order, as an SQL list (`alias.` before each name when
    given) and the decoder of a row selected with it."""

    __slots__ = ("_decoders", "alias", "names", "sql", "table")

    def __init__(self, table: Table, names: tuple[str, ...], alias: str = "") -> None:
        self.table = table
        self.names = names
        self.alias = alias
        prefix = f"{alias}." if alias else ""
        self.sql = ", ".join(f"{prefix}{name}" for name in names)
        self._decoders = tuple((name, table.column(name).codec.decode) for name in names)

    def __repr__(self) -> str:
        return f"<Projection {self.sql} FROM {self.table.name}>"

    def __len__(self) -> int:
        return len(self.names)

    def decode(self, row: Sequence[Any], offset: int = 0) -> dict[str, Any]:
        """The row's values (from `offset`, for a join), decoded, by column name."""
        values: dict[str, Any] = {}
        for index, (name, decode) in enumerate(self._decoders, offset):
            value = row[index]
            values[name] = value if decode is None or value is None else decode(value)
        return values


class Table:
    """One table: its columns in the order the migrations leave them, and its key (the
    primary key, or the unique key upserts resolve conflicts on)."""

    __slots__ = ("_by_name", "_encoders", "columns", "key", "name", "stored")

    def __init__(self, name: str, columns: tuple[Column, ...], *, key: tuple[str, ...]) -> None:
        self.name = name
        self.columns = columns
        self.key = key
        self._by_name = {c.name: c for c in columns}
        self.stored = tuple(c.name for c in columns if not c.generated)
        """The columns a row is written with (all but the generated ones)."""
        self._encoders: dict[tuple[str, ...], tuple[tuple[str, Encode | None], ...]] = {}
        assert set(key) <= set(self._by_name), f"{name}: key {key} not among its columns"

    def __repr__(self) -> str:
        return f"<Table {self.name}: {', '.join(c.name for c in self.columns)}>"

    def column(self, name: str) -> Column:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"table {self.name} has no column {name!r}") from None

    def project(self, names: Iterable[str] | None = None, *, alias: str = "") -> Projection:
        return Projection(self, tuple(names) if names is not None else self.stored, alias)

    def encode(
        self, values: Mapping[str, Any], names: Iterable[str] | None = None
    ) -> tuple[Any, ...]:
        """The parameters for `names` (default: every stored column), encoded, in order.
        Raises KeyError for a column `values` lacks."""
        key = tuple(names) if names is not None else self.stored
        encoders = self._encoders.get(key)
        if encoders is None:  # once per list of columns: a commit encodes on the hot path
            encoders = tuple((name, self.column(name).codec.encode) for name in key)
            self._encoders[key] = encoders
        encoded = []
        for name, encode in encoders:
            value = values[name]
            encoded.append(value if encode is None or value is None else encode(value))
        return tuple(encoded)

    def insert(
        self,
        names: Iterable[str] | None = None,
        *,
        on_conflict: Literal["update", "ignore"] | None = None,
    ) -> str:
        """INSERT of `names` (default: every stored column). `on_conflict`: "update" sets the
        columns not in the key from the new row; "ignore" keeps the old row."""
        columns = tuple(names) if names is not None else self.stored
        sql = (
            f"INSERT INTO {self.name} ({', '.join(columns)}) "
            f"VALUES ({', '.join('?' for _ in columns)})"
        )
        if on_conflict == "ignore":
            return sql + " ON CONFLICT DO NOTHING"
        if on_conflict == "update":
            updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in self.key)
            return sql + f" ON CONFLICT ({', '.join(self.key)}) DO UPDATE SET {updates}"
        return sql

    def update(self, names: Iterable[str], *, where: Iterable[str]) -> str:
        """UPDATE of `names` for the rows whose `where` columns equal the parameters after
        them."""
        sets = ", ".join(f"{name} = ?" for name in names)
        condition = " AND ".join(f"{name} = ?" for name in where)
        return f"UPDATE {self.name} SET {sets} WHERE {condition}"


class Dialect(NamedTuple):
    """What differs between SQL backends in the statements built here: how parameters are
    written."""

    name: str
    numbered: bool
    """Parameters as `$1, $2...` (PostgreSQL) instead of `?` (SQLite)."""

    def render(self, sql: str) -> str:
        """`sql` (built with `?` placeholders, none inside a string literal) for this
        backend."""
        if not self.numbered:
            return sql
        parts = sql.split("?")
        return "".join(f"{part}${n}" for n, part in enumerate(parts[:-1], 1)) + parts[-1]


SQLITE = Dialect("sqlite", numbered=False)
POSTGRESQL = Dialect("postgresql", numbered=True)


def _id() -> Column:
    return Column("id", INTEGER, generated=True)


# -- the tables (in the order of the migrations) --------------------------------------------------

RUNS = Table(
    "runs",
    (
        Column("run_id"),
        Column("spec_json"),  # the spec's own JSON: RunSpec.from_stored reads it
        Column("phase"),
        Column("outcome", nullable=True),
        Column("instance_id"),
        Column("region"),
        Column("reason"),
        Column("version", INTEGER),
        Column("phase_since", TIMESTAMP),
        Column("grace_until", TIMESTAMP, nullable=True),
        Column("action_acked_at", TIMESTAMP, nullable=True),
        Column("error_code", nullable=True),
        Column("created_at", TIMESTAMP),
        Column("updated_at", TIMESTAMP),
        Column("pending_action", nullable=True),
        Column("checkpoint", nullable=True),
        Column("attempt", INTEGER),
        Column("started_at", TIMESTAMP, nullable=True),
        Column("process_exited", BOOL),
        Column("verified_attempt", INTEGER, nullable=True),
        Column("verified_location", nullable=True),
        Column("interrupt_deadline", TIMESTAMP, nullable=True),
        Column("report_etags", JSON),
        Column("running_s_before", REAL),
        Column("job_ended_at", TIMESTAMP, nullable=True),
        # Issue 14: the run's lease (migration 0010), written by the lease statements alone
        # (`supervisor.adapters.sql_store`, section "leases"), never by a decision's commit.
        Column("owner", nullable=True, generated=True),
        Column("epoch", INTEGER, generated=True),
        Column("lease_until", TIMESTAMP, nullable=True, generated=True),
    ),
    key=("run_id",),
)

TRANSITIONS = Table(
    "transitions",
    (
        _id(),
        Column("run_id"),
        Column("seq", INTEGER),
        Column("from_phase", nullable=True),
        Column("to_phase"),
        Column("at", TIMESTAMP),
        Column("reason"),
        Column("detail_json", JSON),
    ),
    key=("run_id", "seq"),
)

INSTANCES = Table(
    "instances",
    (
        Column("run_id"),
        Column("instance_id"),
        Column("region"),
        Column("attached_at", TIMESTAMP),
        Column("source"),
    ),
    key=("run_id", "instance_id"),
)

ACTIONS = Table(
    "actions",
    (
        _id(),
        Column("run_id"),
        Column("instance_id"),
        Column("action"),
        Column("at", TIMESTAMP),
        Column("attempts", INTEGER),
        Column("outcome"),
        Column("error_code", nullable=True),
        Column("message", nullable=True),
    ),
    key=("id",),
)

AUDIT = Table(
    "audit",
    (
        _id(),
        Column("at", TIMESTAMP),
        Column("source"),
        Column("kind"),
        Column("subject", nullable=True),
        Column("detail_json", JSON),
    ),
    key=("id",),
)

ATTACHMENTS = Table(
    "attachments",
    (
        _id(),
        Column("run_id"),
        Column("kind"),
        Column("uri"),
        Column("size", INTEGER, nullable=True),
        Column("excerpt", nullable=True),
        Column("added_at", TIMESTAMP),
    ),
    key=("run_id", "kind", "uri"),
)

ZOMBIES = Table(
    "zombies",
    (
        Column("instance_id"),
        Column("region"),
        Column("kind"),
        Column("run_id", nullable=True),
        Column("run_phase", nullable=True),
        Column("run_ended_at", TIMESTAMP, nullable=True),
        Column("keep_data", BOOL),
        Column("state"),
        Column("marked_at", TIMESTAMP),
        Column("action", nullable=True),
        Column("attempts", INTEGER),
        Column("last_attempt_at", TIMESTAMP, nullable=True),
        Column("last_error", nullable=True),
        Column("resolved_at", TIMESTAMP, nullable=True),
        Column("note"),
    ),
    key=("instance_id", "region"),
)

TERMINATIONS = Table(
    "terminations",
    (
        _id(),
        Column("at", TIMESTAMP),
        Column("instance_id"),
        Column("region"),
        Column("run_id", nullable=True),
        Column("action"),
        Column("outcome"),
        Column("calls", INTEGER),
        Column("error_code", nullable=True),
        Column("message", nullable=True),
        Column("seconds_since_marked", REAL),
    ),
    key=("id",),
)

RUN_DATA = Table(
    "run_data",
    (
        Column("run_id"),
        Column("status_json", JSON, nullable=True),
        Column("status_at", TIMESTAMP, nullable=True),
        Column("step", INTEGER, nullable=True),
        Column("wandb_run_id", nullable=True),
        Column("wandb_url", nullable=True),
        Column("final_metrics_json", JSON, nullable=True),
        Column("history_json", JSON, nullable=True),
        Column("total_steps", INTEGER, nullable=True),
        Column("updated_at", TIMESTAMP),
    ),
    key=("run_id",),
)

REPORT_PROBLEMS = Table(
    "report_problems",
    (
        Column("run_id"),
        Column("key"),
        Column("etag"),
        Column("note"),
        Column("noted_at", TIMESTAMP),
    ),
    key=("run_id", "key"),
)

REPLICAS = Table(
    "replicas",
    (
        Column("replica_id"),
        Column("host"),
        Column("pid", INTEGER),
        Column("started_at", TIMESTAMP),
        Column("heartbeat_at", TIMESTAMP),
        Column("state"),
        Column("lease_ttl_s", REAL),
    ),
    key=("replica_id",),
)
"""Issue 14: every replica that ran against this database, with its heartbeat."""

TABLES: tuple[Table, ...] = (
    RUNS,
    TRANSITIONS,
    INSTANCES,
    ACTIONS,
    AUDIT,
    ATTACHMENTS,
    ZOMBIES,
    TERMINATIONS,
    RUN_DATA,
    REPORT_PROBLEMS,
    REPLICAS,
)
"""Every table of the schema."""


Row = Sequence[Any]
"""A result row, its values in the order of the SELECT list it was read with."""


# -- replicas: the run inbox and the duty leases (migration 0011) ------------------------------

INBOX = Table(
    "inbox",
    (
        Column("id"),
        Column("run_id"),
        Column("kind"),
        Column("body_json", JSON),
        Column("created_at", TIMESTAMP),
        Column("created_by"),
        Column("state"),
        Column("answer_json", JSON, nullable=True),
        Column("answered_at", TIMESTAMP, nullable=True),
        Column("answered_by", nullable=True),
    ),
    key=("id",),
)

DUTY_LEASES = Table(
    "duty_leases",
    (
        Column("name"),
        Column("owner"),
        Column("epoch", INTEGER),
        Column("lease_until", TIMESTAMP),
    ),
    key=("name",),
)

TABLES += (INBOX, DUTY_LEASES)


# -- issue 15: the notification outbox (migration 0012) ----------------------------------------

OUTBOX = Table(
    "outbox",
    (
        Column("key"),
        Column("run_id", nullable=True),
        Column("seq", INTEGER, nullable=True),
        Column("events"),
        Column("facts_json", JSON),
        Column("created_at", TIMESTAMP),
        Column("state"),
        Column("attempts", INTEGER),
        Column("last_try_at", TIMESTAMP, nullable=True),
        Column("last_error", nullable=True),
        Column("sent_at", TIMESTAMP, nullable=True),
        Column("sender", nullable=True),
        Column("deliveries_json", JSON),
    ),
    key=("key",),
)

TABLES += (OUTBOX,)
