"""Bad input through the real `supervisorctl`, `supervisord` and control socket: each refused
with one line, before anything is stored, with the database and the running run untouched;
and a job's FAILED text shown inert by `status` and `show`."""

from __future__ import annotations

import asyncio
import subprocess

import aiohttp
import pytest
import yarl

from tests.conftest import Fleet
from tests.e2e.conftest import SUPERVISORCTL, TERMINAL, Cli, wait_for

pytestmark = pytest.mark.e2e


def error_lines(done: subprocess.CompletedProcess[str]) -> list[str]:
    """The stderr lines that are not argparse's usage text."""
    return [line for line in done.stderr.splitlines() if not line.startswith(("usage:", " "))]


async def post_raw(socket_path: str, path: str) -> tuple[int, str]:
    """POST a path exactly as written (no client-side quoting or normalising)."""
    connector = aiohttp.UnixConnector(path=socket_path)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.post(yarl.URL(f"http://supervisord{path}", encoded=True)) as reply,
    ):
        return reply.status, await reply.text()


def test_bad_input_is_refused_on_one_line_and_changes_nothing(shared: Cli, fleet: Fleet) -> None:
    (instance,) = fleet.launch()
    prefix = fleet.prefix("bad-input-1")
    shared.attach("bad-input-1", instance, prefix)
    shared.wait_db_phase("bad-input-1", "running")
    wait_for(
        lambda: all(
            row[2] in TERMINAL for row in shared.db_dump()["runs"] if row[0] != "bad-input-1"
        ),
        message="the shared daemon's earlier runs to end",
    )
    before = shared.db_dump()

    attach = ("attach", "bad-input-2", "--instance-id", instance, "--s3-prefix", prefix)
    long_prefix = f"{prefix}{'é' * 600}/"
    results = shared.ctl_all(
        ("stop", "x/../bad-input-1"),
        ("status", "bad-input-1?x=1"),
        ("detach", "bad-input-1#f"),
        (*attach, "--grace-s", "nan"),
        (*attach, "--quiet-s", "1e400"),
        ("attach", "bad-input-2", "--instance-id", instance, "--s3-prefix", long_prefix),
        ("attach-file", "bad-input-1", "--kind", "analysis",
         "https://x.example/a?X-Amz-Credential=AKIA&X-Amz-Signature=deadbeef"),
    )  # fmt: skip
    for done in results:
        assert done.returncode in (1, 2), done
        assert done.stdout == "", done
        assert "Traceback" not in done.stderr, done
        assert len(error_lines(done)) == 1, done.stderr
    stop, status, detach, nan, overflow, long_key, secret = results
    for done, value in ((stop, "x/../bad-input-1"), (status, "bad-input-1?x=1")):
        assert f"run id {value!r} is not valid" in done.stderr, done
    assert "'bad-input-1#f' is not valid" in detach.stderr
    assert "argument --grace-s: 'nan' is not a finite number" in nan.stderr
    assert "argument --quiet-s: '1e400' is not a finite number" in overflow.stderr
    assert "1218 bytes long as UTF-8; S3 keys are at most 1024 bytes" in long_key.stderr
    assert "X-Amz-Credential, X-Amz-Signature" in secret.stderr
    assert "deadbeef" not in secret.stderr

    # The daemon's own routes refuse what a client could send without quoting.
    refused = [
        asyncio.run(post_raw(str(shared.socket_path), path))
        for path in ("/v1/runs/x%2F..%2Fbad-input-1/stop", "/v1/runs/bad-input-1%3Fx=1/detach")
    ]
    for status_code, body in refused:
        assert status_code == 400 and "is not valid" in body, body

    assert shared.db_dump() == before
    assert shared.db_run("bad-input-1")["phase"] == "running"  # type: ignore[index]
    assert fleet.state(instance) == "running"


ESCAPES = "\x1b]0;pwned\x07\x1b[2J\x1b[31mexit 1\r\nfake line"


def test_a_failed_markers_text_reaches_the_terminal_inert(shared: Cli, fleet: Fleet) -> None:
    (instance,) = fleet.launch()
    prefix = fleet.prefix("bad-input-failed")
    shared.attach("bad-input-failed", instance, prefix, "--on-crash", "keep")
    shared.wait_db_phase("bad-input-failed", "running")
    fleet.put("runs/bad-input-failed/FAILED", ESCAPES)
    shared.wait_db_phase("bad-input-failed", "crashed")

    status, show, table = shared.ctl_all(
        ("status", "bad-input-failed"), ("show", "bad-input-failed"), ("status",)
    )
    for done in (status, show, table):
        assert done.returncode == 0, done
        assert "\x1b" not in done.stdout and "\r" not in done.stdout and "\x07" not in done.stdout
    shown = "\\x1b]0;pwned\\x07\\x1b[2J\\x1b[31mexit 1\\r\\nfake line"
    kept = "; on_crash=keep leaves the instance running for a person"
    assert f"  reason     failure marker FAILED: {shown}{kept}" in status.stdout.splitlines()
    assert f"  reason      failure marker FAILED: {shown}{kept}" in show.stdout.splitlines()
    assert not any(line.startswith("fake line") for line in show.stdout.splitlines())


def test_daemon_settings_outside_a_runs_bounds_are_refused_before_starting(cli: Cli) -> None:
    inf = cli.supervisord("start", SUPERVISOR_GRACE_S="inf")
    too_long = cli.supervisord("start", SUPERVISOR_GRACE_S="1000000")
    for done in (inf, too_long):
        assert done.returncode == 1, done
        assert len(error_lines(done)) == 1, done.stderr
        assert "bad setting SUPERVISOR_GRACE_S" in done.stderr, done.stderr
    assert cli.daemon_pid() is None
    assert not cli.db_path.exists()


def test_an_unknown_supervisor_variable_is_warned_about_by_name(cli: Cli) -> None:
    done = subprocess.run(
        [SUPERVISORCTL, "runs"],
        env={**cli.env, "SUPERVISOR_GRACE": "10"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (
        "supervisorctl: warning: ignoring unknown variable SUPERVISOR_GRACE: "
        "did you mean SUPERVISOR_GRACE_S?"
    ) in done.stderr.splitlines(), done.stderr
