"""The run spec: validated once at attach, every bad field named, stored as JSON."""

from __future__ import annotations

import json
from typing import Any

import pytest

from supervisor.core.errors import InvalidInput
from supervisor.core.spec import (
    DEFAULT_MARKERS,
    MAX_CONFIG_BYTES,
    Direction,
    GraceMode,
    Objective,
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
    ({"name": ""}, "name", "''"),
    ({"project": "-exp"}, "project", "'-exp'"),
    ({"tags": {"bad key": "x"}}, "tag key", "'bad key'"),
    ({"tags": {"team": 5}}, "tags.team", "5"),
    ({"tags": ["team"]}, "tags", "['team']"),
    ({"config": [1, 2]}, "config", "[1, 2]"),
    ({"objectives": ["val_loss"]}, "objective", "'val_loss'"),
    ({"objectives": "val_loss:min"}, "objectives", "'val_loss:min'"),
    ({"wandb_project": "my project"}, "wandb_project", "'my project'"),
    ({"instance_type": "G5.xlarge"}, "instance_type", "'G5.xlarge'"),
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


def test_every_run_has_an_until_quiet_grace_unless_it_asks_for_a_fixed_one() -> None:
    plain, checkpointed = make_spec(grace_mode=None), make_spec(**CHECKPOINTED, grace_mode=None)
    assert (plain.checkpointing, plain.grace_mode) == (False, GraceMode.UNTIL_QUIET)
    assert (checkpointed.checkpointing, checkpointed.grace_mode) == (True, GraceMode.UNTIL_QUIET)
    assert make_spec(grace_mode="fixed").grace_mode is GraceMode.FIXED
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


# -- the run database: what the run is, for queries and comparisons -----------------------------


def test_a_spec_says_nothing_about_the_run_unless_told() -> None:
    spec = make_spec()
    assert (spec.name, spec.project, spec.tags, spec.config, spec.objectives) == (
        None, None, {}, None, (),
    )  # fmt: skip
    assert (spec.wandb_project, spec.instance_type) == (None, None)


@pytest.mark.parametrize("key", ["team", "a/b:c", "v1.2-rc_3", "k" * 128])
def test_a_tag_key_of_letters_digits_and_punctuation_up_to_128_is_kept(key: str) -> None:
    assert make_spec(tags={key: "nlp"}).tags == {key: "nlp"}


@pytest.mark.parametrize("key", ["", "bad key", "k" * 129, "café", "a=b", "x\ty"])
def test_a_tag_key_with_other_characters_or_too_long_is_refused_saying_what_is_allowed(
    key: str,
) -> None:
    with pytest.raises(InvalidInput) as info:
        make_spec(tags={"team": "nlp", key: "x"})
    assert str(info.value) == (
        f"tag key {key!r} is not valid: use 1-128 letters, digits, '_', '.', '-', '/' or ':'"
    )


def test_a_tag_value_may_be_empty_or_up_to_256_characters_but_no_longer() -> None:
    assert make_spec(tags={"a": "", "b": "v" * 256}).tags == {"a": "", "b": "v" * 256}
    with pytest.raises(InvalidInput, match=r"^tag b: the value is longer than 256 characters$"):
        make_spec(tags={"b": "v" * 257})


CONFIG: dict[str, Any] = {
    "model": {"layers": 24, "width": 1024, "activation": "gelu"},
    "optimizer": {"name": "adamw", "lr": 3e-4, "betas": [0.9, 0.95]},
    "gradient_method": "adam",
    "seed": None,
    "bf16": True,
}


def test_a_config_is_kept_as_given_and_stored_as_a_json_object() -> None:
    spec = make_spec(config=CONFIG)
    assert spec.config == CONFIG
    # The run database queries it with json_extract(spec_json, '$.config.gradient_method').
    assert json.loads(spec.model_dump_json())["config"]["gradient_method"] == "adam"


@pytest.mark.parametrize(
    ("value", "why"),
    [({1, 2}, "set"), (b"\x00", "bytes"), (float("nan"), "lr is nan: NaN and infinity"),
     (float("inf"), "lr is inf"), (object(), "object"), (2**64, "65 bits")],
    ids=["set", "bytes", "nan", "inf", "object", "int-overflow"],
)  # fmt: skip
def test_a_config_that_is_not_plain_json_is_refused(value: object, why: str) -> None:
    with pytest.raises(InvalidInput, match=rf"^config is not plain JSON: .*{why}"):
        make_spec(config={"optimizer": {"lr": value}})


def test_a_config_up_to_one_mib_of_json_is_kept_and_a_byte_more_is_refused() -> None:
    overhead = len(json.dumps({"blob": ""}))
    largest = {"blob": "x" * (MAX_CONFIG_BYTES - overhead)}
    assert make_spec(config=largest).config == largest
    with pytest.raises(InvalidInput) as info:
        make_spec(config={"blob": "x" * (MAX_CONFIG_BYTES - overhead + 1)})
    assert str(info.value) == "config is 1048577 bytes as JSON; the limit is 1048576"


@pytest.mark.parametrize(
    ("text", "objective"),
    [
        ("val_loss:min", Objective(name="val_loss", direction=Direction.MIN, weight=1.0)),
        ("accuracy:max", Objective(name="accuracy", direction=Direction.MAX)),
        ("accuracy:max:2", Objective(name="accuracy", direction=Direction.MAX, weight=2.0)),
        ("eval/loss:min:0.25", Objective(name="eval/loss", weight=0.25)),
        ("loss:min:1e-3", Objective(name="loss", weight=0.001)),
    ],
)
def test_an_objective_is_parsed_from_name_direction_and_optional_weight(
    text: str, objective: Objective
) -> None:
    assert Objective.parse(text) == objective


FORM = "give NAME:min or NAME:max, optionally with :WEIGHT (e.g. val_loss:min or accuracy:max:2)"
BAD_OBJECTIVES = [
    ("val_loss", f"objective 'val_loss' is not valid: {FORM}"),
    ("val_loss:down", f"objective 'val_loss:down' is not valid: {FORM}"),
    ("val_loss:MIN", f"objective 'val_loss:MIN' is not valid: {FORM}"),
    ("val_loss:min:1:2", f"objective 'val_loss:min:1:2' is not valid: {FORM}"),
    ("val_loss:min:heavy", "objective 'val_loss:min:heavy': weight 'heavy' is not a number"),
    ("val_loss:min:0", "objective 'val_loss:min:0': weight: input should be greater than 0"),
    ("val_loss:min:-1", "objective 'val_loss:min:-1': weight: input should be greater than 0"),
    ("val_loss:min:inf", "objective 'val_loss:min:inf': weight: input should be a finite"),
    ("val_loss:min:nan", "objective 'val_loss:min:nan': weight: input should be a finite"),
    (":min", "objective ':min' is not valid: give NAME:min or NAME:max"),
    ("val loss:min", "objective 'val loss:min': name: string should match pattern"),
]


@pytest.mark.parametrize(("text", "message"), BAD_OBJECTIVES)
def test_a_bad_objective_is_refused_naming_it_as_given(text: str, message: str) -> None:
    with pytest.raises(InvalidInput) as info:
        Objective.parse(text)
    assert str(info.value).startswith(message)
    with pytest.raises(InvalidInput) as in_spec:
        make_spec(objectives=["accuracy:max", text])
    assert str(in_spec.value).startswith(message)


def test_objectives_are_taken_as_text_as_stored_objects_or_as_objectives_in_order() -> None:
    spec = make_spec(
        objectives=["val_loss:min", {"name": "accuracy", "direction": "max", "weight": 2},
                    Objective(name="tokens_per_s", direction=Direction.MAX), {"name": "ppl"}],
    )  # fmt: skip
    assert spec.objectives == (
        Objective(name="val_loss"),
        Objective(name="accuracy", direction=Direction.MAX, weight=2.0),
        Objective(name="tokens_per_s", direction=Direction.MAX),
        Objective(name="ppl", direction=Direction.MIN, weight=1.0),
    )


def test_a_stored_objective_with_an_unknown_field_is_refused() -> None:
    with pytest.raises(InvalidInput, match=r"objectives\.0\.goal: extra inputs are not permitted"):
        make_spec(objectives=[{"name": "loss", "goal": "min"}])


def test_an_objective_named_twice_is_refused_naming_each_repeated_name_once() -> None:
    with pytest.raises(InvalidInput) as info:
        make_spec(objectives=["loss:min", "acc:max", "loss:max:2", "acc:max", "ppl:min"])
    assert str(info.value) == "objectives: acc, loss given more than once"


@pytest.mark.parametrize(
    "instance_type", ["g5.xlarge", "p4d.24xlarge", "trn1n.32xlarge", "u-6tb1.metal", "t3.micro"]
)
def test_an_ec2_instance_type_is_kept(instance_type: str) -> None:
    assert make_spec(instance_type=instance_type).instance_type == instance_type


@pytest.mark.parametrize(
    "instance_type", ["g5", "G5.xlarge", "g5.", ".xlarge", "g5 .xlarge", "g5.xlarge; reboot"]
)
def test_anything_else_as_an_instance_type_is_refused_naming_it(instance_type: str) -> None:
    with pytest.raises(InvalidInput, match=r"^instance_type: ") as info:
        make_spec(instance_type=instance_type)
    assert repr(instance_type) in str(info.value)


def test_a_spec_with_every_run_database_field_round_trips_through_json() -> None:
    spec = make_spec(
        name="gpt-small lr sweep #3", project="llm-pretrain", tags={"team": "nlp", "sweep": "lr"},
        config=CONFIG, objectives=["val_loss:min", "accuracy:max:0.5"],
        wandb_project="acme/llm", instance_type="p4d.24xlarge",
    )  # fmt: skip
    stored = json.loads(spec.model_dump_json())
    assert stored["objectives"] == [
        {"name": "val_loss", "direction": "min", "weight": 1.0},
        {"name": "accuracy", "direction": "max", "weight": 0.5},
    ]
    assert RunSpec.model_validate_json(spec.model_dump_json()) == spec


@pytest.mark.parametrize("key", ["final_metrics.json", "history.json"])
def test_a_heartbeat_file_that_names_another_report_is_refused(key: str) -> None:
    with pytest.raises(InvalidInput) as info:
        make_spec(heartbeat_file=key)
    assert key in str(info.value)


@pytest.mark.parametrize(
    ("text", "name", "direction", "weight"),
    [
        ("eval:loss:min", "eval:loss", "min", 1.0),
        ("eval:loss:max:2", "eval:loss", "max", 2.0),
        ("val_loss:min:0.5", "val_loss", "min", 0.5),
    ],
)
def test_an_objective_name_may_hold_colons(
    text: str, name: str, direction: str, weight: float
) -> None:
    objective = Objective.parse(text)
    assert (objective.name, objective.direction, objective.weight) == (name, direction, weight)


def test_each_key_under_the_run_prefix_fits_s3s_1024_bytes() -> None:
    prefix = "s3://my-runs/" + "p" * 1000 + "/"  # 1,001 bytes: fits alone
    with pytest.raises(InvalidInput) as info:
        make_spec(s3_prefix=prefix, markers=("a" * 30,))
    assert "completion marker under s3://my-runs/ppp" in str(info.value)
    assert "1031 bytes long as UTF-8; S3 keys are at most 1024 bytes" in str(info.value)
    assert make_spec(s3_prefix=prefix, markers=("done",), crash_report="crash.log")
