"""The CLI imports only what the verb needs: `--help`, the daemon-talking verbs and the query
verbs never load aiohttp, pydantic-settings, boto or the daemon's libraries, and the first two
not even pydantic (each start-up would pay for them: issue 12's tenth of a second).

Each case runs the real entry point in a fresh interpreter and reads its `sys.modules`; the
daemon is a stand-in speaking the control protocol on a Unix socket (our own port), the run
database a real SQLite file written by the real store.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import http.server
import json
import os
import socketserver
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from supervisor.adapters import protocol
from supervisor.adapters.migrate_db import copy_database
from supervisor.cli import views
from supervisor.cli.common import load_settings, locate_daemon
from tests.adapters.run_database import Seed, seed

DAEMON_LIBRARIES = (
    "aiohttp",
    "pydantic_settings",
    "boto3",
    "botocore",
    "aioboto3",
    "aiobotocore",
    "aiosqlite",
    "structlog",
    "yaml",
    "supervisor.runtime.daemon",
    "supervisor.runtime.settings",
    "supervisor.adapters.control",
)
"""Never loaded by these verbs."""
VALIDATION = ("pydantic", "pydantic_core")
"""Not loaded either by --help and the verbs that talk to the daemon."""
ATTACH_ONLY = ("supervisor.cli.attach", "supervisor.core.spec_fields")
"""attach's flags and request: loaded by attach alone."""

_PROBE = """
import contextlib, io, json, sys
from supervisor.cli import {module} as cli
out = io.StringIO()
with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
    code = cli.main({argv!r})
print(json.dumps({{"out": out.getvalue(), "modules": sorted(sys.modules)}}))
"""

STATUS = {
    "pid": 4242,
    "version": "0.1.0",
    "started_at": "2026-11-22T12:00:00Z",
    "state_dir": "/tmp/state",
    "socket": "/tmp/state/supervisord.sock",
    "runs_by_phase": {"running": 1},
    "monitors": 1,
    "aws_calls": {"DescribeInstanceStatus": 2},
}
ANSWERS: dict[str, Any] = {"/v1/runs": [], "/v1/status": STATUS}
ATTACHED = {
    "run_id": "fast-run",
    "phase": "pending",
    "outcome": None,
    "instance_id": "i-0123456789abcdef0",
    "region": "us-east-1",
    "s3_prefix": "s3://my-runs/fast-run/",
    "on_complete": "stop",
    "reason": "attached",
    "version": 1,
    "phase_since": "2026-11-22T12:00:00+00:00",
}
"""The stand-in daemon's answer to `POST /v1/runs`."""


@pytest.fixture
def state_dir() -> Iterator[Path]:
    """Short, under /tmp: a Unix socket's path is limited to 107 bytes."""
    with tempfile.TemporaryDirectory(prefix="sv", dir="/tmp") as folder:
        yield Path(folder)


class _Answer(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps(ANSWERS[self.path]).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        body = json.dumps(ATTACHED).encode()
        self.send_response(201)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def address_string(self) -> str:
        return "local"  # a Unix socket's client address is empty


class _UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


@contextlib.contextmanager
def stand_in_daemon(state_dir: Path) -> Iterator[None]:
    """Answers `GET /v1/runs`, `GET /v1/status` and `POST /v1/runs` on the state directory's
    socket."""
    server = _UnixHTTPServer(str(state_dir / "supervisord.sock"), _Answer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


def run_cli(module: str, argv: list[str], state_dir: Path, **settings: str) -> tuple[str, set[str]]:
    """The verb's output and the modules loaded once it is done, in a fresh interpreter
    (with `settings` as SUPERVISOR_<NAME> variables)."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("SUPERVISOR_")}
    env["SUPERVISOR_STATE_DIR"] = str(state_dir)
    env.update({f"SUPERVISOR_{name.upper()}": value for name, value in settings.items()})
    done = subprocess.run(
        [sys.executable, "-c", _PROBE.format(module=module, argv=argv)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result["out"], set(result["modules"])


def loaded(modules: set[str], names: tuple[str, ...]) -> list[str]:
    return sorted(name for name in names if name in modules)


def test_help_loads_neither_the_daemons_libraries_nor_pydantic(state_dir: Path) -> None:
    out, modules = run_cli("supervisorctl", ["--help"], state_dir)
    assert "usage: supervisorctl" in out
    assert loaded(modules, DAEMON_LIBRARIES + VALIDATION + ATTACH_ONLY) == []


def test_status_talks_to_the_daemon_without_aiohttp_or_pydantic(state_dir: Path) -> None:
    with stand_in_daemon(state_dir):
        out, modules = run_cli("supervisorctl", ["status"], state_dir)
    assert out.startswith("no runs attached")
    assert loaded(modules, DAEMON_LIBRARIES + VALIDATION + ATTACH_ONLY) == []


def test_attach_with_flags_builds_its_request_without_aiohttp_or_pydantic(
    state_dir: Path,
) -> None:
    argv = ["attach", "fast-run", "--instance-id", "i-0123456789abcdef0"]
    argv += ["--s3-prefix", "s3://my-runs/fast-run/", "--grace-s", "5", "--tag", "team=ml"]
    with stand_in_daemon(state_dir):
        out, modules = run_cli("supervisorctl", argv, state_dir)
    assert out.startswith("fast-run: attached; phase pending")
    assert loaded(modules, DAEMON_LIBRARIES + VALIDATION) == []


def test_supervisord_status_loads_none_of_the_daemons_code(state_dir: Path) -> None:
    with stand_in_daemon(state_dir):
        out, modules = run_cli("supervisord", ["status"], state_dir)
    assert "supervisord 0.1.0 running, pid 4242" in out
    assert "AWS calls since start: DescribeInstanceStatus 2" in out
    assert loaded(modules, DAEMON_LIBRARIES + VALIDATION) == []


def test_a_query_verb_reads_the_database_without_the_daemons_libraries(state_dir: Path) -> None:
    asyncio.run(seed(state_dir / "supervisor.db", [Seed("fast-run")]))
    out, modules = run_cli("supervisorctl", ["runs"], state_dir)
    assert "fast-run" in out
    assert loaded(modules, DAEMON_LIBRARIES) == []


def test_a_query_verb_reads_postgresql_with_the_driver_alone(state_dir: Path, pg_url: str) -> None:
    asyncio.run(seed(state_dir / "supervisor.db", [Seed("replicated-run")]))
    copy_database(state_dir / "supervisor.db", pg_url)
    (state_dir / "supervisor.db").unlink()  # what it prints can only come from PostgreSQL
    out, modules = run_cli("supervisorctl", ["runs"], state_dir, database_url=pg_url)
    assert "replicated-run" in out
    assert "psycopg" in modules
    assert (
        loaded(modules, (*DAEMON_LIBRARIES, "psycopg_pool", "supervisor.adapters.pg_store")) == []
    )


@pytest.mark.parametrize(
    ("view", "model"),
    [
        (views.RunView, protocol.RunView),
        (views.RunDetail, protocol.RunDetail),
        (views.TransitionView, protocol.TransitionView),
        (views.ActionView, protocol.ActionView),
        (views.InstanceView, protocol.InstanceView),
        (views.AttachmentView, protocol.AttachmentView),
        (views.ReportProblemView, protocol.ReportProblemView),
        (views.DaemonStatus, protocol.DaemonStatus),
    ],
)
def test_each_cli_view_has_the_fields_of_its_protocol_model(
    view: type[Any], model: type[BaseModel]
) -> None:
    assert [f.name for f in dataclasses.fields(view)] == list(model.model_fields)


@pytest.mark.parametrize(
    ("environ", "settings_file"),
    [
        ({"SUPERVISOR_STATE_DIR": "state"}, None),
        ({"SUPERVISOR_STATE_DIR": "state", "SUPERVISOR_CLIENT_TIMEOUT_S": "7.5"}, None),
        ({}, 'state_dir = "from-file"\nclient_timeout_s = 12\n'),
        ({"SUPERVISOR_STATE_DIR": "/tmp/abs"}, 'state_dir = "from-file"\n'),
        # Beyond what is read without the settings model: it decides, as before.
        ({"SUPERVISOR_POLL_INITIAL_S": "5"}, 'state_dir = "from-file"\n'),
        ({}, 'state_dir = "from-file"\ngrace_s = 10\n'),
        ({"SUPERVISOR_CLIENT_TIMEOUT_S": "1e1"}, None),
        # The query verbs' database on PostgreSQL: read without the model when plainly a URL.
        ({"SUPERVISOR_DATABASE_URL": "postgresql://u:pw@db.internal:5432/runs"}, None),
        ({}, 'state_dir = "from-file"\ndatabase_url = "postgres://u@h/runs"\n'),
        ({"SUPERVISOR_DATABASE_URL": "  postgresql://u@h/runs  "}, None),
        ({"SUPERVISOR_DATABASE_URL": ""}, None),
    ],
)
def test_locating_the_daemon_agrees_with_the_settings_model(
    environ: dict[str, str],
    settings_file: str | None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in list(os.environ):
        if name.upper().startswith("SUPERVISOR_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "no-config"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg-state"))
    monkeypatch.chdir(tmp_path)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    config = None
    if settings_file is not None:
        config = tmp_path / "etc" / "supervisord.toml"
        config.parent.mkdir()
        config.write_text(settings_file)
    located = locate_daemon(config)
    settings = load_settings(config)
    assert (located.state_dir, located.client_timeout_s, located.database_url) == (
        settings.state_dir,
        settings.client_timeout_s,
        settings.database_url,
    )
    if located.database_url is not None:  # never shown: it may hold a password
        assert located.database_url not in repr(located)
    assert located.socket_path == settings.socket_path
    assert located.pid_path == settings.pid_path
    assert located.db_path == settings.db_path


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"SUPERVISOR_CLIENT_TIMEOUT_S": "0"}, "bad setting SUPERVISOR_CLIENT_TIMEOUT_S"),
        ({"SUPERVISOR_STATE_DIRR": "x"}, "did you mean SUPERVISOR_STATE_DIR?"),
    ],
)
def test_locating_the_daemon_leaves_warnings_and_refusals_to_the_settings_model(
    environ: dict[str, str],
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name in list(os.environ):
        if name.upper().startswith("SUPERVISOR_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "no-config"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg-state"))
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    with contextlib.suppress(SystemExit):
        locate_daemon(None)
    assert message in capsys.readouterr().err
