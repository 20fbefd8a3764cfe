"""The example files in config/ are what people copy: each must load as it is, and the run
spec example must teach every key a spec takes, each with a value the field table allows."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter

from supervisor.core.spec import RunSpec
from supervisor.core.spec_fields import FIELDS, TOML_KEYS

CONFIG = Path(__file__).resolve().parents[2] / "config"
RUN_EXAMPLE = CONFIG / "run.example.toml"
BY_TOML_KEY = {key: field for field in FIELDS for key in field.toml_keys}


def commented_out() -> dict[str, Any]:
    """The `# key = value` lines of the run spec example: keys shown but not set."""
    text = RUN_EXAMPLE.read_text(encoding="utf-8")
    lines = re.findall(r"^# ([a-z0-9_]+ = .+)$", text, re.M)
    return {key: value for line in lines for key, value in tomllib.loads(line).items()}


def test_the_run_spec_example_is_valid_and_shows_every_key() -> None:
    fields = tomllib.loads(RUN_EXAMPLE.read_text(encoding="utf-8"))
    spec = RunSpec.build(**fields)
    assert spec.run_id == fields["run_id"]
    # Keys with no sensible example value are shown commented out instead.
    missing = sorted(TOML_KEYS - set(fields) - set(commented_out()))
    assert missing == [], f"config/run.example.toml does not show {missing}"


def example_keys() -> list[tuple[str, Any]]:
    set_keys = tomllib.loads(RUN_EXAMPLE.read_text(encoding="utf-8"))
    return [*set_keys.items(), *commented_out().items()]


@pytest.mark.parametrize(("key", "value"), example_keys(), ids=[k for k, _ in example_keys()])
def test_each_key_of_the_run_spec_example_is_the_tables_with_a_value_it_allows(
    key: str, value: Any
) -> None:
    assert key in BY_TOML_KEY, f"{key} is not a key of the run-spec field table"
    field = BY_TOML_KEY[key]
    if key != field.name:  # a file_key (config_file): a path to the value, not the value
        assert isinstance(value, str)
        return
    TypeAdapter(field.type).validate_python(value)
    if field.choices:
        assert value in field.choices
    if field.minimum is not None:
        assert value > field.minimum if field.above_minimum else value >= field.minimum
    if field.maximum is not None:
        assert value <= field.maximum
