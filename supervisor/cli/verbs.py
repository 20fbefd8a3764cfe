"""supervisorctl's query verbs by name, with their one-line help: what the parser needs of them
when none of them is on the command line, so it does not import the query machinery
(supervisor.cli.queries, the filters, the phases) for `status` or `--help`."""

from __future__ import annotations

QUERY_COMMANDS: dict[str, str] = {
    "runs": "query the run database: runs by config, metrics, tags, phase, outcome",
    "show": "one run from the run database: spec, config, metrics, W&B, crash log",
    "compare": "a metric compared across groups of runs (e.g. by config.gradient_method)",
    "export": "the matching runs as JSON lines or CSV, for other tools",
}
"""runs, show, compare, export: they read the database file, read-only, without the daemon."""
