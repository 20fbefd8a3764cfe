"""Reading a training config file for the run database: JSON, YAML or TOML, by extension.

Used by `supervisorctl attach --config-file` and by `supervisor.client`; the result is a JSON
object stored with the run spec (`config`), so `--where config.<key>=...` can query it.
"""

from __future__ import annotations

import datetime
import json
import tomllib
from pathlib import Path
from typing import Any

import yaml

from supervisor.core.errors import InvalidInput
from supervisor.core.spec import MAX_CONFIG_BYTES
from supervisor.core.values import check_json_value

SUFFIXES = (".json", ".yaml", ".yml", ".toml")
MAX_FILE_BYTES = MAX_CONFIG_BYTES
"""A config file larger than the stored config may be is refused before it is parsed."""


def load_config_file(path: Path) -> dict[str, Any]:
    """The file's content as a JSON-compatible dict, or `InvalidInput` saying what is wrong."""
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise InvalidInput(
            f"config file {path}: unknown extension {suffix or '(none)'!r}; "
            f"use one of {', '.join(SUFFIXES)}"
        )
    try:
        with path.open("rb") as file:  # at most one byte past the limit, whatever the file
            raw = file.read(MAX_FILE_BYTES + 1)
        text = raw.decode("utf-8")
    except FileNotFoundError:
        raise InvalidInput(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"config file {path} cannot be read: {exc}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise InvalidInput(
            f"config file {path} is larger than {MAX_FILE_BYTES} bytes: store the settings "
            "that describe the run, not data"
        )
    try:
        if suffix == ".json":
            data = json.loads(text)
        elif suffix == ".toml":
            data = tomllib.loads(text)
        else:
            data = yaml.safe_load(text)
    # ValueError: also an integer of more than 4,300 digits; RecursionError: deep nesting.
    except (ValueError, RecursionError, yaml.YAMLError) as exc:
        problem = " ".join(str(exc).split())  # YAML's messages span lines; this is one
        raise InvalidInput(
            f"config file {path} is not valid {suffix[1:].upper()}: {problem}"
        ) from None
    if not isinstance(data, dict):
        raise InvalidInput(
            f"config file {path} must hold a mapping at the top, not {type(data).__name__}"
        )
    # YAML and TOML dates and times become strings: the config is stored as JSON. The check
    # comes first: YAML aliases share one object, which JSON would write out each time (a
    # few hundred bytes of nested aliases expand into gigabytes).
    check_json_value(data, what=f"config file {path}", convertible=_DATES)
    try:
        return dict(json.loads(json.dumps(data, default=str, allow_nan=False)))
    except ValueError as exc:
        raise InvalidInput(f"config file {path} holds a value JSON cannot store: {exc}") from None


_DATES = (datetime.date, datetime.time)
"""YAML and TOML values that are written as text (ISO 8601); `datetime` is a `date`."""
