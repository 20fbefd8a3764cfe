"""Checkpoint safety values: instance paths and commands, command results, and verify()."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Mapping
from typing import Any

import pytest

from supervisor.core.checkpoint import (
    CommandKind,
    CommandResult,
    CommandStatus,
    InstanceCommand,
    Manifest,
    ManifestFile,
    StoredObject,
    Verification,
    parse_command,
    parse_instance_path,
    parse_pattern,
    verify,
)
from supervisor.core.errors import InvalidInput
from supervisor.core.machine import checkpoint_command, restore_command, start_command
from supervisor.core.run import Run
from supervisor.instance import build_parser, split_command
from tests.core.builders import checkpoint_spec, make_run

# -- instance paths, patterns and commands -----------------------------------------------------


@pytest.mark.parametrize(
    "value", ["/home/ubuntu/ckpt", "/run/train.pid", "/data/run-1/v2.0_x", "/"]
)
def test_an_absolute_plain_path_is_accepted_as_given(value: str) -> None:
    assert parse_instance_path(value, what="checkpoint_dir") == value


@pytest.mark.parametrize(
    "value",
    [
        "x; rm -rf /",
        "/data/ckpt\n",
        "/data/ckpt\nrm -rf /",
        "/data/../etc",
        "/..",
        "relative/ckpt",
        "ckpt",
        "~/ckpt",
        "",
        "/data/my ckpt",
        "/data/$HOME",
        "/data/`id`",
        "/data/ckpt|tee",
    ],
)
def test_a_path_with_shell_characters_parent_references_or_no_root_is_refused(value: str) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_instance_path(value, what="checkpoint_dir")
    assert str(info.value).startswith(f"checkpoint_dir {value!r} is not valid: ")


@pytest.mark.parametrize("value", ["*.pt", "checkpoint-*/", "step_[0-9]?.ckpt", "sub/dir/*.bin"])
def test_a_glob_pattern_is_accepted_as_given(value: str) -> None:
    assert parse_pattern(value) == value


@pytest.mark.parametrize("value", ["../*.pt", "a/../*.pt", "*.pt; rm -rf /", "*.pt\n", "a b", ""])
def test_a_pattern_with_parent_references_or_shell_characters_is_refused(value: str) -> None:
    with pytest.raises(InvalidInput, match="checkpoint pattern"):
        parse_pattern(value)


COMMANDS = [
    ("python train.py --lr 1e-3", ("python", "train.py", "--lr", "1e-3")),
    (
        "python 'my script.py' $HOME *.pt ~ >out.log | tee; rm -rf /",
        ("python", "my script.py", "$HOME", "*.pt", "~", ">out.log", "|", "tee;", "rm", "-rf", "/"),
    ),
    (["python", "train.py", "$HOME"], ("python", "train.py", "$HOME")),
    (("torchrun", "--nproc_per_node=8", "a b"), ("torchrun", "--nproc_per_node=8", "a b")),
]  # fmt: skip


@pytest.mark.parametrize(("value", "argv"), COMMANDS)
def test_a_command_is_split_into_words_and_nothing_is_expanded(
    value: str | list[str], argv: tuple[str, ...]
) -> None:
    assert parse_command(value, what="resume_command") == argv


@pytest.mark.parametrize(
    "value",
    ["", "   ", [], ["python", "a\nb"], 'python "a\nb"', "python a\x00b",
     "python \x1b[31m", ["python", "\x7f"]],
    ids=repr,
)  # fmt: skip
def test_an_empty_command_or_a_word_with_control_characters_is_refused(
    value: str | list[str],
) -> None:
    with pytest.raises(InvalidInput, match=r"^resume_command .* is not valid: give a non-empty"):
        parse_command(value, what="resume_command")


def test_a_command_with_an_unclosed_quote_is_refused_as_invalid_input() -> None:
    with pytest.raises(InvalidInput, match=r"resume_command 'python \"train.py' is not valid"):
        parse_command('python "train.py', what="resume_command")


def test_argv_is_the_subcommand_then_each_option_in_order_then_the_command_after_dashes() -> None:
    command = InstanceCommand(
        CommandKind.START,
        (("pid-file", "/run/train.pid"), ("cwd", "/work")),
        ("python", "train.py", "--", "--resume"),
    )
    assert command.argv() == [
        "start", "--pid-file", "/run/train.pid", "--cwd", "/work",
        "--", "python", "train.py", "--", "--resume",
    ]  # fmt: skip
    assert (command.option("cwd"), command.option("region")) == ("/work", None)


def test_argv_without_a_command_has_no_dashes() -> None:
    command = InstanceCommand(CommandKind.RESTORE, (("s3-url", "s3://b/p/"), ("region", "x")))
    assert command.argv() == ["restore", "--s3-url", "s3://b/p/", "--region", "x"]
    assert InstanceCommand(CommandKind.CHECKPOINT).argv() == ["checkpoint"]


BUILDERS: list[tuple[str, Callable[[Run], InstanceCommand]]] = [
    ("checkpoint", checkpoint_command),
    ("restore", restore_command),
    ("start", start_command),
]
CONTRACT_SPECS: list[tuple[str, dict[str, Any]]] = [
    ("full", {"resume_cwd": "/work", "checkpoint_s3": "s3://other-bucket/ckpts/run42"}),
    ("defaults", {}),
    ("no-pid-file", {"pid_file": None, "resume_command": ()}),
]


@pytest.mark.parametrize(
    ("builder", "overrides"),
    [
        pytest.param(builder, overrides, id=f"{name}-{label}")
        for name, builder in BUILDERS
        for label, overrides in CONTRACT_SPECS
        # a spec without a pid file has no resume_command, hence no start command
        if (name, label) != ("start", "no-pid-file")
    ],
)
def test_every_command_the_machine_builds_is_accepted_by_the_instance_program(
    builder: Callable[[Run], InstanceCommand], overrides: dict[str, Any]
) -> None:
    command = builder(make_run(spec=checkpoint_spec(**overrides)))
    options, rest = split_command(command.argv())
    args = build_parser().parse_args(options)
    assert args.subcommand == str(command.kind)
    assert tuple(rest) == command.command


# -- command results ---------------------------------------------------------------------------

RESULTS = [
    (CommandStatus.SUCCESS, {"ok": True}, True),
    (CommandStatus.SUCCESS, {}, False),
    (CommandStatus.SUCCESS, {"ok": False, "error": "no checkpoint found"}, False),
    (CommandStatus.FAILED, {"ok": True}, False),
    (CommandStatus.TIMED_OUT, {}, False),
    (CommandStatus.UNDELIVERED, {"ok": False}, False),
]


@pytest.mark.parametrize(("status", "result", "ok"), RESULTS)
def test_a_command_is_ok_only_when_it_succeeded_and_its_result_says_ok(
    status: CommandStatus, result: dict[str, object], ok: bool
) -> None:
    assert CommandResult(status, 0, result=result).ok is ok


def test_a_command_error_prefers_the_programs_own_error_then_stderr_then_stdout() -> None:
    own = CommandResult(CommandStatus.FAILED, 1, "out", "err", {"error": "no checkpoint found"})
    assert own.error() == "Failed (exit 1): no checkpoint found"
    assert CommandResult(CommandStatus.FAILED, 2, "out", "usage\n").error() == (
        "Failed (exit 2): usage"
    )
    assert CommandResult(CommandStatus.TIMED_OUT, None, "last words").error() == (
        "TimedOut (exit None): last words"
    )


# -- verify ------------------------------------------------------------------------------------

BUCKET, PREFIX, RUN_ID = "my-runs", "exp1/run42/checkpoints/", "run-42"


def single_part(name: str, data: bytes) -> ManifestFile:
    digest = hashlib.sha256(data)
    return ManifestFile(
        path=f"checkpoint-900/{name}",
        key=f"{PREFIX}checkpoint-900/{name}",
        size=len(data),
        sha256=digest.hexdigest(),
        s3_checksum_sha256=base64.b64encode(digest.digest()).decode(),
    )


def multipart(name: str, data: bytes, composite: str, parts: int) -> ManifestFile:
    return single_part(name, data).model_copy(
        update={"s3_checksum_sha256": composite, "parts": parts}
    )


MODEL = single_part("model.safetensors", b"weights" * 100)
OPTIMIZER = single_part("optimizer.pt", b"adam state")
COMPOSITE = base64.b64encode(hashlib.sha256(b"part digests").digest()).decode()
SHARDED = multipart("shard.bin", b"x" * 1000, f"{COMPOSITE}-3", 3)


def make_manifest(*files: ManifestFile, **changes: Any) -> Manifest:
    fields: dict[str, Any] = {
        "run_id": RUN_ID, "created_at": "2026-11-22T12:00:00Z", "checkpoint": "checkpoint-900",
        "kind": "dir", "bucket": BUCKET, "prefix": PREFIX, "files": files,
        "total_bytes": sum(f.size for f in files),
    }  # fmt: skip
    return Manifest(**{**fields, **changes})


def as_stored(manifest: Manifest) -> dict[str, StoredObject | None]:
    """What S3 holds when every upload landed as the manifest says (real S3's checksums)."""
    return {f.key: StoredObject(f.key, f.size, f.s3_checksum_sha256) for f in manifest.files}


def check(manifest: Manifest, stored: Mapping[str, StoredObject | None]) -> Verification:
    return verify(manifest, stored, bucket=BUCKET, prefix=PREFIX, run_id=RUN_ID)


def test_a_checkpoint_stored_as_its_manifest_says_is_verified_with_its_files_and_bytes() -> None:
    manifest = make_manifest(MODEL, OPTIMIZER, SHARDED)
    v = check(manifest, as_stored(manifest))
    assert v == Verification(True, 3, 700 + 10 + 1000, ())
    assert v.summary() == "3 file(s), 1710 bytes verified in S3 (size and SHA-256)"


def _missing(stored: dict[str, StoredObject | None]) -> None:
    stored[OPTIMIZER.key] = None


def _absent(stored: dict[str, StoredObject | None]) -> None:
    del stored[OPTIMIZER.key]


def _shorter(stored: dict[str, StoredObject | None]) -> None:
    stored[OPTIMIZER.key] = StoredObject(OPTIMIZER.key, 9, OPTIMIZER.s3_checksum_sha256)


def _other_bytes(stored: dict[str, StoredObject | None]) -> None:
    other = single_part("optimizer.pt", b"adam statf").s3_checksum_sha256
    stored[OPTIMIZER.key] = StoredObject(OPTIMIZER.key, OPTIMIZER.size, other)


def _no_checksum(stored: dict[str, StoredObject | None]) -> None:
    stored[OPTIMIZER.key] = StoredObject(OPTIMIZER.key, OPTIMIZER.size, None)


def _other_composite(stored: dict[str, StoredObject | None]) -> None:
    stored[SHARDED.key] = StoredObject(SHARDED.key, SHARDED.size, f"{MODEL.s3_checksum_sha256}-3")


DAMAGE = [
    (_missing, f"{OPTIMIZER.key}: missing in S3"),
    (_absent, f"{OPTIMIZER.key}: missing in S3"),
    (_shorter, f"{OPTIMIZER.key}: size 9 in S3, 10 in the manifest"),
    (_other_bytes, f"{OPTIMIZER.key}: SHA-256 in S3 differs from the manifest"),
    (_no_checksum, f"{OPTIMIZER.key}: S3 holds no SHA-256 checksum for it"),
    (_other_composite, f"{SHARDED.key}: SHA-256 in S3 differs from the manifest"),
]


@pytest.mark.parametrize(("damage", "problem"), DAMAGE, ids=lambda x: getattr(x, "__name__", ""))
def test_a_file_missing_or_different_in_s3_fails_verification_naming_the_file(
    damage: Callable[[dict[str, StoredObject | None]], None], problem: str
) -> None:
    manifest = make_manifest(MODEL, OPTIMIZER, SHARDED)
    stored = as_stored(manifest)
    damage(stored)
    v = check(manifest, stored)
    assert (v.ok, v.problems) == (False, (problem,))
    assert (v.files, v.bytes) == (3, 1710)
    assert v.summary() == problem


@pytest.mark.parametrize("in_s3", [f"{COMPOSITE}-3", COMPOSITE], ids=["real-s3", "moto"])
def test_a_multipart_composite_checksum_matches_with_or_without_its_parts_suffix(
    in_s3: str,
) -> None:
    manifest = make_manifest(SHARDED)
    assert check(manifest, {SHARDED.key: StoredObject(SHARDED.key, 1000, in_s3)}).ok


def test_a_single_part_manifest_checksum_must_be_its_own_sha256() -> None:
    forged = OPTIMIZER.model_copy(update={"s3_checksum_sha256": MODEL.s3_checksum_sha256})
    manifest = make_manifest(forged)
    v = check(manifest, as_stored(manifest))
    assert v.problems == (f"{OPTIMIZER.key}: the manifest's checksum does not match its SHA-256",)


ELSEWHERE = [
    ({"bucket": "other-bucket"}, "the manifest names bucket 'other-bucket', expected 'my-runs'"),
    ({"run_id": "run-41"}, "the manifest is for run 'run-41', expected 'run-42'"),
    (
        {"files": (MODEL, OPTIMIZER.model_copy(update={"key": "exp1/run41/checkpoints/o.pt"}))},
        "1 file(s) outside exp1/run42/checkpoints/, e.g. exp1/run41/checkpoints/o.pt",
    ),
    (
        {"files": (MODEL.model_copy(update={"key": "exp1/run42/model.safetensors"}),)},
        "1 file(s) outside exp1/run42/checkpoints/, e.g. exp1/run42/model.safetensors",
    ),
    ({"files": ()}, "the manifest lists no files"),
]


@pytest.mark.parametrize(("changes", "problem"), ELSEWHERE)
def test_a_manifest_pointing_elsewhere_or_at_nothing_is_not_accepted(
    changes: dict[str, Any], problem: str
) -> None:
    manifest = make_manifest(MODEL, OPTIMIZER, **changes)
    v = check(manifest, as_stored(manifest))
    assert not v.ok
    assert v.problems[0] == problem


def test_without_an_expected_location_a_manifest_is_judged_on_its_files_alone() -> None:
    manifest = make_manifest(MODEL, bucket="other-bucket", run_id="run-41")
    assert verify(manifest, as_stored(manifest)).ok


def test_a_summary_of_many_problems_shows_the_first_five() -> None:
    v = Verification(False, 7, 0, tuple(f"f{i}: missing in S3" for i in range(7)))
    assert v.summary() == "; ".join(f"f{i}: missing in S3" for i in range(5)) + " …"
