"""Daemon settings (pydantic-settings): `SUPERVISOR_*` environment variables over a TOML file
(`--config`, else `$SUPERVISOR_CONFIG`, else the default file: `find_config_file`), over
defaults. AWS credentials, region and endpoint are not here: they come from the standard AWS
chain."""

from __future__ import annotations

import difflib
import ipaddress
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Self

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from supervisor.adapters.database_url import is_postgresql, redact
from supervisor.core.backoff import BackoffPolicy
from supervisor.core.errors import InvalidInput
from supervisor.core.eta import POLL_MAX_WITHOUT_ETA_S
from supervisor.core.outbox import (
    DEFAULT_NOTIFY_ON_TEXT,
    NotifyEvent,
    parse_notify_on,
    split_urls,
)
from supervisor.core.spec import MAX_GRACE_S, GraceSeconds
from supervisor.core.zombies import ZombiePolicy
from supervisor.runtime.config_file import CONFIG_ENV as CONFIG_ENV
from supervisor.runtime.config_file import (
    DB_FILE,
    LOG_FILE,
    OTHER_VARIABLES,
    PID_FILE,
    SOCKET_FILE,
)
from supervisor.runtime.config_file import ENV_PREFIX as ENV_PREFIX
from supervisor.runtime.config_file import default_state_dir as default_state_dir
from supervisor.runtime.config_file import find_config_file as find_config_file

_SECRET_HINTS = ("secret", "token", "password", "key", "database_url", "notify_urls")


Seconds = Annotated[float, Field(ge=0, le=MAX_GRACE_S, allow_inf_nan=False)]
"""A duration setting: finite, and at most a week, so no interval overflows a date."""
PositiveSeconds = Annotated[float, Field(gt=0, le=MAX_GRACE_S, allow_inf_nan=False)]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", frozen=True, allow_inf_nan=False
    )

    state_dir: Path = Field(default_factory=default_state_dir)
    poll_initial_s: PositiveSeconds = 30.0
    poll_max_s: PositiveSeconds = 300.0
    grace_s: GraceSeconds = 300.0
    """The default of a run's `grace_s`: within the run field's own bounds (one declaration)."""
    reconcile_interval_s: PositiveSeconds = 60.0
    retry_base_s: Seconds = 2.0
    shutdown_timeout_s: Seconds = 10.0
    log_level: str = Field("info", pattern=r"^(?i)(debug|info|warning|error)$")
    events_queue_url: str | None = None
    """SQS queue with EventBridge EC2 events and S3 notifications (deploy/cloudformation.yaml).
    Without it the supervisor polls and sweeps only."""
    poll_max_with_events_s: PositiveSeconds = 1800.0
    """With `events_queue_url` set, the completion check backs off to this instead of
    `poll_max_s`: S3 notifications bring completion in seconds, and the listing is only the
    safety net for a lost notification. Set it to `poll_max_s` if the queue gets no S3
    notifications (EC2 events only)."""
    events_wait_s: int = Field(20, ge=1, le=20)
    """SQS long-poll wait of the events consumer (AWS allows 1 to 20 s)."""
    spot_margin_s: float = Field(15.0, ge=0, le=110)
    """Safety margin taken off a spot warning's two minutes for the checkpoint deadline."""
    auto_terminate: bool = False
    """Terminate zombie instances (stop them under the checkpoint invariant); off: list only."""
    zombie_wait_s: Seconds = 300.0
    """From marking a zombie to the first attempt to terminate it."""
    termination_cooldown_s: Seconds = 300.0
    """The least time between two attempts on the same zombie."""
    zombie_interval_s: PositiveSeconds = 60.0
    """How often the zombie sweep looks for zombies (its first sweep one interval after start)."""
    training_log_poll_s: PositiveSeconds = 2.0
    """How often `tail --training -f` reads the training log again (one ranged GET each)."""
    metrics_addr: str | None = None
    """HOST:PORT (or :PORT, or PORT: host 127.0.0.1) for Prometheus `/metrics` over TCP;
    port 0 takes a free one. Unset: `/metrics` is on the control socket only."""
    client_timeout_s: float = Field(60.0, gt=0, le=3600, allow_inf_nan=False)
    """How long `supervisorctl` and `supervisord status` wait for the daemon's answer before
    saying it does not answer (a followed `tail -f` waits as long as it takes)."""
    idle_interval_s: PositiveSeconds = 300.0
    """How often the idle sweep reads CloudWatch utilisation for runs with idle detection
    (one GetMetricData per 500 instances): CPUUtilization comes every 5 minutes anyway."""
    faults: str = ""
    """Testing only: a fault plan for AWS calls (see supervisor.adapters.faults)."""
    # -- issue 13: the checks of a run without an estimated end --------------------------------
    poll_max_without_eta_s: PositiveSeconds = POLL_MAX_WITHOUT_ETA_S
    """Without an events queue, the cap of the check interval of a run with no estimated end
    (its heartbeat reports no progress with `total_steps`): such a job may end, or crash, at
    any moment, and half this interval is how long that goes unseen at the median. Taken
    within `poll_initial_s` and `poll_max_s` (a slower schedule set with those two stays as it
    is); with an events queue, `poll_max_with_events_s` applies to every run."""
    # Issue 14: replicas.
    replica_id: str | None = Field(None, min_length=1, max_length=200, pattern=r"^[\w.:@-]+$")
    """This daemon's name among replicas on one database; unset: `<hostname>-<pid>`."""
    lease_ttl_s: float = Field(30.0, ge=1, le=3600, allow_inf_nan=False)
    """How long a replica's lease on a run lasts without renewal; renewed every third of it.
    A dead replica's runs are claimed by the others within about 4/3 of it."""

    # -- issue 14: the database -------------------------------------------------------------
    database_url: str | None = Field(None, repr=False)
    """A libpq URL (`postgresql://USER@HOST:PORT/DB`) selecting PostgreSQL for the run
    database; its password from the URL, PGPASSWORD or ~/.pgpass (libpq reads them). Unset:
    the SQLite file in the state directory. Shown only through `database_shown`."""

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        if not is_postgresql(value):
            raise PydanticCustomError(
                "database_url",
                "expected a PostgreSQL URL, postgresql://USER@HOST:PORT/DB (got {shown})",
                {"shown": redact(value.strip())},
            )
        return value.strip()

    @property
    def database_shown(self) -> str:
        """Where the run database is, fit to show: the URL with its password redacted, or
        the SQLite file's path."""
        return redact(self.database_url) if self.database_url else str(self.db_path)

    # -- replicas: the run inbox (issue 14) --
    inbox_poll_s: PositiveSeconds = 2.0
    """How often a replica looks for requests about its runs (and for the answers to its own)
    when no notice wakes it: PostgreSQL's LISTEN/NOTIFY wakes it at once, SQLite polls."""
    command_timeout_s: PositiveSeconds = 30.0
    """How long a stop, terminate, resume or detach of a run another replica owns waits for
    that replica's answer before giving up (the request is then withdrawn)."""

    # -- issue 15: notifications ---------------------------------------------------------------
    notify_urls: str = Field("", repr=False)
    """Apprise URLs to notify (slack://, msteams://, pagerduty://, json://...), separated by
    spaces or commas. Unset: no notifications. They hold secrets: never logged or shown
    whole (`supervisord status` shows each redacted)."""
    notify_on: str = DEFAULT_NOTIFY_ON_TEXT
    """The events that notify, comma-separated: any of crashed, stalled, failed, timed_out,
    interrupted, checkpoint_unverified, zombie, completed, stopped, terminated, resumed."""
    public_url: str | None = None
    """The dashboard's address as its readers reach it (e.g. https://runs.example.com): each
    message then links to its run's page (PUBLIC_URL/runs/RUN_ID)."""
    notify_retries: int = Field(3, ge=0, le=20)
    """Retries of a failed send (after the first try), waiting notify_retry_base_s, then
    twice that...; then that URL is recorded as failed for the message."""
    notify_retry_base_s: Seconds = 2.0
    notify_timeout_s: PositiveSeconds = 10.0
    """How long one send may take before it counts as failed."""
    notify_poll_s: PositiveSeconds = 2.0
    """How often the sender looks for notifications to send."""

    @field_validator("notify_on")
    @classmethod
    def _notify_on(cls, value: str) -> str:
        try:
            parse_notify_on(value)
        except InvalidInput as exc:
            raise PydanticCustomError("notify_on", str(exc)) from None
        return value

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        if not value.strip().startswith(("http://", "https://")):
            raise PydanticCustomError(
                "public_url", "expected the dashboard's http:// or https:// address"
            )
        return value.strip().rstrip("/")

    @property
    def notify_events(self) -> frozenset[NotifyEvent]:
        """The events that notify; none without a URL to notify."""
        return parse_notify_on(self.notify_on) if self.notify_url_list else frozenset()

    @property
    def notify_url_list(self) -> tuple[str, ...]:
        return split_urls(self.notify_urls)

    # -- issue 15: the HTTP listener (dashboard, JSON API, /metrics) -------------------------
    http_addr: str | None = None
    """HOST:PORT (or :PORT, or PORT: host 127.0.0.1) of the dashboard, its read-only JSON API
    (`/api/v1/`) and `/metrics`; port 0 takes a free one (`supervisord status` shows it).
    Beyond loopback it needs `http_token`. Unset: no dashboard."""
    http_token: str | None = Field(None, repr=False, min_length=16)
    """A shared secret (16 characters or more) the HTTP listener requires: as a bearer token,
    or typed once into its login form (a session cookie). Required when `http_addr` is beyond
    loopback; never logged or shown."""

    @field_validator("http_addr")
    @classmethod
    def _http_addr(cls, value: str | None) -> str | None:
        if value is not None and value.strip():
            parse_metrics_addr(value)
            return value.strip()
        return None

    @property
    def http_address(self) -> tuple[str, int] | None:
        """(host, port) of the HTTP listener, or None without one."""
        return parse_metrics_addr(self.http_addr) if self.http_addr else None

    def check_http(self) -> None:
        """Raise `InvalidInput` (one line) when the HTTP listener would be open beyond
        loopback without `SUPERVISOR_HTTP_TOKEN`."""
        address = self.http_address
        if address is None or self.http_token or is_loopback(address[0]):
            return
        raise InvalidInput(
            f"SUPERVISOR_HTTP_ADDR={self.http_addr} listens beyond this machine: set "
            "SUPERVISOR_HTTP_TOKEN to a long random secret (the dashboard then asks for it), "
            "or bind 127.0.0.1"
        )

    @field_validator("metrics_addr")
    @classmethod
    def _metrics_addr(cls, value: str | None) -> str | None:
        if value is not None and value.strip():
            parse_metrics_addr(value)
            return value.strip()
        return None

    @model_validator(mode="after")
    def _poll_order(self) -> Self:
        caps = (
            ("poll_max_s", "poll_max_with_events_s") if self.events_queue_url else ("poll_max_s",)
        )
        for name in caps:
            if getattr(self, name) < self.poll_initial_s:
                raise ValueError(
                    f"{name} ({getattr(self, name)}) must be at least poll_initial_s "
                    f"({self.poll_initial_s})"
                )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))

    @classmethod
    def load(cls, config_file: Path | None = None, **overrides: Any) -> Settings:
        """Read settings, or raise `InvalidInput` naming each bad setting (never its value
        when the name suggests a secret)."""
        settings_cls: type[Settings] = cls
        if config_file is not None:
            if not config_file.is_file():
                raise InvalidInput(f"config file {config_file} does not exist")
            try:
                tomllib.loads(config_file.read_text(encoding="utf-8"))
            except (tomllib.TOMLDecodeError, OSError, UnicodeDecodeError) as exc:
                raise InvalidInput(f"config file {config_file} is not valid TOML: {exc}") from None

            class _FromFile(cls):  # type: ignore[valid-type,misc]
                model_config = SettingsConfigDict(toml_file=config_file)

            settings_cls = _FromFile
        try:
            return settings_cls(**overrides)
        except ValidationError as exc:
            raise InvalidInput(_describe(exc, config_file)) from None

    @property
    def db_path(self) -> Path:
        return self.state_dir / DB_FILE

    @property
    def socket_path(self) -> Path:
        return self.state_dir / SOCKET_FILE

    @property
    def pid_path(self) -> Path:
        return self.state_dir / PID_FILE

    @property
    def log_path(self) -> Path:
        return self.state_dir / LOG_FILE

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        """(host, port) of the metrics listener, or None without one."""
        return parse_metrics_addr(self.metrics_addr) if self.metrics_addr else None

    @property
    def poll_policy(self) -> BackoffPolicy:
        """The completion check's backoff: up to `poll_max_s`, or with an events queue (S3
        notifications are the fast path) up to `poll_max_with_events_s`."""
        longest = self.poll_max_with_events_s if self.events_queue_url else self.poll_max_s
        return BackoffPolicy(initial_s=self.poll_initial_s, max_s=longest)

    @property
    def zombie_policy(self) -> ZombiePolicy:
        return ZombiePolicy(
            auto_terminate=self.auto_terminate,
            wait_s=self.zombie_wait_s,
            cooldown_s=self.termination_cooldown_s,
        )

    @property
    def poll_max_without_eta(self) -> float | None:
        """The check cap of a run without an estimated end; None with an events queue (S3
        notifications find its end, as any run's)."""
        return None if self.events_queue_url else self.poll_max_without_eta_s


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """One warning per `SUPERVISOR_*` variable that is no setting (a typo is otherwise silently
    ignored, as an unknown key of the settings file is not), naming the likely intended one."""
    known = {f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields} | OTHER_VARIABLES
    # Compared without the prefix every name shares, which would make any two look alike.
    suffixes = {name.removeprefix(ENV_PREFIX): name for name in known}
    warnings = []
    for name in sorted(environ):
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper in known:
            continue
        close = difflib.get_close_matches(upper.removeprefix(ENV_PREFIX), sorted(suffixes), n=1)
        hint = f": did you mean {suffixes[close[0]]}?" if close else ": no setting has this name"
        warnings.append(f"warning: ignoring unknown variable {name}{hint}")
    return warnings


METRICS_HOST = "127.0.0.1"


def parse_metrics_addr(text: str) -> tuple[str, int]:
    """`HOST:PORT`, `:PORT` or `PORT` (host 127.0.0.1); `[::1]:PORT` for an IPv6 host."""
    host, colon, port = text.strip().rpartition(":")
    if not colon:
        host = ""
    host = host.removeprefix("[").removesuffix("]") if host.startswith("[") else host
    if not port.isdigit() or int(port) > 65535 or (":" in host and not text.startswith("[")):
        raise PydanticCustomError(
            "metrics_addr",
            "expected HOST:PORT, :PORT or PORT with a port from 0 to 65535 (an IPv6 host in "
            "brackets: [::1]:9464), e.g. 127.0.0.1:9464",
        )
    return host or METRICS_HOST, int(port)


def is_loopback(host: str) -> bool:
    """True for a host only this machine can reach: localhost, 127.0.0.0/8, ::1."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name other than localhost may resolve anywhere
        return False


def _describe(exc: ValidationError, config_file: Path | None) -> str:
    lines = []
    for err in exc.errors():
        field = str(err["loc"][0]) if err["loc"] else ""
        if err["type"] == "extra_forbidden":
            lines.append(f"unknown setting {field!r} in {config_file}: check its spelling")
            continue
        if not field:  # a rule across fields: its message names them
            lines.append(f"bad settings: {err['msg'].removeprefix('Value error, ')}")
            continue
        name = f"{ENV_PREFIX}{field.upper()}"
        if config_file is not None:
            name += f" (or {field!r} in {config_file})"
        secret = any(hint in field.lower() for hint in _SECRET_HINTS)
        got = "" if secret or err["type"] == "missing" else f" (got {err['input']!r})"
        lines.append(f"bad setting {name}: {err['msg']}{got}")
    return "; ".join(lines)
