"""What a user asked for when attaching a run: the run spec, validated once, stored as JSON.

Every field is checked here, so a bad value is rejected at `supervisorctl attach` with a message
that names it, before anything is stored or sent. The fields in their raw form (name, flag,
TOML key, help, default, limits) are declared in `core.spec_fields`, from which the CLI and the
wire model are built; tests/core/test_spec_fields.py holds this model's defaults, limits and
choices equal to that table.
"""

from __future__ import annotations

import enum
import functools
import json
import re
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import to_jsonable_python

from supervisor.core.checkpoint import (
    DEFAULT_PATTERNS,
    parse_command,
    parse_instance_path,
    parse_pattern,
)
from supervisor.core.defaults import DEFAULT_FAILURE_MARKER as DEFAULT_FAILURE_MARKER
from supervisor.core.defaults import DEFAULT_MARKERS as DEFAULT_MARKERS
from supervisor.core.errors import InvalidInput
from supervisor.core.idle import MIN_IDLE_FOR_S, IdleMetric
from supervisor.core.reports import FINAL_METRICS, HISTORY
from supervisor.core.spec_fields import MAX_GRACE_S as MAX_GRACE_S
from supervisor.core.values import Direction as Direction
from supervisor.core.values import (
    InstanceId,
    RunId,
    S3Prefix,
    check_json_value,
    check_key_length,
    parse_instance_id,
    parse_region,
    parse_relative_key,
    parse_run_id,
)

GraceSeconds = Annotated[float, Field(ge=0, le=MAX_GRACE_S, allow_inf_nan=False)]
"""The bounds of `grace_s`, declared once: a run's field and the daemon's default
(SUPERVISOR_GRACE_S) both use them, so a default the daemon accepts is one every run accepts."""


class OnComplete(enum.StrEnum):
    """What happens to the instance once the run completed and grace ended."""

    STOP = "stop"
    TERMINATE = "terminate"
    NONE = "none"


class Transport(enum.StrEnum):
    """How commands reach the instance: AWS SSM, or a local subprocess (demo and tests)."""

    SSM = "ssm"
    LOCAL = "local"


class SigtermTimeout(enum.StrEnum):
    """What to do with a training process still alive after the SIGTERM timeout."""

    KILL = "kill"
    LEAVE = "leave"


class CheckpointFailure(enum.StrEnum):
    """What to do when the final checkpoint cannot be verified in S3."""

    STOP = "stop"  # stop the instance (a terminate is downgraded to stop) and flag the run
    KEEP_RUNNING = "keep-running"  # leave the instance running; the run fails for a person


class OnInterruption(enum.StrEnum):
    """After a spot interruption: resume on a new attempt, or leave the run interrupted."""

    RESUME = "resume"
    NONE = "none"


class OnStall(enum.StrEnum):
    """What to do when the job's heartbeat (`status.json`) is older than the stall timeout."""

    NOTIFY = "notify"  # phase stalled; keep watching (a fresh heartbeat makes it running again)
    CHECKPOINT_STOP = "checkpoint-stop"  # save the final checkpoint (if configured), then stop
    TERMINATE = "terminate"  # checkpoint (if configured), then terminate


class OnCrash(enum.StrEnum):
    """What to do with the instance of a run that crashed (its failure marker appeared)."""

    STOP = "stop"  # checkpoint (if configured), then stop: a crashed job bills nothing
    TERMINATE = "terminate"  # checkpoint (if configured), then terminate (verified only)
    KEEP = "keep"  # leave it running for a person to log in


class OnRebalance(enum.StrEnum):
    """After an EC2 rebalance recommendation: take an early checkpoint, or do nothing."""

    CHECKPOINT = "checkpoint"  # upload the newest checkpoint; training goes on
    IGNORE = "ignore"


class GraceMode(enum.StrEnum):
    UNTIL_QUIET = "until-quiet"  # end early once quiet (and verified, process exited)
    FIXED = "fixed"  # always wait the whole grace period


_METRIC_NAME = r"^[A-Za-z0-9_.\-/:]{1,128}$"
_TAG_KEY = r"^[A-Za-z0-9_.\-/:]{1,128}$"
MAX_CONFIG_BYTES = 1024 * 1024
MAX_DURATION_S = 366 * 24 * 3600.0
"""The longest max_duration a run may ask for: a year."""
_DURATION_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([smhd]?)\s*$")


def parse_duration(value: object, *, what: str) -> float:
    """Seconds from a duration as a person gives it: a number of seconds, or a number with
    s, m, h or d ("90m", "12h", "1.5d"). Raises `InvalidInput` naming the value."""
    if isinstance(value, bool):
        raise InvalidInput(f"{what} {value!r}: give seconds, or a number with s, m, h or d")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(value) if isinstance(value, str) else None
        if match is None:
            raise InvalidInput(
                f"{what} {value!r}: give seconds, or a number with s, m, h or d (e.g. 12h)"
            )
        seconds = float(match[1]) * _DURATION_UNITS[match[2]]
    if not 0 < seconds <= MAX_DURATION_S:
        raise InvalidInput(f"{what} {value!r}: give a duration above 0 and at most 366d")
    return seconds


class Objective(BaseModel):
    """A metric the run is judged by: its final value, and which way is better."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=_METRIC_NAME)
    direction: Direction = Direction.MIN
    weight: float = Field(1.0, gt=0, allow_inf_nan=False)

    @classmethod
    def parse(cls, text: str) -> Objective:
        """`NAME:min|max[:WEIGHT]`, as `--objective` takes it."""
        # From the right: a metric name may itself hold ':' (eval:loss:min).
        name, _, direction = text.rpartition(":")
        fields: dict[str, Any] = {"name": name, "direction": direction}
        if direction not in ("min", "max"):
            name, _, direction = name.rpartition(":")
            fields = {"name": name, "direction": direction, "weight": text.rpartition(":")[2]}
        if not name or direction not in ("min", "max"):
            raise InvalidInput(
                f"objective {text!r} is not valid: give NAME:min or NAME:max, optionally "
                "with :WEIGHT (e.g. val_loss:min or accuracy:max:2)"
            )
        if "weight" in fields:
            try:
                fields["weight"] = float(fields["weight"])
            except ValueError:
                raise InvalidInput(
                    f"objective {text!r}: weight {fields['weight']!r} is not a number"
                ) from None
        try:
            return cls.model_validate(fields)
        except ValidationError as exc:
            raise InvalidInput(f"objective {text!r}: {describe_validation_error(exc)}") from None


class LaunchTemplate(BaseModel):
    """Where a resumed run gets a new instance when its old one is gone."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str | None = Field(None, pattern=r"^lt-[0-9a-f]{8,17}$")
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9().\-/_]{3,128}$")
    version: str = Field("$Latest", pattern=r"^(\$Latest|\$Default|[0-9]{1,10})$")

    @model_validator(mode="after")
    def _one_of(self) -> LaunchTemplate:
        if (self.id is None) == (self.name is None):
            raise InvalidInput("launch_template: give exactly one of id or name")
        return self


class RunSpec(BaseModel):
    """A run as attached. Immutable; a change of plan is a new event, not an edited spec."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    run_id: RunId
    instance_id: InstanceId
    region: str
    s3_prefix: str
    on_complete: OnComplete = OnComplete.STOP
    grace_s: GraceSeconds
    markers: tuple[str, ...] = DEFAULT_MARKERS
    expect: tuple[str, ...] = ()
    failure_marker: str = DEFAULT_FAILURE_MARKER

    # -- checkpoint safety (all optional: checkpointing is on when checkpoint_dir is set) --
    checkpoint_dir: str | None = None
    checkpoint_s3: str | None = None
    checkpoint_pattern: tuple[str, ...] = DEFAULT_PATTERNS
    pid_file: str | None = None
    sigterm_timeout_s: float = Field(120.0, ge=0, le=3600, allow_inf_nan=False)
    on_sigterm_timeout: SigtermTimeout = SigtermTimeout.KILL
    transport: Transport = Transport.SSM
    on_checkpoint_failure: CheckpointFailure = CheckpointFailure.STOP
    checkpoint_attempts: int = Field(3, ge=1, le=10)
    grace_mode: GraceMode = GraceMode.UNTIL_QUIET
    quiet_s: float = Field(30.0, ge=0, le=MAX_GRACE_S, allow_inf_nan=False)
    resume_command: tuple[str, ...] = ()
    resume_cwd: str | None = None
    launch_template: LaunchTemplate | None = None

    # -- heartbeat and crash data (the job's reports under the run prefix) --
    heartbeat_file: str = "status.json"
    stall_timeout_s: float | None = Field(None, gt=0, le=MAX_GRACE_S, allow_inf_nan=False)
    """Heartbeat older than this while the instance runs: the run is stalled. None: off."""
    on_stall: OnStall = OnStall.NOTIFY
    crash_report: str = "crash/error.log"
    """Attached to the run when it crashes, if the job (or user-data) wrote it."""
    on_crash: OnCrash = OnCrash.STOP
    max_duration: float | None = None
    """Seconds the run may be watched running (over its attempts) before it is stopped with
    outcome timed_out. None: no limit. Given as seconds or a number with s, m, h or d."""

    # -- the run database: what the run is, for queries and comparisons --
    name: str | None = Field(None, min_length=1, max_length=200)
    project: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
    tags: dict[str, str] = Field(default_factory=dict)
    config: dict[str, Any] | None = None
    """The full training config (a JSON object), from `--config-file`."""
    objectives: tuple[Objective, ...] = ()
    wandb_project: str | None = Field(None, pattern=r"^[A-Za-z0-9_.\-/]{1,128}$")
    instance_type: str | None = Field(None, pattern=r"^[a-z][a-z0-9\-]*\.[a-z0-9]+$")

    # -- spot --
    spot: bool = False
    on_interruption: OnInterruption = OnInterruption.NONE
    on_rebalance: OnRebalance = OnRebalance.IGNORE
    max_restarts: int = Field(3, ge=0, le=100)
    tag_instance: bool = False
    """Tag the instance `supervisor:run-id` at attach, so IAM can be scoped to tagged ones."""

    # -- idle detection from utilisation (CloudWatch; both of below/for, or neither) --
    idle_below: float | None = Field(None, gt=0, le=100, allow_inf_nan=False)
    """Utilisation percent under which the instance counts as idle. None: off."""
    idle_for_s: float | None = Field(None, ge=MIN_IDLE_FOR_S, le=MAX_GRACE_S, allow_inf_nan=False)
    """How long every datapoint must stay below `idle_below` before the run is stalled."""
    idle_metric: IdleMetric = IdleMetric.CPU

    @model_validator(mode="before")
    @classmethod
    def _default_grace_mode(cls, data: object) -> object:
        if isinstance(data, dict) and data.get("grace_mode") is None:
            data = {k: v for k, v in data.items() if k != "grace_mode"}  # the default
        return data

    @field_validator("checkpoint_dir", "pid_file", "resume_cwd")
    @classmethod
    def _instance_paths(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else parse_instance_path(value, what=str(info.field_name))

    @field_validator("checkpoint_s3")
    @classmethod
    def _checkpoint_s3(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return str(S3Prefix.parse(value))
        except InvalidInput as exc:
            raise InvalidInput(f"checkpoint_s3: {exc}") from None

    @model_validator(mode="after")
    def _auto_resume_needs_a_command(self) -> RunSpec:
        if self.on_interruption is OnInterruption.RESUME and not self.resume_command:
            raise InvalidInput(
                "on_interruption=resume needs resume_command (and pid_file): the command "
                "that restarts training on the next attempt"
            )
        return self

    @model_validator(mode="after")
    def _early_checkpoint_needs_a_directory(self) -> RunSpec:
        if self.on_rebalance is OnRebalance.CHECKPOINT and not self.checkpointing:
            raise InvalidInput(
                "on_rebalance=checkpoint needs checkpoint_dir: the directory the early "
                "checkpoint is uploaded from"
            )
        return self

    @model_validator(mode="after")
    def _resume_needs_pid_file(self) -> RunSpec:
        if self.resume_command and not self.pid_file:
            raise InvalidInput(
                "resume_command needs pid_file: the resumed training writes its pid there, "
                "and the next checkpoint step signals it"
            )
        return self

    @field_validator("checkpoint_pattern")
    @classmethod
    def _patterns(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise InvalidInput("checkpoint_pattern: give at least one pattern")
        return tuple(parse_pattern(p) for p in value)

    @field_validator("resume_command", mode="before")
    @classmethod
    def _resume_command(cls, value: object) -> tuple[str, ...]:
        if value is None or value == () or value == []:
            return ()
        if not isinstance(value, str | list | tuple):
            raise InvalidInput("resume_command: give a command line or a list of words")
        return parse_command(value, what="resume_command")

    @field_validator("run_id", mode="before")
    @classmethod
    def _run_id(cls, value: object) -> RunId:
        return parse_run_id(_text(value, "run_id"))

    @field_validator("instance_id", mode="before")
    @classmethod
    def _instance_id(cls, value: object) -> InstanceId:
        return parse_instance_id(_text(value, "instance_id"))

    @field_validator("region", mode="before")
    @classmethod
    def _region(cls, value: object) -> str:
        return parse_region(_text(value, "region"))

    @field_validator("s3_prefix", mode="before")
    @classmethod
    def _s3_prefix(cls, value: object) -> str:
        return str(S3Prefix.parse(_text(value, "s3_prefix")))

    @field_validator("markers")
    @classmethod
    def _markers(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise InvalidInput("markers: give at least one completion marker key")
        return tuple(parse_relative_key(k, what="completion marker") for k in value)

    @field_validator("expect")
    @classmethod
    def _expect(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(parse_relative_key(k, what="expected output") for k in value)

    @field_validator("failure_marker")
    @classmethod
    def _failure_marker(cls, value: str) -> str:
        return parse_relative_key(value, what="failure marker")

    @field_validator("tags")
    @classmethod
    def _tags(cls, value: dict[str, str]) -> dict[str, str]:
        for key, text in value.items():
            if not re.fullmatch(_TAG_KEY, key):
                raise InvalidInput(
                    f"tag key {key!r} is not valid: use 1-128 letters, digits, '_', '.', "
                    "'-', '/' or ':'"
                )
            if len(text) > 256:
                raise InvalidInput(f"tag {key}: the value is longer than 256 characters")
        return value

    @field_validator("config")
    @classmethod
    def _config(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return None
        try:
            check_json_value(value, what="config")
        except InvalidInput as exc:
            raise InvalidInput(f"config is not plain JSON: {exc}") from None
        try:
            size = len(json.dumps(value, allow_nan=False))
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"config is not plain JSON: {exc}") from None
        if size > MAX_CONFIG_BYTES:
            raise InvalidInput(f"config is {size} bytes as JSON; the limit is {MAX_CONFIG_BYTES}")
        return value

    @field_validator("objectives", mode="before")
    @classmethod
    def _objectives(cls, value: object) -> object:
        if isinstance(value, list | tuple):
            return tuple(Objective.parse(v) if isinstance(v, str) else v for v in value)
        return value

    @model_validator(mode="after")
    def _objective_names_unique(self) -> RunSpec:
        names = [o.name for o in self.objectives]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise InvalidInput(f"objectives: {', '.join(repeated)} given more than once")
        return self

    @field_validator("heartbeat_file")
    @classmethod
    def _heartbeat_file(cls, value: str) -> str:
        key = parse_relative_key(value, what="heartbeat file")
        if key in (FINAL_METRICS, HISTORY):
            raise InvalidInput(f"heartbeat file {key!r} is the name of another report file")
        return key

    @field_validator("max_duration", mode="before")
    @classmethod
    def _max_duration(cls, value: object) -> object:
        return None if value is None else parse_duration(value, what="max_duration")

    @field_validator("idle_for_s", mode="before")
    @classmethod
    def _idle_for(cls, value: object) -> object:
        return None if value is None else parse_duration(value, what="idle_for_s")

    @field_validator("crash_report")
    @classmethod
    def _crash_report(cls, value: str) -> str:
        return parse_relative_key(value, what="crash report")

    @model_validator(mode="after")
    def _full_keys_fit(self) -> RunSpec:
        """Each key under the run prefix, prefix included, within S3's 1,024 bytes."""
        prefix = self.prefix
        named = [("completion marker", k) for k in self.markers]
        named += [("expected output", k) for k in self.expect]
        named += [
            ("failure marker", self.failure_marker),
            ("heartbeat file", self.heartbeat_file),
            ("crash report", self.crash_report),
            ("report file", FINAL_METRICS),
            ("report file", HISTORY),
        ]
        for what, key in named:
            check_key_length(prefix.key(key), what=f"{what} under {prefix}")
        return self

    @model_validator(mode="after")
    def _idle_needs_both(self) -> RunSpec:
        if (self.idle_below is None) != (self.idle_for_s is None):
            given, missing = (
                ("idle_below", "idle_for_s")
                if self.idle_for_s is None
                else ("idle_for_s", "idle_below")
            )
            raise InvalidInput(
                f"{given} needs {missing}: idle detection takes both a level "
                "(--idle-below PERCENT) and a time (--idle-for SECONDS), or neither"
            )
        return self

    @property
    def idle_detection(self) -> bool:
        """Idle detection from CloudWatch utilisation is on (`idle_below` and `idle_for_s`)."""
        return self.idle_below is not None and self.idle_for_s is not None

    @property
    def prefix(self) -> S3Prefix:
        return S3Prefix.parse(self.s3_prefix)

    @property
    def checkpointing(self) -> bool:
        """Checkpoint safety is on: the final checkpoint must be verified before terminate."""
        return self.checkpoint_dir is not None

    @property
    def checkpoint_location(self) -> S3Prefix:
        """Where checkpoints and `_manifest.json` go: checkpoint_s3, else prefix/checkpoints/."""
        if self.checkpoint_s3:
            return S3Prefix.parse(self.checkpoint_s3)
        prefix = self.prefix
        return S3Prefix(prefix.bucket, prefix.key("checkpoints/"))

    @property
    def early_checkpoint_location(self) -> S3Prefix:
        """Where a rebalance's early checkpoint goes: apart from the final one, so the two can
        never overwrite each other's files or manifest."""
        location = self.checkpoint_location
        return S3Prefix(location.bucket, location.key("early/"))

    @classmethod
    def from_stored(cls, text: str) -> RunSpec:
        """A spec from the JSON it was stored as (`model_dump_json`).

        Fields whose stored value is their default are left out before validation, so the
        ten thousand specs a restart loads share their default values instead of each holding
        its own copies (less than half the memory per spec), and validate about twice as fast.
        Everything given is still validated."""
        defaults = _stored_defaults()
        data = json.loads(text)
        return cls.model_validate(
            {k: v for k, v in data.items() if k not in defaults or v != defaults[k]}
        )

    @classmethod
    def build(cls, **fields: Any) -> RunSpec:
        """Validate raw fields (from the CLI, a TOML spec or JSON) into a spec, or raise
        `InvalidInput` naming each bad field."""
        try:
            return cls.model_validate(fields)
        except ValidationError as exc:
            raise InvalidInput(describe_validation_error(exc)) from None


@functools.cache
def _stored_defaults() -> dict[str, Any]:
    """Each optional field's default as JSON stores it. `grace_mode` is left out: its default
    changed (fixed, then until-quiet for every run), so a stored value is always kept and a
    run attached before keeps the grace it was attached with."""
    return {
        name: to_jsonable_python(field.get_default(call_default_factory=True))
        for name, field in RunSpec.model_fields.items()
        if not field.is_required() and name != "grace_mode"
    }


def _text(value: object, field: str) -> str:
    if not isinstance(value, str):
        raise InvalidInput(f"{field} must be a string, got {type(value).__name__}")
    return value


def describe_validation_error(exc: ValidationError) -> str:
    """One problem per clause, `field: what is wrong (got value)`; our own `InvalidInput`
    messages already name the value and are passed through as they are."""
    problems = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "value"
        if err["type"] == "value_error" and isinstance(
            err.get("ctx", {}).get("error"), InvalidInput
        ):
            problems.append(str(err["ctx"]["error"]))
            continue
        message = err["msg"][:1].lower() + err["msg"][1:]
        got = f" (got {err['input']!r})" if err["type"] != "missing" else ""
        problems.append(f"{where}: {message}{got}")
    return "; ".join(problems)
