"""The instance-side program, run as a real process against real trainers, real files and the
moto server; its manifests are judged by `supervisor.core.checkpoint` itself."""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from supervisor import instance
from supervisor.core import checkpoint
from supervisor.core.checkpoint import CommandKind, InstanceCommand, Manifest, verify
from tests.conftest import BUCKET, Fleet
from tests.instance.conftest import (
    PROGRAM,
    Outcome,
    Processes,
    Program,
    Trainer,
    bucket_keys,
    is_alive,
    stored_objects,
)

PREFIX = "runs/r1/checkpoint/"
S3_URL = f"s3://{BUCKET}/{PREFIX}"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write(path: Path, data: bytes, mtime: float | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def checkpoint_args(directory: Path) -> list[str]:
    return ["checkpoint", "--run-id", "r1", "--checkpoint-dir", str(directory)]


def run_checkpoint(program: Program, directory: Path, *extra: str) -> Outcome:
    return program(*checkpoint_args(directory), "--s3-url", S3_URL, *extra)


def manifest_keys(manifest: Manifest) -> list[str]:
    return [f.key for f in manifest.files]


def verified(fleet: Fleet, outcome: Outcome) -> Manifest:
    """The manifest in S3 (which must equal the one printed) after `verify` accepts it."""
    assert outcome.code == 0, outcome.result
    key = outcome.result["manifest_key"]
    assert key == PREFIX + "_manifest.json"
    body = fleet.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    manifest = Manifest.model_validate_json(body)
    if "files_omitted" not in outcome.result["manifest"]:
        assert manifest == Manifest.model_validate(outcome.result["manifest"])
    stored = stored_objects(fleet.s3, manifest)
    verification = verify(manifest, stored, bucket=BUCKET, prefix=PREFIX, run_id="r1")
    assert verification.ok, verification.problems
    return manifest


class TestCheckpoint:
    def test_a_running_trainer_is_stopped_and_its_final_checkpoint_uploaded(
        self, any_program: Program, fleet: Fleet, start_trainer: Callable[..., Trainer]
    ) -> None:
        trainer = start_trainer()
        outcome = run_checkpoint(
            any_program, trainer.checkpoint_dir, "--pid-file", str(trainer.pid_file)
        )

        manifest = verified(fleet, outcome)
        assert trainer.process.wait(timeout=5) == 0
        (final,) = trainer.checkpoint_dir.glob("step_*_final.pt")
        assert (manifest.checkpoint, manifest.kind, manifest.run_id) == (final.name, "file", "r1")
        (entry,) = manifest.files
        assert (entry.path, entry.key, entry.size) == (final.name, PREFIX + final.name, 1024)
        assert entry.sha256 == sha256(final)
        body = fleet.s3.get_object(Bucket=BUCKET, Key=entry.key)["Body"].read()
        assert body == final.read_bytes()
        fate = manifest.process
        assert (fate.pid, fate.was_running, fate.signalled, fate.exited) == (
            trainer.pid,
            True,
            True,
            True,
        )
        assert fate.after_timeout == "none"
        assert outcome.result["process"] == fate.model_dump()
        assert set(manifest.timings) == {"stop_s", "hash_s", "upload_s", "total_s"}

    def test_an_early_checkpoint_uploads_the_newest_and_leaves_training_running(
        self, program: Program, fleet: Fleet, start_trainer: Callable[..., Trainer]
    ) -> None:
        trainer = start_trainer()
        outcome = run_checkpoint(
            program, trainer.checkpoint_dir, "--pid-file", str(trainer.pid_file), "--mode", "early"
        )

        manifest = verified(fleet, outcome)
        fate = manifest.process
        assert (fate.pid, fate.was_running, fate.signalled, fate.exited) == (
            trainer.pid,
            True,
            False,
            False,
        )
        assert trainer.process.poll() is None, "an early checkpoint must not end training"
        assert not list(trainer.checkpoint_dir.glob("step_*_final.pt"))
        trainer.process.terminate()
        trainer.process.wait(timeout=5)

    def test_a_trainer_ignoring_sigterm_is_killed_after_the_timeout(
        self, program: Program, fleet: Fleet, start_trainer: Callable[..., Trainer]
    ) -> None:
        trainer = start_trainer("--ignore-sigterm")
        outcome = run_checkpoint(
            program,
            trainer.checkpoint_dir,
            "--pid-file",
            str(trainer.pid_file),
            "--sigterm-timeout-s",
            "0.5",
        )

        fate = verified(fleet, outcome).process
        assert (fate.signalled, fate.exited, fate.after_timeout) == (True, True, "sigkill")
        assert fate.waited_s >= 0.5
        assert trainer.process.wait(timeout=5) == -9

    def test_a_trainer_ignoring_sigterm_is_left_running_when_asked(
        self, program: Program, fleet: Fleet, start_trainer: Callable[..., Trainer]
    ) -> None:
        trainer = start_trainer("--ignore-sigterm", "--step-s", "1")
        outcome = run_checkpoint(
            program,
            trainer.checkpoint_dir,
            "--pid-file",
            str(trainer.pid_file),
            "--sigterm-timeout-s",
            "0.5",
            "--on-timeout",
            "leave",
        )

        fate = verified(fleet, outcome).process
        assert (fate.signalled, fate.exited, fate.after_timeout) == (True, False, "left-running")
        assert trainer.process.poll() is None
        assert is_alive(trainer.pid)

    def test_a_dead_pid_is_not_signalled_and_the_checkpoint_still_uploads(
        self, program: Program, fleet: Fleet, tmp_path: Path
    ) -> None:
        gone = subprocess.Popen([sys.executable, "-c", "pass"])
        gone.wait()
        pid_file = write(tmp_path / "train.pid", f"{gone.pid}\n".encode())
        write(tmp_path / "ckpt" / "last.ckpt", b"weights")

        outcome = run_checkpoint(program, tmp_path / "ckpt", "--pid-file", str(pid_file))

        fate = verified(fleet, outcome).process
        assert (fate.pid, fate.was_running, fate.signalled, fate.exited) == (
            gone.pid,
            False,
            False,
            True,
        )

    def test_a_pid_file_older_than_its_process_names_a_reused_pid_that_is_left_alone(
        self, program: Program, fleet: Fleet, start_trainer: Callable[..., Trainer]
    ) -> None:
        trainer = start_trainer("--step-s", "1")
        # An hour before it was written, by the file system's own clock (not time.time(): under
        # faketime the two differ, and the program compares the file with the process's start).
        an_hour_before = trainer.pid_file.stat().st_mtime - 3600
        os.utime(trainer.pid_file, (an_hour_before, an_hour_before))

        outcome = run_checkpoint(
            program, trainer.checkpoint_dir, "--pid-file", str(trainer.pid_file)
        )

        fate = verified(fleet, outcome).process
        assert (fate.pid, fate.was_running, fate.signalled) == (trainer.pid, False, False)
        assert trainer.process.poll() is None

    def test_a_pid_file_without_a_pid_fails_before_anything_is_uploaded(
        self, program: Program, fleet: Fleet, tmp_path: Path
    ) -> None:
        pid_file = write(tmp_path / "train.pid", b"not-a-pid")
        write(tmp_path / "ckpt" / "last.ckpt", b"weights")

        outcome = run_checkpoint(program, tmp_path / "ckpt", "--pid-file", str(pid_file))

        assert outcome.code == 1
        assert str(pid_file) in outcome.result["error"]
        assert bucket_keys(fleet.s3, BUCKET) == []

    def test_a_missing_pid_file_means_nothing_to_stop(
        self, program: Program, fleet: Fleet, tmp_path: Path
    ) -> None:
        write(tmp_path / "ckpt" / "last.ckpt", b"weights")

        outcome = run_checkpoint(program, tmp_path / "ckpt", "--pid-file", str(tmp_path / "x"))

        assert verified(fleet, outcome).process.was_running is False

    def test_a_directory_checkpoint_uploads_every_file_under_its_name(
        self, program: Program, fleet: Fleet, tmp_path: Path
    ) -> None:
        ckpt = tmp_path / "ckpt"
        now = time.time()
        write(ckpt / "checkpoint-100" / "model.safetensors", b"m" * 3000, now - 60)
        write(ckpt / "checkpoint-200" / "model.safetensors", b"m" * 4000, now - 30)
        write(ckpt / "checkpoint-200" / "optimizer" / "state.bin", b"o" * 500, now - 20)
        write(ckpt / "checkpoint-200" / "optimizer" / "deep" / "rng.json", b"{}", now - 25)
        write(ckpt / "old.pt", b"old", now - 100)

        manifest = verified(fleet, run_checkpoint(program, ckpt))

        assert (manifest.checkpoint, manifest.kind) == ("checkpoint-200", "dir")
        paths = [
            "checkpoint-200/model.safetensors",
            "checkpoint-200/optimizer/deep/rng.json",
            "checkpoint-200/optimizer/state.bin",
        ]
        assert [f.path for f in manifest.files] == paths
        assert [f.key for f in manifest.files] == [PREFIX + p for p in paths]
        assert [f.sha256 for f in manifest.files] == [sha256(ckpt / p) for p in paths]
        assert manifest.total_bytes == 4502
        assert bucket_keys(fleet.s3, BUCKET) == sorted(
            [PREFIX + "_manifest.json", *manifest_keys(manifest)]
        )

    def test_a_checkpoint_of_many_files_prints_a_result_that_fits_ssm_output(
        self, program: Program, fleet: Fleet, tmp_path: Path
    ) -> None:
        shard = tmp_path / "ckpt" / "checkpoint-9" / "model-{:05d}-of-00100.safetensors"
        for n in range(100):
            write(Path(str(shard).format(n)), b"%d" % n)

        outcome = run_checkpoint(program, tmp_path / "ckpt")

        manifest = verified(fleet, outcome)
        assert len(manifest.files) == 100
        assert outcome.stdout_chars < 24_000  # GetCommandInvocation keeps only that much
        assert outcome.result["manifest"]["files_omitted"] == 100
        assert outcome.result["manifest"]["total_bytes"] == manifest.total_bytes

    def test_the_newest_file_wins_over_an_older_directory(
        self, program: Program, fleet: Fleet, tmp_path: Path
    ) -> None:
        ckpt = tmp_path / "ckpt"
        now = time.time()
        write(ckpt / "checkpoint_7" / "weights.bin", b"w", now - 50)
        write(ckpt / "epoch3.pth", b"e3", now - 10)
        write(ckpt / "notes.txt", b"not a checkpoint", now)

        manifest = verified(fleet, run_checkpoint(program, ckpt))

        assert (manifest.checkpoint, manifest.kind) == ("epoch3.pth", "file")

    def test_patterns_replace_the_defaults(
        self, program: Program, fleet: Fleet, tmp_path: Path
    ) -> None:
        ckpt = tmp_path / "ckpt"
        write(ckpt / "model.pt", b"pt")
        write(ckpt / "weights" / "step9.bin", b"bin", time.time() - 30)

        manifest = verified(fleet, run_checkpoint(program, ckpt, "--pattern", "weights/*.bin"))

        assert [f.key for f in manifest.files] == [PREFIX + "weights/step9.bin"]

    def test_a_large_file_uploads_as_multipart_with_a_composite_checksum(
        self, program: Program, fleet: Fleet, tmp_path: Path
    ) -> None:
        ckpt = tmp_path / "ckpt"
        big = write(ckpt / "big.safetensors", os.urandom(11 * 1024 * 1024))

        outcome = run_checkpoint(
            program, ckpt, "--multipart-threshold-mb", "5", "--part-size-mb", "5"
        )

        (entry,) = verified(fleet, outcome).files
        assert entry.parts == 3
        assert entry.s3_checksum_sha256.endswith("-3")
        assert entry.sha256 == sha256(big)
        assert fleet.s3.get_object(Bucket=BUCKET, Key=entry.key)["Body"].read() == big.read_bytes()
        uploads = fleet.s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])
        assert uploads == []

    def test_a_file_within_one_part_is_a_single_put_even_above_the_threshold(
        self, program: Program, fleet: Fleet, tmp_path: Path
    ) -> None:
        ckpt = tmp_path / "ckpt"
        write(ckpt / "mid.pt", os.urandom(2 * 1024 * 1024))

        outcome = run_checkpoint(
            program, ckpt, "--multipart-threshold-mb", "1", "--part-size-mb", "5"
        )

        (entry,) = verified(fleet, outcome).files
        assert entry.parts == 1
        assert entry.s3_checksum_sha256 == checkpoint.expected_single_part_checksum(entry.sha256)

    def test_no_checkpoint_fails_naming_the_directory(
        self, program: Program, fleet: Fleet, tmp_path: Path
    ) -> None:
        ckpt = tmp_path / "ckpt"
        write(ckpt / "notes.txt", b"no checkpoint here")

        outcome = run_checkpoint(program, ckpt)

        assert (outcome.code, outcome.result["ok"]) == (1, False)
        assert "no checkpoint matching *.pt" in outcome.result["error"]
        assert str(ckpt) in outcome.result["error"]
        assert outcome.result["process"]["was_running"] is False
        assert bucket_keys(fleet.s3, BUCKET) == []

    def test_a_missing_directory_fails_naming_it(
        self, program: Program, fleet: Fleet, tmp_path: Path
    ) -> None:
        outcome = run_checkpoint(program, tmp_path / "nowhere")

        assert outcome.code == 1
        assert str(tmp_path / "nowhere") in outcome.result["error"]

    def test_a_missing_bucket_fails_with_the_aws_error_code(
        self, program: Program, aws_env: dict[str, str], tmp_path: Path
    ) -> None:
        write(tmp_path / "ckpt" / "a.pt", b"a")

        outcome = program(
            *checkpoint_args(tmp_path / "ckpt"),
            "--s3-url",
            "s3://no-such-bucket/runs/r1/",
        )

        assert (outcome.code, outcome.result["ok"]) == (1, False)
        assert "NoSuchBucket" in outcome.result["error"]
        assert "s3://no-such-bucket/runs/r1/a.pt" in outcome.result["error"]
        assert outcome.stderr.count('"attempt_failed"') == 1  # retrying cannot help
        assert outcome.result["process"]["exited"] is True

    @pytest.mark.parametrize(
        ("option", "value"),
        [
            ("--checkpoint-dir", "/data; rm -rf /"),
            ("--checkpoint-dir", "/data\nrm -rf /"),
            ("--checkpoint-dir", "/data/../etc"),
            ("--checkpoint-dir", "data"),
            ("--pid-file", "/run/$(reboot).pid"),
            ("--s3-url", f"s3://{BUCKET}/runs/../other/"),
            ("--s3-url", "https://example.com/x/"),
            ("--pattern", "../*.pt"),
            ("--run-id", "r1; reboot"),
            ("--sigterm-timeout-s", "nan"),
            ("--part-size-mb", "4"),
        ],
    )
    def test_a_rejected_input_exits_2_naming_it_and_does_nothing(
        self,
        program: Program,
        fleet: Fleet,
        start_trainer: Callable[..., Trainer],
        option: str,
        value: str,
    ) -> None:
        trainer = start_trainer()
        args = {
            "--run-id": "r1",
            "--checkpoint-dir": str(trainer.checkpoint_dir),
            "--s3-url": S3_URL,
            "--pid-file": str(trainer.pid_file),
        }
        args[option] = value

        outcome = program("checkpoint", *[w for pair in args.items() for w in pair])

        assert (outcome.code, outcome.result["ok"]) == (2, False)
        assert repr(value) in outcome.result["error"]
        assert "\n" not in outcome.result["error"]
        assert bucket_keys(fleet.s3, BUCKET) == []
        assert trainer.process.poll() is None


class TestRestore:
    def test_restore_downloads_every_file_and_matches_the_manifest(
        self, single_file_program: Program, fleet: Fleet, tmp_path: Path
    ) -> None:
        ckpt = tmp_path / "ckpt"
        write(ckpt / "checkpoint-3" / "model.bin", os.urandom(70_000))
        write(ckpt / "checkpoint-3" / "sub" / "opt.bin", os.urandom(5_000))
        manifest = verified(fleet, run_checkpoint(single_file_program, ckpt))
        fresh = tmp_path / "fresh" / "dir"

        outcome = single_file_program("restore", "--s3-url", S3_URL, "--checkpoint-dir", str(fresh))

        assert outcome.code == 0, outcome.result
        assert outcome.result == {
            "ok": True,
            "checkpoint": "checkpoint-3",
            "files": 2,
            "bytes": 75_000,
        }
        for f in manifest.files:
            assert sha256(fresh / f.path) == f.sha256
        assert sorted(p.name for p in fresh.rglob("*") if p.is_file()) == ["model.bin", "opt.bin"]

    def test_a_tampered_object_fails_naming_the_file_and_restores_nothing(
        self, program: Program, fleet: Fleet, tmp_path: Path
    ) -> None:
        ckpt = tmp_path / "ckpt"
        write(ckpt / "checkpoint-3" / "a.bin", b"a" * 100)
        write(ckpt / "checkpoint-3" / "b.bin", b"b" * 100)
        verified(fleet, run_checkpoint(program, ckpt))
        fleet.put(PREFIX + "checkpoint-3/b.bin", b"B" * 100)
        fresh = tmp_path / "fresh"

        outcome = program("restore", "--s3-url", S3_URL, "--checkpoint-dir", str(fresh))

        assert (outcome.code, outcome.result["ok"]) == (1, False)
        assert "checkpoint-3/b.bin" in outcome.result["error"]
        assert [p for p in fresh.rglob("*") if p.is_file()] == []

    def test_a_missing_manifest_fails_naming_it(
        self, program: Program, fleet: Fleet, tmp_path: Path
    ) -> None:
        outcome = program("restore", "--s3-url", S3_URL, "--checkpoint-dir", str(tmp_path))

        assert outcome.code == 1
        assert f"{S3_URL}_manifest.json" in outcome.result["error"]
        assert "NoSuchKey" in outcome.result["error"]

    def test_a_manifest_path_escaping_the_directory_is_refused(
        self, program: Program, fleet: Fleet, tmp_path: Path
    ) -> None:
        fleet.put(PREFIX + "evil", b"x")
        entry = {"path": "../escaped", "key": PREFIX + "evil", "size": 1, "sha256": "0" * 64}
        fleet.put(
            PREFIX + "_manifest.json",
            json.dumps({"format": 1, "checkpoint": "c", "files": [entry]}),
        )

        outcome = program("restore", "--s3-url", S3_URL, "--checkpoint-dir", str(tmp_path / "d"))

        assert outcome.code == 1
        assert "'../escaped' is not a safe relative path" in outcome.result["error"]
        assert not (tmp_path / "escaped").exists()


class TestStart:
    def test_start_runs_the_command_detached_and_records_its_pid(
        self, program: Program, processes: Processes, tmp_path: Path
    ) -> None:
        pid_file = tmp_path / "run" / "train.pid"
        log_file = tmp_path / "logs" / "train.log"
        code = "import time; print('training', flush=True); time.sleep(30)"

        outcome = program(
            "start",
            "--pid-file",
            str(pid_file),
            "--log-file",
            str(log_file),
            "--cwd",
            str(tmp_path),
            "--",
            sys.executable,
            "-c",
            code,
        )

        assert outcome.code == 0, outcome.result
        pid = outcome.result["pid"]
        processes.others.append(pid)
        assert outcome.result == {"ok": True, "pid": pid}
        assert pid_file.read_text() == f"{pid}\n"
        assert is_alive(pid)
        assert os.getsid(pid) == pid  # its own session: it outlives the SSM command
        deadline = time.monotonic() + 10
        while "training" not in log_file.read_text():
            assert time.monotonic() < deadline
            time.sleep(0.02)

    def test_a_repeated_start_reports_the_running_process_instead_of_starting_another(
        self, program: Program, processes: Processes, tmp_path: Path
    ) -> None:
        pid_file = tmp_path / "train.pid"
        sleep = ("--", sys.executable, "-c", "import time; time.sleep(30)")
        first = program("start", "--pid-file", str(pid_file), *sleep)
        processes.others.append(first.result["pid"])

        again = program("start", "--pid-file", str(pid_file), *sleep)

        assert again.code == 0
        assert again.result == {"ok": True, "pid": first.result["pid"], "already_running": True}
        assert pid_file.read_text() == f"{first.result['pid']}\n"

    def test_start_needs_no_boto3_but_checkpoint_says_it_is_missing(
        self, single_file_program: Program, processes: Processes, tmp_path: Path
    ) -> None:
        env = {k: v for k, v in single_file_program.env.items() if k != "PYTHONPATH"}
        bare = dataclasses.replace(single_file_program, env=env)
        write(tmp_path / "ckpt" / "a.pt", b"a")

        started = bare("start", "--pid-file", str(tmp_path / "p.pid"), "--", "sleep", "30")
        processes.others.append(started.result["pid"])
        checkpointed = run_checkpoint(bare, tmp_path / "ckpt")

        assert started.code == 0
        assert checkpointed.code == 1
        assert "boto3 is not installed" in checkpointed.result["error"]

    def test_start_needs_a_command_after_the_separator(
        self, program: Program, tmp_path: Path
    ) -> None:
        outcome = program("start", "--pid-file", str(tmp_path / "p.pid"))

        assert outcome.code == 2
        assert "'--'" in outcome.result["error"]

    def test_a_command_that_cannot_start_fails_naming_it(
        self, program: Program, tmp_path: Path
    ) -> None:
        outcome = program("start", "--pid-file", str(tmp_path / "p.pid"), "--", "/no/such/bin")

        assert (outcome.code, outcome.result["ok"]) == (1, False)
        assert "'/no/such/bin'" in outcome.result["error"]
        assert not (tmp_path / "p.pid").exists()


class TestArguments:
    def test_argv_json_carries_a_command_built_by_the_core(
        self, program: Program, fleet: Fleet, start_trainer: Callable[..., Trainer]
    ) -> None:
        trainer = start_trainer()
        command = InstanceCommand(
            CommandKind.CHECKPOINT,
            options=(
                ("run-id", "r1"),
                ("checkpoint-dir", str(trainer.checkpoint_dir)),
                ("s3-url", S3_URL),
                ("pid-file", str(trainer.pid_file)),
                ("sigterm-timeout-s", "10"),
                ("on-timeout", "kill"),
                ("region", "us-east-1"),
            ),
        )

        outcome = program("--argv-json", json.dumps(command.argv()))

        assert verified(fleet, outcome).process.signalled is True

    @pytest.mark.parametrize(
        "argv",
        [
            ["--argv-json", '{"checkpoint": 1}'],
            ["--argv-json", '"checkpoint"'],
            ["--argv-json", "[1, 2]"],
            ["--argv-json", "not json"],
            ["--argv-json", '["restore"]', "extra"],
            [],
            ["explode"],
            ["restore", "--checkpoint-dir", "/data"],
        ],
    )
    def test_a_usage_error_exits_2_with_a_json_result(
        self, program: Program, argv: list[str]
    ) -> None:
        outcome = program(*argv)

        assert (outcome.code, outcome.result["ok"]) == (2, False)
        assert outcome.result["error"]

    def test_help_is_followed_by_a_result_line(self, program: Program) -> None:
        outcome = program("checkpoint", "--help", only_line=False)

        assert (outcome.code, outcome.result) == (0, {"ok": True, "help": True})


class TestTheFile:
    def test_its_constants_are_the_cores(self) -> None:
        assert instance.DEFAULT_PATTERNS == checkpoint.DEFAULT_PATTERNS
        assert instance.MANIFEST_NAME == checkpoint.MANIFEST_NAME

    def test_it_parses_as_python_3_8_the_oldest_an_instance_may_run(self) -> None:
        ast.parse(PROGRAM.read_text(), feature_version=(3, 8))
