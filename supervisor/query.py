"""The run database from Python, read-only: for notebooks and scripts.

    from supervisor.query import open_database
    import pandas as pd

    db = open_database()  # the daemon's own database (SUPERVISOR_STATE_DIR), or give a path
    runs = db.runs("config.gradient_method=mgda", "metrics.val_loss<0.3", since="7d")
    frame = pd.DataFrame(db.records(outcome="completed"))
    table = db.compare("config.gradient_method", "val_loss")
    detail = db.run("deco_hop_bs96_mgda")

It opens the SQLite file read-only, so it works whether supervisord is running or not; with
SUPERVISOR_DATABASE_URL set (replicas on PostgreSQL), the PostgreSQL database instead, in
read-only transactions.

This module sits outside the layers (cli > runtime > adapters > core) as the public entry
point: it re-exports the query adapter and finds the database the way supervisorctl does,
from the daemon's settings.
"""

from __future__ import annotations

from pathlib import Path

from supervisor.adapters.query import (
    AttachmentRow,
    CrashLog,
    DatabaseUnavailable,
    InstanceRow,
    ObjectiveValue,
    ReportProblemRow,
    RunDatabase,
    RunDetailRow,
    RunRow,
    TransitionRow,
)
from supervisor.core.compare import Comparison, Group
from supervisor.core.errors import UnknownRun
from supervisor.core.filters import Filter, parse_filter
from supervisor.runtime.settings import Settings

__all__ = [
    "AttachmentRow",
    "Comparison",
    "CrashLog",
    "DatabaseUnavailable",
    "Filter",
    "Group",
    "InstanceRow",
    "ObjectiveValue",
    "ReportProblemRow",
    "RunDatabase",
    "RunDetailRow",
    "RunRow",
    "TransitionRow",
    "UnknownRun",
    "open_database",
    "parse_filter",
]


def open_database(
    path: Path | str | None = None, *, config: Path | str | None = None
) -> RunDatabase:
    """The run database at `path` (a SQLite file, or a `postgresql://` URL), else the
    daemon's: its SUPERVISOR_DATABASE_URL, else `supervisor.db` in its state directory (from
    the environment or the settings file `config`); opened read-only."""
    if path is None:
        settings = Settings.load(Path(config) if config is not None else None)
        path = settings.database_url or settings.db_path
    return RunDatabase(path)
