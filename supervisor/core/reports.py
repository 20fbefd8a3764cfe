"""What the job reports through its run prefix (written by `supervisor.report`), parsed.

Pure: a file's text in, a typed report (or `InvalidInput` naming the problem) out. The
supervisor reads each file once per change of its ETag and stores what it holds.
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


def _numbers(value: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, number in value.items():
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
        return _numbers(value) if isinstance(value, dict) else value


class FinalMetrics(_Report):
    """`final_metrics.json`, written by `completed()` before the completion marker."""

    metrics: dict[str, float] = Field(default_factory=dict)
    total_steps: int | None = None
    wandb: WandbInfo | None = None

    @field_validator("metrics", mode="before")
    @classmethod
    def _metrics(cls, value: object) -> object:
        return _numbers(value) if isinstance(value, dict) else value


class History(_Report):
    """`history.json`: the records `log()` buffered, oldest first."""

    records: list[dict[str, Any]] = Field(default_factory=list)

    @field_validator("records")
    @classmethod
    def _finite(cls, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """NaN and infinities are not JSON (SQLite's JSON functions refuse them): dropped."""
        return [
            {k: v for k, v in r.items() if not (isinstance(v, float) and not math.isfinite(v))}
            for r in records
        ]

    @property
    def last_step(self) -> int | None:
        steps = [r["step"] for r in self.records if isinstance(r.get("step"), int)]
        return max(steps, default=None)


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
    if not isinstance(data, dict):
        raise InvalidInput(f"{key} is not a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'value'}: {e['msg']}" for e in exc.errors()
        )
        raise InvalidInput(f"{key}: {problems}") from None


def report_keys(heartbeat_file: str) -> tuple[str, ...]:
    return (heartbeat_file, FINAL_METRICS, HISTORY)
