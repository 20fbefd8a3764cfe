"""Notifications through the real `supervisord` and `supervisorctl` (issue 15), to a real local
HTTP receiver: exactly one message per event across a SIGKILL between the commit and the send;
nothing for events not chosen; a receiver that keeps failing is retried, recorded as failed,
shown by `supervisord status` and `/metrics`, and the daemon keeps working; `notify-test`."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import Fleet
from tests.e2e.conftest import Cli, cli_for, wait_for
from tests.notify_receiver import Receiver, running_receiver

pytestmark = pytest.mark.e2e

FAST = {"SUPERVISOR_NOTIFY_POLL_S": "0.1", "SUPERVISOR_NOTIFY_RETRY_BASE_S": "0.01"}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver() as running:
        yield running


def outbox(cli: Cli) -> list[dict[str, Any]]:
    """The outbox's rows, read through a read-only connection."""
    if not cli.db_path.exists():
        return []
    uri = f"file:{cli.db_path}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=5)) as db:
        db.row_factory = sqlite3.Row
        try:
            rows = db.execute("SELECT * FROM outbox ORDER BY created_at, key").fetchall()
        except sqlite3.OperationalError:  # not migrated yet
            return []
    return [dict(row) for row in rows]


def crash(cli: Cli, fleet: Fleet, run_id: str, *args: str) -> None:
    """Attach a run, let it start, and have its job write a failure marker."""
    (instance,) = fleet.launch()
    cli.attach(run_id, instance, fleet.prefix(run_id), "--on-crash", "keep", *args)
    cli.wait_db_phase(run_id, "running")
    fleet.put(f"runs/{run_id}/FAILED", "exit code 3: CUDA out of memory")
    cli.wait_db_phase(run_id, "crashed")


def test_a_kill_between_the_commit_and_the_send_still_delivers_exactly_one_message(
    cli: Cli, fleet: Fleet, receiver: Receiver
) -> None:
    notify = {"SUPERVISOR_NOTIFY_URLS": receiver.url("hook"), **FAST}
    # The fault plan holds every send: the row is committed and its round claimed, and the
    # send never leaves the daemon, so the kill lands between the commit and the send.
    cli.start_daemon(**notify, SUPERVISOR_FAULTS="Notify=hang")
    crash(cli, fleet, "notify-kill", "--name", "lr sweep 3", "--project", "deco")
    wait_for(
        lambda: (
            [(r["key"], r["state"], r["attempts"]) for r in outbox(cli)]
            == [("notify-kill:3", "pending", 1)]
        ),
        message=lambda: f"the crash's row to be claimed; outbox {outbox(cli)}{cli.log_tail()}",
    )
    cli.kill_daemon()
    assert receiver.got() == []

    cli.start_daemon(**notify)
    wait_for(
        lambda: [r["state"] for r in outbox(cli)] == ["sent"],
        message=lambda: f"the row to be sent; outbox {outbox(cli)}{cli.log_tail()}",
    )
    cli.stop_daemon()
    cli.start_daemon(**notify)  # a third life finds nothing left to send
    cli.stop_daemon()

    [message] = receiver.got()
    assert message.path == "/hook"
    assert message.headers["Idempotency-Key"] == "notify-kill:3"
    assert message.body["idempotency_key"] == "notify-kill:3"
    assert message.body["title"] == "notify-kill: crashed"
    text = message.body["message"]
    assert "run notify-kill (name 'lr sweep 3', project deco)" in text
    assert "reason: failure marker FAILED: exit code 3: CUDA out of memory" in text
    assert "what happened: crashed (phase running -> crashed, outcome crashed)" in text
    assert "instance: i-" in text
    assert message.body["type"] == "failure"
    [row] = outbox(cli)
    assert (row["state"], row["attempts"], row["last_error"]) == ("sent", 2, None)


def test_only_the_chosen_events_notify_and_the_message_links_to_the_run_page(
    cli: Cli, fleet: Fleet, receiver: Receiver
) -> None:
    cli.start_daemon(
        SUPERVISOR_NOTIFY_URLS=receiver.url("hook"),
        SUPERVISOR_NOTIFY_ON="completed",
        SUPERVISOR_PUBLIC_URL="https://runs.example.com/",
        **FAST,
    )
    crash(cli, fleet, "notify-quiet")  # crashed: not chosen
    (instance,) = fleet.launch()
    cli.attach("notify-done", instance, fleet.prefix("notify-done"), "--on-complete", "stop")
    cli.wait_db_phase("notify-done", "running")
    fleet.put("runs/notify-done/COMPLETE")
    cli.wait_db_phase("notify-done", "stopped")
    wait_for(
        lambda: [r["state"] for r in outbox(cli)] == ["sent"],
        message=lambda: f"one row, sent; outbox {outbox(cli)}{cli.log_tail()}",
    )
    cli.stop_daemon()

    [message] = receiver.got()
    assert message.body["title"] == "notify-done: completed"
    assert "run page: https://runs.example.com/runs/notify-done" in message.body["message"]
    assert [r["run_id"] for r in outbox(cli)] == ["notify-done"]


def test_a_failing_receiver_is_retried_then_recorded_failed_and_shown_while_the_daemon_works(
    cli: Cli, fleet: Fleet, receiver: Receiver
) -> None:
    secret = "hunter2"  # a URL's password: never in the log, the status or the output
    failing_url = f"json://user:{secret}@127.0.0.1:{receiver.port}/fail"
    cli.start_daemon(
        SUPERVISOR_NOTIFY_URLS=f"{failing_url} {receiver.url('ok')}",
        SUPERVISOR_NOTIFY_RETRIES="2",
        SUPERVISOR_METRICS_ADDR="127.0.0.1:0",
        **FAST,
    )
    crash(cli, fleet, "notify-500")
    wait_for(
        lambda: [r["state"] for r in outbox(cli)] == ["failed"],
        message=lambda: f"the row to fail; outbox {outbox(cli)}{cli.log_tail()}",
    )
    assert len(receiver.got("fail")) == 3  # the first try and two retries
    assert len(receiver.got("ok")) == 1  # the other URL got it once
    [row] = outbox(cli)
    assert "SendFailed" in row["last_error"] and "error=500" in row["last_error"]

    # The daemon works on: another run is attached and watched.
    (instance,) = fleet.launch()
    cli.attach("notify-after", instance, fleet.prefix("notify-after"))
    cli.wait_db_phase("notify-after", "running")

    status = cli.supervisord("status")
    assert status.returncode == 0, status.stderr
    assert "notifications: 0 pending, 0 sent, 1 failed" in status.stdout
    failing = [line for line in status.stdout.splitlines() if "/fail" in line]
    assert len(failing) == 1
    assert "0 pending, 1 failed; since start 0 sent, 1 failed; last FAILED" in failing[0]
    assert "error=500" in failing[0]
    shown = cli.daemon_status()["notifications"]
    assert [(t["sent"], t["failed"], t["pending"], t["failed_rows"]) for t in shown["targets"]] == [
        (0, 1, 0, 1),
        (1, 0, 0, 0),
    ]
    import urllib.request

    metrics_url = cli.daemon_status()["metrics_url"]
    with urllib.request.urlopen(metrics_url, timeout=10) as answer:
        metrics = answer.read().decode()
    failed_digest = shown["targets"][0]["digest"]
    assert f'supervisor_notifications_failed_total{{target="{failed_digest}"}} 1.0' in metrics
    assert "supervisor_notifications_pending 0.0" in metrics

    tested = cli.ctl("notify-test")
    assert tested.returncode == 1, tested
    lines = tested.stdout.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"json://user:****@127.0.0.1:{receiver.port}/fail")
    assert "FAILED: " in lines[0]
    assert lines[1].startswith(f"json://127.0.0.1:{receiver.port}/ok") and lines[1].endswith(": ok")
    test_message = receiver.got("ok")[-1]
    assert test_message.body["title"] == "supervisor: test notification"
    assert test_message.headers["Idempotency-Key"].startswith("test:")
    shown_anywhere = status.stdout + tested.stdout + cli.log_path.read_text() + metrics
    assert secret not in shown_anywhere
    assert secret not in json.dumps(cli.daemon_status())


def test_notify_test_without_urls_says_what_to_set(cli: Cli) -> None:
    cli.start_daemon()
    tested = cli.ctl("notify-test")
    assert tested.returncode == 1
    assert "SUPERVISOR_NOTIFY_URLS" in tested.stderr
    assert len(tested.stderr.strip().splitlines()) == 1


def test_bad_notification_settings_are_refused_on_one_line(cli: Cli) -> None:
    unknown = cli.supervisord("start", SUPERVISOR_NOTIFY_ON="crashed,exploded")
    assert unknown.returncode != 0
    [line] = unknown.stderr.strip().splitlines()
    assert "SUPERVISOR_NOTIFY_ON" in line and "'exploded'" in line
    assert "checkpoint_unverified" in line and "resumed" in line

    secret = "xoxb-SECRET-TOKEN"
    bad_url = cli.supervisord("start", SUPERVISOR_NOTIFY_URLS=f"nosuchservice://{secret}@host")
    assert bad_url.returncode != 0
    [line] = bad_url.stderr.strip().splitlines()
    assert "SUPERVISOR_NOTIFY_URLS" in line and "'nosuchservice'" in line
    assert secret not in line
    assert cli.daemon_pid() is None


def test_with_replicas_each_run_is_told_once_by_its_owner_and_a_dead_owners_by_the_survivor(
    fleet: Fleet, pg_url: str, aws_env: dict[str, str], receiver: Receiver
) -> None:
    from collections import Counter

    from tests.e2e.test_replicas import owners, pg_rows, replica_env, wait_all

    # Six: a replica hands back runs only above its share by more than two.
    runs = [f"notify-rep-{n}" for n in range(6)]
    instances = fleet.launch(len(runs))
    notify = {"SUPERVISOR_NOTIFY_URLS": receiver.url("hook"), "SUPERVISOR_NOTIFY_ON": "completed",
              **FAST}  # fmt: skip

    def rows() -> dict[str, tuple[str, int, str | None]]:
        found = pg_rows(pg_url, "SELECT run_id, state, attempts, sender FROM outbox")
        return {str(run): (state, int(attempts), sender) for run, state, attempts, sender in found}

    with cli_for(aws_env) as a, cli_for(aws_env) as b:
        # A holds every send (the fault plan): its rows wait, claimed, for it to die.
        a.start_daemon(**replica_env("replica-a", pg_url), **notify,
                       SUPERVISOR_FAULTS="Notify=hang")  # fmt: skip
        for run, instance in zip(runs, instances, strict=True):
            a.attach(run, instance, fleet.prefix(run))
        b.start_daemon(**replica_env("replica-b", pg_url), **notify)
        wait_all(a, pg_url, "running", runs)
        wait_for(
            lambda: Counter(owners(pg_url).values()) == {"replica-a": 3, "replica-b": 3},
            message=lambda: f"the runs to spread over both replicas: {owners(pg_url)}",
        )
        owned = owners(pg_url)
        for run in runs:
            fleet.put(f"runs/{run}/COMPLETE")
        wait_all(a, pg_url, "stopped", runs)

        def split() -> bool:
            """B sent its runs' rows; A's wait (its first one claimed, its sender held)."""
            now = rows()
            return len(now) == len(runs) and all(
                now[run] == ("sent", 1, "replica-b") if owner == "replica-b" else
                now[run][0] == "pending" and now[run][2] in (None, "replica-a")
                for run, owner in owned.items()
            )  # fmt: skip

        wait_for(split, message=lambda: f"B's rows sent, A's claimed by A: {rows()}")
        told = sorted(r.body["idempotency_key"].split(":")[0] for r in receiver.got())
        assert told == sorted(run for run, owner in owned.items() if owner == "replica-b")

        a.kill_daemon()
        wait_for(
            lambda: {state for state, _, _ in rows().values()} == {"sent"},
            message=lambda: f"the survivor to send the dead owner's rows: {rows()}{b.log_tail()}",
        )
        b.stop_daemon()

    keys = [r.body["idempotency_key"] for r in receiver.got()]
    assert sorted(k.split(":")[0] for k in keys) == sorted(runs)  # each run told once
    assert len(set(keys)) == len(runs)
