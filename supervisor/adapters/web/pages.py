"""The dashboard's pages, rendered on the server with jinja2 (autoescaped: a run's name, a
reason or a log line is text, never markup), and the fragments htmx polls to keep them live.

- `/`: the runs, with counts by phase and outcome (each a filter) and a filter box; the table
  is the fragment `/fragments/runs`, polled every few seconds.
- `/runs/RUN_ID`: one run in full; its metric history drawn in the browser (uPlot) from
  `/api/v1/runs/RUN_ID/history`; the training log's tail (`.../training-log`, polled while
  the run is live).
- `/compare?by=PATH&metric=NAME`: `supervisorctl compare`'s table, and charts of the groups
  and of chosen runs from `/api/v1/compare/curves`.
- `/fleet`: zombies, the termination report per day, AWS calls, replicas and their runs.

Runs come from the query path (`RunReader`); what only the daemon knows (its status, zombies,
report, training logs) from a `FleetSource`.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import urlencode

import jinja2
from aiohttp import web

from supervisor.adapters.protocol import DaemonStatus, ReportView, TrainingLogItem, ZombieList
from supervisor.adapters.query import RunDatabase, RunDetailRow, RunRow
from supervisor.adapters.web.api import RunFilters, group_label
from supervisor.adapters.web.reader import RunReader
from supervisor.core.defaults import DEFAULT_TRAINING_LOG, DEFAULT_TRAINING_LOG_BYTES
from supervisor.core.errors import SupervisorError
from supervisor.core.run import TERMINAL_PHASES
from supervisor.core.zombies import span

REFRESH_S = 2
"""How often the runs table and a live run's log are fetched again."""
MAX_ROWS = 500
"""Runs shown at most on the runs page (the newest): filter to see others."""
REPORT_DAYS = 30.0
TRAINING_LOG_TIMEOUT_S = 20.0
"""How long the training log's fragment waits for S3 before it says it could not read it."""
_TERMINAL = frozenset(str(p) for p in TERMINAL_PHASES)

_templates = jinja2.Environment(
    loader=jinja2.PackageLoader("supervisor.adapters.web", "templates"),
    autoescape=True,  # every template, whatever its name: job-provided text is data
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def render(template: str, **context: Any) -> web.Response:
    """The page `template` with `context`, as text/html."""
    context.setdefault("page", "")
    body = _templates.get_template(template).render(refresh_s=REFRESH_S, **context)
    return web.Response(text=body, content_type="text/html", charset="utf-8")


class FleetSource(Protocol):
    """What the daemon knows beyond the run database (`ControlViews` answers all of it)."""

    async def status(self) -> DaemonStatus: ...

    async def zombies(self) -> ZombieList: ...

    async def report(self, since_days: float) -> ReportView: ...

    def training_log(
        self, run_id: str, *, key: str, offset: int | None, last: int, follow: bool
    ) -> AsyncIterator[TrainingLogItem]: ...


@dataclass(frozen=True, slots=True)
class RunLine:
    """One row of the runs table, as shown."""

    run_id: str
    name: str
    project: str
    phase: str
    outcome: str
    instance: str
    instance_type: str
    in_phase: str
    steps: str
    eta: str
    checkpoint: str
    reason: str
    live: bool


def run_line(run: RunRow, now: datetime, ends_at: datetime | None) -> RunLine:
    steps = "-" if run.step is None else str(run.step)
    if run.total_steps is not None:
        steps = f"{steps}/{run.total_steps}"
    live = run.phase not in _TERMINAL
    eta = ""
    if live and ends_at is not None:
        eta = f"ends in ~{span((ends_at - now).total_seconds())}"
    kind = ", ".join(t for t in (run.instance_type, "spot" if run.spot else None) if t)
    return RunLine(
        run_id=run.run_id,
        name=run.name or "",
        project=run.project or "",
        phase=run.phase,
        outcome=run.outcome or "",
        instance=run.instance_id,
        instance_type=kind,
        in_phase=span((now - run.phase_since).total_seconds()),
        steps=steps,
        eta=eta,
        checkpoint=run.checkpoint or "",
        reason=run.reason,
        live=live,
    )


def matches(run: RunRow, text: str) -> bool:
    """The filter box: `text` within the run id, name, project or a tag (`key=value`)."""
    needle = text.strip().casefold()
    if not needle:
        return True
    haystack = [run.run_id, run.name or "", run.project or ""]
    haystack += [f"{key}={value}" for key, value in run.tags.items()]
    return any(needle in item.casefold() for item in haystack)


@dataclass(frozen=True, slots=True)
class RunsView:
    lines: tuple[RunLine, ...]
    matching: int
    by_phase: tuple[tuple[str, int], ...]
    by_outcome: tuple[tuple[str, int], ...]
    total: int


class Pages:
    def __init__(
        self,
        reader: RunReader,
        fleet: FleetSource,
        *,
        eta: Callable[[str], datetime | None] | None = None,
        now: Callable[[], datetime] | None = None,
    ) -> None:
        self._reader = reader
        self._fleet = fleet
        self._eta = eta or (lambda run_id: None)
        self._now = now or (lambda: datetime.now(UTC))

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/", self.runs_page),
            web.get("/fragments/runs", self.runs_fragment),
            web.get("/runs/{run_id}", self.run_page),
            web.get("/runs/{run_id}/training-log", self.training_log),
            web.get("/compare", self.compare_page),
            web.get("/fleet", self.fleet_page),
        ]

    # -- runs -------------------------------------------------------------------------------

    async def _runs(self, request: web.Request) -> dict[str, Any]:
        filters = RunFilters.of(request)
        text = request.query.get("q", "").strip()

        def read(db: RunDatabase) -> tuple[list[RunRow], int, dict[tuple[str, str], int]]:
            if not text:  # the newest page only: a poll never reads a large database whole
                newest, matching = db.newest(
                    *filters.where, limit=MAX_ROWS, phase=filters.phase,
                    outcome=filters.outcome, since=filters.since,
                )  # fmt: skip
                return newest, matching, db.counts()
            shown = [r for r in reversed(filters.runs(db)) if matches(r, text)]
            return shown[:MAX_ROWS], len(shown), db.counts()

        newest, matching, counts = await self._reader.read(read)
        by_phase: Counter[str] = Counter()
        by_outcome: Counter[str] = Counter()
        for (phase, outcome), n in counts.items():
            by_phase[phase] += n
            by_outcome[outcome] += n
        now = self._now()
        view = RunsView(
            lines=tuple(run_line(r, now, self._eta(r.run_id)) for r in newest),
            matching=matching,
            by_phase=tuple(sorted(by_phase.items())),
            by_outcome=tuple(sorted(by_outcome.items())),
            total=sum(counts.values()),
        )
        kept = ("q", "phase", "outcome", "where", "since")
        query = urlencode([(k, v) for k, v in request.query.items() if k in kept])
        return {
            "view": view,
            "query": query,
            "q": text,
            "filters": filters,
            "max_rows": MAX_ROWS,
        }

    async def runs_page(self, request: web.Request) -> web.Response:
        return render("runs.html", page="runs", **await self._runs(request))

    async def runs_fragment(self, request: web.Request) -> web.Response:
        return render("runs_table.html", **await self._runs(request))

    # -- one run ----------------------------------------------------------------------------

    async def run_page(self, request: web.Request) -> web.Response:
        run_id = request.match_info["run_id"]
        detail: RunDetailRow = await self._reader.read(lambda db: db.run(run_id))
        now = self._now()
        line = run_line(detail, now, self._eta(run_id))
        checks = [t for t in detail.transitions if "files" in t.detail and "bytes" in t.detail]
        return render(
            "run.html",
            page="run",
            run=detail,
            line=line,
            checks=checks,
            spec_text=json.dumps(detail.spec, indent=2, sort_keys=True),
            config_text=json.dumps(detail.config, indent=2, sort_keys=True)
            if detail.config
            else "",
            wandb_href=_web_link(detail.wandb_url),
            metrics=sorted(detail.metrics.items()),
            has_history=bool(detail.history),
        )

    async def training_log(self, request: web.Request) -> web.Response:
        """The tail of the run's training log (S3), read through the daemon."""
        run_id = request.match_info["run_id"]
        live = request.query.get("live") == "1"
        lines: list[str] = []
        problem = ""
        try:
            async with asyncio.timeout(TRAINING_LOG_TIMEOUT_S):
                async for item in self._fleet.training_log(
                    run_id, key=DEFAULT_TRAINING_LOG, offset=None,
                    last=DEFAULT_TRAINING_LOG_BYTES, follow=False,
                ):  # fmt: skip
                    if item.kind == "lines":
                        lines.append(item.text)
                    else:
                        problem = item.text
        except TimeoutError:
            problem = "the training log did not come in time; trying again"
        except SupervisorError as exc:
            problem = str(exc)
        return render(
            "training_log.html", run_id=run_id, text="".join(lines), problem=problem, live=live
        )

    # -- compare ----------------------------------------------------------------------------

    async def compare_page(self, request: web.Request) -> web.Response:
        by = request.query.get("by", "").strip()
        metric = request.query.get("metric", "").strip()
        filters = RunFilters.of(request)
        comparison = None
        if by and metric:
            comparison = await self._reader.read(
                lambda db: db.compare(
                    by,
                    metric,
                    *filters.where,
                    phase=filters.phase,
                    outcome=filters.outcome,
                    since=filters.since,
                )
            )
        curves_query = urlencode([(k, v) for k, v in request.query.items() if k != "run"])
        return render(
            "compare.html",
            page="compare",
            by=by,
            metric=metric,
            comparison=comparison,
            group_label=group_label,
            curves_query=curves_query,
            chosen=request.query.getall("run", []),
            where=filters.where,
        )

    # -- fleet ------------------------------------------------------------------------------

    async def fleet_page(self, request: web.Request) -> web.Response:
        status, zombies, report = await asyncio.gather(
            self._fleet.status(), self._fleet.zombies(), self._fleet.report(REPORT_DAYS)
        )
        owners = await self._reader.read(lambda db: db.owners())
        calls = sorted(status.aws_calls.items())
        return render(
            "fleet.html",
            page="fleet",
            status=status,
            zombies=zombies,
            report=report,
            calls=calls,
            owners=owners,
            report_days=int(REPORT_DAYS),
        )


def _web_link(url: str | None) -> str | None:
    """A link only to http(s): a job's `javascript:` URL stays text."""
    if url and url.lower().startswith(("https://", "http://")):
        return url
    return None
