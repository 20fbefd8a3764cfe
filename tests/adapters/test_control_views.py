"""The control API's edge: domain answers mapped to the protocol's views. The JSON of each is
pinned byte for byte: the CLI's `--json` output and `tail`'s lines are built from it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

from supervisor.adapters.control_views import (
    AttachOrder,
    ControlViews,
    DaemonState,
    attach_order,
    attachment_view,
    run_view,
    status_view,
    tail_item,
    training_log_item,
)
from supervisor.adapters.protocol import AttachRequest
from supervisor.adapters.store import AttachmentRecord
from supervisor.core.feed import FeedItem, FeedTransition, LogPiece, MonitorNote
from supervisor.core.idle import IdleMetric, judge
from supervisor.core.machine import Transition, new_run
from supervisor.core.outbox import NotifierStatus, Target, TargetFigures, TargetResult
from supervisor.core.run import Phase
from supervisor.core.spec import RunSpec
from tests.core.builders import INSTANCE, NOW, make_run, with_state

AT = '"2026-11-22T12:00:00Z"'


def test_a_transition_goes_out_with_its_seq_and_phase_names() -> None:
    entry = FeedTransition(
        2, Transition(Phase.PENDING, Phase.RUNNING, NOW, "instance running", {"state": "running"})
    )
    assert tail_item(entry).model_dump_json(by_alias=True) == (
        '{"kind":"transition","transition":{"seq":2,"from":"pending","to":"running",'
        f'"at":{AT},"reason":"instance running","detail":{{"state":"running"}}}},"event":null}}'
    )


def test_the_first_transition_comes_from_null() -> None:
    entry = FeedTransition(1, Transition(None, Phase.PENDING, NOW, "attached"))
    assert tail_item(entry).model_dump_json(by_alias=True) == (
        '{"kind":"transition","transition":{"seq":1,"from":null,"to":"pending",'
        f'"at":{AT},"reason":"attached","detail":{{}}}},"event":null}}'
    )


def test_a_monitor_note_goes_out_as_an_event_with_its_fields() -> None:
    note = MonitorNote(NOW, "r1", "prefix_checked", {"objects": 3, "problems": ["a"]})
    assert tail_item(note).model_dump_json(by_alias=True) == (
        f'{{"kind":"event","transition":null,"event":{{"at":{AT},"run_id":"r1",'
        '"event":"prefix_checked","fields":{"objects":3,"problems":["a"]}}}'
    )


def test_a_log_piece_keeps_its_kind_text_and_offset() -> None:
    piece = LogPiece("lines", "step 1\n", 7)
    assert training_log_item(piece).model_dump_json(by_alias=True) == (
        '{"kind":"lines","text":"step 1\\n","offset":7}'
    )


def test_a_run_view_shows_the_run_and_its_spec_fields() -> None:
    spec = RunSpec.build(
        run_id="r1",
        instance_id=INSTANCE,
        region="us-east-1",
        s3_prefix="s3://my-runs/r1/",
        grace_s=30,
    )
    assert run_view(new_run(spec, now=NOW).run).model_dump_json(by_alias=True) == (
        '{"run_id":"r1","phase":"pending","outcome":null,"instance_id":"i-0123456789abcdef0",'
        '"region":"us-east-1","s3_prefix":"s3://my-runs/r1/","on_complete":"stop",'
        f'"reason":"attached","version":1,"phase_since":{AT},"grace_until":null,'
        '"next_check_at":null,"error_code":null,"checkpoint":null,"attempt":1,'
        '"verified_attempt":null,"estimated_end":null,"utilisation":null}'
    )


def test_a_run_view_shows_the_estimated_end_of_a_running_job_only() -> None:
    ends = NOW + timedelta(hours=1)
    running = with_state(make_run(Phase.RUNNING), estimated_end=ends)
    assert run_view(running).estimated_end == ends
    assert run_view(running.evolve(phase=Phase.GRACE)).estimated_end is None


def test_a_run_view_says_what_idle_detection_last_saw() -> None:
    spec = RunSpec.build(
        run_id="r1", instance_id=INSTANCE, region="us-east-1", s3_prefix="s3://my-runs/r1/",
        grace_s=30, idle_below=5, idle_for_s=1800,
    )  # fmt: skip
    seen = judge((), metric=IdleMetric.CPU, below=5, window_s=1800, now=NOW)
    run = new_run(spec, now=NOW).run.evolve(utilisation=seen)
    assert run_view(run).utilisation == seen.describe()
    assert (run_view(run).utilisation or "").startswith("cpu utilisation: no datapoints")


def test_the_daemon_state_goes_out_as_its_status() -> None:
    state = DaemonState(
        pid=42, version="0.1.0", started_at=NOW, state_dir="/s", socket="/s/d.sock",
        runs_by_phase={"running": 1}, monitors=1, aws_calls={"s3:ListObjectsV2": 3},
        metrics_url=None, root_task_restarts={"events": 0},
        database="postgresql://sv:***@db:5432/runs",
    )  # fmt: skip
    assert status_view(state).model_dump_json(by_alias=True) == (
        f'{{"pid":42,"version":"0.1.0","started_at":{AT},"state_dir":"/s",'
        '"socket":"/s/d.sock","runs_by_phase":{"running":1},"monitors":1,'
        '"aws_calls":{"s3:ListObjectsV2":3},"metrics_url":null,"root_task_restarts":{"events":0},'
        '"replica_id":"","role":"","runs_owned":0,"replicas":[],"notifications":null,'
        '"http_url":null,"database":"postgresql://sv:***@db:5432/runs"}'
    )


def test_the_notification_senders_figures_go_out_redacted_with_the_rows_by_state() -> None:
    target = Target("0123456789abcdef", "json://127.0.0.1:9/fail")
    last = TargetResult(target, False, "SendFailed: 500", NOW)
    figures = TargetFigures(target, 2, 1, last, pending=3, failed_rows=4)
    state = DaemonState(
        pid=42, version="0.1.0", started_at=NOW, state_dir="/s", socket="/s/d.sock",
        runs_by_phase={}, monitors=0, aws_calls={}, metrics_url=None, root_task_restarts={},
        notifications=NotifierStatus((figures,), {"pending": 3, "failed": 1}),
    )  # fmt: skip
    shown = status_view(state).notifications
    assert shown is not None
    assert (shown.pending, shown.sent, shown.failed) == (3, 0, 1)
    [view] = shown.targets
    assert (view.target, view.digest, view.sent, view.failed, view.pending, view.failed_rows) == (
        "json://127.0.0.1:9/fail", "0123456789abcdef", 2, 1, 3, 4,
    )  # fmt: skip
    assert (view.last_ok, view.last_error, view.last_at) == (False, "SendFailed: 500", NOW)


def test_an_attachment_record_goes_out_as_its_view() -> None:
    record = AttachmentRecord("r1", "crash-log", "s3://b/k", NOW, 10, "boom\n")
    assert attachment_view(record).model_dump_json(by_alias=True) == (
        f'{{"kind":"crash-log","uri":"s3://b/k","added_at":{AT},"size":10,"excerpt":"boom\\n"}}'
    )


def test_an_attach_request_leaves_out_what_was_not_given_and_says_whether_to_verify() -> None:
    request = AttachRequest(
        run_id="r1", instance_id=INSTANCE, s3_prefix="s3://b/r1/", grace_s=5, no_verify=True
    )
    assert attach_order(request) == AttachOrder(
        {"run_id": "r1", "instance_id": INSTANCE, "s3_prefix": "s3://b/r1/", "grace_s": 5.0},
        verify=False,
    )
    plain = AttachRequest(run_id="r1", instance_id=INSTANCE, s3_prefix="s3://b/r1/")
    assert attach_order(plain).verify is True


class EndlessTail:
    """A port's followed tail that never ends on its own (only `tail` is called here)."""

    def __init__(self) -> None:
        self.closed = False

    async def tail(self, run_id: str, *, follow: bool) -> AsyncIterator[FeedItem]:
        try:
            while True:
                yield MonitorNote(NOW, run_id, "prefix_checked")
        finally:
            self.closed = True


async def test_closing_a_followed_tail_closes_the_runtimes_stream_at_once() -> None:
    port = EndlessTail()
    items = ControlViews(port).tail("r1", follow=True)  # type: ignore[arg-type]
    first = await anext(items)
    assert first.event is not None and first.event.event == "prefix_checked"
    await items.aclose()  # type: ignore[attr-defined]
    assert port.closed, "the follower stops listening to its run when the reader goes"
