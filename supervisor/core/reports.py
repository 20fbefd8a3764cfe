"""What the job reports through its run prefix (written by `supervisor.report`), parsed.

Pure: a file's text in, a typed report (or `InvalidInput` naming the problem) out. The
supervisor reads each file once per change of its ETag and stores what it holds.

Besides the reporter's own documents, the shapes people write by hand are read too: a flat
W&B summary (`wandb.run.summary._json_dict`) as final_metrics.json, and a list of records or
a table of columns (pandas' `to_json(orient="records")`, `to_dict("list")`) as history.json.
W&B's own keys (`_step`, `_runtime`, `_timestamp`, `_wandb`, any key starting with `_`) are
never metrics. The README's section "Report files" documents every shape: keep them in step.
"""

from __future__ import annotations

import json
import math
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from supervisor.core.errors import InvalidInput

FINAL_METRICS = "final_metrics.json"
HISTORY = "history.json"
MAX_REPORT_BYTES = 1024 * 1024
"""Larger report files are not read (history is kept to ~340 KB by the reporter)."""
MAX_STATUS_BYTES = 64 * 1024
FORMATS_DOC = 'the README, section "Report files"'
"""Where the shapes of the report files are documented: every note about a bad one says so."""
REPORT_UNREADABLE = "report_unreadable"
"""The monitor event, and the `tail` line, of a report file that could not be read."""
WANDB_STEP = "_step"
WANDB_RUNTIME = "_runtime"


def is_internal(name: str) -> bool:
    """W&B's own summary and history keys (`_step`, `_runtime`, `_timestamp`, `_wandb`...)."""
    return name.startswith("_")


def unreadable_note(problem: str) -> str:
    """The lasting note on a run whose report file could not be read: `problem` names the
    file and what is wrong; the note adds where the file's shapes are documented."""
    return f"{problem} (not recorded; the shapes it may take are in {FORMATS_DOC})"


def _whole(value: object) -> int | None:
    """A whole number of at least 0 (W&B writes `_step` as an int, pandas may make it 3.0)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        return None
    return int(value) if value >= 0 else None


def _seconds(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) and value >= 0 else None


def _numbers(value: dict[str, Any], *, internal: bool = True) -> dict[str, float]:
    """The finite numbers of `value`; with `internal=False`, not W&B's own keys either."""
    out: dict[str, float] = {}
    for name, number in value.items():
        if not internal and is_internal(str(name)):
            continue
        if isinstance(number, bool) or not isinstance(number, int | float):
            continue  # a label or a nested object in a W&B summary: not a metric
        if not math.isfinite(number):
            continue
        out[str(name)] = float(number)
    return out


class _Report(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class StatusReport(_Report):
    """`status.json`: the heartbeat, with the step and the W&B ids."""

    state: str = "running"
    step: int | None = None
    total_steps: int | None = None
    """The step training ends at, when the job says (`heartbeat(step, total_steps=...)`)."""
    metrics: dict[str, float] = Field(default_factory=dict)
    wandb_run_id: str | None = None
    wandb_url: str | None = None
    time: datetime | None = None

    @field_validator("metrics", mode="before")
    @classmethod
    def _metrics(cls, value: object) -> object:
        return _numbers(value) if isinstance(value, dict) else value


class WandbInfo(_Report):
    run_id: str | None = None
    url: str | None = None
    project: str | None = None
    summary: dict[str, float] = Field(default_factory=dict)

    @field_validator("summary", mode="before")
    @classmethod
    def _summary(cls, value: object) -> object:
        return _numbers(value, internal=False) if isinstance(value, dict) else value


class FinalMetrics(_Report):
    """`final_metrics.json`, written by `completed()` before the completion marker; or a flat
    W&B summary, whose `_step` is the total steps and `_runtime` the runtime."""

    metrics: dict[str, float] = Field(default_factory=dict)
    total_steps: int | None = None
    runtime_s: float | None = None
    wandb: WandbInfo | None = None

    @field_validator("metrics", mode="before")
    @classmethod
    def _metrics(cls, value: object) -> object:
        return _numbers(value, internal=False) if isinstance(value, dict) else value


_REPORTER_FINAL_FIELDS = frozenset({"format", "metrics", "total_steps", "wandb"})


def _final_metrics_document(data: dict[str, Any]) -> dict[str, Any]:
    """The reporter's `{"metrics": {...}, ...}` as it is; a flat object of numbers (a W&B
    summary) as one: its numbers the metrics, its `_step` and `_runtime` the steps and time."""
    if not data or _REPORTER_FINAL_FIELDS & data.keys():
        wandb = data.get("wandb")
        summary = wandb.get("summary") if isinstance(wandb, dict) else None
        if isinstance(summary, dict):  # W&B's own keys say what the reporter did not
            data = {
                "total_steps": _whole(summary.get(WANDB_STEP)),
                "runtime_s": _seconds(summary.get(WANDB_RUNTIME)),
                **{k: v for k, v in data.items() if v is not None},
            }
        return data
    if not _numbers(data, internal=False) and _whole(data.get(WANDB_STEP)) is None:
        raise InvalidInput(
            f"{FINAL_METRICS} has no metrics: it is neither the reporter's "
            '{"metrics": {...}} nor a flat object of numbers (a W&B summary)'
        )
    return {
        "metrics": data,
        "total_steps": _whole(data.get(WANDB_STEP)),
        "runtime_s": _seconds(data.get(WANDB_RUNTIME)),
    }


class History(_Report):
    """`history.json`: the records `log()` buffered, oldest first."""

    records: list[dict[str, Any]] = Field(default_factory=list)

    @field_validator("records")
    @classmethod
    def _finite(cls, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [_record(r) for r in records]

    @property
    def last_step(self) -> int | None:
        steps = [r["step"] for r in self.records if isinstance(r.get("step"), int)]
        return max(steps, default=None)


def _record(record: dict[str, Any]) -> dict[str, Any]:
    """One history record as stored: W&B's `_step` is its step, W&B's other own keys and
    empty cells (null) are left out, a whole float step (pandas' 3.0) is an int. NaN and
    infinities are not JSON (SQLite's JSON functions refuse them): dropped."""
    out: dict[str, Any] = {}
    if "step" not in record and WANDB_STEP in record:
        out["step"] = record[WANDB_STEP]
    for name, value in record.items():
        if is_internal(name) or value is None:
            continue
        if isinstance(value, float) and not math.isfinite(value):
            continue
        out[name] = value
    step = out.get("step")
    if isinstance(step, float) and _whole(step) is not None:
        out["step"] = int(step)
    return out


_HISTORY_SHAPES = (
    'the reporter\'s {"records": [...]}, a list of records [{"step": 0, ...}, ...], or '
    'columns {"step": [...], "loss": [...]}'
)


def _history_document(data: object) -> dict[str, Any]:
    """The reporter's `{"records": [...]}` as it is; a list of records, or a table of columns
    of one length (pandas' `to_dict("list")`), as the records they hold."""
    if isinstance(data, list):
        return {"records": data}
    if not isinstance(data, dict):
        raise InvalidInput(f"{HISTORY} is not a JSON object or list: give {_HISTORY_SHAPES}")
    if not data or "records" in data or "format" in data:
        return data
    columns = data
    if not all(isinstance(cells, list) for cells in columns.values()):
        scalar = next(name for name, cells in columns.items() if not isinstance(cells, list))
        raise InvalidInput(
            f"{HISTORY} has no records and {scalar!r} is not a column (a list): give "
            f"{_HISTORY_SHAPES}"
        )
    lengths = {name: len(cells) for name, cells in columns.items()}
    if len(set(lengths.values())) > 1:
        sizes = ", ".join(f"{name!r} {length}" for name, length in lengths.items())
        raise InvalidInput(
            f"{HISTORY}: its columns differ in length ({sizes}): give {_HISTORY_SHAPES}"
        )
    rows = next(iter(lengths.values()))
    return {"records": [{name: cells[i] for name, cells in columns.items()} for i in range(rows)]}


Report = StatusReport | FinalMetrics | History


def parse_report(key: str, text: str, *, heartbeat_file: str) -> Report:
    """Parse one report file; raise `InvalidInput` saying what is wrong with it."""
    model: type[Report]
    if key == heartbeat_file:
        model = StatusReport
    elif key == FINAL_METRICS:
        model = FinalMetrics
    elif key == HISTORY:
        model = History
    else:
        raise InvalidInput(f"{key} is not a report file")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"{key} is not JSON: {exc}") from None
    if model is History:
        data = _history_document(data)
    elif not isinstance(data, dict):
        raise InvalidInput(f"{key} is not a JSON object")
    elif model is FinalMetrics:
        data = _final_metrics_document(data)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'value'}: {e['msg']}" for e in exc.errors()
        )
        raise InvalidInput(f"{key}: {problems}") from None


def report_keys(heartbeat_file: str) -> tuple[str, ...]:
    return (heartbeat_file, FINAL_METRICS, HISTORY)
