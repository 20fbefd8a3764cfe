"""Reading a training config file for the run database: JSON, YAML or TOML, by extension.

Used by `supervisorctl attach --config-file` and by `supervisor.client`; the result is a JSON
object stored with the run spec (`config`), so `--where config.<key>=...` can query it.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import yaml

from supervisor.core.errors import InvalidInput

SUFFIXES = (".json", ".yaml", ".yml", ".toml")


def load_config_file(path: Path) -> dict[str, Any]:
    """The file's content as a JSON-compatible dict, or `InvalidInput` saying what is wrong."""
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise InvalidInput(
            f"config file {path}: unknown extension {suffix or '(none)'!r}; "
            f"use one of {', '.join(SUFFIXES)}"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InvalidInput(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"config file {path} cannot be read: {exc}") from None
    try:
        if suffix == ".json":
            data = json.loads(text)
        elif suffix == ".toml":
            data = tomllib.loads(text)
        else:
            data = yaml.safe_load(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise InvalidInput(f"config file {path} is not valid {suffix[1:].upper()}: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidInput(
            f"config file {path} must hold a mapping at the top, not {type(data).__name__}"
        )
    try:  # YAML and TOML dates and times become strings: the config is stored as JSON
        return dict(json.loads(json.dumps(data, default=str, allow_nan=False)))
    except ValueError as exc:
        raise InvalidInput(f"config file {path} holds a value JSON cannot store: {exc}") from None
