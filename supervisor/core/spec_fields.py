"""The run spec's fields, declared once: for each its name, raw type, default, CLI flag, help
text, TOML key and limits.

Everything that handles a run spec in its raw form derives from this table:
`supervisorctl attach`'s flags and the mapping of its flags to the request, the attach
request's wire model (`adapters.protocol.AttachRequest`), the keys `attach --spec` accepts,
the keyword arguments of `supervisor.client`, and the tests that hold `config/run.example.toml`
and the README's flag table to it. `RunSpec` (core/spec.py) stays the validator; a test holds
its defaults, limits and choices equal to this table's.

Plain values only, importing nothing heavy: `supervisorctl --help` and `attach` build their
flags from it without pydantic (issue 12's tenth of a second). The rows are NamedTuples rather
than frozen dataclasses for the same reason: each dataclass costs about a millisecond to
define at every start of the CLI.

To add a field: a row here, the field (and its check) in `RunSpec`, a line in
`config/run.example.toml` and a row in the README's flag table.
"""

from __future__ import annotations

import enum
from typing import Any, NamedTuple

from supervisor.core.defaults import DEFAULT_FAILURE_MARKER, DEFAULT_MARKERS
from supervisor.core.idle import MIN_IDLE_FOR_S

MAX_GRACE_S = 7 * 24 * 3600.0
"""The longest wait a run may ask for (grace_s, quiet_s, stall_timeout_s): a week."""

CHECKPOINT_PATTERNS: tuple[str, ...] = (
    "*.pt",
    "*.pth",
    "*.ckpt",
    "*.safetensors",
    "checkpoint-*/",
    "checkpoint_*/",
)
"""checkpoint_pattern's default, as the flag's help shows it (equal to
`core.checkpoint.DEFAULT_PATTERNS`; the table test holds them equal)."""


class Kind(enum.Enum):
    """A field's raw value, as JSON, TOML and the Python client give it, and how its flag
    gives it."""

    TEXT = "text"  # a string; the flag takes one
    SECONDS = "seconds"  # a finite number of seconds
    COUNT = "count"  # a whole number
    SWITCH = "switch"  # true or false; the flag, without a value, means true
    TEXTS = "texts"  # a list of strings; the flag is repeated, one string each
    COMMAND = "command"  # a command line, or a list of its words; the flag takes a line
    PAIRS = "pairs"  # a table of strings; the flag is repeated, KEY=VALUE each
    JSON_OBJECT = "json object"  # any JSON object; the flag names a file holding it
    OBJECTIVES = "objectives"  # a list of NAME:min|max[:WEIGHT] (or their tables); repeated
    PARTS = "parts"  # a table of named strings, one flag for each part
    DURATION = "duration"  # seconds, or a string: a number with s, m, h or d; the flag takes one

    @property
    def type(self) -> Any:
        """The raw value's Python type, as the wire model declares it."""
        return _RAW_TYPES[self]

    @property
    def structured(self) -> bool:
        """A table or list of tables: checked as JSON (NaN, depth, size) at the wire model."""
        return self in (Kind.PAIRS, Kind.JSON_OBJECT, Kind.OBJECTIVES, Kind.PARTS)


_RAW_TYPES: dict[Kind, Any] = {
    Kind.TEXT: str,
    Kind.SECONDS: float,
    Kind.COUNT: int,
    Kind.SWITCH: bool,
    Kind.TEXTS: list[str],
    Kind.COMMAND: str | list[str],
    Kind.PAIRS: dict[str, str],
    Kind.JSON_OBJECT: dict[str, Any],
    Kind.OBJECTIVES: list[str | dict[str, Any]],
    Kind.PARTS: dict[str, str],
    Kind.DURATION: str | float,
}


class Default(enum.Enum):
    """A default that is not a value of the field."""

    REQUIRED = "required"  # no default: attach needs it
    DAEMON = "daemon"  # the daemon fills it in (its setting, or its AWS region)
    NONE = "none"  # off, or not recorded


class FlagGroup(NamedTuple):
    """A section of `supervisorctl attach --help`."""

    title: str
    description: str


class Part(NamedTuple):
    """One flag of a PARTS field: the key of the table it fills."""

    key: str
    flag: str
    metavar: str
    help: str


class SpecField(NamedTuple):
    """One row of the table. `help` may show the default as `{default}`."""

    name: str
    """The field's name: in the request, in `RunSpec`, as a client keyword argument."""
    kind: Kind
    help: str
    default: object = Default.NONE
    metavar: str | None = None
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    above_minimum: bool = False
    """The minimum itself is refused (a value must be greater)."""
    maximum: float | None = None
    group: FlagGroup | None = None
    """Its section of `attach --help`; None: the command's own options."""
    option: str | None = None
    """The flag, if it is not `--` and the name with dashes (as `--marker` for markers)."""
    positional: bool = False
    """Given as the command's argument, not as a flag (the run id)."""
    parts: tuple[Part, ...] = ()
    file_key: str | None = None
    """A key of `--spec` that names a file holding the value, relative to the spec file."""
    stored: bool = True
    """Part of the run spec; False: an instruction for the attach only (no_verify)."""

    @property
    def required(self) -> bool:
        return self.default is Default.REQUIRED

    @property
    def type(self) -> Any:
        return self.kind.type

    @property
    def flag(self) -> str:
        """The flag as `--help` names it (the metavar of the positional argument)."""
        if self.positional:
            return self.metavar or self.name.upper()
        return self.option or "--" + self.name.replace("_", "-")

    @property
    def flags(self) -> tuple[str, ...]:
        """Every flag that gives this field (a PARTS field has one per part)."""
        if self.parts:
            return tuple(part.flag for part in self.parts)
        return () if self.positional else (self.flag,)

    @property
    def toml_keys(self) -> tuple[str, ...]:
        """The keys of `attach --spec` that give this field."""
        return (self.name, self.file_key) if self.file_key else (self.name,)

    @property
    def help_text(self) -> str:
        return self.help.format(default=shown_default(self.default))


def shown_default(value: object) -> str:
    """A default as help texts show it: 120 rather than 120.0, words joined by spaces."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, tuple):
        return " ".join(str(item) for item in value)
    if isinstance(value, Default):
        return value.value
    return str(value)


CHECKPOINT_SAFETY = FlagGroup(
    "checkpoint safety",
    "With --checkpoint-dir, completion first ends training gracefully (SIGTERM), uploads "
    "the newest checkpoint and verifies it in S3 (size and SHA-256) before any stop or "
    "terminate; a run is never terminated without a verified checkpoint.",
)
SPOT = FlagGroup(
    "spot instances",
    "With SUPERVISOR_EVENTS_QUEUE_URL set, a spot interruption warning starts the "
    "checkpoint step at once, inside the two-minute notice (no grace, no stop call).",
)
HEARTBEAT = FlagGroup(
    "heartbeat and crash data",
    "Reports the job writes under the run prefix (no network path to the control box).",
)
RUN_DATABASE = FlagGroup(
    "the run database",
    "What the run is, for `supervisorctl runs`, `show` and `compare` (each flag is also a "
    "key of --spec; config_file there is read relative to the spec file).",
)
IDLE = FlagGroup(
    "idle detection",
    "From CloudWatch, one GetMetricData call per 500 watched instances every "
    "SUPERVISOR_IDLE_INTERVAL_S: utilisation below --idle-below for --idle-for makes the run "
    "stalled, and --on-stall decides. Missing datapoints are never idleness.",
)

FIELDS: tuple[SpecField, ...] = (
    SpecField(
        "run_id",
        Kind.TEXT,
        "your name for the run (letters, digits, _ . -)",
        Default.REQUIRED,
        metavar="RUN_ID",
        positional=True,
    ),
    SpecField("instance_id", Kind.TEXT, "the EC2 instance, i-…", Default.REQUIRED, metavar="ID"),
    SpecField(
        "s3_prefix",
        Kind.TEXT,
        "the run prefix, s3://BUCKET/PREFIX/",
        Default.REQUIRED,
        metavar="URL",
    ),
    SpecField(
        "region",
        Kind.TEXT,
        "the instance's region (default: the AWS chain's)",
        Default.DAEMON,
        metavar="REGION",
    ),
    SpecField(
        "on_complete",
        Kind.TEXT,
        "what to do with the instance once the run completed ({default})",
        "stop",
        choices=("stop", "terminate", "none"),
    ),
    SpecField(
        "grace_s",
        Kind.SECONDS,
        "seconds to wait after completion before acting (SUPERVISOR_GRACE_S)",
        Default.DAEMON,
        metavar="N",
        minimum=0,
        maximum=MAX_GRACE_S,
    ),
    SpecField(
        "markers",
        Kind.TEXTS,
        "a completion marker key under the prefix; repeat for several",
        DEFAULT_MARKERS,
        metavar="KEY",
        option="--marker",
    ),
    SpecField(
        "expect", Kind.TEXTS, "an expected output key; repeat for several", (), metavar="KEY"
    ),
    SpecField(
        "failure_marker",
        Kind.TEXT,
        "the key whose presence means the job failed ({default})",
        DEFAULT_FAILURE_MARKER,
        metavar="KEY",
    ),
    # -- checkpoint safety
    SpecField(
        "checkpoint_dir",
        Kind.TEXT,
        "checkpoint directory on the instance",
        metavar="PATH",
        group=CHECKPOINT_SAFETY,
    ),
    SpecField(
        "checkpoint_s3",
        Kind.TEXT,
        "where checkpoints go (default: the run prefix + checkpoints/)",
        metavar="URL",
        group=CHECKPOINT_SAFETY,
    ),
    SpecField(
        "checkpoint_pattern",
        Kind.TEXTS,
        "checkpoint files or dirs (trailing /) to look for; repeat (default: {default})",
        CHECKPOINT_PATTERNS,
        metavar="GLOB",
        group=CHECKPOINT_SAFETY,
    ),
    SpecField(
        "pid_file",
        Kind.TEXT,
        "pid file of the training process",
        metavar="PATH",
        group=CHECKPOINT_SAFETY,
    ),
    SpecField(
        "sigterm_timeout_s",
        Kind.SECONDS,
        "how long the training process gets to exit after SIGTERM ({default})",
        120.0,
        metavar="N",
        minimum=0,
        maximum=3600,
        group=CHECKPOINT_SAFETY,
    ),
    SpecField(
        "on_sigterm_timeout",
        Kind.TEXT,
        "a process still alive after the timeout: SIGKILL it, or leave it ({default})",
        "kill",
        choices=("kill", "leave"),
        group=CHECKPOINT_SAFETY,
    ),
    SpecField(
        "transport",
        Kind.TEXT,
        "how commands reach the instance: AWS SSM, or this machine ({default})",
        "ssm",
        choices=("ssm", "local"),
        group=CHECKPOINT_SAFETY,
    ),
    SpecField(
        "on_checkpoint_failure",
        Kind.TEXT,
        "unverified checkpoint: stop (terminate becomes stop) and flag the run, or leave the "
        "instance running and fail the run ({default})",
        "stop",
        choices=("stop", "keep-running"),
        group=CHECKPOINT_SAFETY,
    ),
    SpecField(
        "checkpoint_attempts",
        Kind.COUNT,
        "checkpoint/upload attempts before the failure policy applies ({default})",
        3,
        metavar="N",
        minimum=1,
        maximum=10,
        group=CHECKPOINT_SAFETY,
    ),
    SpecField(
        "grace_mode",
        Kind.TEXT,
        "until-quiet ends grace once the prefix is quiet and no upload is in progress "
        "(with --checkpoint-dir, once the checkpoint is verified and training has exited "
        "too); fixed waits the whole --grace-s ({default})",
        "until-quiet",
        choices=("until-quiet", "fixed"),
        group=CHECKPOINT_SAFETY,
    ),
    SpecField(
        "quiet_s",
        Kind.SECONDS,
        "seconds without new objects under the prefix that count as quiet ({default})",
        30.0,
        metavar="N",
        minimum=0,
        maximum=MAX_GRACE_S,
        group=CHECKPOINT_SAFETY,
    ),
    SpecField(
        "resume_command",
        Kind.COMMAND,
        "command that resumes training (split like a shell would, never run by one), used by "
        "`supervisorctl resume`",
        (),
        metavar="CMD",
        group=CHECKPOINT_SAFETY,
    ),
    SpecField(
        "resume_cwd",
        Kind.TEXT,
        "working directory for --resume-command",
        metavar="PATH",
        group=CHECKPOINT_SAFETY,
    ),
    SpecField(
        "launch_template",
        Kind.PARTS,
        "where a resumed run gets a new instance when its old one is gone",
        group=CHECKPOINT_SAFETY,
        parts=(
            Part(
                "id",
                "--launch-template-id",
                "ID",
                "launch template for resuming on a new instance (lt-…)",
            ),
            Part("name", "--launch-template-name", "NAME", "… or its name"),
            Part("version", "--launch-template-version", "V", "… and version ($Latest by default)"),
        ),
    ),
    # -- spot instances
    SpecField(
        "spot",
        Kind.SWITCH,
        "a spot instance: losing it without a request is an interruption, not a crash",
        False,
        group=SPOT,
    ),
    SpecField(
        "on_interruption",
        Kind.TEXT,
        "after an interruption: resume (needs --resume-command, and a launch template when the "
        "instance is terminated) or leave it (none)",
        "none",
        choices=("resume", "none"),
        group=SPOT,
    ),
    SpecField(
        "on_rebalance",
        Kind.TEXT,
        "on an EC2 rebalance recommendation: upload the newest checkpoint while training goes "
        "on, so a later resume has a recent one (needs --checkpoint-dir), or ignore it (the "
        "default)",
        "ignore",
        choices=("checkpoint", "ignore"),
        group=SPOT,
    ),
    SpecField(
        "max_restarts",
        Kind.COUNT,
        "how many times --on-interruption resume may restart the run ({default})",
        3,
        metavar="N",
        minimum=0,
        maximum=100,
        group=SPOT,
    ),
    # -- heartbeat and crash data
    SpecField(
        "stall_timeout_s",
        Kind.SECONDS,
        "a heartbeat (--heartbeat-file) older than this while the instance runs makes the run "
        "stalled (off by default; only a job that writes a heartbeat can stall)",
        metavar="S",
        minimum=0,
        above_minimum=True,
        maximum=MAX_GRACE_S,
        group=HEARTBEAT,
    ),
    SpecField(
        "on_stall",
        Kind.TEXT,
        "when stalled: notify (phase stalled, keep watching; the default), checkpoint-stop "
        "(final checkpoint if configured, then stop), or terminate (checkpoint first if "
        "configured)",
        "notify",
        choices=("notify", "checkpoint-stop", "terminate"),
        group=HEARTBEAT,
    ),
    SpecField(
        "heartbeat_file",
        Kind.TEXT,
        "the heartbeat's key under the prefix ({default})",
        "status.json",
        metavar="KEY",
        group=HEARTBEAT,
    ),
    SpecField(
        "crash_report",
        Kind.TEXT,
        "attached to the run when it crashes, if present ({default})",
        "crash/error.log",
        metavar="KEY",
        group=HEARTBEAT,
    ),
    # -- crashed runs and a maximum duration (issue 13)
    SpecField(
        "on_crash",
        Kind.TEXT,
        "when the run crashes (its failure marker appears): stop its instance (the default; "
        "final checkpoint first if configured), terminate it (only with a verified checkpoint "
        "when checkpointing is configured, else it is stopped), or keep it running for a person",
        "stop",
        choices=("stop", "terminate", "keep"),
        group=HEARTBEAT,
    ),
    SpecField(
        "max_duration",
        Kind.DURATION,
        "stop the run (final checkpoint first if configured) once it has been running this long "
        "over its attempts, with outcome timed_out: seconds, or a number with s, m, h or d, "
        "e.g. 12h (off by default)",
        metavar="DURATION",
        group=HEARTBEAT,
    ),
    # -- the run database
    SpecField("name", Kind.TEXT, "a human name for the run", metavar="NAME", group=RUN_DATABASE),
    SpecField(
        "project",
        Kind.TEXT,
        "the project it belongs to (letters, digits, _ . -)",
        metavar="PROJECT",
        group=RUN_DATABASE,
    ),
    SpecField(
        "tags",
        Kind.PAIRS,
        "a tag, e.g. --tag method=mgda (repeat for more)",
        {},
        metavar="KEY=VALUE",
        option="--tag",
        group=RUN_DATABASE,
    ),
    SpecField(
        "config",
        Kind.JSON_OBJECT,
        "the full training config (.json, .yaml or .toml), stored as JSON: query it with "
        "--where config.KEY=VALUE",
        metavar="FILE",
        option="--config-file",
        file_key="config_file",
        group=RUN_DATABASE,
    ),
    SpecField(
        "objectives",
        Kind.OBJECTIVES,
        "a metric the run is judged by, e.g. val_loss:min (repeat for more); its final value "
        "comes from the job's final_metrics.json",
        (),
        metavar="NAME:min|max[:WEIGHT]",
        option="--objective",
        group=RUN_DATABASE,
    ),
    SpecField(
        "wandb_project",
        Kind.TEXT,
        "the W&B project of the run",
        metavar="PROJECT",
        group=RUN_DATABASE,
    ),
    SpecField("instance_type", Kind.TEXT, "e.g. p4d.24xlarge", metavar="TYPE", group=RUN_DATABASE),
    # -- the command's own options
    SpecField(
        "tag_instance",
        Kind.SWITCH,
        "tag the instance supervisor:run-id=RUN_ID before watching it, so the daemon's IAM "
        "policy (deploy/iam-policy.json) can allow stop, terminate and SendCommand on tagged "
        "instances only; needs ec2:CreateTags",
        False,
    ),
    SpecField(
        "no_verify",
        Kind.SWITCH,
        "attach without checking that the instance exists in the region and that the run "
        "prefix's bucket answers (one DescribeInstances, one ListObjectsV2): for a run "
        "registered before its instance exists",
        False,
        stored=False,
    ),
    # -- idle detection from utilisation
    SpecField(
        "idle_below",
        Kind.SECONDS,
        "utilisation (percent) under which the instance counts as idle; with --idle-for "
        "(off by default)",
        metavar="PERCENT",
        minimum=0,
        above_minimum=True,
        maximum=100,
        group=IDLE,
    ),
    SpecField(
        "idle_for_s",
        Kind.DURATION,
        "how long the utilisation must stay below --idle-below (every CloudWatch datapoint, "
        "covering the whole time) before the run is stalled and --on-stall applies: seconds, "
        "or a number with s, m, h or d, e.g. 30m",
        metavar="DURATION",
        minimum=MIN_IDLE_FOR_S,
        maximum=MAX_GRACE_S,
        option="--idle-for",
        group=IDLE,
    ),
    SpecField(
        "idle_metric",
        Kind.TEXT,
        "cpu (AWS/EC2 CPUUtilization, no agent) or gpu (CWAgent nvidia_smi_utilization_gpu, "
        "needs the CloudWatch agent: deploy/cloudwatch-agent.json) ({default})",
        "cpu",
        choices=("cpu", "gpu"),
        group=IDLE,
    ),
)
"""In the order of `supervisorctl attach --help`."""

BY_NAME: dict[str, SpecField] = {field.name: field for field in FIELDS}
REQUIRED: tuple[str, ...] = tuple(field.name for field in FIELDS if field.required)
"""The fields attach needs: the CLI's RUN_ID, --instance-id and --s3-prefix, the client's
positional arguments."""
TOML_KEYS: frozenset[str] = frozenset(key for field in FIELDS for key in field.toml_keys)
"""The keys `supervisorctl attach --spec` accepts."""
