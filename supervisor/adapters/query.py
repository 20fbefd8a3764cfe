"""Read-only queries over the run database file: runs as typed rows, flat records for
`pandas.DataFrame`, one run in full, and comparisons of a metric across groups of runs.

Synchronous `sqlite3` on a `mode=ro` connection, for notebooks and for `supervisorctl runs`,
`show`, `compare` and `export`: it works while supervisord is down, and while it runs (WAL
lets readers see every committed transaction without blocking the writer). Given a
PostgreSQL URL instead of a path (SUPERVISOR_DATABASE_URL), the same queries run on a sync
psycopg connection in read-only transactions. Nothing here writes. Filters come parsed from
`supervisor.core.filters` and reach SQL only as bound parameters; the SQL text is built from
this module's own fragments and the column declarations of `supervisor.adapters.schema`,
which also decode the rows (as the store's). What differs between the two backends (JSON
fields, numbers in text, text order, placeholders) is `_QueryDialect`'s, and only there.

The rows are plain frozen dataclasses and nothing here imports pydantic or the daemon's
libraries (psycopg only when a URL is given): `supervisorctl runs` and `show` load this
module on every call.
"""

from __future__ import annotations

import enum
import json
import math
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field, fields, is_dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from supervisor.adapters.database_url import is_postgresql, redact, redact_text
from supervisor.adapters.schema import (
    ATTACHMENTS,
    INSTANCES,
    REPORT_PROBLEMS,
    RUN_DATA,
    RUNS,
    SCHEMA_VERSION,
    TRANSITIONS,
    Row,
    timestamp,
)
from supervisor.core.defaults import CRASH_LOG_LINES as CRASH_LOG_LINES
from supervisor.core.errors import InvalidInput, SupervisorError, UnknownRun
from supervisor.core.filters import (
    COLUMNS,
    NO_OUTCOME,
    FieldPath,
    Filter,
    RunQuery,
    Source,
    parse_field,
)
from supervisor.core.records import idle_after_end_s
from supervisor.core.run import TERMINAL_PHASES
from supervisor.core.values import Direction

if TYPE_CHECKING:  # `runs` and `show` do without: loaded by `compare` when it runs
    import psycopg

    from supervisor.core.compare import Comparison

QUERY_SCHEMA_VERSION = SCHEMA_VERSION
"""The schema version these queries need: the newest migration's, as the store writes."""

_SPEC_COLUMNS = ("name", "project", "instance_type", "spot", "s3_prefix", "on_complete")
_WANDB_PROJECT = "wandb_project"  # the spec's, else the one the job reported with its metrics
_RUN = RUNS.project(
    (
        "run_id",
        "spec_json",
        "phase",
        "outcome",
        "reason",
        "instance_id",
        "region",
        "attempt",
        "checkpoint",
        "error_code",
        "created_at",
        "updated_at",
        "phase_since",
        "started_at",
        "job_ended_at",
        "action_acked_at",
    ),
    alias="r",
)
_DATA = RUN_DATA.project(
    ("step", "total_steps", "status_at", "wandb_run_id", "wandb_url", "final_metrics_json"),
    alias="d",
)
_DATA_DETAIL = RUN_DATA.project(("status_json", "history_json"), alias="d")
_TRANSITIONS = TRANSITIONS.project(("seq", "from_phase", "to_phase", "at", "reason", "detail_json"))
_INSTANCES = INSTANCES.project(("instance_id", "region", "attached_at", "source"))
_ATTACHMENTS = ATTACHMENTS.project(("kind", "uri", "size", "excerpt", "added_at"))
_REPORT_PROBLEMS = REPORT_PROBLEMS.project(("key", "note", "noted_at"))
# Where each column a filter may name lives: a column of runs (r) or run_data (d), selected
# for the row, or (below) a key of the spec's JSON.
_COLUMN_SQL = {
    name: f"{projection.alias}.{name}"
    for projection in (_RUN, _DATA)
    for name in projection.names
    if name in COLUMNS
}
_FROM = "FROM runs r LEFT JOIN run_data d ON d.run_id = r.run_id"
_SELECT = f"SELECT {_RUN.sql}, {_DATA.sql} {_FROM}"
_SELECT_DETAIL = f"SELECT {_RUN.sql}, {_DATA.sql}, {_DATA_DETAIL.sql} {_FROM}"


class DatabaseUnavailable(SupervisorError):
    """There is no run database at the path, or it cannot be read as one."""


# -- rows -------------------------------------------------------------------------------------


class _Row:
    """A query row: a frozen dataclass, with its JSON form (as the CLI's --json prints it)."""

    __slots__ = ()

    def json(self) -> dict[str, Any]:
        """The row as JSON values: datetimes as ISO 8601 (UTC as Z), enums as their values,
        tuples as lists, nested rows as objects; a field's `json` name where it has one."""
        value = _json_value(self)
        assert isinstance(value, dict)
        return value


@dataclass(frozen=True, slots=True)
class ObjectiveValue(_Row):
    name: str
    direction: Direction
    weight: float
    final: float | None
    """The metric's final value, from the job's final metrics; None until it reports them."""


@dataclass(frozen=True, slots=True)
class RunRow(_Row):
    """One run: what it is (spec, config, tags, objectives), where it is, what it reported."""

    run_id: str
    name: str | None
    project: str | None
    phase: str
    outcome: str | None
    reason: str
    instance_id: str
    region: str
    instance_type: str | None
    spot: bool
    s3_prefix: str
    on_complete: str
    attempt: int
    checkpoint: str | None
    error_code: str | None
    created_at: datetime
    updated_at: datetime
    phase_since: datetime
    started_at: datetime | None
    step: int | None
    """The step of the newest heartbeat."""
    total_steps: int | None
    status_at: datetime | None
    """When the newest heartbeat was written."""
    wandb_project: str | None
    wandb_run_id: str | None
    wandb_url: str | None
    tags: dict[str, str]
    config: dict[str, Any] | None
    objectives: tuple[ObjectiveValue, ...]
    metrics: dict[str, Any]
    """The final metrics the job reported (empty until it completes)."""

    def get(self, field: FieldPath | str) -> Any:
        """The value of a field (`config.optimizer.lr`, `metrics.val_loss`, a column...), or
        None when the run has none."""
        path = parse_field(field) if isinstance(field, str) else field
        match path.source:
            case Source.CONFIG:
                value: Any = self.config
                for key in path.keys:
                    value = value.get(key) if isinstance(value, dict) else None
                return value
            case Source.METRICS:
                return self.metrics.get(path.keys[0])
            case Source.TAG:
                return self.tags.get(path.keys[0])
            case Source.COLUMN:
                return getattr(self, path.keys[0])

    def record(self) -> dict[str, Any]:
        """A flat dict: the columns, then `config.<dotted key>`, `tag.<key>` and
        `metrics.<name>` (lists in the config stay lists)."""
        flat: dict[str, Any] = {column: getattr(self, column) for column in COLUMNS}
        flat.update(_flatten("config", self.config or {}))
        flat.update({f"tag.{k}": v for k, v in sorted(self.tags.items())})
        flat.update({f"metrics.{k}": v for k, v in sorted(self.metrics.items())})
        return flat


@dataclass(frozen=True, slots=True)
class TransitionRow(_Row):
    seq: int
    from_: str | None = field(metadata={"json": "from"})
    to: str
    at: datetime
    reason: str
    detail: dict[str, Any]


@dataclass(frozen=True, slots=True)
class InstanceRow(_Row):
    instance_id: str
    region: str
    attached_at: datetime
    source: str
    """attached (given at attach), or launched by a resume."""


@dataclass(frozen=True, slots=True)
class AttachmentRow(_Row):
    kind: str
    uri: str
    size: int | None
    excerpt: str | None
    added_at: datetime


@dataclass(frozen=True, slots=True)
class ReportProblemRow(_Row):
    key: str
    """The report file, relative to the run prefix."""
    note: str
    """What is wrong with it, naming the file and where its shapes are documented."""
    noted_at: datetime


@dataclass(frozen=True, slots=True)
class CrashLog(_Row):
    uri: str
    lines: tuple[str, ...]
    """Its last lines (up to CRASH_LOG_LINES), as read when it was attached."""


@dataclass(frozen=True, slots=True)
class RunDetailRow(RunRow):
    """A run in full: also its spec, newest heartbeat, history, attachments, instance history,
    transitions and the tail of its crash log."""

    spec: dict[str, Any]
    status: dict[str, Any] | None
    wandb: dict[str, Any] | None
    """What the job reported about W&B with its final metrics (ids, project, summary)."""
    history: list[dict[str, Any]] | None
    runtime_s: float | None
    """The job's runtime, when its final metrics say (a W&B summary's `_runtime`)."""
    report_problems: tuple[ReportProblemRow, ...]
    """Report files that could not be read (their newest version): nothing of them is here."""
    attachments: tuple[AttachmentRow, ...]
    instances: tuple[InstanceRow, ...]
    transitions: tuple[TransitionRow, ...]
    crash_log: CrashLog | None
    job_ended_at: datetime | None
    """When the job ended: its completion or failure marker's LastModified (None: not seen)."""
    idle_after_end_s: float | None
    """Idle instance-seconds from the job's end until our stop/terminate call was accepted;
    None when the instance was not stopped by us (kept, left running, or already gone)."""


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        text = value.isoformat()
        return text[:-6] + "Z" if text.endswith("+00:00") else text
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {key: _json_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_value(item) for item in value]
    if is_dataclass(value):
        return {
            f.metadata.get("json", f.name): _json_value(getattr(value, f.name))
            for f in fields(value)
        }
    return value


# -- one function per entity: its columns, decoded by the schema, as the query's row ---------
# (The store's records hold core types, such as the `Transition`, that this path never loads.)


def _transition_row(values: dict[str, Any]) -> TransitionRow:
    return TransitionRow(
        seq=values["seq"],
        from_=values["from_phase"],
        to=values["to_phase"],
        at=values["at"],
        reason=values["reason"],
        detail=values["detail_json"],
    )


def _instance_row(values: dict[str, Any]) -> InstanceRow:
    return InstanceRow(**values)


def _attachment_row(values: dict[str, Any]) -> AttachmentRow:
    return AttachmentRow(**values)


def _report_problem_row(values: dict[str, Any]) -> ReportProblemRow:
    return ReportProblemRow(**values)


# -- the SQL of each backend ----------------------------------------------------------------


class _QueryDialect:
    """What the query path's SQL says differently on SQLite and on PostgreSQL: a JSON field's
    value as text, a number read from a value, text compared and ordered byte by byte, and
    the parameters' placeholders. Statements are built with `?` (`render` turns them into
    the driver's); every other fragment comes from here."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def render(self, sql: str) -> str:
        return sql

    def json_text(self, doc: str, keys: tuple[str, ...]) -> tuple[str, list[Any]]:
        """The value at `keys` inside the JSON text `doc`, as SQL, and its parameters. JSON
        true and false read as the text 'true' and 'false' (json_extract alone would give 1
        and 0)."""
        path = "$" + "".join(f'."{key}"' for key in keys)
        return (
            f"(CASE json_type({doc}, ?) WHEN 'true' THEN 'true' WHEN 'false' THEN 'false' "
            f"ELSE json_extract({doc}, ?) END)",
            [path, path],
        )

    def number(self, expr: str, params: list[Any]) -> tuple[str, list[Any]]:
        """`expr` (with its `params`) as a number when it is one or is text that reads as
        one; else NULL (which never matches)."""
        return f"sv_number({expr})", params

    def number_param(self) -> str:
        return "?"

    def text(self, expr: str) -> str:
        """`expr` for a comparison with a text value: SQLite compares bytes already."""
        return expr

    def ordered(self, column: str) -> str:
        return column


class _PostgresDialect(_QueryDialect):
    """PostgreSQL: JSON through jsonb (`#>>` gives a scalar as text, true and false
    included), numbers by a pattern then a cast (no function of ours in the database, nothing
    to install), text in the "C" collation so that order and comparisons are SQLite's
    whatever the database's locale, `%s` placeholders (psycopg's)."""

    __slots__ = ()

    NUMBER_TEXT = r"^\s*[-+]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]{1,4})?\s*$"
    """What Python's float() reads as a finite number (the exponent bounded, so the numeric
    cast never overflows): `_number`'s rule."""

    def render(self, sql: str) -> str:
        return sql.replace("%", "%%").replace("?", "%s")

    def json_text(self, doc: str, keys: tuple[str, ...]) -> tuple[str, list[Any]]:
        return f"(CAST({doc} AS jsonb) #>> CAST(? AS text[]))", [list(keys)]

    def number(self, expr: str, params: list[Any]) -> tuple[str, list[Any]]:
        text = f"CAST({expr} AS text)"
        return (
            f"(CASE WHEN {text} ~ ? THEN CAST({text} AS numeric) END)",
            [*params, self.NUMBER_TEXT, *params],
        )

    def number_param(self) -> str:
        return "CAST(? AS numeric)"

    def text(self, expr: str) -> str:
        return f'(CAST({expr} AS text) COLLATE "C")'

    def ordered(self, column: str) -> str:
        return f'{column} COLLATE "C"'


_SQLITE = _QueryDialect("sqlite")
_POSTGRESQL = _PostgresDialect("postgresql")


# -- the database -----------------------------------------------------------------------------


class RunDatabase:
    """The run database, read-only: `RunDatabase(path)` for the SQLite file, or
    `RunDatabase("postgresql://...")`; or `with RunDatabase(...) as db:`.

    Filters are text as `supervisorctl runs --where` takes it (or parsed `Filter`s), e.g.
    `db.runs("config.gradient_method=mgda", "metrics.val_loss<0.3", since="7d")`.
    """

    path: Path | None
    """The SQLite file; None on PostgreSQL."""
    url: str | None
    """The PostgreSQL URL with its password hidden; None on SQLite."""
    _driver_errors: tuple[type[Exception], ...]
    """What the driver raises for a statement that fails."""

    def __init__(self, path: Path | str) -> None:
        if isinstance(path, str) and is_postgresql(path):
            import psycopg

            self.path, self.url = None, redact(path)
            self._dialect: _QueryDialect = _POSTGRESQL
            self._driver_errors = (psycopg.Error,)
            self._db: sqlite3.Connection | psycopg.Connection[tuple[Any, ...]] = _connect_postgres(
                path
            )
            return
        self.path, self.url = Path(path), None
        self._dialect = _SQLITE
        self._driver_errors = (sqlite3.DatabaseError,)
        if not self.path.is_file():
            raise DatabaseUnavailable(
                f"no run database at {self.path} yet: supervisord creates it when it first "
                "starts (its state directory is SUPERVISOR_STATE_DIR, or state_dir in --config)"
            )
        uri = f"{self.path.resolve().as_uri()}?mode=ro"
        db = sqlite3.connect(uri, uri=True, timeout=10, check_same_thread=False)
        self._db = db
        try:
            db.create_function("sv_number", 1, _number, deterministic=True)
            version = int(db.execute("PRAGMA user_version").fetchone()[0])
        except sqlite3.DatabaseError as exc:
            db.close()
            raise DatabaseUnavailable(f"{self.path} is not a run database: {exc}") from None
        if version < QUERY_SCHEMA_VERSION:
            db.close()
            raise DatabaseUnavailable(
                f"the run database {self.path} is at schema version {version}; queries need "
                f"{QUERY_SCHEMA_VERSION}: start supervisord once (this version) to migrate it"
            )

    @property
    def where(self) -> str:
        """The database as messages name it: its file, or its URL without the password."""
        return str(self.path) if self.path is not None else str(self.url)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<RunDatabase {self.where} (read-only)>"

    # -- queries ----------------------------------------------------------------------------

    def runs(
        self,
        *where: str | Filter,
        phase: str | Iterable[str] = (),
        outcome: str | Iterable[str] = (),
        since: str | timedelta | None = None,
        now: datetime | None = None,
    ) -> list[RunRow]:
        """The runs matching every filter, oldest first. `phase`/`outcome`: any of those given
        (`outcome="none"`: not ended yet); `since`: attached within, e.g. "7d" or "12h"."""
        query = RunQuery.build(
            where, phase=phase, outcome=outcome, since=since, now=now or datetime.now(UTC)
        )
        return [_run_row(row) for row in self._select(query)]

    def records(
        self,
        *where: str | Filter,
        phase: str | Iterable[str] = (),
        outcome: str | Iterable[str] = (),
        since: str | timedelta | None = None,
        now: datetime | None = None,
    ) -> list[dict[str, Any]]:
        """`runs(...)` as flat dicts (see `RunRow.record`): `pandas.DataFrame(db.records())`."""
        return [
            run.record()
            for run in self.runs(*where, phase=phase, outcome=outcome, since=since, now=now)
        ]

    def compare(
        self,
        by: str | FieldPath,
        metric: str,
        *where: str | Filter,
        phase: str | Iterable[str] = (),
        outcome: str | Iterable[str] = (),
        since: str | timedelta | None = None,
        direction: str | Direction | None = None,
        now: datetime | None = None,
    ) -> Comparison:
        """Group the matching runs by the value of `by` and summarise the final value of
        `metric` per group; which way is better comes from the runs' objectives for `metric`
        unless `direction` ("min" or "max") is given."""
        from supervisor.core.compare import Sample, compare

        field = parse_field(by) if isinstance(by, str) else by
        name = _metric_name(metric)
        chosen = _direction(direction)
        query = RunQuery.build(
            where, phase=phase, outcome=outcome, since=since, now=now or datetime.now(UTC)
        )
        samples = []
        for row in self._select(query):
            run = _run_row(row)
            group = run.get(field)
            objective = next((o for o in run.objectives if o.name == name), None)
            samples.append(
                Sample(
                    run_id=run.run_id,
                    group=_group_value(group),
                    outcome=run.outcome,
                    value=_number(run.metrics.get(name)),
                    direction=objective.direction if objective else None,
                )
            )
        return compare(samples, by=str(field), metric=name, direction=chosen)

    def run(self, run_id: str) -> RunDetailRow:
        """One run in full, or `UnknownRun`."""
        dialect = self._dialect
        found = self._rows(_SELECT_DETAIL + " WHERE r.run_id = ?", [run_id])
        if not found:
            raise UnknownRun(
                run_id,
                f"no run {run_id!r} in the run database {self.where}: "
                "`supervisorctl runs` lists the runs",
            )
        row = found[0]
        transitions = tuple(
            _transition_row(_TRANSITIONS.decode(t))
            for t in self._rows(
                f"SELECT {_TRANSITIONS.sql} FROM transitions WHERE run_id = ? ORDER BY seq",
                [run_id],
            )
        )
        instances = tuple(
            _instance_row(_INSTANCES.decode(i))
            for i in self._rows(
                f"SELECT {_INSTANCES.sql} FROM instances WHERE run_id = ? "
                # The attached one first, then launches in time order: the store's order.
                f"ORDER BY {dialect.ordered('attached_at')}, "
                f"CASE source WHEN 'attached' THEN 0 ELSE 1 END, {dialect.ordered('instance_id')}",
                [run_id],
            )
        )
        attachments = tuple(
            _attachment_row(_ATTACHMENTS.decode(a))
            for a in self._rows(
                f"SELECT {_ATTACHMENTS.sql} FROM attachments WHERE run_id = ? ORDER BY id",
                [run_id],
            )
        )
        crash = [a for a in attachments if a.kind == "crash-log"]
        crash_log = None
        if crash:
            newest = max(crash, key=lambda a: a.added_at)
            lines = (newest.excerpt or "").rstrip("\n").splitlines()
            crash_log = CrashLog(uri=newest.uri, lines=tuple(lines[-CRASH_LOG_LINES:]))
        report_problems = tuple(
            _report_problem_row(_REPORT_PROBLEMS.decode(p))
            for p in self._rows(
                f"SELECT {_REPORT_PROBLEMS.sql} FROM report_problems WHERE run_id = ? "
                f"ORDER BY {dialect.ordered('noted_at')}, {dialect.ordered('key')}",
                [run_id],
            )
        )
        summary = _run_row(row)
        run, data = _RUN.decode(row), _DATA.decode(row, len(_RUN))
        detail = _DATA_DETAIL.decode(row, len(_RUN) + len(_DATA))
        final = data["final_metrics_json"] or {}
        return RunDetailRow(
            **{f.name: getattr(summary, f.name) for f in fields(RunRow)},
            spec=json.loads(run["spec_json"]),
            status=detail["status_json"],
            wandb=final.get("wandb"),
            history=detail["history_json"],
            runtime_s=final.get("runtime_s"),
            report_problems=report_problems,
            attachments=attachments,
            instances=instances,
            transitions=transitions,
            crash_log=crash_log,
            job_ended_at=run["job_ended_at"],
            idle_after_end_s=idle_after_end_s(run["job_ended_at"], run["action_acked_at"]),
        )

    # -- SQL --------------------------------------------------------------------------------

    def _select(self, query: RunQuery, *, newest: int | None = None) -> list[Row]:
        """The matching runs, oldest first; with `newest`, only that many, newest first."""
        dialect = self._dialect
        where, params = self._where(query)
        columns = (dialect.ordered("r.created_at"), dialect.ordered("r.run_id"))
        if newest is None:
            return self._rows(f"{_SELECT}{where} ORDER BY {', '.join(columns)}", params)
        order = ", ".join(f"{column} DESC" for column in columns)
        return self._rows(f"{_SELECT}{where} ORDER BY {order} LIMIT ?", [*params, newest])

    def _where(self, query: RunQuery) -> tuple[str, list[Any]]:
        """The WHERE clause of the query's filters (empty without any), and its parameters."""
        dialect = self._dialect
        conditions: list[str] = []
        params: list[Any] = []
        if query.phases:
            conditions.append(f"r.phase IN ({', '.join('?' * len(query.phases))})")
            params.extend(query.phases)
        if query.outcomes:
            named = [o for o in query.outcomes if o != NO_OUTCOME]
            either = [f"r.outcome IN ({', '.join('?' * len(named))})"] if named else []
            if NO_OUTCOME in query.outcomes:
                either.append("r.outcome IS NULL")
            conditions.append(f"({' OR '.join(either)})")
            params.extend(named)
        if query.created_after is not None:
            conditions.append(f"{dialect.text('r.created_at')} >= ?")
            params.append(timestamp(query.created_after))
        for f in query.where:
            sql, values = _condition(f, dialect)
            conditions.append(sql)
            params.extend(values)
        return (f" WHERE {' AND '.join(conditions)}" if conditions else ""), params

    def _rows(self, sql: str, params: list[Any]) -> list[Row]:
        """The rows of one statement (built with `?`), or `DatabaseUnavailable`."""
        try:
            cursor = self._db.execute(self._dialect.render(sql), params)
            return list(cursor.fetchall())
        except self._driver_errors as exc:
            raise DatabaseUnavailable(
                f"cannot read the run database {self.where}: {_first_line(exc)}"
            ) from None

    # -- issue 15: the dashboard's fleet page -----------------------------------------------

    def owners(self) -> dict[str, list[str]]:
        """The runs not yet ended, by the replica that holds their lease (issue 14's `owner`
        column); runs nobody holds are left out."""
        dialect = self._dialect
        rows = self._rows(
            "SELECT owner, run_id, phase FROM runs WHERE owner IS NOT NULL "
            f"ORDER BY {dialect.ordered('owner')}, {dialect.ordered('run_id')}",
            [],
        )
        ended = {str(phase) for phase in TERMINAL_PHASES}
        owned: dict[str, list[str]] = {}
        for owner, run_id, phase in rows:
            if phase not in ended:
                owned.setdefault(owner, []).append(run_id)
        return owned

    def newest(
        self,
        *where: str | Filter,
        limit: int,
        phase: str | Iterable[str] = (),
        outcome: str | Iterable[str] = (),
        since: str | timedelta | None = None,
        now: datetime | None = None,
    ) -> tuple[list[RunRow], int]:
        """The newest `limit` runs matching the filters (as `runs` takes them), newest first,
        and how many match in all: a page of a large database without reading all of it."""
        query = RunQuery.build(
            where, phase=phase, outcome=outcome, since=since, now=now or datetime.now(UTC)
        )
        rows = [_run_row(row) for row in self._select(query, newest=limit)]
        where_sql, params = self._where(query)
        counted = self._rows(f"SELECT count(*) {_FROM}{where_sql}", params)
        return rows, int(counted[0][0])

    def counts(self) -> dict[tuple[str, str], int]:
        """Runs by (phase, outcome), `none` for runs without an outcome yet."""
        rows = self._rows("SELECT phase, outcome, count(*) FROM runs GROUP BY phase, outcome", [])
        return {(phase, outcome or NO_OUTCOME): int(n) for phase, outcome, n in rows}


def _first_line(exc: BaseException, url: str = "") -> str:
    """The driver's message, one line, with `url`'s password (should it appear) hidden."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return redact_text(line, url) if url else line


_PG_CONNECT_TIMEOUT_S = 10
_PG_VERSION_TABLE = "schema_migrations"
"""`pg_store.SCHEMA_MIGRATIONS` (not imported: that module loads the daemon's libraries)."""


def _connect_postgres(url: str) -> psycopg.Connection[tuple[Any, ...]]:
    """A read-only session on the database at `url` (autocommit: every query sees what is
    committed when it runs, as the SQLite reader does), checked for the schema version."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    shown = redact(url)
    try:
        given = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        raise DatabaseUnavailable(
            f"the database URL {shown} is not a libpq URL: give "
            "postgresql://USER@HOST:PORT/DATABASE (the password from the URL, PGPASSWORD or "
            "~/.pgpass)"
        ) from None
    extra: dict[str, Any] = {"application_name": "supervisorctl"}
    if "connect_timeout" not in given:
        extra["connect_timeout"] = _PG_CONNECT_TIMEOUT_S
    try:
        db = psycopg.connect(url, autocommit=True, **extra)
    except psycopg.Error as exc:
        raise DatabaseUnavailable(
            f"cannot connect to the run database {shown}: {_first_line(exc, url)}"
        ) from None
    try:
        db.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
        version = _postgres_schema_version(db)
    except psycopg.Error as exc:
        db.close()
        raise DatabaseUnavailable(
            f"{shown} is not a run database: {_first_line(exc, url)}"
        ) from None
    if version < QUERY_SCHEMA_VERSION:
        db.close()
        raise DatabaseUnavailable(
            f"the run database {shown} is at schema version {version}; queries need "
            f"{QUERY_SCHEMA_VERSION}: start supervisord once (this version) with "
            "SUPERVISOR_DATABASE_URL set to migrate it"
        )
    return db


def _postgres_schema_version(db: psycopg.Connection[tuple[Any, ...]]) -> int:
    """The newest migration applied to the PostgreSQL database; 0 for an empty one."""
    found = db.execute("SELECT to_regclass(%s)", [_PG_VERSION_TABLE]).fetchone()
    if found is None or found[0] is None:
        return 0
    row = db.execute(f"SELECT max(version) FROM {_PG_VERSION_TABLE}").fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def _field_sql(field: FieldPath, dialect: _QueryDialect) -> tuple[str, list[Any]]:
    """An SQL expression for the field's value, and its parameters."""
    keys = field.keys
    match field.source:
        case Source.CONFIG:
            return dialect.json_text("r.spec_json", ("config", *keys))
        case Source.METRICS:
            return dialect.json_text("d.final_metrics_json", ("metrics", keys[0]))
        case Source.TAG:
            return dialect.json_text("r.spec_json", ("tags", keys[0]))
        case Source.COLUMN if keys[0] in _SPEC_COLUMNS:
            return dialect.json_text("r.spec_json", (keys[0],))
        case Source.COLUMN if keys[0] == _WANDB_PROJECT:
            spec, spec_params = dialect.json_text("r.spec_json", (_WANDB_PROJECT,))
            final, final_params = dialect.json_text("d.final_metrics_json", ("wandb", "project"))
            return f"COALESCE({spec}, {final})", [*spec_params, *final_params]
        case _:
            return _COLUMN_SQL[keys[0]], []


def _condition(f: Filter, dialect: _QueryDialect) -> tuple[str, list[Any]]:
    expr, params = _field_sql(f.field, dialect)
    if f.numeric:
        number, number_params = dialect.number(expr, params)
        return f"{number} {f.op} {dialect.number_param()}", [*number_params, f.value]
    return f"{dialect.text(expr)} {f.op} ?", [*params, f.value]


def _number(value: object) -> float | None:
    """A finite number, from a number or from text that reads as one; else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def _run_row(row: Row) -> RunRow:
    """A run from a row read with `_SELECT` (or `_SELECT_DETAIL`)."""
    run, data = _RUN.decode(row), _DATA.decode(row, len(_RUN))
    spec = json.loads(run["spec_json"])
    final = data["final_metrics_json"] or {}
    metrics: dict[str, Any] = final.get("metrics") or {}
    wandb = final.get("wandb") or {}
    return RunRow(
        run_id=run["run_id"],
        name=spec.get("name"),
        project=spec.get("project"),
        phase=run["phase"],
        outcome=run["outcome"],
        reason=run["reason"],
        instance_id=run["instance_id"],
        region=run["region"],
        instance_type=spec.get("instance_type"),
        spot=bool(spec.get("spot", False)),
        s3_prefix=spec["s3_prefix"],
        on_complete=spec.get("on_complete", "stop"),
        attempt=run["attempt"],
        checkpoint=run["checkpoint"],
        error_code=run["error_code"],
        created_at=run["created_at"],
        updated_at=run["updated_at"],
        phase_since=run["phase_since"],
        started_at=run["started_at"],
        step=data["step"],
        total_steps=data["total_steps"],
        status_at=data["status_at"],
        wandb_project=spec.get("wandb_project") or wandb.get("project"),
        wandb_run_id=data["wandb_run_id"] or wandb.get("run_id"),
        wandb_url=data["wandb_url"] or wandb.get("url"),
        tags=spec.get("tags") or {},
        config=spec.get("config"),
        objectives=tuple(
            ObjectiveValue(
                name=o["name"],
                direction=Direction(o.get("direction", Direction.MIN)),
                weight=float(o.get("weight", 1.0)),
                final=_number(metrics.get(o["name"])),
            )
            for o in spec.get("objectives") or ()
        ),
        metrics=metrics,
    )


def _flatten(prefix: str, value: dict[str, Any]) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, item in value.items():
        name = f"{prefix}.{key}"
        if isinstance(item, dict) and item:
            flat.update(_flatten(name, item))
        else:
            flat[name] = item
    return flat


def _metric_name(text: str) -> str:
    field = parse_field(text if text.startswith("metrics.") else f"metrics.{text}")
    return field.keys[0]


def _direction(value: str | Direction | None) -> Direction | None:
    if value is None:
        return None
    try:
        return Direction(value)
    except ValueError:
        raise InvalidInput(f"direction {value!r} is not min or max") from None


def _group_value(value: Any) -> str | int | float | None:
    """A field's value as a group key: scalars as they are, true/false and containers as
    their JSON text."""
    if value is None or (isinstance(value, int | float | str) and not isinstance(value, bool)):
        return value
    return json.dumps(value, sort_keys=True)
