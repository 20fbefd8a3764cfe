"""`supervisor.client` against the real `supervisord` process, as a launch script uses it:
attach a run, read its status, act on it and attach files, with the blocking `Supervisor` and
with `AsyncSupervisor`; and the typed errors a launcher can catch."""

from __future__ import annotations

import asyncio
import re
import tempfile
from pathlib import Path

import pytest

from supervisor.adapters.control import DaemonNotRunning
from supervisor.client import (
    AsyncSupervisor,
    InvalidInput,
    InvalidTransition,
    Supervisor,
    SupervisorNotRunning,
    UnknownRun,
)
from tests.conftest import BUCKET, Fleet
from tests.e2e.conftest import Cli

pytestmark = pytest.mark.e2e


def test_a_launcher_attaches_a_run_reads_it_and_detaches_it(shared: Cli, fleet: Fleet) -> None:
    (instance,) = fleet.launch()
    supervisor = Supervisor(state_dir=shared.state_dir)

    run = supervisor.attach(
        "client-sync", instance, fleet.prefix("client-sync"),
        on_complete="terminate", grace_s=5, markers=["DONE"],
        name="lr sweep 3e-4", tags={"method": "mgda"},
    )  # fmt: skip
    shared.wait_db_phase("client-sync", "running")
    detail = supervisor.status("client-sync")
    listed = supervisor.status()
    detached = supervisor.detach("client-sync")

    assert (run.run_id, run.phase, run.on_complete) == ("client-sync", "pending", "terminate")
    assert (detail.phase, detail.instance_id) == ("running", instance)
    assert detail.spec["markers"] == ["DONE"] and detail.spec["grace_s"] == 5
    assert (detail.spec["name"], detail.spec["tags"]) == ("lr sweep 3e-4", {"method": "mgda"})
    assert [r.phase for r in listed if r.run_id == "client-sync"] == ["running"]
    assert detached.phase == "detached"
    assert shared.wait_db_phase("client-sync", "detached")["phase"] == "detached"
    assert fleet.state(instance) == "running"  # detach leaves the instance alone


async def test_the_async_client_attaches_and_stops_a_run_from_an_event_loop(
    shared: Cli, fleet: Fleet
) -> None:
    (instance,) = fleet.launch()
    supervisor = AsyncSupervisor(shared.socket_path)

    run = await supervisor.attach("client-async", instance, fleet.prefix("client-async"))
    await asyncio.to_thread(shared.wait_db_phase, "client-async", "running")
    stopping = await supervisor.stop("client-async")
    await asyncio.to_thread(shared.wait_db_phase, "client-async", "stopped")
    detail = await supervisor.status("client-async")

    assert run.phase == "pending"
    assert stopping.phase in ("stopping", "stopped")
    assert (detail.phase, detail.outcome) == ("stopped", "cancelled")
    assert [t.to for t in detail.transitions][-1] == "stopped"


def test_attach_file_records_an_object_and_a_link_and_refuses_a_bad_uri(
    shared: Cli, fleet: Fleet
) -> None:
    (instance,) = fleet.launch()
    supervisor = Supervisor(shared.socket_path)
    supervisor.attach("client-files", instance, fleet.prefix("client-files"))
    fleet.put("notes/client-files.md", "# why it diverged\n")
    uri = f"s3://{BUCKET}/notes/client-files.md"
    try:
        attached = supervisor.attach_file("client-files", uri, kind="analysis")
        supervisor.attach_file("client-files", "https://claude.ai/share/abc", kind="conversation")
        with pytest.raises(InvalidInput) as local_path:
            supervisor.attach_file("client-files", "/home/me/notes.md", kind="analysis")
        with pytest.raises(InvalidInput) as missing:
            supervisor.attach_file("client-files", f"s3://{BUCKET}/notes/none.md", kind="other")
        detail = supervisor.status("client-files")
    finally:
        supervisor.detach("client-files")

    assert (attached.kind, attached.uri, attached.size) == ("analysis", uri, 18)
    assert [(a.kind, a.uri, a.size) for a in detail.attachments] == [
        ("analysis", uri, 18),
        ("conversation", "https://claude.ai/share/abc", None),
    ]
    assert "'/home/me/notes.md' is a local path" in str(local_path.value)
    assert f"there is no object s3://{BUCKET}/notes/none.md" in str(missing.value)


# -- errors -----------------------------------------------------------------------------------


def test_without_a_daemon_every_call_raises_supervisor_not_running_naming_the_socket() -> None:
    with tempfile.TemporaryDirectory(prefix="sv-none", dir="/tmp") as state_dir:
        supervisor = Supervisor(state_dir=state_dir)
        socket = Path(state_dir) / "supervisord.sock"

        with pytest.raises(SupervisorNotRunning) as caught:
            supervisor.status()
        with pytest.raises(SupervisorNotRunning):
            supervisor.attach("r1", "i-0abcd1234ef567890", "s3://my-runs/r1/")

    assert str(caught.value) == (
        f"supervisord is not running (no socket at {socket}): start it with `supervisord start`"
    )
    assert isinstance(caught.value, DaemonNotRunning)  # what supervisorctl catches, too


def test_the_daemons_refusal_comes_back_typed_with_its_message(shared: Cli, fleet: Fleet) -> None:
    supervisor = Supervisor(shared.socket_path)

    with pytest.raises(InvalidInput) as bad_id:
        supervisor.attach("client-bad", "i-nope", fleet.prefix("client-bad"))
    with pytest.raises(UnknownRun) as unknown:
        supervisor.status("client-ghost")
    with pytest.raises(UnknownRun):
        supervisor.detach("client-ghost")

    assert "instance id 'i-nope' is not valid" in str(bad_id.value)
    assert unknown.value.run_id == "client-ghost"
    assert "`supervisorctl status` lists the attached runs" in str(unknown.value)


def test_no_verify_attaches_a_run_whose_instance_does_not_exist_yet(
    shared: Cli, fleet: Fleet
) -> None:
    supervisor = Supervisor(shared.socket_path)
    early = "i-0123456789abcdef1"

    with pytest.raises(InvalidInput, match=f"instance {early} not found in region us-east-1"):
        supervisor.attach("client-early", early, fleet.prefix("client-early"))
    run = supervisor.attach("client-early", early, fleet.prefix("client-early"), no_verify=True)

    assert (run.run_id, run.instance_id, run.phase) == ("client-early", early, "pending")


def test_a_request_the_run_cannot_take_is_an_invalid_transition(shared: Cli, fleet: Fleet) -> None:
    (instance,) = fleet.launch()
    supervisor = Supervisor(shared.socket_path)
    supervisor.attach("client-done", instance, fleet.prefix("client-done"))
    supervisor.detach("client-done")
    shared.wait_db_phase("client-done", "detached")

    with pytest.raises(InvalidTransition, match="already detached: nothing to stop"):
        supervisor.stop("client-done")


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"grace": 5}, "attach() got unknown spec field(s) grace; known: "),
        ({"grace_s": "soon"}, "grace_s"),
    ],
    ids=["unknown-field", "wrong-type"],
)
def test_a_bad_spec_field_is_refused_by_name_before_any_request(
    fields: dict[str, object], says: str
) -> None:
    supervisor = Supervisor("/nonexistent/supervisord.sock")  # no daemon: refused before

    with pytest.raises(InvalidInput, match=re.escape(says)):
        supervisor.attach("r1", "i-0abcd1234ef567890", "s3://my-runs/r1/", **fields)


def test_socket_path_and_state_dir_together_are_refused() -> None:
    with pytest.raises(InvalidInput, match="not both"):
        Supervisor("/tmp/a.sock", state_dir="/tmp/b")


async def test_the_blocking_client_refuses_inside_an_event_loop_pointing_to_the_async_one() -> None:
    supervisor = Supervisor("/nonexistent/supervisord.sock")

    with pytest.raises(RuntimeError, match=r"use `await AsyncSupervisor\(\.\.\.\)\.status"):
        supervisor.status()


async def test_the_async_client_raises_the_same_typed_errors(shared: Cli) -> None:
    with pytest.raises(UnknownRun):
        await AsyncSupervisor(shared.socket_path).detach("client-ghost")
    with pytest.raises(SupervisorNotRunning):
        await AsyncSupervisor("/nonexistent/supervisord.sock").status()
