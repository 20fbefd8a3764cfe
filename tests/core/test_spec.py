"""The run spec: validated once at attach, every bad field named, stored as JSON."""

from __future__ import annotations

from typing import Any

import pytest

from supervisor.core.errors import InvalidInput
from supervisor.core.spec import (
    DEFAULT_MARKERS,
    GraceMode,
    OnComplete,
    OnInterruption,
    OnRebalance,
    OnStall,
    RunSpec,
)
from supervisor.core.values import S3Prefix
from tests.core.builders import SPEC_FIELDS, make_spec


def test_a_minimal_spec_gets_the_documented_defaults() -> None:
    spec = make_spec(s3_prefix="s3://my-runs/exp1/run42")
    assert (spec.on_complete, spec.markers, spec.failure_marker, spec.expect) == (
        OnComplete.STOP,
        DEFAULT_MARKERS,
        "FAILED",
        (),
    )
    assert spec.s3_prefix == "s3://my-runs/exp1/run42/"
    assert spec.prefix == S3Prefix("my-runs", "exp1/run42/")


BAD_FIELDS = [
    ({"grace_s": -1}, "grace_s", "-1"),
    ({"grace_s": "soon"}, "grace_s", "'soon'"),
    ({"colour": "blue"}, "colour", "'blue'"),
    ({"instance_id": "i-xyz"}, "instance id", "'i-xyz'"),
    ({"region": "mars"}, "region", "'mars'"),
    ({"s3_prefix": "http://x/"}, "s3 prefix", "'http://x/'"),
    ({"on_complete": "halt"}, "on_complete", "'halt'"),
    ({"markers": ()}, "markers", ""),
    ({"markers": ("../done",)}, "completion marker", "'../done'"),
    ({"expect": ("x; rm -rf /",)}, "expected output", "'x; rm -rf /'"),
    ({"failure_marker": "/FAILED"}, "failure marker", "'/FAILED'"),
    ({"checkpoint_pattern": ("../*.pt",)}, "checkpoint pattern", "'../*.pt'"),
    ({"checkpoint_pattern": ()}, "checkpoint_pattern", ""),
    ({"sigterm_timeout_s": -1}, "sigterm_timeout_s", "-1"),
    ({"sigterm_timeout_s": 7200}, "sigterm_timeout_s", "7200"),
    ({"checkpoint_attempts": 0}, "checkpoint_attempts", "0"),
    ({"on_sigterm_timeout": "ignore"}, "on_sigterm_timeout", "'ignore'"),
    ({"on_checkpoint_failure": "panic"}, "on_checkpoint_failure", "'panic'"),
    ({"grace_mode": "sometimes"}, "grace_mode", "'sometimes'"),
    ({"quiet_s": -1}, "quiet_s", "-1"),
    ({"transport": "ssh"}, "transport", "'ssh'"),
    ({"resume_command": ""}, "resume_command", "''"),
    ({"resume_command": ["python", "a\x00b"]}, "resume_command", "a\\x00b"),
    ({"resume_command": 5}, "resume_command", ""),
    ({"launch_template": {}}, "launch_template", ""),
    ({"launch_template": {"id": "lt-0123456789abcdef0", "name": "x"}}, "launch_template", ""),
    ({"launch_template": {"id": "lt-x"}}, "launch_template.id", "'lt-x'"),
    ({"spot": "maybe"}, "spot", "'maybe'"),
    ({"on_interruption": "retry"}, "on_interruption", "'retry'"),
    ({"max_restarts": -1}, "max_restarts", "-1"),
    ({"max_restarts": 101}, "max_restarts", "101"),
    ({"max_restarts": 2.5}, "max_restarts", "2.5"),
    ({"stall_timeout_s": 0}, "stall_timeout_s", "0"),
    ({"stall_timeout_s": -60}, "stall_timeout_s", "-60"),
    ({"stall_timeout_s": float("inf")}, "stall_timeout_s", "inf"),
    ({"stall_timeout_s": 1e9}, "stall_timeout_s", "1000000000"),
    ({"on_stall": "panic"}, "on_stall", "'panic'"),
    ({"heartbeat_file": "../status.json"}, "heartbeat file", "'../status.json'"),
    ({"crash_report": "/var/log/crash.log"}, "crash report", "'/var/log/crash.log'"),
    ({"on_rebalance": "pray"}, "on_rebalance", "'pray'"),
]


@pytest.mark.parametrize(("overrides", "field", "shown"), BAD_FIELDS)
def test_build_refuses_a_bad_field_naming_it_and_the_value_as_given(
    overrides: dict[str, Any], field: str, shown: str
) -> None:
    with pytest.raises(InvalidInput) as info:
        make_spec(**overrides)
    assert field in str(info.value).lower()
    assert shown in str(info.value)


def test_build_refuses_a_missing_field_naming_it() -> None:
    fields = {k: v for k, v in SPEC_FIELDS.items() if k != "grace_s"}
    with pytest.raises(InvalidInput, match=r"^grace_s: field required$"):
        RunSpec.build(**fields)


def test_build_names_every_bad_field_at_once() -> None:
    # Fails today: the validators raise InvalidInput, which pydantic does not collect.
    with pytest.raises(InvalidInput) as info:
        make_spec(instance_id="i-xyz", grace_s=-1)
    assert "i-xyz" in str(info.value) and "grace_s" in str(info.value)


@pytest.mark.parametrize("grace_s", [float("inf"), float("nan"), 1e12])
def test_build_refuses_a_grace_that_no_clock_can_reach(grace_s: float) -> None:
    # Fails today for inf and 1e12: step() then raises OverflowError when the run completes.
    with pytest.raises(InvalidInput, match="grace_s"):
        make_spec(grace_s=grace_s)


def test_spec_round_trips_through_json() -> None:
    spec = make_spec(
        on_complete="terminate",
        markers=("out/done",),
        expect=("model.pt", "out/metrics.json"),
        failure_marker="out/FAILED",
    )
    assert RunSpec.model_validate_json(spec.model_dump_json()) == spec


def test_stored_json_with_a_bad_value_is_refused() -> None:
    text = make_spec().model_dump_json().replace('"grace_s":600.0', '"grace_s":-5')
    with pytest.raises(ValueError, match="grace_s"):
        RunSpec.model_validate_json(text)


# -- checkpoint safety and resume --------------------------------------------------------------

CHECKPOINTED = {"checkpoint_dir": "/home/ubuntu/ckpt"}


def test_checkpoint_dir_turns_checkpointing_on_with_an_until_quiet_grace() -> None:
    plain, checkpointed = make_spec(), make_spec(**CHECKPOINTED)
    assert (plain.checkpointing, plain.grace_mode) == (False, GraceMode.FIXED)
    assert (checkpointed.checkpointing, checkpointed.grace_mode) == (True, GraceMode.UNTIL_QUIET)
    assert make_spec(**CHECKPOINTED, grace_mode="fixed").grace_mode is GraceMode.FIXED
    assert make_spec(**CHECKPOINTED, grace_mode=None).grace_mode is GraceMode.UNTIL_QUIET


def test_checkpoints_go_under_the_run_prefix_unless_checkpoint_s3_says_otherwise() -> None:
    assert make_spec(**CHECKPOINTED).checkpoint_location == S3Prefix(
        "my-runs", "exp1/run42/checkpoints/"
    )
    spec = make_spec(**CHECKPOINTED, checkpoint_s3="s3://other-bucket/ckpts/run42")
    assert spec.checkpoint_s3 == "s3://other-bucket/ckpts/run42/"
    assert spec.checkpoint_location == S3Prefix("other-bucket", "ckpts/run42/")


@pytest.mark.parametrize(
    ("value", "words"),
    [("python train.py --resume", ("python", "train.py", "--resume")),
     (["python", "train.py"], ("python", "train.py")), ([], ()), (None, ())],
)  # fmt: skip
def test_resume_command_is_stored_as_words(value: object, words: tuple[str, ...]) -> None:
    assert make_spec(resume_command=value, pid_file="/run/train.pid").resume_command == words


def test_a_checkpointed_resumable_spec_round_trips_through_json() -> None:
    spec = make_spec(
        **CHECKPOINTED, pid_file="/run/train.pid", resume_command="python train.py --resume",
        resume_cwd="/work", launch_template={"name": "trainer-g5"}, grace_mode="fixed",
        checkpoint_pattern=("step-*/",), on_checkpoint_failure="keep-running",
    )  # fmt: skip
    assert RunSpec.model_validate_json(spec.model_dump_json()) == spec


@pytest.mark.parametrize(
    ("field", "value"),
    [("checkpoint_dir", "x; rm -rf /"), ("pid_file", "run/train.pid"), ("resume_cwd", "/a b"),
     ("checkpoint_s3", "http://x/")],
)  # fmt: skip
def test_a_bad_checkpoint_path_or_location_is_refused_naming_its_field(
    field: str, value: str
) -> None:
    with pytest.raises(InvalidInput) as info:
        make_spec(**{field: value})
    assert field in str(info.value) and repr(value) in str(info.value)


def test_a_resume_command_without_a_pid_file_is_refused() -> None:
    with pytest.raises(InvalidInput, match="resume_command needs pid_file"):
        make_spec(checkpoint_dir="/data/ckpt", resume_command="python train.py --resume")


# -- spot --------------------------------------------------------------------------------------

RESUMABLE = {"pid_file": "/run/train.pid", "resume_command": "python train.py --resume"}


def test_a_run_is_on_demand_and_left_interrupted_unless_the_spec_says_otherwise() -> None:
    spec = make_spec()
    assert (spec.spot, spec.on_interruption, spec.max_restarts) == (False, OnInterruption.NONE, 3)


@pytest.mark.parametrize("extra", [{}, CHECKPOINTED], ids=["plain", "checkpointed"])
def test_on_interruption_resume_without_a_resume_command_is_refused(extra: dict[str, Any]) -> None:
    with pytest.raises(InvalidInput, match=r"^on_interruption=resume needs resume_command"):
        make_spec(spot=True, on_interruption="resume", **extra)


@pytest.mark.parametrize("max_restarts", [0, 1, 100])
def test_on_interruption_resume_takes_max_restarts_from_0_to_100(max_restarts: int) -> None:
    spec = make_spec(
        spot=True, on_interruption="resume", max_restarts=max_restarts, **CHECKPOINTED, **RESUMABLE
    )
    assert (spec.spot, spec.on_interruption, spec.max_restarts) == (
        True, OnInterruption.RESUME, max_restarts,
    )  # fmt: skip


def test_a_spot_spec_round_trips_through_json() -> None:
    spec = make_spec(
        spot=True, on_interruption="resume", max_restarts=7, **CHECKPOINTED, **RESUMABLE,
        launch_template={"id": "lt-0123456789abcdef0"},
    )  # fmt: skip
    assert RunSpec.model_validate_json(spec.model_dump_json()) == spec


# -- heartbeat, crash report, rebalance --------------------------------------------------------


def test_the_heartbeat_is_off_and_a_crash_report_is_looked_for_unless_the_spec_says_otherwise() -> (
    None
):
    spec = make_spec()
    assert (spec.heartbeat_file, spec.stall_timeout_s, spec.on_stall) == (
        "status.json", None, OnStall.NOTIFY,
    )  # fmt: skip
    assert (spec.crash_report, spec.on_rebalance) == ("crash/error.log", OnRebalance.IGNORE)


def test_on_rebalance_checkpoint_without_a_checkpoint_dir_is_refused() -> None:
    with pytest.raises(InvalidInput, match=r"^on_rebalance=checkpoint needs checkpoint_dir"):
        make_spec(spot=True, on_rebalance="checkpoint")
    spec = make_spec(spot=True, on_rebalance="checkpoint", **CHECKPOINTED)
    assert spec.on_rebalance is OnRebalance.CHECKPOINT


def test_a_heartbeat_and_rebalance_spec_round_trips_through_json() -> None:
    spec = make_spec(
        spot=True, on_rebalance="checkpoint", stall_timeout_s=900, on_stall="checkpoint-stop",
        heartbeat_file="out/status.json", crash_report="out/traceback.txt", **CHECKPOINTED,
    )  # fmt: skip
    assert (spec.stall_timeout_s, spec.on_stall) == (900.0, OnStall.CHECKPOINT_STOP)
    assert RunSpec.model_validate_json(spec.model_dump_json()) == spec
