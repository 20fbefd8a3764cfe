"""`supervisorctl` refusing bad input before anything is sent: each one a usage error (exit 2)
with one line naming the value, and no traceback. No daemon runs here: a refusal that needed
one would fail with "supervisord is not running" (exit 1) instead.

Also the printers: text a job or a person controls is escaped, so no escape sequence reaches
the terminal and no newline breaks a line of a table."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import pytest

from supervisor.adapters.protocol import AttachmentView, RunDetail, RunView, TransitionView
from supervisor.cli import queries, supervisorctl
from supervisor.cli.common import printable
from supervisor.client import AsyncSupervisor, InvalidInput, attach_request
from supervisor.runconfig import MAX_FILE_BYTES, load_config_file
from tests.core.builders import INSTANCE, NOW

ATTACH = ("attach", "r1", "--instance-id", INSTANCE, "--s3-prefix", "s3://my-runs/r1/")
ESCAPES = "\x1b]0;pwned\x07\x1b[2J\x1b[31mred\u202e\r\nsecond line\x9b"


@pytest.fixture(autouse=True)
def _no_daemon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUPERVISOR_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)


def refusal(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run supervisorctl; it must exit 2 with nothing on stdout. Its error line."""
    with pytest.raises(SystemExit) as exited:
        supervisorctl.main(list(argv))
    out, err = capsys.readouterr()
    assert exited.value.code == 2, err
    assert out == ""
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if not line.startswith(("usage:", " "))]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize(
    "argv",
    [
        ("stop", "x/../RUN"),
        ("terminate", "../RUN"),
        ("detach", "RUN/"),
        ("resume", "RUN%2F"),
        ("status", "RUN?x=1"),
        ("status", "RUN#f"),
        ("tail", "RUN\x1b[2J"),
        ("attach-file", "a b", "--kind", "other", "s3://my-runs/x"),
        ("show", "x/../RUN"),
        ("attach", "x/../RUN", "--instance-id", INSTANCE, "--s3-prefix", "s3://my-runs/r1/"),
    ],
)
def test_every_verb_refuses_a_bad_run_id(
    capsys: pytest.CaptureFixture[str], argv: tuple[str, ...]
) -> None:
    line = refusal(capsys, *argv)
    assert f"argument RUN_ID: run id {printable(repr(argv[1]))} is not valid" in line
    assert "\x1b" not in line


@pytest.mark.parametrize(
    "flag", ["--grace-s", "--quiet-s", "--sigterm-timeout-s", "--stall-timeout-s"]
)
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e400", "NaN"])
def test_a_seconds_flag_refuses_nan_infinity_and_overflow_naming_the_flag(
    capsys: pytest.CaptureFixture[str], flag: str, value: str
) -> None:
    line = refusal(capsys, *ATTACH, f"{flag}={value}")
    assert f"argument {flag}: {value!r} is not a finite number of seconds" in line


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("grace_s = nan", "grace_s: input should be a finite number (got nan)"),
        ("grace_s = inf", "grace_s: input should be a finite number (got inf)"),
        ("quiet_s = -inf", "quiet_s: input should be a finite number"),
        ('grace_s = "three"', "grace_s: input should be a valid number"),
        ('markers = "COMPLETE"', "markers: input should be a valid list (got 'COMPLETE')"),
        ("config_file = 'c.json'", "c.json does not exist"),
        ("[config]\nlr = nan", "config: lr is nan: NaN and infinity"),
        ("grace_s = = 3", "is not valid TOML"),
        ("grace = 3", "has unknown keys grace"),
    ],
)
def test_a_bad_spec_file_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, spec: str, says: str
) -> None:
    path = tmp_path / "run.toml"
    path.write_text(
        f'run_id = "r1"\ninstance_id = "{INSTANCE}"\ns3_prefix = "s3://my-runs/r1/"\n{spec}\n'
    )
    assert says in refusal(capsys, "attach", "--spec", str(path))


def test_a_spec_that_is_a_directory_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert f"spec file {tmp_path} cannot be read" in refusal(
        capsys, "attach", "--spec", str(tmp_path)
    )


def alias_bomb(levels: int = 9) -> str:
    """Nine levels of nine aliases: a few hundred bytes that name 9**9 strings."""
    names = "abcdefghijklmnopqrstuvwxyz"
    lines = [f"{names[0]}: &{names[0]} [" + ", ".join(['"lol"'] * 9) + "]"]
    for level in range(1, levels):
        alias = f"*{names[level - 1]}"
        lines.append(f"{names[level]}: &{names[level]} [" + ", ".join([alias] * 9) + "]")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    ("name", "content", "says"),
    [
        ("bomb.yaml", alias_bomb(), "has more than 100000 values (counting each repeated part"),
        (
            "big.json",
            '{"x": "' + "a" * MAX_FILE_BYTES + '"}',
            f"larger than {MAX_FILE_BYTES} bytes",
        ),
        ("nan.yaml", "lr: .nan\n", "lr is nan: NaN and infinity"),
        ("inf.json", '{"lr": Infinity}', "lr is inf"),
        ("inf.toml", "lr = inf\n", "lr is inf"),
        ("huge.json", '{"seed": 1' + "0" * 30 + "}", "beyond the 64 that JSON readers keep"),
        ("deep.json", '{"a": ' + "[" * 100 + "]" * 100 + "}", "nested more than 64 levels"),
        ("deeper.json", "[" * 5000 + "]" * 5000, "is not valid JSON: maximum recursion depth"),
        ("bad.yaml", "a: [1,\n", "is not valid YAML"),
        ("bad.json", "{", "is not valid JSON"),
        ("tag.yaml", "x: !!python/object:os.system {}\n", "is not valid YAML"),
    ],
)
def test_a_bad_config_file_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, name: str, content: str, says: str
) -> None:
    (tmp_path / name).write_text(content)
    line = refusal(capsys, *ATTACH, "--config-file", name)
    assert f"config file {name}" in line and says in line


def test_a_yaml_config_with_a_few_aliases_is_read_whole(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("base: &base {lr: 0.1, steps: 3}\nrun: {<<: *base, steps: 5}\nagain: *base\n")
    assert load_config_file(path) == {
        "base": {"lr": 0.1, "steps": 3},
        "run": {"lr": 0.1, "steps": 5},
        "again": {"lr": 0.1, "steps": 3},
    }


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (
            ("tail", "--training", "--bytes", "1e20", "r1"),
            "argument --bytes: '1e20' is not a number",
        ),
        (("tail", "--training", "--bytes", "9" * 19, "r1"), "argument --bytes:"),
        (
            ("runs", "--phase", "bogus"),
            "argument --phase: invalid choice: 'bogus' (choose from 'pending'",
        ),
        (("runs", "--outcome", "bogus"), "invalid choice: 'bogus' (choose from 'completed'"),
        (("report", "--since", "nan"), "argument --since: since 'nan' is not a duration"),
        (("runs", "--since", "inf"), "argument --since: since 'inf' is not a duration"),
    ],
)
def test_wording_names_the_flag_and_plain_values(
    capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], says: str
) -> None:
    line = refusal(capsys, *argv)
    assert says in line
    assert "<Phase." not in line and "<Outcome." not in line


def test_report_and_runs_take_the_same_since_forms() -> None:
    parser = supervisorctl._parser()
    for text, days in (("7", 7.0), ("7d", 7.0), ("12h", 0.5), ("2w", 14.0)):
        assert parser.parse_args(["report", "--since", text]).since == days
        assert parser.parse_args(["runs", "--since", text]).since == timedelta(days=days)


# -- the Python client -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        {"grace_s": float("nan")},
        {"grace_s": float("inf")},
        {"config": {"lr": float("nan")}},
        {"config": {"nested": {"eps": [0.1, float("-inf")]}}},
    ],
)
def test_the_client_refuses_nan_and_infinity(fields: dict[str, object]) -> None:
    with pytest.raises(InvalidInput, match=r"finite number|NaN and infinity"):
        attach_request("r1", INSTANCE, "s3://my-runs/r1/", fields)


@pytest.mark.parametrize("run_id", ["x/../RUN", "RUN?x=1", "RUN#f"])
async def test_the_client_refuses_a_bad_run_id_before_looking_for_a_daemon(
    tmp_path: Path, run_id: str
) -> None:
    client = AsyncSupervisor(tmp_path / "no.sock")
    for call in (client.status(run_id), client.stop(run_id), client.resume(run_id)):
        with pytest.raises(InvalidInput, match="is not valid"):
            await call


# -- printing ----------------------------------------------------------------------------------


def test_printable_escapes_control_and_format_characters_only() -> None:
    assert printable("plain ünïcode ✓ text") == "plain ünïcode ✓ text"
    assert printable(ESCAPES) == (
        "\\x1b]0;pwned\\x07\\x1b[2J\\x1b[31mred\\u202e\\r\\nsecond line\\u009b"
    )


def detail(text: str) -> RunDetail:
    return RunDetail(
        run_id="r1",
        phase="crashed",
        outcome="crashed",
        instance_id=INSTANCE,
        region="us-east-1",
        s3_prefix="s3://my-runs/r1/",
        on_complete="stop",
        reason=f"FAILED marker: {text}",
        version=3,
        phase_since=NOW,
        spec={},
        transitions=[
            TransitionView.model_validate(
                {"seq": 1, "from": "running", "to": "crashed", "at": NOW, "reason": text}
            )
        ],
        attachments=[
            AttachmentView(kind="crash-log", uri="s3://my-runs/r1/crash/error.log", added_at=NOW,
                           excerpt=f"line one\n{text}\n")
        ],
    )  # fmt: skip


def assert_inert(out: str, lines: int) -> None:
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202e]", out), repr(out)
    assert out.count("\n") == lines, out


def test_status_prints_a_failed_markers_text_inert(capsys: pytest.CaptureFixture[str]) -> None:
    supervisorctl._print_detail(detail(ESCAPES), as_json=False)
    out = capsys.readouterr().out
    assert_inert(out, lines=10)  # the crash log's lines split, each escaped
    assert "FAILED marker: \\x1b]0;pwned" in out


def test_the_runs_table_and_tail_keep_one_line_per_run(capsys: pytest.CaptureFixture[str]) -> None:
    base = detail(ESCAPES)
    supervisorctl._print_table(
        [
            RunView(
                **base.model_dump(
                    exclude={"spec", "transitions", "attachments", "actions", "instances"}
                )
            )
        ],
        as_json=False,
    )
    supervisorctl._print_run(base, as_json=False, verb="stop requested")
    queries._print_table([["RUN ID", "NAME"], ["r1", f"name {ESCAPES}"]])
    out = capsys.readouterr().out
    assert_inert(out, lines=2 + 1 + 2)


def test_json_output_escapes_control_characters_too(capsys: pytest.CaptureFixture[str]) -> None:
    supervisorctl._print_detail(detail(ESCAPES), as_json=True)
    assert "\x1b" not in capsys.readouterr().out
