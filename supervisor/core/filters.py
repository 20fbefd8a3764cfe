"""Run-database queries as values: field paths (`config.optimizer.lr`, `metrics.val_loss`,
`tag.method`, a column), filters (`PATH OP VALUE`, as `supervisorctl runs --where` takes them)
and `--since 7d` durations.

Pure: text in, a typed value (or `InvalidInput` naming the bad text and the way to write it)
out. The query adapter compiles these to SQL with bound parameters; nothing here knows SQL.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from supervisor.core.errors import InvalidInput
from supervisor.core.run import Outcome, Phase

COLUMNS: tuple[str, ...] = (
    "run_id",
    "name",
    "project",
    "phase",
    "outcome",
    "reason",
    "instance_id",
    "region",
    "instance_type",
    "spot",
    "s3_prefix",
    "on_complete",
    "attempt",
    "checkpoint",
    "error_code",
    "created_at",
    "updated_at",
    "phase_since",
    "started_at",
    "step",
    "total_steps",
    "status_at",
    "wandb_project",
    "wandb_run_id",
    "wandb_url",
)
"""The fields a filter may name without a prefix: the run's own facts."""

NO_OUTCOME = "none"
"""`--outcome none`: runs whose training has not ended yet (no outcome recorded)."""

_KEY = re.compile(r"[^\"\\]+")  # a config key or tag key: anything a JSON path can quote
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_FILTER = re.compile(r"(?P<field>[^=!<>]*?)\s*(?P<op>==|!=|<=|>=|=|<|>)\s*(?P<value>.*)", re.S)
# An exponent is taken (`str()` of a small float of days has one: 1.1574074074074073e-05).
_SINCE = re.compile(r"\s*(?P<amount>\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)\s*(?P<unit>[smhdw]?)\s*")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
MAX_SINCE = timedelta(days=3660)

FIELD_HELP = "config.KEY[.KEY...], metrics.NAME, tag.KEY or a column (" + ", ".join(COLUMNS) + ")"
FILTER_EXAMPLE = "e.g. metrics.val_loss<0.3 or config.gradient_method=mgda"


class Source(enum.StrEnum):
    """Where a field's value lives."""

    CONFIG = "config"  # the run's training config (nested JSON; keys dotted)
    METRICS = "metrics"  # the final metrics the job reported
    TAG = "tag"  # the run's tags
    COLUMN = "column"  # the run's own facts (COLUMNS)


@dataclass(frozen=True, slots=True)
class FieldPath:
    """One field of a run, e.g. `config.optimizer.lr`: its source and the keys inside it."""

    source: Source
    keys: tuple[str, ...]
    """Config: the nested keys; metrics and tags: the one name; a column: its name."""

    def __str__(self) -> str:
        if self.source is Source.COLUMN:
            return self.keys[0]
        return f"{self.source}.{'.'.join(self.keys)}"


class Op(enum.StrEnum):
    EQ = "="
    NE = "!="
    LT = "<"
    LE = "<="
    GT = ">"
    GE = ">="


@dataclass(frozen=True, slots=True)
class Filter:
    """`PATH OP VALUE`. A value that reads as a number compares numerically (a field whose
    value is not a number then never matches); a quoted value ("42" or '42') and any other
    text compare as text. A run without the field never matches, whatever the operator."""

    field: FieldPath
    op: Op
    value: float | str

    @property
    def numeric(self) -> bool:
        return isinstance(self.value, float)

    def __str__(self) -> str:
        value = self.value if isinstance(self.value, str) else f"{self.value:g}"
        return f"{self.field}{self.op}{value}"


def parse_field(text: str) -> FieldPath:
    """`config.a.b`, `metrics.NAME`, `tag.KEY` or a column name, else `InvalidInput`."""
    name = text.strip()
    source_name, dot, rest = name.partition(".")
    if dot and source_name in (Source.CONFIG, Source.METRICS, Source.TAG):
        source = Source(source_name)
        if not rest:
            raise InvalidInput(f"field {text!r} names no key: give {_example(source)}")
        if source is Source.CONFIG:
            keys = tuple(rest.split("."))
            if not all(_KEY.fullmatch(key) for key in keys):
                raise InvalidInput(
                    f"field {text!r}: a config key is empty or holds a quote or backslash; "
                    f"give {_example(source)}"
                )
            return FieldPath(source, keys)
        if not _KEY.fullmatch(rest):
            raise InvalidInput(
                f"field {text!r}: {rest!r} is not a valid name; give {_example(source)}"
            )
        return FieldPath(source, (rest,))
    if name in COLUMNS:
        return FieldPath(Source.COLUMN, (name,))
    raise InvalidInput(f"unknown field {text!r}: use {FIELD_HELP}")


def _example(source: Source) -> str:
    return {
        Source.CONFIG: "config.KEY, dotted into nested keys, e.g. config.optimizer.lr",
        Source.METRICS: "metrics.NAME, e.g. metrics.val_loss",
        Source.TAG: "tag.KEY, e.g. tag.method",
        Source.COLUMN: "a column",
    }[source]


def parse_filter(text: str) -> Filter:
    """`PATH OP VALUE` with OP one of = != < <= > >= (== is =), else `InvalidInput`."""
    match = _FILTER.fullmatch(text.strip())
    if match is None:
        raise InvalidInput(
            f"filter {text!r} has no operator: give PATH OP VALUE with OP one of "
            f"{' '.join(Op)}, {FILTER_EXAMPLE}"
        )
    if not match["field"]:
        raise InvalidInput(
            f"filter {text!r} names no field before {match['op']!r}: {FILTER_EXAMPLE}"
        )
    try:
        field = parse_field(match["field"])
    except InvalidInput as exc:
        raise InvalidInput(f"filter {text!r}: {exc}") from None
    op = Op.EQ if match["op"] == "==" else Op(match["op"])
    raw = match["value"]
    if not raw:
        raise InvalidInput(
            f'filter {text!r} has no value: give one after {op!r} (an empty text is "")'
        )
    if raw[0] in "=<>!":
        raise InvalidInput(
            f"filter {text!r}: the value {raw!r} starts with an operator character; "
            f"the operators are {' '.join(Op)} (quote the value to compare it as text)"
        )
    value: float | str
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "\"'":
        value = raw[1:-1]
    elif _NUMBER.fullmatch(raw):
        value = float(raw)
    else:
        value = raw
    return Filter(field, op, value)


def parse_since(text: str) -> timedelta:
    """`7d`, `12h`, `30m`, `90s` or `2w` (a fraction is fine: `1.5d`), or a bare number of days
    (`7`), above 0 and at most about ten years, else `InvalidInput`. The one parser of every
    `--since` (`runs`, `compare`, `export`, `report`)."""
    match = _SINCE.fullmatch(text)
    if match is None:
        raise InvalidInput(
            f"since {text!r} is not a duration: give a number and a unit (s, m, h, d or w; "
            "days without one), e.g. 7d, 12h or 30m"
        )
    seconds = float(match["amount"]) * _UNITS[match["unit"] or "d"]
    if not 0 < seconds <= MAX_SINCE.total_seconds():
        raise InvalidInput(
            f"since {text!r} is out of range: give more than 0 and at most "
            f"{MAX_SINCE.days} days, e.g. 7d"
        )
    return timedelta(seconds=seconds)


@dataclass(frozen=True, slots=True)
class RunQuery:
    """Which runs: every filter holds, the phase and outcome are among those given (any when
    none are), and the run was attached at or after `created_after`."""

    where: tuple[Filter, ...] = ()
    phases: tuple[Phase, ...] = ()
    outcomes: tuple[str, ...] = ()
    """Outcome values, or NO_OUTCOME for runs without one yet."""
    created_after: datetime | None = None

    @classmethod
    def build(
        cls,
        where: Iterable[str | Filter] = (),
        *,
        phase: str | Iterable[str] = (),
        outcome: str | Iterable[str] = (),
        since: str | timedelta | None = None,
        now: datetime,
    ) -> RunQuery:
        """From text as a person writes it (or parsed values), else `InvalidInput`."""
        filters = tuple(f if isinstance(f, Filter) else parse_filter(f) for f in where)
        phases = tuple(_phase(p) for p in _many(phase))
        outcomes = tuple(_outcome(o) for o in _many(outcome))
        created_after = None
        if since is not None:
            created_after = now - (parse_since(since) if isinstance(since, str) else since)
        return cls(filters, phases, outcomes, created_after)


def _many(value: str | Iterable[str]) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


def _phase(text: str) -> Phase:
    try:
        return Phase(text)
    except ValueError:
        raise InvalidInput(f"unknown phase {text!r}: give one of {', '.join(Phase)}") from None


def _outcome(text: str) -> str:
    if text == NO_OUTCOME:
        return text
    try:
        return Outcome(text).value
    except ValueError:
        raise InvalidInput(
            f"unknown outcome {text!r}: give one of {', '.join(Outcome)} or {NO_OUTCOME} "
            "(no outcome yet)"
        ) from None
