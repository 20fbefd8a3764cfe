"""`supervisorctl runs`, `show`, `compare` and `export`: queries over the run database.

They read the run database directly and read-only (supervisor.adapters.query): the daemon's
SQLite file, or with SUPERVISOR_DATABASE_URL the PostgreSQL database its replicas share. So
they work whether supervisord is running or not, and never change anything.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import sys
import textwrap
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from supervisor.cli.common import EXIT_OK, fail, printable, run_id_argument
from supervisor.cli.verbs import QUERY_COMMANDS as QUERY_COMMANDS
from supervisor.core.defaults import CRASH_LOG_LINES
from supervisor.core.errors import InvalidInput, UnknownRun
from supervisor.core.filters import (
    COLUMNS,
    NO_OUTCOME,
    FieldPath,
    Filter,
    Source,
    parse_field,
    parse_filter,
    parse_since,
)
from supervisor.core.run import Outcome, Phase

if TYPE_CHECKING:  # imported when a query runs: the parser does not need them
    from supervisor.adapters.query import RunDatabase, RunDetailRow, RunRow
    from supervisor.core.compare import Comparison, GroupValue


_COLUMN_LIST = textwrap.fill(
    ", ".join(COLUMNS), width=92, initial_indent=" " * 26, subsequent_indent=" " * 26
)

FILTERS_HELP = f"""\
how filters work (all given must hold):
  --where PATH OP VALUE   PATH is config.KEY (dotted into nested keys, config.optimizer.lr),
                          metrics.NAME (a final metric), tag.KEY, or a column:
{_COLUMN_LIST}
                          OP is one of = != < <= > >=. A value that reads as a number
                          compares as a number (metrics.val_loss<0.3); quote it to compare
                          text ('tag.seed="7"'). A run without the field never matches.
  --phase, --outcome      repeat for any of several; --outcome none: not ended yet
  --since 7d              attached within the last 7 days (units s, m, h, d, w; none: days)

Quote filters with < or > in the shell: --where 'metrics.val_loss<0.3'.
These commands read the database file read-only (with SUPERVISOR_DATABASE_URL set, the
PostgreSQL database the replicas share): they work while supervisord is down.
"""

RUNS_EPILOG = (
    FILTERS_HELP
    + """
examples:
  supervisorctl runs --where config.gradient_method=mgda --outcome completed
  supervisorctl runs --where 'metrics.val_loss<0.3' --since 7d --json
  supervisorctl runs --phase crashed --where 'step<100'      crashed during warm-up
"""
)

COMPARE_DESCRIPTION = """\
Group runs by the value of one field and summarise one final metric per group: runs,
completed, crashed, how many reported the metric, its mean, min and max over those, and the
best run. Better means lower or higher as the runs' objective for the metric says
(--objective val_loss:min at attach); without one (or when runs disagree) lower is assumed and
the output says so. Groups are listed best mean first.
"""

COMPARE_EPILOG = (
    FILTERS_HELP
    + """
example:
  supervisorctl compare --by config.gradient_method --metric val_loss --since 30d
"""
)

EXPORT_DESCRIPTION = """\
Write the matching runs to stdout: jsonl gives one JSON object per run (as `runs --json`,
with config, tags, objectives and final metrics nested); csv gives one row per run with the
columns, then config.KEY (nested keys dotted), tag.KEY and metrics.NAME columns.
"""

_T = TypeVar("_T")


def add_query_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The query subcommands, added to supervisorctl's parser."""
    filters = argparse.ArgumentParser(add_help=False)
    group = filters.add_argument_group("filters")
    group.add_argument(
        "--where",
        action="append",
        default=[],
        type=_argument(parse_filter),
        metavar="PATH=VALUE",
        help="PATH OP VALUE, e.g. config.gradient_method=mgda or 'metrics.val_loss<0.3' "
        "(repeat: all must hold)",
    )
    group.add_argument(
        "--phase",
        action="append",
        default=[],
        choices=[phase.value for phase in Phase],  # plain values in argparse's refusal
        metavar="PHASE",
        help=f"one of {', '.join(Phase)} (repeat for any of several)",
    )
    group.add_argument(
        "--outcome",
        action="append",
        default=[],
        choices=[*(outcome.value for outcome in Outcome), NO_OUTCOME],
        metavar="OUTCOME",
        help=f"one of {', '.join(Outcome)}, or {NO_OUTCOME} (not ended yet)",
    )
    group.add_argument(
        "--since",
        type=_argument(parse_since),
        metavar="AGE",
        help="attached within this long, e.g. 7d, 12h or 30m (a bare number: days)",
    )

    runs = commands.add_parser(
        "runs",
        parents=[filters],
        help=QUERY_COMMANDS["runs"],
        description="List the runs in the run database that match the filters, oldest first: "
        "phase, outcome, step, the fields you filtered on, and the objectives' final values.",
        epilog=RUNS_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    shape = runs.add_mutually_exclusive_group()
    shape.add_argument("--json", action="store_true", help="a JSON list of runs, all fields")
    shape.add_argument(
        "--csv", action="store_true", help="CSV, one row per run (as `export --format csv`)"
    )

    show = commands.add_parser(
        "show",
        help=QUERY_COMMANDS["show"],
        description="Everything recorded about one run: its spec, config, objectives with "
        "their final values, final metrics, the W&B link, attachments, instance history, "
        f"transitions, and the last {CRASH_LOG_LINES} lines of its crash log when it has one. "
        "Reads the database itself (the file, or SUPERVISOR_DATABASE_URL's): works while "
        "supervisord is down.",
    )
    show.add_argument("run_id", type=run_id_argument, metavar="RUN_ID")
    show.add_argument(
        "--json", action="store_true", help="all of it as JSON, with the heartbeat and history"
    )

    compare = commands.add_parser(
        "compare",
        parents=[filters],
        help=QUERY_COMMANDS["compare"],
        description=COMPARE_DESCRIPTION,
        epilog=COMPARE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    compare.add_argument(
        "--by",
        required=True,
        type=_argument(parse_field),
        metavar="PATH",
        help="the field whose values make the groups, e.g. config.gradient_method or tag.method",
    )
    compare.add_argument(
        "--metric",
        required=True,
        metavar="NAME",
        help="the final metric to compare, e.g. val_loss",
    )
    compare.add_argument(
        "--direction",
        choices=("min", "max"),
        help="which way is better, overriding the runs' objectives (min: lower is better)",
    )
    compare.add_argument("--json", action="store_true", help="machine-readable output")

    export = commands.add_parser(
        "export",
        parents=[filters],
        help=QUERY_COMMANDS["export"],
        description=EXPORT_DESCRIPTION,
        epilog=FILTERS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    export.add_argument(
        "--format",
        choices=("jsonl", "csv"),
        default="jsonl",
        help="jsonl (one JSON object per run; the default) or csv (one flat row per run)",
    )


def _argument(parse: Callable[[str], _T]) -> Callable[[str], _T]:
    """An argparse `type` from one of the core's parsers: its message becomes the usage error."""

    def convert(text: str) -> _T:
        try:
            return parse(text)
        except InvalidInput as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


def run_query(args: argparse.Namespace, database: Path | str) -> int:
    """Carry out a query subcommand against the run database: a SQLite file's path, or a
    PostgreSQL URL."""
    from supervisor.adapters.query import DatabaseUnavailable, RunDatabase

    try:
        with RunDatabase(database) as db:
            _dispatch(db, args)
        sys.stdout.flush()
    except (DatabaseUnavailable, InvalidInput, UnknownRun) as exc:
        fail(str(exc))
    except BrokenPipeError:
        # `supervisorctl export | head`: the reader left; that is not an error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return EXIT_OK


def _dispatch(db: RunDatabase, args: argparse.Namespace) -> None:
    _QUERIES[args.command](db, args)


def _filters(args: argparse.Namespace) -> dict[str, Any]:
    return {"phase": args.phase, "outcome": args.outcome, "since": args.since}


def _runs(db: RunDatabase, args: argparse.Namespace) -> None:
    filters = _filters(args)
    runs = db.runs(*args.where, **filters)
    if args.csv:
        _write_csv([run.record() for run in runs])
    elif args.json:
        print(json.dumps([r.json() for r in runs], indent=2))
    else:
        _print_runs(runs, args.where, filtered=bool(args.where or any(filters.values())))


def _show(db: RunDatabase, args: argparse.Namespace) -> None:
    _print_show(db.run(args.run_id), as_json=args.json)


def _compare(db: RunDatabase, args: argparse.Namespace) -> None:
    found = db.compare(
        args.by, args.metric, *args.where, direction=args.direction, **_filters(args)
    )
    _print_comparison(found, as_json=args.json)


def _export(db: RunDatabase, args: argparse.Namespace) -> None:
    runs = db.runs(*args.where, **_filters(args))
    if args.format == "jsonl":
        for run in runs:
            print(json.dumps(run.json(), ensure_ascii=False, separators=(",", ":")))
    else:
        _write_csv([run.record() for run in runs])


_QUERIES: dict[str, Callable[[RunDatabase, argparse.Namespace], None]] = {
    "runs": _runs,
    "show": _show,
    "compare": _compare,
    "export": _export,
}
"""The query verbs (the keys of `QUERY_COMMANDS`): each carries out one against the database."""


# -- runs ---------------------------------------------------------------------------------


_FIXED_COLUMNS = ("run_id", "name", "phase", "outcome", "created_at", "step", "total_steps")


def _print_runs(runs: list[RunRow], where: list[Filter], *, filtered: bool) -> None:
    if not runs:
        print("no runs match" if filtered else "no runs in the run database yet")
        return
    shown: list[FieldPath] = []
    for f in where:  # show the values filtered on, beside the usual columns
        if f.field not in shown and str(f.field) not in _FIXED_COLUMNS:
            shown.append(f.field)
    named = any(r.name for r in runs)
    header = ["RUN ID", *(["NAME"] if named else []), "PHASE", "OUTCOME", "CREATED (UTC)", "STEP"]
    header += [str(field) for field in shown] + ["OBJECTIVES"]
    rows = [header]
    for r in runs:
        step = "-" if r.step is None else str(r.step)
        if r.total_steps is not None:
            step = f"{r.step if r.step is not None else '-'}/{r.total_steps}"
        objectives = " ".join(f"{o.name}={_cell(o.final)}" for o in r.objectives)
        rows.append(
            [
                r.run_id,
                *([r.name or "-"] if named else []),
                r.phase,
                r.outcome or "-",
                f"{r.created_at.astimezone(UTC):%Y-%m-%d %H:%M}",
                step,
                *(_cell(r.get(field)) for field in shown),
                objectives or "-",
            ]
        )
    _print_table(rows)
    print(f"{len(runs)} run(s)")


def _print_table(rows: list[list[str]]) -> None:
    """Cells escaped (`printable`: a name or tag cannot break a line), then padded."""
    rows = [[printable(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def _cell(value: Any) -> str:
    """A value for a table cell: numbers short, JSON for containers, - for nothing."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, dict | list):
        return json.dumps(value)
    if isinstance(value, datetime):
        return f"{value.astimezone(UTC):%Y-%m-%d %H:%M:%S}"
    return str(value)


# -- export -------------------------------------------------------------------------------


def _write_csv(records: list[dict[str, Any]]) -> None:
    """One row per record; the columns first, then every config, tag and metric column any
    record has, each group sorted."""
    extra = sorted({key for record in records for key in record} - set(COLUMNS))
    order = {f"{Source.CONFIG}.": 0, f"{Source.TAG}.": 1, f"{Source.METRICS}.": 2}
    extra.sort(key=lambda key: order.get(key.partition(".")[0] + ".", 3))
    writer = csv.DictWriter(sys.stdout, fieldnames=[*COLUMNS, *extra], restval="")
    writer.writeheader()
    for record in records:
        writer.writerow({key: _csv_value(value) for key, value in record.items()})


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict | list):
        return json.dumps(value)
    return value


# -- show ---------------------------------------------------------------------------------


def _print_show(run: RunDetailRow, *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(run.json(), indent=2))
        return
    title = f"run {run.run_id}" + (f" ({printable(run.name)})" if run.name else "")
    ended = f", {run.outcome}" if run.outcome and run.outcome != run.phase else ""
    print(f"{title}: {run.phase}{ended}")
    print(f"  reason      {printable(run.reason)}")

    print("spec")
    facts = [
        ("project", run.project),
        ("instance", f"{run.instance_id} ({run.region})"),
        (
            "type",
            ", ".join(t for t in (run.instance_type, "spot" if run.spot else "") if t) or None,
        ),
        ("prefix", run.s3_prefix),
        ("on complete", run.on_complete),
        ("attempt", str(run.attempt) if run.attempt > 1 else None),
        ("checkpoint", run.checkpoint),
        ("error", run.error_code),
        ("tags", ", ".join(f"{k}={v}" for k, v in sorted(run.tags.items())) or None),
        ("created", _cell(run.created_at)),
        ("updated", _cell(run.updated_at)),
        ("step", _steps(run)),
        ("runtime", None if run.runtime_s is None else f"{run.runtime_s:.0f}s"),
        ("job ended", _cell(run.job_ended_at) if run.job_ended_at else None),
        (
            "idle after end",
            None if run.idle_after_end_s is None else f"{run.idle_after_end_s:.0f}s",
        ),
    ]
    for label, value in facts:
        if value is not None:
            print(f"  {label:<11} {printable(value)}")

    print("config")
    if run.config:
        _print_pairs(_flat(run.config))
    else:
        print("  (none: attach with --config-file to record it)")

    print("objectives")
    if run.objectives:
        width = max(len(o.name) for o in run.objectives)
        for o in run.objectives:
            final = "not reported yet" if o.final is None else f"final {o.final:.6g}"
            name = printable(o.name)
            print(f"  {name:<{width}}  {o.direction}  weight {o.weight:<4g} {final}")
    else:
        print("  (none: attach with --objective NAME:min|max to declare them)")

    if run.report_problems:
        print("report files not read")
        for problem in run.report_problems:
            print(f"  {_cell(problem.noted_at)}  {printable(problem.note)}")

    print(f"final metrics ({len(run.metrics)})" if run.metrics else "final metrics")
    if run.metrics:
        _print_pairs({k: _cell(v) for k, v in sorted(run.metrics.items())})
    else:
        print("  (none reported yet)")

    print("W&B")
    if run.wandb_url or run.wandb_run_id:
        print(f"  {printable(run.wandb_url or '-')}")
        ids = [f"run {run.wandb_run_id}" if run.wandb_run_id else None]
        ids.append(f"project {run.wandb_project}" if run.wandb_project else None)
        if any(ids):
            print(f"  ({printable(', '.join(i for i in ids if i))})")
    else:
        print("  (no W&B run reported)")

    print("attachments")
    for a in run.attachments:
        size = f", {a.size} bytes" if a.size is not None else ""
        print(f"  {a.kind}: {printable(a.uri)}{size} ({_cell(a.added_at)})")
    if not run.attachments:
        print("  (none)")

    print("instances")
    for i in run.instances:
        print(f"  {i.instance_id} ({i.region}), {i.source} {_cell(i.attached_at)}")

    print("transitions")
    for t in run.transitions:
        print(f"  {_cell(t.at)}  {t.from_ or '-':>13} -> {t.to:<13} {printable(t.reason)}")

    if run.crash_log is not None:
        uri, count = printable(run.crash_log.uri), len(run.crash_log.lines)
        print(f"crash log ({uri}, last {count} lines)")
        for line in run.crash_log.lines:
            print(f"  | {printable(line)}")


def _steps(run: RunDetailRow) -> str | None:
    parts = []
    if run.step is not None:
        beat = f" ({_cell(run.status_at)})" if run.status_at is not None else ""
        parts.append(f"{run.step} at the last heartbeat{beat}")
    if run.total_steps is not None:
        parts.append(f"{run.total_steps} in all at completion")
    return "; ".join(parts) or None


def _flat(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = _cell(value)
    return flat


def _print_pairs(pairs: dict[str, str]) -> None:
    shown = {printable(key): printable(value) for key, value in pairs.items()}
    width = min(max(len(k) for k in shown), 40)
    for key, value in shown.items():
        print(f"  {key:<{width}}  {value}")


# -- compare ------------------------------------------------------------------------------


def _print_comparison(found: Comparison, *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(dataclasses.asdict(found), indent=2))
        return
    print(printable(f"{found.metric} by {found.by}: {found.direction_note}"))
    if not found.groups:
        print("no runs match: nothing to compare")
        return
    header = ["RUNS", "COMPLETED", "CRASHED", f"WITH {found.metric}", "MEAN", "MIN", "MAX"]
    rows = [[found.by, *header, "BEST RUN"]]
    for g in found.groups:
        best = "-" if g.best_run is None else f"{g.best_run} ({_cell(g.best_value)})"
        rows.append(
            [
                _group_label(g.value),
                str(g.runs),
                str(g.completed),
                str(g.crashed),
                str(g.measured),
                _cell(g.mean),
                _cell(g.min),
                _cell(g.max),
                best,
            ]
        )
    _print_table(rows)


def _group_label(value: GroupValue) -> str:
    return "(none)" if value is None else _cell(value)
