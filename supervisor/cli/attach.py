"""`supervisorctl attach`: its flags, built from the run-spec field table (`core.spec_fields`),
and the attach request, from --spec's keys and the flags given.

Imported only by `attach` (supervisorctl imports it when the verb is named), so the other verbs
and `--help` do not load the table.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from supervisor.cli.common import EXIT_USAGE, fail, run_id_argument
from supervisor.core.errors import InvalidInput
from supervisor.core.spec_fields import (
    BY_NAME,
    FIELDS,
    REQUIRED,
    TOML_KEYS,
    Kind,
    Part,
    SpecField,
)


def _finite_seconds(text: str) -> float:
    """A number of seconds: finite (argparse's float takes nan, inf and 1e400)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number of seconds")
    return value


_FLAG_FORMS: dict[Kind, dict[str, Any]] = {
    Kind.TEXT: {},
    Kind.COMMAND: {},
    Kind.SECONDS: {"type": _finite_seconds},
    Kind.COUNT: {"type": int},
    Kind.SWITCH: {"action": "store_true", "default": None},
    Kind.TEXTS: {"action": "append"},
    Kind.PAIRS: {"action": "append"},
    Kind.OBJECTIVES: {"action": "append"},
    Kind.JSON_OBJECT: {"type": Path},
    Kind.DURATION: {},  # (parsed with the spec: "12h", or seconds)
}
"""How argparse takes a flag of each kind (PARTS: one text flag per part). A flag not given is
None, so that only what was given overrides --spec and the defaults."""


def add_arguments(attach: argparse.ArgumentParser) -> None:
    """The run spec's flags, one per field of the table (in its order, in its groups), then
    the command's own --spec and --json."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    for field in FIELDS:
        target: argparse._ActionsContainer = attach
        if field.group is not None:
            if field.group.title not in groups:
                groups[field.group.title] = attach.add_argument_group(
                    field.group.title, field.group.description
                )
            target = groups[field.group.title]
        if field.positional:
            target.add_argument(
                _dest(field),
                nargs="?",
                type=run_id_argument,  # the run id: the one positional field
                metavar=field.metavar,
                help=field.help_text,
            )
            continue
        if field.parts:  # one text flag per part of the table
            for part in field.parts:
                target.add_argument(
                    part.flag, dest=_dest(field, part), metavar=part.metavar, help=part.help
                )
            continue
        options: dict[str, Any] = dict(_FLAG_FORMS[field.kind])
        if field.metavar is not None:
            options["metavar"] = field.metavar
        if field.choices:
            options["choices"] = field.choices
        target.add_argument(field.flag, dest=_dest(field), help=field.help_text, **options)
    attach.add_argument(
        "--spec",
        type=Path,
        metavar="FILE.toml",
        help="a run spec file (see config/run.example.toml)",
    )
    attach.add_argument("--json", action="store_true", help="print the new run as JSON")


def _dest(field: SpecField, part: Part | None = None) -> str:
    """Where argparse puts a field's flag: apart from the command's own arguments (the
    field `config` is not the global --config)."""
    return f"spec_{field.name}" if part is None else f"spec_{field.name}_{part.key}"


def _flag(args: argparse.Namespace, field: SpecField) -> Any:
    """A field's value as its flag gave it (None: not given)."""
    return getattr(args, _dest(field))


def request_body(args: argparse.Namespace) -> dict[str, Any]:
    """The attach request's JSON. Flags alone are typed by argparse as the request model
    types them (strings, finite numbers, lists of strings), so the model can refuse nothing
    and is not imported; with --spec or --config-file it checks the fields here first, as
    the daemon will."""
    fields = _attach_fields(args)
    files = [field for field in FIELDS if field.kind is Kind.JSON_OBJECT]
    if args.spec is None and all(_flag(args, f) is None for f in files) and _plain_strings(fields):
        return fields
    from pydantic import ValidationError

    from supervisor.adapters.protocol import AttachRequest
    from supervisor.core.spec import describe_validation_error

    try:
        request = AttachRequest.model_validate(fields)
    except ValidationError as exc:
        fail(describe_validation_error(exc), EXIT_USAGE)
    return {k: v for k, v in request.model_dump(mode="json").items() if v is not None}


def _plain_strings(value: object) -> bool:
    """Every string in `value` encodes as UTF-8 (an argument's undecodable bytes do not):
    the model's checks are skipped only for such values."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return True
    if isinstance(value, dict):
        return all(_plain_strings(k) and _plain_strings(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_plain_strings(v) for v in value)
    return True


def _attach_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The request's fields: --spec's keys, overridden by the flags given."""
    fields: dict[str, Any] = _read_spec(args.spec) if args.spec else {}
    flags = _flag_values(args)
    for field in FIELDS:
        if field.file_key is not None and field.file_key in fields:  # relative to the spec
            spec_dir = args.spec.parent if args.spec else Path()
            fields[field.name] = _json_file(spec_dir / str(fields.pop(field.file_key)))
    fields.update({k: v for k, v in flags.items() if v is not None})
    missing = [BY_NAME[name].flag for name in REQUIRED if name not in fields]
    if missing:
        fail(f"attach needs {', '.join(missing)} (as arguments or in --spec)", EXIT_USAGE)
    return fields


def _flag_values(args: argparse.Namespace) -> dict[str, Any]:
    """Each field as its flags gave it, in the request's terms; None: not given."""
    values: dict[str, Any] = {}
    for field in FIELDS:
        if field.parts:
            given = {part.key: getattr(args, _dest(field, part)) for part in field.parts}
            values[field.name] = {k: v for k, v in given.items() if v is not None} or None
            continue
        value = _flag(args, field)
        if value is not None and field.kind is Kind.PAIRS:
            value = _pairs(field.flag, value)
        elif value is not None and field.kind is Kind.JSON_OBJECT:
            value = _json_file(value)
        values[field.name] = value
    return values


def _pairs(flag: str, pairs: list[str]) -> dict[str, str]:
    table: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            fail(f"{flag} {pair!r}: give KEY=VALUE, e.g. {flag} method=mgda", EXIT_USAGE)
        table[key] = value
    return table


def _json_file(path: Path) -> dict[str, Any]:
    from supervisor.runconfig import load_config_file

    try:
        return load_config_file(path)
    except InvalidInput as exc:
        fail(str(exc), EXIT_USAGE)


def _read_spec(path: Path) -> dict[str, Any]:
    """The spec file's keys; any problem with it is a usage error (exit 2), as with
    --config-file."""
    import tomllib

    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        fail(f"spec file {path} does not exist", EXIT_USAGE)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        fail(f"spec file {path} is not valid TOML: {exc}", EXIT_USAGE)
    except OSError as exc:
        fail(f"spec file {path} cannot be read: {exc.strerror or exc}", EXIT_USAGE)
    unknown = sorted(set(data) - TOML_KEYS)
    if unknown:
        fail(
            f"spec file {path} has unknown keys {', '.join(unknown)}; "
            f"known keys: {', '.join(sorted(TOML_KEYS))}",
            EXIT_USAGE,
        )
    return data
