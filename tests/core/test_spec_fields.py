"""The run-spec field table (core/spec_fields.py) and what must agree with it: the validator
(RunSpec: its fields, defaults, limits and choices) and the wire model built from it
(AttachRequest)."""

from __future__ import annotations

import enum
import types
from typing import Any, Union, get_args, get_origin

import pytest
from annotated_types import Ge, Gt, Le, Lt
from pydantic.fields import FieldInfo

from supervisor.adapters.protocol import AttachRequest
from supervisor.core.spec import RunSpec
from supervisor.core.spec_fields import (
    BY_NAME,
    FIELDS,
    REQUIRED,
    TOML_KEYS,
    Default,
    Kind,
    SpecField,
    shown_default,
)

STORED = [field for field in FIELDS if field.stored]


def ids(fields: list[SpecField]) -> list[str]:
    return [field.name for field in fields]


def model_field(field: SpecField) -> FieldInfo:
    return RunSpec.model_fields[field.name]


def without_none(annotation: Any) -> Any:
    """`X | None` as X; anything else as it is."""
    if get_origin(annotation) in (Union, types.UnionType):
        rest = [arg for arg in get_args(annotation) if arg is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return annotation


def test_the_stored_fields_are_the_run_specs_fields_and_no_others() -> None:
    assert sorted(ids(STORED)) == sorted(RunSpec.model_fields)


def test_each_field_has_one_row_and_each_flag_and_toml_key_one_field() -> None:
    flags = [flag for field in FIELDS for flag in field.flags]
    keys = [key for field in FIELDS for key in field.toml_keys]
    assert len(BY_NAME) == len(FIELDS)
    assert len(set(flags)) == len(flags)
    assert len(set(keys)) == len(keys) == len(TOML_KEYS)


@pytest.mark.parametrize("field", STORED, ids=ids(STORED))
def test_a_fields_default_is_the_run_specs(field: SpecField) -> None:
    info = model_field(field)
    if field.default in (Default.REQUIRED, Default.DAEMON):
        # The daemon fills in grace_s and region before it validates: RunSpec needs them.
        assert info.is_required()
        return
    assert not info.is_required()
    expected = None if field.default is Default.NONE else field.default
    assert info.get_default(call_default_factory=True) == expected


def bounds(info: FieldInfo) -> tuple[object, bool, object]:
    """The model's numeric limits: (minimum, the minimum excluded, maximum)."""
    minimum: object = None
    maximum: object = None
    above = False
    for item in info.metadata:
        if isinstance(item, Ge):
            minimum = item.ge
        elif isinstance(item, Gt):
            minimum, above = item.gt, True
        elif isinstance(item, Le):
            maximum = item.le
        elif isinstance(item, Lt):
            pytest.fail(f"the table has no exclusive maximum, the model has lt={item.lt}")
    return minimum, above, maximum


@pytest.mark.parametrize("field", STORED, ids=ids(STORED))
def test_a_fields_limits_are_the_run_specs(field: SpecField) -> None:
    assert (field.minimum, field.above_minimum, field.maximum) == bounds(model_field(field))


@pytest.mark.parametrize("field", STORED, ids=ids(STORED))
def test_a_fields_choices_are_the_values_of_the_run_specs_enum(field: SpecField) -> None:
    annotation = without_none(model_field(field).annotation)
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        assert field.choices == tuple(member.value for member in annotation)
    else:
        assert field.choices == ()


def test_the_wire_model_has_the_tables_fields_in_its_order() -> None:
    assert list(AttachRequest.model_fields) == ids(list(FIELDS))


@pytest.mark.parametrize("field", FIELDS, ids=ids(list(FIELDS)))
def test_a_wire_field_has_the_tables_type_and_is_optional_unless_required(
    field: SpecField,
) -> None:
    info = AttachRequest.model_fields[field.name]
    assert info.is_required() is field.required
    assert info.annotation == (field.type if field.required else field.type | None)


def test_the_required_fields_are_the_three_attach_needs() -> None:
    assert REQUIRED == ("run_id", "instance_id", "s3_prefix")
    assert [field.flag for field in FIELDS if field.required] == [
        "RUN_ID",
        "--instance-id",
        "--s3-prefix",
    ]


@pytest.mark.parametrize(
    ("name", "ends"),
    [
        ("sigterm_timeout_s", "after SIGTERM (120)"),
        ("checkpoint_attempts", "applies (3)"),
        ("failure_marker", "failed (FAILED)"),
        ("checkpoint_pattern", "(default: *.pt *.pth *.ckpt *.safetensors checkpoint-*/ "
         "checkpoint_*/)"),
    ],
)  # fmt: skip
def test_a_help_text_shows_the_rows_default(name: str, ends: str) -> None:
    assert BY_NAME[name].help_text.endswith(ends)


def test_a_default_is_shown_as_a_person_writes_it() -> None:
    assert [shown_default(v) for v in (120.0, 0.5, 3, ("a", "b"), "stop", Default.NONE)] == [
        "120",
        "0.5",
        "3",
        "a b",
        "stop",
        "none",
    ]


def test_structured_kinds_are_the_tables_and_lists_of_tables() -> None:
    assert {kind for kind in Kind if kind.structured} == {
        Kind.PAIRS,
        Kind.JSON_OBJECT,
        Kind.OBJECTIVES,
        Kind.PARTS,
    }
