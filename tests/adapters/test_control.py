"""The control channel over a real Unix socket: a fake handler with canned replies behind the
real ControlServer, and the real ControlClient talking to it."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import socket
import stat
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import timedelta
from pathlib import Path

import aiohttp
import pytest
import structlog
import yarl

from supervisor.adapters import control
from supervisor.adapters.control import (
    ControlClient,
    ControlError,
    ControlServer,
    DaemonNotRunning,
)
from supervisor.adapters.metrics_http import Exposition
from supervisor.adapters.protocol import (
    DEFAULT_TRAINING_LOG_BYTES,
    AttachFileRequest,
    AttachmentView,
    AttachRequest,
    DaemonStatus,
    MonitorEventView,
    NotifyTestReply,
    ReportDayView,
    ReportView,
    RunDetail,
    RunView,
    TailItem,
    TrainingLogItem,
    TransitionView,
    ZombieList,
    ZombieView,
)
from supervisor.core.errors import InvalidInput, InvalidTransition, ShuttingDown, UnknownRun
from tests.core.builders import INSTANCE, NOW

TAKEN = "run 'taken' is already attached (phase running): choose another run id"
FINISHED = "run finished is already stopped: cannot stop"
CLOSING = "supervisord is shutting down: try again once it has restarted"


def view(run_id: str = "run-42", phase: str = "running") -> RunView:
    return RunView(
        run_id=run_id,
        phase=phase,
        outcome=None,
        instance_id=INSTANCE,
        region="us-east-1",
        s3_prefix=f"s3://my-runs/{run_id}/",
        on_complete="stop",
        reason="instance running",
        version=2,
        phase_since=NOW,
        next_check_at=NOW + timedelta(seconds=30),
    )


STATUS = DaemonStatus(
    pid=4242,
    version="0.1.0",
    started_at=NOW,
    state_dir="/var/lib/supervisor",
    socket="/run/supervisor/d.sock",
    runs_by_phase={"running": 2, "grace": 1},
    monitors=3,
    aws_calls={"ec2:DescribeInstances": 7},
)

TAIL = [
    TailItem(
        kind="transition",
        transition=TransitionView(
            seq=1, from_=None, to="pending", at=NOW, reason="attached", detail={}
        ),
    ),
    TailItem(
        kind="event",
        event=MonitorEventView(
            at=NOW, run_id="run-42", event="prefix_checked", fields={"objects": 3}
        ),
    ),
    TailItem(
        kind="transition",
        transition=TransitionView(
            seq=2,
            from_="pending",
            to="running",
            at=NOW,
            reason="instance running",
            detail={"instance_state": "running"},
        ),
    ),
]


ZOMBIES = ZombieList(
    auto_terminate=True,
    wait_s=300,
    cooldown_s=300,
    zombies=[
        ZombieView(
            instance_id=INSTANCE,
            region="us-east-1",
            run_id="r9",
            kind="unowned",
            reason="tagged supervisor:run-id=r9; no active run owns it",
            state="marked",
            marked_at=NOW,
            age_s=42.0,
            next_action="terminate",
            next_at=NOW + timedelta(seconds=300),
            plan="terminate in 258 s",
        )
    ],
)

REPORT = ReportView(
    since=NOW - timedelta(days=7),
    until=NOW,
    days=[
        ReportDayView(
            day="2026-11-22",
            terminations=2,
            stops=0,
            attempts=3,
            succeeded=2,
            failed_attempts=1,
            success_rate=2 / 3,
            mean_s_to_terminated=512.5,
        )
    ],
    runs_by_outcome={"completed": 3, "crashed": 1},
    runs=4,
    crash_rate=0.25,
    open_zombies=1,
)

METRICS = Exposition(
    b"# HELP supervisor_monitors Runs watched.\n# TYPE supervisor_monitors gauge\n"
    b"supervisor_monitors 3.0\n",
    "text/plain; version=0.0.4; charset=utf-8",
)


TRAINING_LOG = [
    TrainingLogItem(kind="notice", text="no training log yet: waiting for the job", offset=0),
    TrainingLogItem(kind="lines", text="step 1 loss 2.3\nstep 2 loss 2.1\n", offset=32),
    TrainingLogItem(kind="lines", text="ünïcode \u2713\n", offset=48),
]


class FakeHandler:
    """Canned replies; `ghost` is unknown, `taken` cannot attach, `finished` refuses a stop,
    `closing` meets a daemon shutting down and `boom` breaks the handler."""

    def __init__(self) -> None:
        self.attached: list[AttachRequest] = []
        self.requests: list[tuple[str, str]] = []
        self.tails: list[tuple[str, bool]] = []
        self.reports: list[float] = []
        self.accepts: list[str] = []
        self.files: list[tuple[str, AttachFileRequest]] = []
        self.logs: list[dict[str, object]] = []
        self.endless_closed = asyncio.Event()

    async def attach(self, request: AttachRequest) -> RunView:
        if request.run_id == "taken":
            raise InvalidInput(TAKEN)
        self.attached.append(request)
        return view(request.run_id, phase="pending")

    async def list_runs(self) -> list[RunView]:
        return [view("run-42"), view("run-43", phase="grace")]

    async def run_detail(self, run_id: str) -> RunDetail:
        self._check(run_id)
        transitions = [t.transition for t in TAIL if t.transition is not None]
        return RunDetail(
            **view(run_id).model_dump(), spec={"run_id": run_id}, transitions=transitions
        )

    async def request(self, run_id: str, action: str, *, from_scratch: bool = False) -> RunView:
        self._check(run_id)
        if run_id == "finished":
            raise InvalidTransition(FINISHED)
        if run_id == "closing":
            raise ShuttingDown(CLOSING)
        self.requests.append((run_id, action))
        return view(run_id, phase="stopping")

    async def tail(self, run_id: str, *, follow: bool) -> AsyncIterator[TailItem]:
        self._check(run_id)
        self.tails.append((run_id, follow))
        if run_id == "endless":  # a followed run that never ends
            try:
                while True:
                    for item in TAIL:
                        yield item
                    await asyncio.sleep(0.01)
            finally:
                self.endless_closed.set()
        for item in TAIL if run_id != "quiet" else []:
            yield item

    async def status(self) -> DaemonStatus:
        return STATUS

    async def zombies(self) -> ZombieList:
        return ZOMBIES

    async def report(self, since_days: float) -> ReportView:
        self.reports.append(since_days)
        return REPORT

    async def metrics(self, accept: str) -> Exposition:
        self.accepts.append(accept)
        return METRICS

    async def notify_test(self) -> NotifyTestReply:
        return NotifyTestReply(results=[])

    async def attach_file(self, run_id: str, request: AttachFileRequest) -> AttachmentView:
        self._check(run_id)
        if not request.uri.startswith("s3://"):
            raise InvalidInput(f"attachment URI {request.uri!r} is not valid")
        self.files.append((run_id, request))
        return AttachmentView(kind=request.kind, uri=request.uri, added_at=NOW, size=42)

    async def training_log(
        self, run_id: str, *, key: str, offset: int | None, last: int, follow: bool
    ) -> AsyncIterator[TrainingLogItem]:
        self._check(run_id)
        self.logs.append({"key": key, "offset": offset, "last": last, "follow": follow})
        for item in TRAINING_LOG:
            yield item

    @staticmethod
    def _check(run_id: str) -> None:
        if run_id == "ghost":
            raise UnknownRun(run_id)
        if run_id == "boom":
            raise RuntimeError("disk on fire")


@pytest.fixture
def socket_path() -> Iterator[Path]:
    # Unix socket paths are limited to 107 bytes; pytest's tmp_path can be longer.
    base = Path(tempfile.mkdtemp(dir="/tmp", prefix="ctl-"))
    yield base / "sock" / "d.sock"
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def handler() -> FakeHandler:
    return FakeHandler()


@pytest.fixture
async def server(handler: FakeHandler, socket_path: Path) -> AsyncIterator[ControlServer]:
    started = ControlServer(handler, socket_path)
    await started.start()
    yield started
    await started.close()


@pytest.fixture
async def client(server: ControlServer) -> AsyncIterator[ControlClient]:
    async with ControlClient(server.socket_path) as connected:
        yield connected


def raw_session(path: Path) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(path)))


# -- the socket -------------------------------------------------------------------------------


async def test_the_socket_is_owner_only_inside_a_private_directory(server: ControlServer) -> None:
    mode = os.stat(server.socket_path).st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o600
    assert stat.S_IMODE(os.stat(server.socket_path.parent).st_mode) == 0o700


@pytest.fixture
def leftovers(socket_path: Path) -> Path:
    """A world-readable socket directory holding a file where the socket goes."""
    socket_path.parent.mkdir(mode=0o755)
    os.chmod(socket_path.parent, 0o755)
    socket_path.write_text("left by a killed daemon")
    return socket_path


async def test_start_tightens_an_open_directory_and_replaces_a_stale_socket(
    handler: FakeHandler, leftovers: Path
) -> None:
    socket_path = leftovers
    server = ControlServer(handler, socket_path)
    await server.start()
    try:
        assert stat.S_IMODE(os.stat(socket_path.parent).st_mode) == 0o700
        assert stat.S_ISSOCK(os.stat(socket_path).st_mode)
        async with ControlClient(socket_path) as client:
            assert await client.status() == STATUS
    finally:
        await server.close()


async def test_close_removes_the_socket(handler: FakeHandler, socket_path: Path) -> None:
    server = ControlServer(handler, socket_path)
    await server.start()

    await server.close()

    with pytest.raises(FileNotFoundError):
        os.stat(socket_path)


# -- round trips ------------------------------------------------------------------------------


async def test_status_round_trips(client: ControlClient) -> None:
    assert await client.status() == STATUS


async def test_runs_round_trips_the_list(client: ControlClient) -> None:
    assert await client.runs() == [view("run-42"), view("run-43", phase="grace")]


async def test_attach_delivers_the_request_and_returns_the_new_run(
    client: ControlClient, handler: FakeHandler
) -> None:
    request = AttachRequest(
        run_id="run-44",
        instance_id=INSTANCE,
        s3_prefix="s3://my-runs/run-44/",
        grace_s=0.5,
        markers=["COMPLETE"],
    )

    created = await client.attach(request)

    assert created == view("run-44", phase="pending")
    assert handler.attached == [request]


async def test_run_round_trips_the_detail_with_its_transitions(client: ControlClient) -> None:
    detail = await client.run("run-42")

    assert detail == await FakeHandler().run_detail("run-42")
    assert detail.transitions[0].from_ is None
    assert detail.model_dump(by_alias=True)["transitions"][1]["from"] == "pending"


@pytest.mark.parametrize("action", ["stop", "terminate", "detach"])
async def test_request_delivers_the_action_and_returns_the_run(
    client: ControlClient, handler: FakeHandler, action: str
) -> None:
    assert await client.request("run-42", action) == view("run-42", phase="stopping")
    assert handler.requests == [("run-42", action)]


async def test_an_unknown_action_is_refused_without_reaching_the_handler(
    client: ControlClient, handler: FakeHandler
) -> None:
    with pytest.raises(ControlError) as caught:
        await client.request("run-42", "reboot")

    assert caught.value.kind == "internal"
    assert "404" in str(caught.value)
    assert handler.requests == []


# -- errors -----------------------------------------------------------------------------------

Call = Callable[[ControlClient], Awaitable[object]]


def attach_taken(client: ControlClient) -> Awaitable[object]:
    return client.attach(
        AttachRequest(run_id="taken", instance_id=INSTANCE, s3_prefix="s3://my-runs/x/")
    )


@pytest.mark.parametrize(
    ("call", "kind", "message"),
    [
        (lambda c: c.run("ghost"), "unknown_run", str(UnknownRun("ghost"))),
        (lambda c: c.request("ghost", "stop"), "unknown_run", str(UnknownRun("ghost"))),
        (attach_taken, "invalid_input", TAKEN),
        (lambda c: c.request("finished", "stop"), "conflict", FINISHED),
        (lambda c: c.request("closing", "stop"), "shutting_down", CLOSING),
        (lambda c: c.run("boom"), "internal", "internal error: disk on fire"),
    ],
    ids=["detail-unknown", "request-unknown", "attach-taken", "conflict", "shutdown", "crash"],
)
async def test_a_refusal_comes_back_as_control_error_with_its_kind_and_message(
    client: ControlClient, call: Call, kind: str, message: str
) -> None:
    with pytest.raises(ControlError) as caught:
        await call(client)

    assert caught.value.kind == kind
    assert str(caught.value) == message


async def test_a_malformed_attach_body_is_invalid_input_naming_the_field(
    server: ControlServer,
) -> None:
    async with (
        raw_session(server.socket_path) as session,
        session.post("http://supervisord/v1/runs", data=b'{"run_id": "x"}') as response,
    ):
        assert response.status == 400
        reply = await response.json()

    assert reply["kind"] == "invalid_input"
    assert "instance_id" in reply["error"]


# -- run ids ----------------------------------------------------------------------------------

BAD_RUN_IDS = ["x/../run-42", "run-42?x=1", "run-42#f", "a b", "..", "run-42\n", ""]


@pytest.mark.parametrize("run_id", BAD_RUN_IDS)
async def test_the_client_refuses_a_bad_run_id_before_sending_anything(
    client: ControlClient, handler: FakeHandler, run_id: str
) -> None:
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: client.run(run_id),
        lambda: client.request(run_id, "stop"),
        lambda: client.attach_file(run_id, "other", "s3://my-runs/x"),
        lambda: anext(client.tail(run_id, follow=False)),
        lambda: anext(client.training_log(run_id)),
    ]
    for call in calls:
        with pytest.raises(InvalidInput, match=f"run id {re.escape(repr(run_id))} is not valid"):
            await call()
    assert (handler.requests, handler.files, handler.tails, handler.logs) == ([], [], [], [])


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/runs/x%2F..%2Frun-42/stop"),
        ("POST", "/v1/runs/..%2Frun-42/stop"),
        ("GET", "/v1/runs/run-42%3Fx=1"),
        ("GET", "/v1/runs/run-42%23f"),
        ("GET", "/v1/runs/a%20b/tail"),
        ("GET", "/v1/runs/%2E%2E/training-log"),
        ("POST", "/v1/runs/run-42%0A/attachments"),
    ],
)
async def test_the_server_refuses_a_bad_run_id_before_the_handler_sees_it(
    server: ControlServer, handler: FakeHandler, method: str, path: str
) -> None:
    body = AttachFileRequest(kind="other", uri="s3://my-runs/x").model_dump_json()
    url = yarl.URL("http://supervisord" + path, encoded=True)  # sent as written
    async with (
        raw_session(server.socket_path) as session,
        session.request(method, url, data=body) as response,
    ):
        reply = await response.json()
    assert response.status == 400, reply
    assert reply["kind"] == "invalid_input" and "is not valid" in reply["error"]
    assert (handler.requests, handler.files, handler.tails, handler.logs) == ([], [], [], [])


async def test_a_run_id_is_quoted_so_it_reaches_its_own_route(
    client: ControlClient, handler: FakeHandler
) -> None:
    assert (await client.run("run-42")).run_id == "run-42"
    await client.request("run.42", "stop")
    assert handler.requests == [("run.42", "stop")]


# -- numbers ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        {"grace_s": float("nan")},
        {"quiet_s": float("inf")},
        {"stall_timeout_s": float("-inf")},
        {"config": {"lr": float("nan")}},
        {"config": {"opt": [1, {"eps": float("inf")}]}},
        {"objectives": [{"name": "acc", "weight": float("nan")}]},
    ],
)
def test_an_attach_request_refuses_nan_and_infinity(fields: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=r"finite number|NaN and infinity"):
        AttachRequest.model_validate(
            {"run_id": "r1", "instance_id": INSTANCE, "s3_prefix": "s3://my-runs/r1/", **fields}
        )


@pytest.mark.parametrize(
    "body",
    [
        b'{"run_id": "r1", "instance_id": "i-0123abcd", "s3_prefix": "s3://b-1/p/", '
        b'"grace_s": NaN}',
        b'{"run_id": "r1", "instance_id": "i-0123abcd", "s3_prefix": "s3://b-1/p/", '
        b'"grace_s": Infinity}',
        b'{"run_id": "r1", "instance_id": "i-0123abcd", "s3_prefix": "s3://b-1/p/", '
        b'"config": {"lr": NaN}}',
        b'{"run_id": "r1", "instance_id": "i-0123abcd", "s3_prefix": "s3://b-1/p/", '
        b'"grace_s": 1e400}',
    ],
)
async def test_the_server_refuses_nan_and_infinity_in_an_attach_body(
    server: ControlServer, handler: FakeHandler, body: bytes
) -> None:
    async with (
        raw_session(server.socket_path) as session,
        session.post("http://supervisord/v1/runs", data=body) as response,
    ):
        reply = await response.json()
    assert response.status == 400, reply
    assert reply["kind"] == "invalid_input"
    assert handler.attached == []


# -- tail -------------------------------------------------------------------------------------


async def test_tail_yields_each_item_as_a_model(
    client: ControlClient, handler: FakeHandler
) -> None:
    items = [item async for item in client.tail("run-42", follow=True)]

    assert items == TAIL
    assert handler.tails == [("run-42", True)]


async def test_tail_streams_one_json_object_per_line(server: ControlServer) -> None:
    async with (
        raw_session(server.socket_path) as session,
        session.get("http://supervisord/v1/runs/run-42/tail", params={"follow": "0"}) as response,
    ):
        assert response.status == 200
        assert response.content_type == "application/x-ndjson"
        lines = [line async for line in response.content]

    assert [json.loads(line) for line in lines] == [
        item.model_dump(mode="json", by_alias=True) for item in TAIL
    ]
    assert all(line.endswith(b"\n") for line in lines)


async def test_a_follower_going_away_is_a_debug_line_and_ends_the_stream(
    server: ControlServer, handler: FakeHandler, monkeypatch: pytest.MonkeyPatch
) -> None:
    logged = structlog.testing.CapturingLogger()
    monkeypatch.setattr(control, "log", logged)
    async with raw_session(server.socket_path) as session:
        response = await session.get(
            "http://supervisord/v1/runs/endless/tail", params={"follow": "1"}
        )
        assert json.loads(await response.content.readline())["kind"] == "transition"
        response.close()  # Ctrl-C on `supervisorctl tail -f`

    await asyncio.wait_for(handler.endless_closed.wait(), 10)
    assert [(call.method_name, call.args) for call in logged.calls] == [
        ("debug", ("stream_client_gone",))
    ]
    async with ControlClient(server.socket_path) as client:  # and the server goes on
        assert [item async for item in client.tail("run-42", follow=False)] == TAIL


async def test_tail_of_a_run_with_nothing_to_show_ends_empty(client: ControlClient) -> None:
    assert [item async for item in client.tail("quiet", follow=False)] == []


async def test_tail_of_an_unknown_run_raises_before_any_item(client: ControlClient) -> None:
    items = client.tail("ghost", follow=True)

    with pytest.raises(ControlError) as caught:
        await anext(items)

    assert caught.value.kind == "unknown_run"


# -- no daemon --------------------------------------------------------------------------------


async def test_a_client_without_a_socket_says_the_daemon_is_not_running(
    socket_path: Path,
) -> None:
    async with ControlClient(socket_path) as client:
        with pytest.raises(DaemonNotRunning) as caught:
            await client.status()

    assert "supervisord is not running" in str(caught.value)
    assert str(socket_path) in str(caught.value)


async def test_a_socket_nobody_listens_on_says_the_daemon_is_not_running(
    socket_path: Path,
) -> None:
    socket_path.parent.mkdir(mode=0o700)
    with socket.socket(socket.AF_UNIX) as stale:
        stale.bind(str(socket_path))  # bound, never listening: a killed daemon's leftover

    async with ControlClient(socket_path) as client:
        with pytest.raises(DaemonNotRunning, match="supervisord is not running"):
            await client.runs()


# -- zombies and the report -------------------------------------------------------------------


async def test_zombies_round_trip(client: ControlClient) -> None:
    assert await client.zombies() == ZOMBIES


async def test_report_passes_the_days_and_round_trips(
    client: ControlClient, handler: FakeHandler
) -> None:
    assert await client.report(0.5) == REPORT
    assert await client.report(30) == REPORT
    assert handler.reports == [0.5, 30]


async def test_report_without_since_covers_seven_days(
    server: ControlServer, handler: FakeHandler
) -> None:
    async with (
        raw_session(server.socket_path) as session,
        session.get("http://d/v1/report") as reply,
    ):
        assert reply.status == 200
    assert handler.reports == [7]


@pytest.mark.parametrize(
    ("since", "says"),
    [("0", "out of range"), ("-3", "not a duration"), ("nan", "not a duration"),
     ("soon", "not a duration"), ("99999", "out of range")],
)  # fmt: skip
async def test_a_bad_since_is_refused_with_what_to_give(
    server: ControlServer, handler: FakeHandler, since: str, says: str
) -> None:
    async with (
        raw_session(server.socket_path) as session,
        session.get("http://d/v1/report", params={"since": since}) as reply,
    ):
        body = json.loads(await reply.read())
    assert reply.status == 400
    assert body["kind"] == "invalid_input"
    assert says in body["error"] and repr(since) in body["error"] and "7d" in body["error"]
    assert handler.reports == []


async def test_report_takes_every_form_of_since_that_runs_takes(
    server: ControlServer, handler: FakeHandler
) -> None:
    async with raw_session(server.socket_path) as session:
        for since in ("2", "12h", "1.5d", "1w"):
            async with session.get("http://d/v1/report", params={"since": since}) as reply:
                assert reply.status == 200, await reply.text()
    assert handler.reports == [2, 0.5, 1.5, 7]


async def test_a_tiny_since_reaches_the_daemon_as_written(
    client: ControlClient, handler: FakeHandler
) -> None:
    await client.report(1 / 86400)  # `report --since 1s`: repr would send 1.1574074074074073e-05
    assert handler.reports == [pytest.approx(1 / 86400, rel=1e-3)]


async def test_metrics_are_served_on_the_socket_as_the_handler_renders_them(
    server: ControlServer, handler: FakeHandler
) -> None:
    accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
    async with (
        raw_session(server.socket_path) as session,
        session.get("http://supervisord/metrics", headers={"Accept": accept}) as reply,
    ):
        assert reply.status == 200
        assert reply.headers["Content-Type"] == METRICS.content_type
        assert await reply.read() == METRICS.body
    assert handler.accepts == [accept]


async def test_the_client_returns_the_metrics_text(client: ControlClient) -> None:
    assert await client.metrics() == METRICS.body.decode()


# -- attach-file ------------------------------------------------------------------------------


async def test_attach_file_delivers_kind_and_uri_and_returns_the_attachment(
    client: ControlClient, handler: FakeHandler
) -> None:
    attached = await client.attach_file("run-42", "analysis", "s3://my-runs/run-42/notes.md")

    assert attached == AttachmentView(
        kind="analysis", uri="s3://my-runs/run-42/notes.md", added_at=NOW, size=42
    )
    assert handler.files == [
        ("run-42", AttachFileRequest(kind="analysis", uri="s3://my-runs/run-42/notes.md"))
    ]


async def test_attach_file_is_not_taken_for_an_action_and_answers_201(
    server: ControlServer, handler: FakeHandler
) -> None:
    body = {"kind": "other", "uri": "s3://my-runs/x.txt"}
    async with (
        raw_session(server.socket_path) as session,
        session.post("http://supervisord/v1/runs/run-42/attachments", json=body) as response,
    ):
        assert response.status == 201
    assert handler.requests == []
    assert len(handler.files) == 1


@pytest.mark.parametrize(
    ("run_id", "uri", "kind", "says"),
    [
        ("ghost", "s3://my-runs/x.txt", "unknown_run", "no run 'ghost' is attached"),
        ("run-42", "/tmp/x.txt", "invalid_input", "'/tmp/x.txt' is not valid"),
    ],
)
async def test_attach_file_refusals_come_back_with_their_kind(
    client: ControlClient, run_id: str, uri: str, kind: str, says: str
) -> None:
    with pytest.raises(ControlError) as caught:
        await client.attach_file(run_id, "other", uri)

    assert caught.value.kind == kind
    assert says in str(caught.value)


# -- training log -----------------------------------------------------------------------------


async def test_training_log_streams_each_item_and_passes_the_query_on(
    client: ControlClient, handler: FakeHandler
) -> None:
    items = [
        item
        async for item in client.training_log(
            "run-42", key="logs/rank0.log", follow=True, offset=100
        )
    ]

    assert items == TRAINING_LOG
    assert handler.logs == [
        {"key": "logs/rank0.log", "offset": 100, "last": DEFAULT_TRAINING_LOG_BYTES, "follow": True}
    ]


async def test_training_log_defaults_to_the_default_key_and_the_end_of_the_log(
    client: ControlClient, handler: FakeHandler
) -> None:
    _ = [item async for item in client.training_log("run-42", last=0)]

    assert handler.logs == [{"key": "logs/train.log", "offset": None, "last": 0, "follow": False}]


@pytest.mark.parametrize(
    ("params", "says"),
    [
        ({"offset": "-1"}, "offset='-1' is not valid: give a number of bytes from 0"),
        ({"last": "lots"}, "last='lots' is not valid: give a number of bytes from 0"),
        ({"offset": "0", "last": "10"}, "give offset= or last=, not both"),
    ],
)
async def test_a_bad_training_log_query_is_invalid_input_before_any_read(
    server: ControlServer, handler: FakeHandler, params: dict[str, str], says: str
) -> None:
    async with (
        raw_session(server.socket_path) as session,
        session.get("http://supervisord/v1/runs/run-42/training-log", params=params) as response,
    ):
        assert response.status == 400
        body = await response.json()

    assert body == {"error": says, "kind": "invalid_input"}
    assert handler.logs == []


async def test_an_unknown_runs_training_log_is_refused_before_streaming(
    client: ControlClient,
) -> None:
    with pytest.raises(ControlError) as caught:
        _ = [item async for item in client.training_log("ghost")]

    assert caught.value.kind == "unknown_run"
