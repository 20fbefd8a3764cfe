"""What both commands share: settings loading, error reporting, time formatting."""

from __future__ import annotations

import argparse
import os
import sys
import unicodedata
from datetime import UTC, datetime
from pathlib import Path
from typing import NoReturn

from supervisor.core.errors import InvalidInput
from supervisor.core.values import parse_run_id
from supervisor.runtime.settings import Settings, unknown_variables

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    print(f"{_prog()}: {printable(message)}", file=sys.stderr)
    raise SystemExit(code)


def _prog() -> str:
    return Path(sys.argv[0]).name or "supervisor"


def load_settings(config: Path | None) -> Settings:
    for warning in unknown_variables(os.environ):
        print(f"{_prog()}: {warning}", file=sys.stderr)
    try:
        return Settings.load(config)
    except InvalidInput as exc:
        fail(str(exc))


def run_id_argument(text: str) -> str:
    """An argparse `type` for RUN_ID: checked as attach checks it, so no verb sends an id that
    could name another run or route (`x/../RUN`, `RUN?x=1`)."""
    try:
        return parse_run_id(text)
    except InvalidInput as exc:
        raise argparse.ArgumentTypeError(printable(str(exc))) from None


def printable(text: str) -> str:
    """Text a job or a person controls (a FAILED marker's body, a reason, a name, a tag), safe
    to print: control and format characters (terminal escape sequences, newlines, bidi
    overrides) are escaped as Python writes them (\\x1b, \\n, \\u202e), so nothing the
    text holds can drive the terminal or break a table's line. Every printer of the CLI's
    tables and details passes such text through here."""
    if text.isprintable():
        return text
    return "".join(_escaped(ch) for ch in text)


def _escaped(ch: str) -> str:
    if unicodedata.category(ch) not in ("Cc", "Cf", "Zl", "Zp"):
        return ch  # letters, marks, symbols and spaces of any script are shown as they are
    if ch.isascii():
        return repr(ch)[1:-1]
    return f"\\u{ord(ch):04x}" if ord(ch) <= 0xFFFF else f"\\U{ord(ch):08x}"


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
