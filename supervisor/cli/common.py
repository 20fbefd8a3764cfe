"""What both commands share: settings loading, error reporting, time formatting.

Imported by every verb, so it imports nothing heavy at module level: pydantic and the settings
model only when a verb needs them (see `locate_daemon`)."""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import sys
import unicodedata
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from supervisor.adapters.control_client import ControlError, DaemonNotAnswering, DaemonNotRunning
from supervisor.adapters.database_url import is_postgresql
from supervisor.core.errors import InvalidInput
from supervisor.core.values import parse_run_id
from supervisor.runtime.config_file import (
    CONFIG_ENV,
    DB_FILE,
    ENV_PREFIX,
    OTHER_VARIABLES,
    PID_FILE,
    SOCKET_FILE,
    default_state_dir,
    find_config_file,
)

if TYPE_CHECKING:
    from supervisor.runtime.settings import Settings

STATE_DIR_ENV = f"{ENV_PREFIX}STATE_DIR"
CLIENT_TIMEOUT_ENV = f"{ENV_PREFIX}CLIENT_TIMEOUT_S"
DATABASE_URL_ENV = f"{ENV_PREFIX}DATABASE_URL"

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
    from supervisor.runtime.settings import Settings, unknown_variables

    for warning in unknown_variables(os.environ):
        print(f"{_prog()}: {warning}", file=sys.stderr)
    try:
        settings = Settings.load(config_file)
    except InvalidInput as exc:
        fail(str(exc))
    state_dir = _absolute_state_dir(settings.state_dir, config_file)
    return settings.model_copy(update={"state_dir": state_dir})


def _absolute_state_dir(state_dir: Path, config_file: Path | None) -> Path:
    """`SUPERVISOR_STATE_DIR` relative to the working directory, `state_dir` of a config file
    relative to that file; refused when it names something that is not a directory."""
    state_dir = state_dir.expanduser()
    if not state_dir.is_absolute():
        from_env = any(name.upper() == STATE_DIR_ENV for name in os.environ)
        base = config_file.parent if config_file is not None and not from_env else Path.cwd()
        state_dir = base / state_dir
    state_dir = state_dir.absolute()
    if state_dir.exists() and not state_dir.is_dir():
        fail(
            f"state directory {state_dir} is not a directory: set "
            f"{STATE_DIR_ENV} (or state_dir in the config file) to a directory"
        )
    return state_dir


@dataclass(frozen=True, slots=True)
class DaemonLocation:
    """What a client of the daemon needs of the settings: where it is, how long to wait."""

    state_dir: Path
    client_timeout_s: float
    database_url: str | None = field(default=None, repr=False)
    """SUPERVISOR_DATABASE_URL: the run database on PostgreSQL (the query verbs read it
    there); None: the SQLite file in the state directory. Holds the password: show it only
    through `supervisor.adapters.database_url.redact`."""

    @property
    def run_database(self) -> Path | str:
        """What the query verbs read: the PostgreSQL URL, else the SQLite file."""
        return self.database_url if self.database_url is not None else self.db_path

    @property
    def socket_path(self) -> Path:
        return self.state_dir / SOCKET_FILE

    @property
    def pid_path(self) -> Path:
        return self.state_dir / PID_FILE

    @property
    def db_path(self) -> Path:
        return self.state_dir / DB_FILE


def locate_daemon(config: Path | None) -> DaemonLocation:
    """`load_settings` for a verb that only talks to the daemon or reads its database.

    Loading the settings model costs pydantic-settings (a third of a second), so when the
    environment and the settings file hold nothing but the state directory and the client
    timeout, each plainly valid, those two are read here; anything else (another setting, an
    unknown variable, a value that might be refused, an unreadable file) goes through
    `load_settings`, so every message, warning and refusal stays the settings model's own."""
    config_file = find_config_file(config)
    plain = _plain_location(config_file, os.environ)
    if plain is None:
        settings = load_settings(config)
        return DaemonLocation(settings.state_dir, settings.client_timeout_s, settings.database_url)
    state_dir, timeout_s, database_url = plain
    return DaemonLocation(_absolute_state_dir(state_dir, config_file), timeout_s, database_url)


_PLAIN_VARIABLES = (
    frozenset({STATE_DIR_ENV, CLIENT_TIMEOUT_ENV, DATABASE_URL_ENV}) | OTHER_VARIABLES
)
_PLAIN_SECONDS = re.compile(r"[0-9]{1,4}(\.[0-9]{1,6})?")


def _plain_location(
    config_file: Path | None, environ: Mapping[str, str]
) -> tuple[Path, float, str | None] | None:
    """(state_dir, client_timeout_s, database_url) when the settings model would certainly
    accept them and have nothing else to check or warn about; else None."""
    if any(
        name.upper().startswith(ENV_PREFIX) and name not in _PLAIN_VARIABLES for name in environ
    ):
        return None
    keys: dict[str, Any] = {}
    if config_file is not None:
        import tomllib

        try:
            keys = tomllib.loads(config_file.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, OSError, UnicodeDecodeError):
            return None
        if not set(keys) <= {"state_dir", "client_timeout_s", "database_url"}:
            return None
    state_dir = environ.get(STATE_DIR_ENV, keys.get("state_dir"))
    if state_dir is not None and not (isinstance(state_dir, str) and _plain_path(state_dir)):
        return None
    timeout: Any = environ.get(CLIENT_TIMEOUT_ENV, keys.get("client_timeout_s", 60.0))
    if isinstance(timeout, str):
        timeout = float(timeout) if _PLAIN_SECONDS.fullmatch(timeout) else None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        return None
    if not (math.isfinite(timeout) and 0 < timeout <= 3600):
        return None
    database_url: Any = environ.get(DATABASE_URL_ENV, keys.get("database_url"))
    if database_url is not None and not (
        isinstance(database_url, str)
        and database_url == database_url.strip()
        and is_postgresql(database_url)
    ):
        return None  # empty, or not a URL: the settings model says what it makes of it
    state = Path(state_dir) if state_dir is not None else default_state_dir()
    return state, float(timeout), database_url


def _plain_path(text: str) -> bool:
    return bool(text) and text.isprintable()


def _validation_errors() -> tuple[type[Exception], ...]:
    """pydantic's ValidationError once a verb has imported pydantic (none can be raised
    before), so that this module need not import it."""
    pydantic = sys.modules.get("pydantic")
    return (pydantic.ValidationError,) if pydantic is not None else ()


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn what a user can cause outside the argument checks into one line and an exit
    status, never a traceback: a daemon that is down or does not answer, a file that cannot
    be read, values a model refused, a reader that closed our output early."""
    try:
        yield
    except (DaemonNotRunning, DaemonNotAnswering, ControlError, InvalidInput) as exc:
        fail(str(exc))
    except _validation_errors() as exc:
        from supervisor.core.spec import describe_validation_error

        fail(describe_validation_error(exc), EXIT_USAGE)  # type: ignore[arg-type]
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
