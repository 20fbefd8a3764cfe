"""The read-only JSON API under `/api/v1/`: the answers of `supervisorctl runs --json`,
`show --json` and `compare --json`, field for field (the same rows of the query path, turned
to JSON the same way), plus a run's transitions and metric history on their own, and the
curves behind the compare page's chart.

Filters are the CLI's: `where=PATH OP VALUE` (repeatable), `phase=`, `outcome=` (repeatable),
`since=7d`. A bad one is answered 400 with the CLI's message; an unknown run 404.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

# The query path's own grouping, so a run lands in the group `compare` counted it in.
from supervisor.adapters.query import RunDatabase, RunRow, _group_value
from supervisor.adapters.web.reader import RunReader
from supervisor.core.errors import InvalidInput

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class RunFilters:
    """A request's filters, as `RunDatabase.runs` takes them."""

    where: tuple[str, ...]
    phase: tuple[str, ...]
    outcome: tuple[str, ...]
    since: str | None

    @classmethod
    def of(cls, request: web.Request) -> RunFilters:
        query = request.query
        return cls(
            where=tuple(w for w in query.getall("where", []) if w.strip()),
            phase=tuple(p for p in query.getall("phase", []) if p),
            outcome=tuple(o for o in query.getall("outcome", []) if o),
            since=query.get("since") or None,
        )

    def runs(self, db: RunDatabase) -> list[RunRow]:
        return db.runs(*self.where, phase=self.phase, outcome=self.outcome, since=self.since)


def _required(request: web.Request, name: str) -> str:
    value = request.query.get(name, "").strip()
    if not value:
        raise InvalidInput(f"give {name}= (e.g. {_EXAMPLES[name]})")
    return value


_EXAMPLES = {"by": "by=config.gradient_method", "metric": "metric=val_loss"}


def _run_id(request: web.Request) -> str:
    return request.match_info["run_id"]


class JsonApi:
    """The `/api/v1/` routes over a `RunReader`."""

    def __init__(self, reader: RunReader) -> None:
        self._reader = reader

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/api/v1/runs", self.runs),
            web.get("/api/v1/runs/{run_id}", self.run),
            web.get("/api/v1/runs/{run_id}/transitions", self.transitions),
            web.get("/api/v1/runs/{run_id}/history", self.history),
            web.get("/api/v1/compare", self.compare),
            web.get("/api/v1/compare/curves", self.curves),
        ]

    async def runs(self, request: web.Request) -> web.Response:
        """`supervisorctl runs --json`."""
        filters = RunFilters.of(request)
        rows = await self._reader.read(filters.runs)
        return web.json_response([r.json() for r in rows])

    async def run(self, request: web.Request) -> web.Response:
        """`supervisorctl show RUN_ID --json`."""
        run_id = _run_id(request)
        detail = await self._reader.read(lambda db: db.run(run_id))
        return web.json_response(detail.json())

    async def transitions(self, request: web.Request) -> web.Response:
        """The run's transitions, oldest first (`show --json`'s `transitions`)."""
        run_id = _run_id(request)
        detail = await self._reader.read(lambda db: db.run(run_id))
        return web.json_response([t.json() for t in detail.transitions])

    async def history(self, request: web.Request) -> web.Response:
        """The run's metric history, the records its job reported (`show --json`'s
        `history`; an empty list when it reported none)."""
        run_id = _run_id(request)
        detail = await self._reader.read(lambda db: db.run(run_id))
        return web.json_response(detail.json()["history"] or [])

    async def compare(self, request: web.Request) -> web.Response:
        """`supervisorctl compare --by PATH --metric NAME --json`."""
        by, metric = _required(request, "by"), _required(request, "metric")
        direction = request.query.get("direction") or None
        filters = RunFilters.of(request)
        found = await self._reader.read(
            lambda db: db.compare(
                by,
                metric,
                *filters.where,
                phase=filters.phase,
                outcome=filters.outcome,
                since=filters.since,
                direction=direction,
            )
        )
        return web.json_response(dataclasses.asdict(found))

    async def curves(self, request: web.Request) -> web.Response:
        """The metric's history per group of the comparison (the mean over the group's runs
        at each step) and per run: what the compare page draws."""
        by, metric = _required(request, "by"), _required(request, "metric")
        filters = RunFilters.of(request)
        found = await self._reader.read(lambda db: compare_curves(db, by, metric, filters))
        return web.json_response(found)


def compare_curves(db: RunDatabase, by: str, metric: str, filters: RunFilters) -> dict[str, Any]:
    """{"by", "metric", "groups": [{"label", "run_ids", "points": [[step, mean]...]}],
    "runs": [{"run_id", "group", "points": [[step, value]...]}]}; groups in the order
    `compare` lists them (best mean first)."""
    comparison = db.compare(
        by,
        metric,
        *filters.where,
        phase=filters.phase,
        outcome=filters.outcome,
        since=filters.since,
    )
    name = comparison.metric
    members: dict[str, list[str]] = defaultdict(list)
    for row in filters.runs(db):
        members[group_label(_group_value(row.get(comparison.by)))].append(row.run_id)
    groups, runs = [], []
    for group in comparison.groups:
        label = group_label(group.value)
        at_step: dict[float, list[float]] = defaultdict(list)
        for run_id in members.get(label, []):
            points = history_points(db.run(run_id).history, name)
            if points:
                runs.append({"run_id": run_id, "group": label, "points": points})
            for step, value in points:
                at_step[step].append(value)
        mean = [[step, sum(v) / len(v)] for step, v in sorted(at_step.items())]
        groups.append({"label": label, "run_ids": members.get(label, []), "points": mean})
    return {"by": comparison.by, "metric": name, "groups": groups, "runs": runs}


def group_label(value: object) -> str:
    """A group's value as the pages show it: `(none)` for runs without the field."""
    return "(none)" if value is None else str(value)


def history_points(history: list[dict[str, Any]] | None, metric: str) -> list[list[float]]:
    """[[step, value], ...] of one metric: the record's `step`, else its place in the list;
    records without a finite number for the metric are left out."""
    points = []
    for index, record in enumerate(history or ()):
        value = record.get(metric)
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        step = record.get("step", index)
        if isinstance(step, bool) or not isinstance(step, int | float):
            step = index
        points.append([float(step), float(value)])
    return points
