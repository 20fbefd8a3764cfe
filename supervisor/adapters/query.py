"""Read-only queries over the run database file: runs as typed rows, flat records for
`pandas.DataFrame`, one run in full, and comparisons of a metric across groups of runs.

Synchronous `sqlite3` on a `mode=ro` connection, for notebooks and for `supervisorctl runs`,
`show`, `compare` and `export`: it works while supervisord is down, and while it runs (WAL
lets readers see every committed transaction without blocking the writer). Nothing here
writes. Filters come parsed from `supervisor.core.filters` and reach SQL only as bound
parameters; the SQL text is built from this module's own fragments and the column
declarations of `supervisor.adapters.schema`, which also decode the rows (as the store's).

The rows are plain frozen dataclasses and nothing here imports pydantic or the daemon's
libraries: `supervisorctl runs` and `show` load this module on every call.
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
from supervisor.core.values import Direction

if TYPE_CHECKING:  # `runs` and `show` do without: loaded by `compare` when it runs
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
_ORDER = " ORDER BY r.created_at, r.run_id"


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


# -- the database -----------------------------------------------------------------------------


class RunDatabase:
    """The run database, read-only. `RunDatabase(path)`, or `with RunDatabase(path) as db:`.

    Filters are text as `supervisorctl runs --where` takes it (or parsed `Filter`s), e.g.
    `db.runs("config.gradient_method=mgda", "metrics.val_loss<0.3", since="7d")`.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise DatabaseUnavailable(
                f"no run database at {self.path} yet: supervisord creates it when it first "
                "starts (its state directory is SUPERVISOR_STATE_DIR, or state_dir in --config)"
            )
        uri = f"{self.path.resolve().as_uri()}?mode=ro"
        self._db = sqlite3.connect(uri, uri=True, timeout=10, check_same_thread=False)
        try:
            self._db.create_function("sv_number", 1, _number, deterministic=True)
            version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise DatabaseUnavailable(f"{self.path} is not a run database: {exc}") from None
        if version < QUERY_SCHEMA_VERSION:
            self._db.close()
            raise DatabaseUnavailable(
                f"the run database {self.path} is at schema version {version}; queries need "
                f"{QUERY_SCHEMA_VERSION}: start supervisord once (this version) to migrate it"
            )

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<RunDatabase {self.path} (read-only)>"

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
        row = self._db.execute(_SELECT_DETAIL + " WHERE r.run_id = ?", (run_id,)).fetchone()
        if row is None:
            raise UnknownRun(
                run_id,
                f"no run {run_id!r} in the run database {self.path}: "
                "`supervisorctl runs` lists the runs",
            )
        transitions = tuple(
            _transition_row(_TRANSITIONS.decode(t))
            for t in self._db.execute(
                f"SELECT {_TRANSITIONS.sql} FROM transitions WHERE run_id = ? ORDER BY seq",
                (run_id,),
            )
        )
        instances = tuple(
            _instance_row(_INSTANCES.decode(i))
            for i in self._db.execute(
                f"SELECT {_INSTANCES.sql} FROM instances WHERE run_id = ? "
                "ORDER BY attached_at, rowid",
                (run_id,),
            )
        )
        attachments = tuple(
            _attachment_row(_ATTACHMENTS.decode(a))
            for a in self._db.execute(
                f"SELECT {_ATTACHMENTS.sql} FROM attachments WHERE run_id = ? ORDER BY id",
                (run_id,),
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
            for p in self._db.execute(
                f"SELECT {_REPORT_PROBLEMS.sql} FROM report_problems WHERE run_id = ? "
                "ORDER BY noted_at, key",
                (run_id,),
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

    def _select(self, query: RunQuery) -> list[Row]:
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
            conditions.append("r.created_at >= ?")
            params.append(timestamp(query.created_after))
        for f in query.where:
            sql, values = _condition(f)
            conditions.append(sql)
            params.extend(values)
        where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        try:
            return self._db.execute(_SELECT + where + _ORDER, params).fetchall()
        except sqlite3.DatabaseError as exc:
            raise DatabaseUnavailable(f"cannot read the run database {self.path}: {exc}") from None


def _field_sql(field: FieldPath) -> tuple[str, list[Any]]:
    """An SQL expression for the field's value, and its parameters. JSON true and false read
    as the text 'true' and 'false' (json_extract alone would give 1 and 0)."""
    keys = field.keys
    match field.source:
        case Source.CONFIG:
            doc, path = "r.spec_json", "$.config" + "".join(f'."{k}"' for k in keys)
        case Source.METRICS:
            doc, path = "d.final_metrics_json", f'$.metrics."{keys[0]}"'
        case Source.TAG:
            doc, path = "r.spec_json", f'$.tags."{keys[0]}"'
        case Source.COLUMN if keys[0] in _SPEC_COLUMNS:
            doc, path = "r.spec_json", f'$."{keys[0]}"'
        case Source.COLUMN if keys[0] == _WANDB_PROJECT:
            return (
                "COALESCE(json_extract(r.spec_json, '$.wandb_project'), "
                "json_extract(d.final_metrics_json, '$.wandb.project'))",
                [],
            )
        case _:
            return _COLUMN_SQL[keys[0]], []
    return (
        f"(CASE json_type({doc}, ?) WHEN 'true' THEN 'true' WHEN 'false' THEN 'false' "
        f"ELSE json_extract({doc}, ?) END)",
        [path, path],
    )


def _condition(f: Filter) -> tuple[str, list[Any]]:
    expr, params = _field_sql(f.field)
    if f.numeric:
        # sv_number: a number, or text that reads as one; NULL otherwise, which never matches.
        return f"sv_number({expr}) {f.op} ?", [*params, f.value]
    return f"{expr} {f.op} ?", [*params, f.value]


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
