"""What both commands share: settings loading, error reporting, time formatting."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import unicodedata
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import NoReturn

from pydantic import ValidationError

from supervisor.adapters.control import ControlError, DaemonNotAnswering, DaemonNotRunning
from supervisor.core.errors import InvalidInput
from supervisor.core.spec import describe_validation_error
from supervisor.core.values import parse_run_id
from supervisor.runtime.settings import (
    CONFIG_ENV,
    ENV_PREFIX,
    Settings,
    find_config_file,
    unknown_variables,
)

STATE_DIR_ENV = f"{ENV_PREFIX}STATE_DIR"

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    print(f"{_prog()}: {printable(message)}", file=sys.stderr)
    raise SystemExit(code)


def _prog() -> str:
    return Path(sys.argv[0]).name or "supervisor"


def load_settings(config: Path | None) -> Settings:
    """The settings both commands share (`find_config_file` says which file), with an
    absolute state directory: from `SUPERVISOR_STATE_DIR` relative to the working directory,
    from a config file relative to that file."""
    config_file = find_config_file(config)
    if config is None and config_file is not None and not config_file.is_file():
        if os.environ.get(CONFIG_ENV):
            fail(f"{CONFIG_ENV} names {config_file}, which is not a file: fix or unset it")
        fail(f"the default settings file {config_file} is not a file: make it one or remove it")
    for warning in unknown_variables(os.environ):
        print(f"{_prog()}: {warning}", file=sys.stderr)
    try:
        settings = Settings.load(config_file)
    except InvalidInput as exc:
        fail(str(exc))
    state_dir = settings.state_dir.expanduser()
    if not state_dir.is_absolute():
        from_env = any(name.upper() == STATE_DIR_ENV for name in os.environ)
        base = config_file.parent if config_file is not None and not from_env else Path.cwd()
        state_dir = base / state_dir
    settings = settings.model_copy(update={"state_dir": state_dir.absolute()})
    if settings.state_dir.exists() and not settings.state_dir.is_dir():
        fail(
            f"state directory {settings.state_dir} is not a directory: set "
            f"{STATE_DIR_ENV} (or state_dir in the config file) to a directory"
        )
    return settings


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn what a user can cause outside the argument checks into one line and an exit
    status, never a traceback: a daemon that is down or does not answer, a file that cannot
    be read, values a model refused, a reader that closed our output early."""
    try:
        yield
    except (DaemonNotRunning, DaemonNotAnswering, ControlError, InvalidInput) as exc:
        fail(str(exc))
    except ValidationError as exc:
        fail(describe_validation_error(exc), EXIT_USAGE)
    except BrokenPipeError:
        # The reader (`| head -1`) is gone: point stdout at /dev/null so the interpreter's
        # final flush does not fail again, and say why the output stopped.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        fail("output closed early (broken pipe): the rest was not written")
    except OSError as exc:
        name = f" {exc.filename}" if exc.filename else ""
        fail(f"cannot use{name}: {exc.strerror or exc}")


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
