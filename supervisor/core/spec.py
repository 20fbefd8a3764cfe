"""What a user asked for when attaching a run: the run spec, validated once, stored as JSON.

Every field is checked here, so a bad value is rejected at `supervisorctl attach` with a message
that names it, before anything is stored or sent.
"""

from __future__ import annotations

import enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from supervisor.core.errors import InvalidInput
from supervisor.core.values import (
    InstanceId,
    RunId,
    S3Prefix,
    parse_instance_id,
    parse_region,
    parse_relative_key,
    parse_run_id,
)

DEFAULT_MARKERS: tuple[str, ...] = ("training_complete.txt", "COMPLETE", "done")
DEFAULT_FAILURE_MARKER = "FAILED"
MAX_GRACE_S = 7 * 24 * 3600.0


class OnComplete(enum.StrEnum):
    """What happens to the instance once the run completed and grace ended."""

    STOP = "stop"
    TERMINATE = "terminate"
    NONE = "none"


class RunSpec(BaseModel):
    """A run as attached. Immutable; a change of plan is a new event, not an edited spec."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    run_id: RunId
    instance_id: InstanceId
    region: str
    s3_prefix: str
    on_complete: OnComplete = OnComplete.STOP
    grace_s: float = Field(ge=0, le=MAX_GRACE_S, allow_inf_nan=False)
    markers: tuple[str, ...] = DEFAULT_MARKERS
    expect: tuple[str, ...] = ()
    failure_marker: str = DEFAULT_FAILURE_MARKER

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

    @property
    def prefix(self) -> S3Prefix:
        return S3Prefix.parse(self.s3_prefix)

    @classmethod
    def build(cls, **fields: Any) -> RunSpec:
        """Validate raw fields (from the CLI, a TOML spec or JSON) into a spec, or raise
        `InvalidInput` naming each bad field."""
        try:
            return cls.model_validate(fields)
        except ValidationError as exc:
            raise InvalidInput(describe_validation_error(exc)) from None


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
