"""The instance-shell adapters: `LocalShell` against real subprocesses (a stand-in for the
instance program), `SsmShell` against the real aiobotocore SSM client with botocore's
`Stubber` answering (moto has no agent to run commands), and the SSM document itself."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from botocore.stub import ANY, Stubber

from supervisor.adapters.aws import Aws
from supervisor.adapters.shell import (
    COMMENT_LIMIT,
    LocalShell,
    SsmShell,
    invocation_result,
    parse_result,
)
from supervisor.core.checkpoint import CommandKind, CommandResult, CommandStatus, InstanceCommand
from supervisor.core.errors import PermanentError, TransientError

REGION = "us-east-1"
INSTANCE = "i-0123456789abcdef0"
DOCUMENT = "SupervisorInstanceCommand"
DOCUMENT_PATH = Path(__file__).resolve().parents[2] / "deploy" / "ssm-document.json"
HOSTILE = "a; rm -rf / $(x) `y` 'q' \"z\"\nsecond line"

CHECKPOINT = InstanceCommand(
    CommandKind.CHECKPOINT,
    options=(
        ("run-id", "r-20240611-llama"),
        ("pid-file", "/var/run/train.pid"),
        ("checkpoint-dir", "/data/checkpoints"),
        ("pattern", "checkpoint-*/"),
        ("bucket", "my-training-runs"),
        ("prefix", "exp1/runs/r-20240611-llama/"),
        ("wait-s", "120"),
    ),
)

# -- LocalShell -------------------------------------------------------------------------------

# Stands in for `python3 -m supervisor.instance` until that exists; STANDIN_MODE picks what it
# does, so the tests also show that `env` reaches the program.
STANDIN = r"""
import json, os, sys
args = sys.argv[1:]
mode = os.environ.get("STANDIN_MODE", "echo")
if mode == "echo":
    print("working...")
    print(json.dumps({"ok": True, "argv": args}))
elif mode == "fail":
    sys.stderr.write("x" * 100_000 + "\ndisk full\n")
    print(json.dumps({"ok": False, "error": "disk full"}))
    sys.exit(3)
"""


@pytest.fixture
def standin(tmp_path: Path) -> list[str]:
    script = tmp_path / "standin.py"
    script.write_text(STANDIN)
    return [sys.executable, str(script)]


def living_in_group(pgid: int) -> list[int]:
    """Processes of the process group that are alive (zombies are dead, merely unreaped:
    in a container, PID 1 may never reap the orphans)."""
    living = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            living.append(int(stat.parent.name))
    return living


async def test_a_successful_program_returns_its_json_result(standin: list[str]) -> None:
    shell = LocalShell(standin)

    result = await shell.run(INSTANCE, REGION, CHECKPOINT, timeout_s=30, comment="c1")

    assert result.status is CommandStatus.SUCCESS
    assert result.exit_code == 0
    assert result.ok
    assert result.result["argv"] == CHECKPOINT.argv()
    assert result.stdout.startswith("working...\n")


async def test_a_failing_program_is_failed_with_its_exit_code_and_stderr_tail(
    standin: list[str],
) -> None:
    shell = LocalShell(standin, env={"STANDIN_MODE": "fail"})

    result = await shell.run(INSTANCE, REGION, CHECKPOINT, timeout_s=30, comment="c1")

    assert result.status is CommandStatus.FAILED
    assert result.exit_code == 3
    assert result.result == {"ok": False, "error": "disk full"}
    assert result.stderr.endswith("disk full\n")
    assert len(result.stderr) < 70_000
    assert "earlier bytes dropped" in result.stderr


async def test_a_program_past_its_timeout_is_killed_with_its_process_group(
    tmp_path: Path,
) -> None:
    pids = tmp_path / "pids"
    # sh starts in milliseconds, well within the timeout; its child shares its process group.
    hang = ["/bin/sh", "-c", 'sleep 60 & echo "$$ $!" > "$STANDIN_PIDS"; wait', "hang"]
    shell = LocalShell(hang, env={"STANDIN_PIDS": str(pids)})

    result = await shell.run(INSTANCE, REGION, CHECKPOINT, timeout_s=0.3, comment="c1")

    assert result.status is CommandStatus.TIMED_OUT
    leader, child = map(int, pids.read_text().split())
    assert child != leader
    assert living_in_group(leader) == []


async def test_arguments_reach_the_program_verbatim_without_a_shell(standin: list[str]) -> None:
    command = InstanceCommand(
        CommandKind.START,
        options=(("note", HOSTILE), ("empty", "")),
        command=("python", "train.py", "--name", "$HOME *"),
    )

    result = await LocalShell(standin).run(INSTANCE, REGION, command, timeout_s=30, comment="c")

    assert result.result["argv"] == command.argv()
    assert HOSTILE in command.argv()


async def test_a_program_that_cannot_start_is_a_permanent_error(tmp_path: Path) -> None:
    shell = LocalShell([str(tmp_path / "missing")])

    with pytest.raises(PermanentError, match="cannot start"):
        await shell.run(INSTANCE, REGION, CHECKPOINT, timeout_s=5, comment="c")


async def test_the_default_program_is_the_instance_program(tmp_path: Path) -> None:
    command = InstanceCommand(CommandKind.CHECKPOINT, options=(("no-such-option", "x"),))

    result = await LocalShell().run(INSTANCE, REGION, command, timeout_s=60, comment="c")

    assert result.status is CommandStatus.FAILED
    assert result.exit_code == 2  # usage


def test_the_result_is_the_json_object_on_the_last_non_empty_line() -> None:
    assert parse_result('log\n{"ok": true}\n\n') == {"ok": True}
    assert parse_result('{"ok": true}\ntrailing text') == {}
    assert parse_result("[1, 2]") == {}
    assert parse_result("") == {}


def test_the_adapters_show_their_configuration() -> None:
    assert repr(LocalShell(["prog"], env={"A": "1"})) == "<LocalShell program=['prog'] env=['A']>"


# -- SsmShell ---------------------------------------------------------------------------------


@dataclass
class FakeTime:
    """A monotonic clock that moves only when the shell sleeps (by at least `tick`)."""

    now: float = 0.0
    tick: float = 0.0
    sleeps: int = 0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps += 1
        self.now += max(seconds, self.tick)


@dataclass
class StubbedSsm:
    aws: Aws
    stub: Stubber
    time: FakeTime
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def shell(self) -> SsmShell:
        return SsmShell(self.aws, DOCUMENT, poll_s=0, clock=self.time.clock, sleep=self.time.sleep)

    def sent(self) -> list[dict[str, Any]]:
        return [params for name, params in self.calls if name == "SendCommand"]

    def record(self, *, params: dict[str, Any], model: Any, **_: Any) -> None:
        self.calls.append((model.name, dict(params)))


@pytest.fixture
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dummy credentials: the stubber answers before any request is signed or sent."""
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture
async def ssm(aws_credentials: None) -> AsyncIterator[StubbedSsm]:
    async with Aws() as aws:
        client = await aws.client("ssm", REGION)
        stubbed = StubbedSsm(aws, Stubber(client), FakeTime())
        client.meta.events.register("before-parameter-build.ssm.*", stubbed.record)
        with stubbed.stub:
            yield stubbed
            stubbed.stub.assert_no_pending_responses()


def command_id() -> str:
    return str(uuid.uuid4())


def invocation(
    cid: str, status: str, *, code: int = -1, stdout: str = "", details: str | None = None
) -> dict[str, Any]:
    return {
        "CommandId": cid,
        "InstanceId": INSTANCE,
        "Status": status,
        "StatusDetails": details or status,
        "ResponseCode": code,
        "StandardOutputContent": stdout,
        "StandardErrorContent": "" if status == "Success" else "traceback…",
    }


def expect_send(ssm: StubbedSsm, cid: str, comment: Any = "c1") -> None:
    ssm.stub.add_response(
        "send_command",
        {"Command": {"CommandId": cid}},
        {
            "InstanceIds": [INSTANCE],
            "DocumentName": DOCUMENT,
            "Comment": comment,
            "TimeoutSeconds": ANY,
            "Parameters": ANY,
        },
    )


def expect_poll(ssm: StubbedSsm, cid: str, reply: dict[str, Any]) -> None:
    ssm.stub.add_response(
        "get_command_invocation", reply, {"CommandId": cid, "InstanceId": INSTANCE}
    )


def expect_poll_error(ssm: StubbedSsm, code: str, status: int = 400) -> None:
    ssm.stub.add_client_error("get_command_invocation", code, http_status_code=status)


def expect_listing(ssm: StubbedSsm, *commands: tuple[str, str]) -> None:
    listed = [
        {"CommandId": cid, "Comment": comment, "DocumentName": DOCUMENT, "Status": "InProgress"}
        for cid, comment in commands
    ]
    ssm.stub.add_response(
        "list_commands",
        {"Commands": listed},
        {"InstanceId": INSTANCE, "Filters": ANY, "MaxResults": ANY},
    )


def expect_cancel(ssm: StubbedSsm, cid: str) -> None:
    ssm.stub.add_response("cancel_command", {}, {"CommandId": cid, "InstanceIds": [INSTANCE]})


def success(cid: str) -> dict[str, Any]:
    return invocation(cid, "Success", code=0, stdout='uploading\n{"ok": true, "files": 3}\n')


async def run(ssm: StubbedSsm, comment: str = "c1", timeout_s: float = 60) -> CommandResult:
    return await ssm.shell().run(INSTANCE, REGION, CHECKPOINT, timeout_s=timeout_s, comment=comment)


async def test_polling_waits_out_a_missing_invocation_and_returns_the_parsed_result(
    ssm: StubbedSsm,
) -> None:
    cid = command_id()
    expect_send(ssm, cid)
    expect_poll_error(ssm, "InvocationDoesNotExist")
    expect_poll(ssm, cid, invocation(cid, "InProgress"))
    expect_poll(ssm, cid, success(cid))

    result = await run(ssm)

    assert result == CommandResult(
        CommandStatus.SUCCESS,
        0,
        'uploading\n{"ok": true, "files": 3}\n',
        "",
        {"ok": True, "files": 3},
    )
    assert ssm.aws.counter.count("GetCommandInvocation") == 3


async def test_the_arguments_travel_as_one_json_parameter(ssm: StubbedSsm) -> None:
    cid = command_id()
    expect_send(ssm, cid)
    expect_poll(ssm, cid, success(cid))

    await run(ssm, timeout_s=120.5)

    (sent,) = ssm.sent()
    assert sent["DocumentName"] == DOCUMENT
    assert sent["Comment"] == "c1"
    (args,) = sent["Parameters"]["Args"]
    assert json.loads(args) == CHECKPOINT.argv()
    assert args_pattern().fullmatch(args)
    assert sent["Parameters"]["ExecutionTimeout"] == ["121"]
    assert sent["TimeoutSeconds"] == 121


async def test_a_long_comment_is_cut_in_the_middle_to_keep_its_unique_end(
    ssm: StubbedSsm,
) -> None:
    cid, comment = command_id(), "supervisor " + "r" * 128 + " checkpoint 1a2b3c4d"
    expect_send(ssm, cid, ANY)
    expect_poll(ssm, cid, success(cid))

    await run(ssm, comment=comment)

    sent = ssm.sent()[0]["Comment"]
    assert len(sent) == COMMENT_LIMIT
    assert sent.startswith("supervisor rrr")
    assert sent.endswith("rrr checkpoint 1a2b3c4d")


async def test_a_failed_command_is_failed_with_its_response_code(ssm: StubbedSsm) -> None:
    cid = command_id()
    expect_send(ssm, cid)
    stdout = '{"ok": false, "error": "bad usage"}\n'
    expect_poll(ssm, cid, invocation(cid, "Failed", code=2, stdout=stdout))

    result = await run(ssm)

    assert result.status is CommandStatus.FAILED
    assert result.exit_code == 2
    assert result.result == {"ok": False, "error": "bad usage"}
    assert result.stderr == "traceback…"


async def test_a_timed_out_command_is_timed_out(ssm: StubbedSsm) -> None:
    cid = command_id()
    expect_send(ssm, cid)
    expect_poll(ssm, cid, invocation(cid, "TimedOut", details="ExecutionTimedOut"))

    result = await run(ssm)

    assert result.status is CommandStatus.TIMED_OUT
    assert result.exit_code is None


async def test_a_throttled_send_that_reached_ssm_is_found_by_its_comment_not_resent(
    ssm: StubbedSsm,
) -> None:
    cid = command_id()
    ssm.stub.add_client_error("send_command", "ThrottlingException", http_status_code=400)
    expect_listing(ssm, (command_id(), "another run's command"), (cid, "c1"))
    expect_poll(ssm, cid, success(cid))

    result = await run(ssm)

    assert result.status is CommandStatus.SUCCESS
    assert ssm.aws.counter.count("SendCommand") == 1
    (listing,) = [params for name, params in ssm.calls if name == "ListCommands"]
    (invoked_after,) = listing["Filters"]
    assert invoked_after["key"] == "InvokedAfter"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", invoked_after["value"])


async def test_a_throttled_send_that_ssm_does_not_list_is_sent_once_more(
    ssm: StubbedSsm,
) -> None:
    cid = command_id()
    ssm.stub.add_client_error("send_command", "ThrottlingException", http_status_code=400)
    expect_listing(ssm)
    expect_send(ssm, cid)
    expect_poll(ssm, cid, success(cid))

    result = await run(ssm)

    assert result.status is CommandStatus.SUCCESS
    assert ssm.aws.counter.count("SendCommand") == 2
    first, second = ssm.sent()
    assert first == second


async def test_sending_gives_up_after_two_sends_that_ssm_does_not_list(ssm: StubbedSsm) -> None:
    for _ in range(2):
        ssm.stub.add_client_error("send_command", "ThrottlingException", http_status_code=400)
        expect_listing(ssm)

    with pytest.raises(TransientError, match="was not sent"):
        await run(ssm)

    assert ssm.aws.counter.count("SendCommand") == 2


async def test_a_send_is_not_repeated_when_ssm_cannot_say_whether_it_arrived(
    ssm: StubbedSsm,
) -> None:
    ssm.stub.add_client_error("send_command", "InternalServerError", http_status_code=500)
    for _ in range(3):
        ssm.stub.add_client_error("list_commands", "ThrottlingException", http_status_code=400)

    with pytest.raises(TransientError, match="not sending it again"):
        await run(ssm)

    assert ssm.aws.counter.count("SendCommand") == 1


async def test_an_instance_ssm_does_not_manage_is_a_permanent_error_that_says_why(
    ssm: StubbedSsm,
) -> None:
    ssm.stub.add_client_error("send_command", "InvalidInstanceId", http_status_code=400)

    with pytest.raises(PermanentError) as caught:
        await run(ssm)

    assert caught.value.code == "InvalidInstanceId"
    assert INSTANCE in caught.value.message
    assert "SSM agent" in caught.value.message
    assert "ssm:UpdateInstanceInformation" in caught.value.message
    assert ssm.aws.counter.count("SendCommand") == 1


async def test_a_missing_document_is_a_permanent_error_that_says_how_to_create_it(
    ssm: StubbedSsm,
) -> None:
    ssm.stub.add_client_error("send_command", "InvalidDocument", http_status_code=400)

    with pytest.raises(PermanentError, match=re.escape("deploy/ssm-document.json")):
        await run(ssm)


async def test_polling_rides_out_throttling(ssm: StubbedSsm) -> None:
    cid = command_id()
    expect_send(ssm, cid)
    expect_poll_error(ssm, "ThrottlingException")
    expect_poll(ssm, cid, success(cid))

    assert (await run(ssm)).status is CommandStatus.SUCCESS


async def test_without_a_verdict_by_the_deadline_the_command_is_cancelled_and_timed_out(
    ssm: StubbedSsm,
) -> None:
    ssm.time.tick = 100.0  # deadline: 60 s to run + 60 s to deliver + 30 s grace
    cid = command_id()
    expect_send(ssm, cid)
    expect_poll(ssm, cid, invocation(cid, "InProgress"))
    expect_poll(ssm, cid, invocation(cid, "InProgress"))
    expect_cancel(ssm, cid)

    result = await run(ssm, timeout_s=60)

    assert result.status is CommandStatus.TIMED_OUT
    assert cid in result.stderr


async def test_an_invocation_that_never_appears_is_cancelled_and_undelivered(
    ssm: StubbedSsm,
) -> None:
    ssm.time.tick = 20.0
    cid = command_id()
    expect_send(ssm, cid)
    expect_poll_error(ssm, "InvocationDoesNotExist")
    expect_poll_error(ssm, "InvocationDoesNotExist")
    expect_cancel(ssm, cid)

    result = await run(ssm)

    assert result.status is CommandStatus.UNDELIVERED


async def test_a_poll_that_is_denied_raises_and_names_the_sent_command(ssm: StubbedSsm) -> None:
    cid = command_id()
    expect_send(ssm, cid)
    expect_poll_error(ssm, "AccessDeniedException")

    with pytest.raises(PermanentError, match=f"command {cid} was sent"):
        await run(ssm)


def test_the_ssm_shell_shows_its_configuration(aws_credentials: None) -> None:
    assert repr(SsmShell(Aws(), "Doc", 2.0)) == "<SsmShell document='Doc' poll_s=2.0>"


@pytest.mark.parametrize(
    ("status", "details", "expected"),
    [
        ("Success", "Success", CommandStatus.SUCCESS),
        ("Failed", "Failed", CommandStatus.FAILED),
        ("Failed", "Undeliverable", CommandStatus.UNDELIVERED),
        ("TimedOut", "DeliveryTimedOut", CommandStatus.TIMED_OUT),
        ("TimedOut", "Delivery Timed Out", CommandStatus.TIMED_OUT),
        ("Failed", "ExecutionTimedOut", CommandStatus.TIMED_OUT),
        ("Cancelled", "Cancelled", CommandStatus.CANCELLED),
        ("Cancelling", "Cancelling", CommandStatus.CANCELLED),
        ("Pending", "Pending", None),
        ("InProgress", "InProgress", None),
        ("Delayed", "Delayed", None),
    ],
)
def test_each_invocation_status_maps_to_a_command_status(
    status: str, details: str, expected: CommandStatus | None
) -> None:
    result = invocation_result(invocation("c", status, details=details))

    assert (None if result is None else result.status) == expected


# -- the SSM document -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DOCUMENT_PATH.read_text())
    return loaded


def args_pattern() -> re.Pattern[str]:
    """Args' allowedPattern; SSM matches it against the whole value, as `fullmatch` does."""
    document = json.loads(DOCUMENT_PATH.read_text())
    return re.compile(document["parameters"]["Args"]["allowedPattern"])


def test_args_reach_the_script_as_an_environment_variable(document: dict[str, Any]) -> None:
    args = document["parameters"]["Args"]
    assert document["schemaVersion"] == "2.2"
    assert args["type"] == "String"
    assert args["interpolationType"] == "ENV_VAR"
    assert args["allowedPattern"]
    (step,) = document["mainSteps"]
    assert step["action"] == "aws:runShellScript"
    assert step["inputs"]["timeoutSeconds"] == "{{ ExecutionTimeout }}"
    script = "\n".join(step["inputs"]["runCommand"])
    assert '"$SSM_Args"' in script
    assert not re.search(r"\{\{\s*Args\s*\}\}", script)


def test_the_args_pattern_accepts_real_commands_and_rejects_control_characters() -> None:
    pattern = args_pattern()
    unicode_start = InstanceCommand(
        CommandKind.START, (("note", "café ☕ " + HOSTILE),), ("python", "train.py")
    )

    assert pattern.fullmatch(json.dumps(CHECKPOINT.argv()))
    assert pattern.fullmatch(json.dumps(unicode_start.argv()))
    assert not pattern.fullmatch('["checkpoint", "--run-id", "r1\n"]')
    assert not pattern.fullmatch('["checkpoint"]\n')
    assert not pattern.fullmatch('["checkpoint", "\x1b[2J"]')
    assert not pattern.fullmatch('"checkpoint"')
    assert not pattern.fullmatch(json.dumps(["x" * 5000]))


def test_the_execution_timeout_pattern_takes_only_seconds(document: dict[str, Any]) -> None:
    timeout = document["parameters"]["ExecutionTimeout"]
    pattern = re.compile(timeout["allowedPattern"])

    assert pattern.fullmatch(timeout["default"])
    assert pattern.fullmatch("1")
    assert not pattern.fullmatch("0")
    assert not pattern.fullmatch("900; reboot")


@pytest.fixture
def fake_python3(tmp_path: Path) -> Path:
    """A `python3` first on PATH that prints the arguments it was given as JSON."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "python3"
    fake.write_text(f"#!{sys.executable}\nimport json, sys\nprint(json.dumps(sys.argv[1:]))\n")
    fake.chmod(0o755)
    return bin_dir


def run_script(document: dict[str, Any], env: dict[str, str]) -> tuple[int, str, str]:
    script = "\n".join(document["mainSteps"][0]["inputs"]["runCommand"])
    done = subprocess.run(
        ["/bin/sh", "-c", script], env=env, capture_output=True, text=True, check=False
    )
    return done.returncode, done.stdout, done.stderr


def test_the_script_hands_args_to_the_program_as_one_unparsed_argument(
    document: dict[str, Any], fake_python3: Path
) -> None:
    value = json.dumps(["start", "--note", "a; rm -rf / $(x) `y` * ~", "--", "python"])
    env = {"PATH": f"{fake_python3}:{os.environ['PATH']}", "SSM_Args": value}

    code, stdout, _ = run_script(document, env)

    assert code == 0
    assert json.loads(stdout) == ["/opt/supervisor/instance.py", "--argv-json", value]


def test_the_script_refuses_to_run_without_ssm_args(
    document: dict[str, Any], fake_python3: Path
) -> None:
    code, stdout, stderr = run_script(document, {"PATH": f"{fake_python3}:/usr/bin:/bin"})

    assert code == 2
    assert stdout == ""
    assert "SSM Agent 3.3.2746.0" in stderr
