"""The control protocol's messages: pydantic models exchanged as JSON over the Unix socket.

Field names here are the CLI's `--json` output, so they are part of the interface.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, create_model, field_validator

from supervisor.core.defaults import DEFAULT_TRAINING_LOG as DEFAULT_TRAINING_LOG
from supervisor.core.defaults import DEFAULT_TRAINING_LOG_BYTES as DEFAULT_TRAINING_LOG_BYTES
from supervisor.core.reports import REPORT_UNREADABLE
from supervisor.core.spec_fields import FIELDS
from supervisor.core.values import check_json_value


class _Message(BaseModel):
    model_config = ConfigDict(populate_by_name=True)


class _AttachIdentity(_Message):
    """Raw attach fields; the daemon validates them into a RunSpec. None means "default".

    The fields are those of the run-spec field table (`core.spec_fields.FIELDS`): the ones
    attach needs are declared here, so the type checker knows them; the others are added by
    `AttachRequest` below, each optional (test_spec_fields.py holds the model to the table).
    `no_verify` skips the checks that the instance exists and the run prefix's bucket answers,
    for a run registered before its instance exists; nothing stores it.

    NaN and infinity are refused here, on both ends: JSON has no such numbers, and pydantic
    would send one as null, which the daemon would read as "the default"."""

    model_config = ConfigDict(populate_by_name=True, allow_inf_nan=False)

    run_id: str
    instance_id: str
    s3_prefix: str

    @field_validator(*(field.name for field in FIELDS if field.kind.structured), check_fields=False)
    @classmethod
    def _plain_json(cls, value: object, info: ValidationInfo) -> object:
        if value is not None:
            check_json_value(value, what=str(info.field_name))
        return value


if TYPE_CHECKING:
    AttachRequest = _AttachIdentity
else:
    AttachRequest = create_model(
        "AttachRequest",
        __base__=_AttachIdentity,
        __module__=__name__,
        __doc__=_AttachIdentity.__doc__,
        **{field.name: (field.type | None, None) for field in FIELDS if not field.required},
    )


class RunView(_Message):
    run_id: str
    phase: str
    outcome: str | None
    instance_id: str
    region: str
    s3_prefix: str
    on_complete: str
    reason: str
    version: int
    phase_since: datetime
    grace_until: datetime | None = None
    next_check_at: datetime | None = None
    error_code: str | None = None
    checkpoint: str | None = None
    attempt: int = 1
    verified_attempt: int | None = None
    """The attempt whose checkpoint a resume would restore (None: nothing verified yet)."""
    estimated_end: datetime | None = None
    """When training is estimated to end, from the job's heartbeat progress (running only)."""
    utilisation: str | None = None
    """Idle detection's last judgement of the instance's utilisation (idle, busy, or no
    datapoints), while the run is watched; None: off, or no sweep yet."""


class TransitionView(_Message):
    seq: int
    from_: str | None = Field(alias="from")
    to: str
    at: datetime
    reason: str
    detail: dict[str, Any] = Field(default_factory=dict)


class ActionView(_Message):
    action: str
    instance_id: str
    at: datetime
    attempts: int
    outcome: str
    error_code: str | None = None
    message: str | None = None


class InstanceView(_Message):
    instance_id: str
    region: str
    attached_at: datetime
    source: str


class AttachmentView(_Message):
    kind: str
    uri: str
    added_at: datetime
    size: int | None = None
    excerpt: str | None = None


class AttachFileRequest(_Message):
    """`supervisorctl attach-file`: a file or link to record with a run."""

    kind: str
    """crash-log | analysis | conversation | other"""
    uri: str
    """s3://BUCKET/KEY, or an http(s) link"""


class ReportProblemView(_Message):
    """A report file the supervisor could not read (its newest version), kept with the run."""

    key: str
    note: str
    """What is wrong with it, naming the file and where its shapes are documented."""
    noted_at: datetime

    def tail_item(self, run_id: str) -> TailItem:
        """The note as `tail` shows it: the event the monitor noted when it read the file."""
        fields = {"key": self.key, "error": self.note}
        event = MonitorEventView(
            at=self.noted_at, run_id=run_id, event=REPORT_UNREADABLE, fields=fields
        )
        return TailItem(kind="event", event=event)


class RunDetail(RunView):
    spec: dict[str, Any]
    transitions: list[TransitionView]
    actions: list[ActionView] = Field(default_factory=list)
    instances: list[InstanceView] = Field(default_factory=list)
    attachments: list[AttachmentView] = Field(default_factory=list)
    report_problems: list[ReportProblemView] = Field(default_factory=list)
    max_duration_at: datetime | None = None
    """While running or stalled with a max_duration: when it runs out."""


class MonitorEventView(_Message):
    """Something a monitor did that is not a transition (a check, an AWS call, a retry)."""

    at: datetime
    run_id: str
    event: str
    fields: dict[str, Any] = Field(default_factory=dict)


class TailItem(_Message):
    """One line of `supervisorctl tail`: a transition or a monitor event."""

    kind: Literal["transition", "event"]
    transition: TransitionView | None = None
    event: MonitorEventView | None = None


class TrainingLogItem(_Message):
    """One piece of `supervisorctl tail --training`: text of the log, or a word about it."""

    kind: Literal["lines", "notice", "error"]
    """lines: text of the log; notice: what the reader is doing (waiting for the log,
    starting again after a truncation, the end); error: why it stopped without the log."""
    text: str = ""
    """lines: whole lines, each ending in a newline; only the last piece, at the end, may be
    a partial line. notice and error: the message."""
    offset: int
    """Bytes of the log read up to the end of this item: pass it as `offset=` to go on."""


class DaemonStatus(_Message):
    pid: int
    version: str
    started_at: datetime
    state_dir: str
    socket: str
    runs_by_phase: dict[str, int]
    monitors: int
    aws_calls: dict[str, int]
    metrics_url: str | None = None
    """The TCP `/metrics` listener (SUPERVISOR_METRICS_ADDR) as bound, if there is one."""
    root_task_restarts: dict[str, int] = Field(default_factory=dict)
    """Restarts of each root task (reconciler, zombies, events) after it failed."""
    # Issue 14: replicas.
    replica_id: str = ""
    role: str = ""
    """`sole` (SQLite: this daemon holds every run) or `replica` (one of several on one
    database, owning its share)."""
    runs_owned: int = 0
    replicas: list[ReplicaView] = Field(default_factory=list)
    """Every replica that ran against this database, newest heartbeat first."""
    # Issue 15: notifications.
    notifications: NotificationsView | None = None
    """The notification sender, if SUPERVISOR_NOTIFY_URLS is set."""
    # Issue 15: the dashboard.
    http_url: str | None = None
    """The dashboard's listener (SUPERVISOR_HTTP_ADDR) as bound, if there is one."""
    database: str = ""
    """The run database: a PostgreSQL URL with its password redacted, or the SQLite file."""


class ReplicaView(_Message):
    replica_id: str
    host: str
    pid: int
    state: str
    started_at: datetime
    heartbeat_at: datetime
    alive: bool
    """Running and heard from within its lease TTL."""
    runs_owned: int


ErrorKind = Literal[
    "invalid_input", "unknown_run", "conflict", "shutting_down", "internal", "no_answer"
]


class ErrorReply(_Message):
    error: str
    kind: ErrorKind


class ZombieView(_Message):
    """An instance still running after its run ended, or tagged with no active run to own it."""

    instance_id: str
    region: str
    run_id: str | None
    kind: str
    """run-ended | unowned"""
    reason: str
    state: str
    """marked | stopping | terminating"""
    marked_at: datetime
    age_s: float
    """Seconds since it was marked."""
    attempts: int = 0
    action: str | None = None
    last_attempt_at: datetime | None = None
    last_error: str | None = None
    next_action: str | None = None
    """terminate, or stop (checkpoint invariant); None: nothing will be done."""
    next_at: datetime | None = None
    """When `next_action` is due; None with an action: at the next sweep."""
    plan: str
    """The plan in words: what will happen, when and why."""


class ZombieList(_Message):
    auto_terminate: bool
    wait_s: float
    cooldown_s: float
    zombies: list[ZombieView]


class ReportDayView(_Message):
    """One UTC day of zombie terminations."""

    day: str
    terminations: int
    stops: int
    attempts: int
    succeeded: int
    failed_attempts: int
    success_rate: float | None
    mean_s_to_terminated: float | None


class IdleDayView(_Message):
    """One UTC day of idle instance-seconds after the jobs' ends (until our stop was accepted)."""

    day: str
    runs: int
    idle_s: float


class ReportView(_Message):
    since: datetime
    until: datetime
    days: list[ReportDayView]
    runs_by_outcome: dict[str, int]
    """Runs attached in the window, by outcome ("none": no outcome yet, or none recorded)."""
    runs: int
    crash_rate: float | None
    """Crashed runs among those with an outcome."""
    open_zombies: int
    idle_days: list[IdleDayView] = []
    """Idle instance-seconds after the end, per UTC day of the jobs' ends (runs our call
    stopped or terminated; runs kept running have no figure)."""


# -- issue 15: notifications ----------------------------------------------------------------------


class NotifyTargetView(_Message):
    """One notification URL, redacted, with its figures since the daemon started."""

    target: str
    """The URL as Apprise shows it with its secrets elided."""
    digest: str
    """What `/metrics` labels it by."""
    sent: int = 0
    """Messages it accepted since the daemon started."""
    failed: int = 0
    """Messages given up on for it since the daemon started."""
    pending: int = 0
    """Outbox rows still to send it."""
    failed_rows: int = 0
    """Outbox rows given up on for it, in the database (across restarts)."""
    last_ok: bool | None = None
    """The last send's result; None: nothing sent yet."""
    last_error: str | None = None
    last_at: datetime | None = None


class NotificationsView(_Message):
    targets: list[NotifyTargetView]
    pending: int
    """Outbox rows waiting to be sent (in the whole database)."""
    sent: int
    failed: int
    """Outbox rows given up on for at least one URL."""


class NotifyTestReply(_Message):
    """`supervisorctl notify-test`: each URL's result."""

    results: list[NotifyTargetView]
