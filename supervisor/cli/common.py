"""What both commands share: settings loading, error reporting, time formatting."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import NoReturn

from supervisor.core.errors import InvalidInput
from supervisor.runtime.settings import Settings

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    prog = Path(sys.argv[0]).name or "supervisor"
    print(f"{prog}: {message}", file=sys.stderr)
    raise SystemExit(code)


def load_settings(config: Path | None) -> Settings:
    try:
        return Settings.load(config)
    except InvalidInput as exc:
        fail(str(exc))


def ago(moment: datetime | None, now: datetime | None = None) -> str:
    """'3m12s' style duration from `moment` to now (or until it, for the future)."""
    if moment is None:
        return "-"
    seconds = int(((now or datetime.now(UTC)) - moment).total_seconds())
    return duration(abs(seconds))


def duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{minutes:02d}m"
    return f"{hours // 24}d{hours % 24:02d}h"
