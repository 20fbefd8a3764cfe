"""`supervisorctl attach`'s flags come from the run-spec field table, each flag lands in its
field of the request, the README's flag table lists exactly those flags, and every verb is a
row of the command table."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import pytest

from supervisor.cli import attach, supervisorctl
from supervisor.cli.verbs import QUERY_COMMANDS
from supervisor.core.spec_fields import BY_NAME, FIELDS, Kind, SpecField
from tests.core.builders import INSTANCE

REPO = Path(__file__).resolve().parents[2]
REQUIRED_ARGV = ["r1", "--instance-id", INSTANCE, "--s3-prefix", "s3://my-runs/r1/"]
ATTACH_OWN_FLAGS = {"-h", "--help", "--spec", "--json"}
"""attach's options that are not run-spec fields."""


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def attach_parser() -> argparse.ArgumentParser:
    return subparsers(supervisorctl._parser())["attach"]


def test_attach_has_one_flag_per_field_of_the_table_and_its_own_options() -> None:
    options = {flag for action in attach_parser()._actions for flag in action.option_strings}
    table = {flag for field in FIELDS for flag in field.flags}
    assert options - ATTACH_OWN_FLAGS == table


def test_attach_help_shows_each_fields_help_and_choices() -> None:
    actions = {a.dest: a for a in attach_parser()._actions}
    for field in FIELDS:
        if field.parts:
            continue
        action = actions[attach._dest(field)]
        assert action.help == field.help_text
        assert tuple(action.choices or ()) == field.choices


def sample(field: SpecField, tmp_path: Path) -> tuple[list[str], Any]:
    """A command line giving the field, and the value the request gets from it."""
    flag = field.flag
    match field.kind:
        case Kind.SWITCH:
            return [flag], True
        case Kind.SECONDS:
            return [flag, "2.5"], 2.5
        case Kind.COUNT:
            return [flag, "2"], 2
        case Kind.TEXTS | Kind.OBJECTIVES:
            return [flag, "a:min", flag, "b:max"], ["a:min", "b:max"]
        case Kind.PAIRS:
            return [flag, "team=ml", flag, "seed=1"], {"team": "ml", "seed": "1"}
        case Kind.JSON_OBJECT:
            path = tmp_path / "config.json"
            path.write_text('{"lr": 0.1}')
            return [flag, str(path)], {"lr": 0.1}
        case Kind.PARTS:
            argv = [arg for part in field.parts for arg in (part.flag, f"{part.key}-given")]
            return argv, {part.key: f"{part.key}-given" for part in field.parts}
        case _:
            value = field.choices[0] if field.choices else "given"
            return [flag, value], value


OPTIONAL = [field for field in FIELDS if not field.required]


@pytest.mark.parametrize("field", OPTIONAL, ids=[field.name for field in OPTIONAL])
def test_each_flag_lands_in_its_field_of_the_request(field: SpecField, tmp_path: Path) -> None:
    argv, expected = sample(field, tmp_path)
    args = supervisorctl._parser().parse_args(["attach", *REQUIRED_ARGV, *argv])
    fields = attach._attach_fields(args)
    assert fields == {
        "run_id": "r1",
        "instance_id": INSTANCE,
        "s3_prefix": "s3://my-runs/r1/",
        field.name: expected,
    }


def test_flags_not_given_leave_the_request_to_the_defaults() -> None:
    args = supervisorctl._parser().parse_args(["attach", *REQUIRED_ARGV])
    assert attach._attach_fields(args) == {
        "run_id": "r1",
        "instance_id": INSTANCE,
        "s3_prefix": "s3://my-runs/r1/",
    }


def test_the_global_config_flag_is_not_the_config_field() -> None:
    """`--config` finds the daemon; `--config-file` is the run's training config."""
    args = supervisorctl._parser().parse_args(["--config", "d.toml", "attach", *REQUIRED_ARGV])
    assert args.config == Path("d.toml")
    assert "config" not in attach._attach_fields(args)


# -- the README ---------------------------------------------------------------------------------


def readme_flag_rows() -> list[tuple[set[str], set[str]]]:
    """The README's table of attach flags: each row's flags and its `--spec` keys."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    header = "| flag | `--spec` key | default | meaning |"
    assert text.count(header) == 1, "README.md has no single table of attach flags"
    rows = []
    for line in text.split(header, 1)[1].splitlines()[2:]:
        if not line.startswith("|"):
            break
        flag_cell, key_cell = re.split(r"(?<!\\)\|", line)[1:3]
        flags = set(re.findall(r"`(--[a-z0-9-]+)", flag_cell))
        keys = set(re.findall(r"`([a-z0-9_]+)`", key_cell))
        rows.append((flags, keys))
    return rows


def test_the_readme_flag_table_lists_exactly_the_tables_flags() -> None:
    listed = [flag for flags, _ in readme_flag_rows() for flag in flags]
    table = [flag for field in FIELDS for flag in field.flags]
    assert sorted(listed) == sorted(table)


def test_each_readme_flag_row_names_its_fields_spec_keys() -> None:
    by_flag = {flag: field for field in FIELDS for flag in field.flags}
    for flags, keys in readme_flag_rows():
        fields = {by_flag[flag].name: by_flag[flag] for flag in flags}
        expected = {key for field in fields.values() for key in field.toml_keys}
        assert keys >= expected, f"README row {sorted(flags)} names {sorted(keys)}"
        assert keys - expected <= {"id", "name", "version"}  # launch_template's parts


# -- the command table --------------------------------------------------------------------------


def test_every_verb_is_a_row_of_the_command_table_in_its_order() -> None:
    verbs = subparsers(supervisorctl._parser())
    assert list(verbs) == list(supervisorctl.COMMANDS)
    assert list(QUERY_COMMANDS) == [
        name for name, command in supervisorctl.COMMANDS.items() if not command.needs_daemon
    ]


def test_a_verb_not_named_on_the_command_line_gets_no_arguments_built() -> None:
    verbs = subparsers(supervisorctl._parser(named=["status"]))
    assert {a.dest for a in verbs["status"]._actions} == {"help", "run_id", "json"}
    assert {a.dest for a in verbs["attach"]._actions} == {"help"}
    assert {a.dest for a in verbs["runs"]._actions} == {"help"}


def test_the_top_level_help_lists_each_verb_with_its_help(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        supervisorctl.main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    for command in supervisorctl.COMMANDS.values():
        assert f"{command.name} {command.help}" in out


def test_the_missing_required_fields_are_named_as_their_flags(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SUPERVISOR_STATE_DIR", str(tmp_path))
    with pytest.raises(SystemExit) as exited:
        supervisorctl.main(["attach"])
    assert exited.value.code == 2
    flags = ", ".join(BY_NAME[name].flag for name in ("run_id", "instance_id", "s3_prefix"))
    assert f"attach needs {flags} (as arguments or in --spec)" in capsys.readouterr().err
