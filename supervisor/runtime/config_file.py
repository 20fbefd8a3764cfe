"""Where the settings come from: the `SUPERVISOR_` prefix, the settings file that both commands
read (`find_config_file`) and the default state directory. Standard library only, so the CLI
can find the daemon without importing pydantic-settings (`supervisor.runtime.settings` holds
the settings themselves)."""

from __future__ import annotations

import os
from pathlib import Path

ENV_PREFIX = "SUPERVISOR_"
DB_FILE = "supervisor.db"
SOCKET_FILE = "supervisord.sock"
PID_FILE = "supervisord.pid"
LOG_FILE = "supervisord.log"
"""The daemon's files in its state directory (Settings and the CLI's DaemonLocation)."""
OTHER_VARIABLES = frozenset(
    {"SUPERVISOR_CONFIG", "SUPERVISOR_RUN_PREFIX", "SUPERVISOR_INSTANCE_PY"}
)
"""`SUPERVISOR_*` variables that are not settings but are read elsewhere: the settings file's
path, the job reporter's run prefix (`supervisor.report`) and deploy/user-data.sh's copy of
the instance program."""


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "supervisor"


CONFIG_ENV = f"{ENV_PREFIX}CONFIG"
"""Names the settings file when `--config` is not given. Not a setting itself."""


def default_config_file() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "supervisor" / "supervisord.toml"


def find_config_file(given: Path | None) -> Path | None:
    """The settings file both commands read, so `supervisorctl` finds the daemon that
    `supervisord` started: `--config`, else `$SUPERVISOR_CONFIG`, else the default file when
    it exists. Absolute, so a detached daemon (cwd `/`) reads the same file."""
    if given is None and os.environ.get(CONFIG_ENV):
        given = Path(os.environ[CONFIG_ENV])
    if given is None:
        default = default_config_file()
        return default.absolute() if default.exists() else None
    return given.absolute()
