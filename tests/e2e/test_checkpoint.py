"""Checkpoint safety end to end: the real daemon runs the real instance program (`--transport
local`: a subprocess on this machine, its AWS chain pointed at moto like the daemon's), and a
real stand-in trainer (tests/instance/trainer.py) plays the training job. Completion ends the
trainer with SIGTERM, uploads its newest checkpoint, verifies it in S3, then stops the
instance; `supervisorctl resume` restores it and starts training again.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import BUCKET, Fleet
from tests.e2e.conftest import TERMINAL, Cli, assert_chained, pid_alive, wait_for
from tests.runtime.test_events import Events, spot_warning, state_change
from tests.runtime.test_events_delivery import Topic

pytestmark = pytest.mark.e2e

TRAINER = Path(__file__).resolve().parents[1] / "instance" / "trainer.py"
CHECKPOINTED_PATH = ["pending", "running", "checkpointing", "grace", "stopping", "stopped"]
# The checkpoint step starts a Python process that imports boto3 (about a second of CPU on
# this 2-core machine) before it signals, uploads and writes the manifest.
CHECKPOINT_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Trainer:
    process: subprocess.Popen[bytes]
    checkpoint_dir: Path
    pid_file: Path

    @property
    def pid(self) -> int:
        return self.process.pid


@dataclass
class Lab:
    """Directories under /tmp (the instance program takes plain absolute paths only) and the
    trainer processes a test started; at teardown every trainer is killed, every directory
    removed."""

    dirs: list[Path] = field(default_factory=list)
    children: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def workdir(self) -> Path:
        path = Path(tempfile.mkdtemp(prefix="ck", dir="/tmp"))
        self.dirs.append(path)
        return path

    def trainer_argv(self, checkpoint_dir: Path, pid_file: Path, *options: str) -> list[str]:
        return [
            sys.executable,
            str(TRAINER),
            "--checkpoint-dir",
            str(checkpoint_dir),
            "--pid-file",
            str(pid_file),
            *options,
        ]

    def start_trainer(self, *options: str) -> Trainer:
        """Start a trainer in a fresh directory; return once it has written a checkpoint."""
        root = self.workdir()
        checkpoint_dir, pid_file = root / "ckpt", root / "train.pid"
        child = subprocess.Popen(
            self.trainer_argv(checkpoint_dir, pid_file, *options),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )
        self.children.append(child)

        def ready() -> bool:
            assert child.poll() is None, f"the trainer exited with {child.returncode}"
            return pid_file.exists() and any(checkpoint_dir.glob("step_*.pt"))

        wait_for(ready, 10, "the trainer to write its pid file and a checkpoint")
        return Trainer(child, checkpoint_dir, pid_file)

    def trainer_pids(self) -> list[int]:
        """Live trainers writing into this lab's directories that are not our children (the
        ones `resume` started), found by their command line: `python trainer.py
        --checkpoint-dir DIR ...`."""
        ours = {child.pid for child in self.children}
        found = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) in ours:
                continue
            try:
                words = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
            except OSError:
                continue
            if len(words) < 4 or words[1] != str(TRAINER) or words[2] != "--checkpoint-dir":
                continue
            if any(Path(words[3]).is_relative_to(d) for d in self.dirs) and pid_alive(
                int(proc.name)
            ):
                found.append(int(proc.name))
        return found

    def cleanup(self) -> None:
        for child in self.children:
            if child.poll() is None:
                child.kill()
            child.wait(timeout=10)
        for pid in self.trainer_pids():
            kill_and_wait(pid)
        for path in self.dirs:
            shutil.rmtree(path, ignore_errors=True)


def kill_and_wait(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not pid_alive(pid), 10, f"trainer {pid} to be gone")


@pytest.fixture
def lab() -> Iterator[Lab]:
    helper = Lab()
    try:
        yield helper
    finally:
        helper.cleanup()


def checkpoint_flags(trainer: Trainer, *extra: str) -> tuple[str, ...]:
    return (
        "--transport",
        "local",
        "--checkpoint-dir",
        str(trainer.checkpoint_dir),
        "--pid-file",
        str(trainer.pid_file),
        *extra,
    )


def phases(run: dict[str, Any]) -> list[str]:
    return [t["to"] for t in run["transitions"]]


def transition_to(run: dict[str, Any], phase: str) -> dict[str, Any]:
    (found,) = [t for t in run["transitions"] if t["to"] == phase]
    return dict(found)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_manifest(fleet: Fleet, run_id: str) -> dict[str, Any]:
    reply = fleet.s3.get_object(Bucket=BUCKET, Key=f"runs/{run_id}/checkpoints/_manifest.json")
    manifest: dict[str, Any] = json.loads(reply["Body"].read())
    return manifest


def wait_all_ended(cli: Cli) -> None:
    """Until every run of this daemon is in a terminal phase (nothing writes meanwhile)."""
    wait_for(
        lambda: all(row[2] in TERMINAL for row in cli.db_dump()["runs"]),
        message=lambda: f"the daemon's runs to end: {cli.db_dump()['runs']}",
    )


def test_completion_sigterms_training_verifies_the_checkpoint_then_stops(
    shared: Cli, fleet: Fleet, lab: Lab
) -> None:
    trainer = lab.start_trainer()
    (instance,) = fleet.launch()
    attached = shared.attach(
        "ck-main",
        instance,
        fleet.prefix("ck-main"),
        *checkpoint_flags(trainer, "--sigterm-timeout-s", "10", "--quiet-s", "0.3"),
        "--grace-s",
        "30",
    )
    assert attached["phase"] == "pending"
    shared.wait_db_phase("ck-main", "running")
    assert trainer.process.poll() is None, "training ended before completion"

    fleet.put("runs/ck-main/COMPLETE")
    run = shared.wait_phase("ck-main", "stopped", timeout=CHECKPOINT_TIMEOUT_S)

    # The trainer was asked to end (SIGTERM), saved its final checkpoint and exited cleanly.
    assert trainer.process.wait(timeout=5) == 0
    assert not pid_alive(trainer.pid)
    (final,) = trainer.checkpoint_dir.glob("step_*_final.pt")
    local = final.read_bytes()

    # That final checkpoint, and nothing older, is what S3 holds, byte for byte.
    key = f"runs/ck-main/checkpoints/{final.name}"
    stored = fleet.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    assert stored == local
    head = fleet.s3.head_object(Bucket=BUCKET, Key=key, ChecksumMode="ENABLED")
    assert head["ChecksumSHA256"] == base64.b64encode(hashlib.sha256(local).digest()).decode()
    manifest = read_manifest(fleet, "ck-main")
    assert manifest["checkpoint"] == final.name
    assert [(f["path"], f["key"], f["size"], f["sha256"]) for f in manifest["files"]] == [
        (final.name, key, len(local), sha256(local))
    ]

    assert fleet.state(instance) == "stopped"
    assert (run["outcome"], run["checkpoint"]) == ("completed", "verified")
    assert phases(run) == CHECKPOINTED_PATH
    assert [t["seq"] for t in run["transitions"]] == list(range(1, 7))
    assert_chained(run["transitions"])
    assert [(a["action"], a["outcome"]) for a in run["actions"]] == [("stop", "accepted")]

    grace = transition_to(run, "grace")
    assert "checkpoint verified" in grace["reason"], grace
    assert grace["detail"]["checkpoint_name"] == final.name
    assert (grace["detail"]["files"], grace["detail"]["bytes"]) == (1, len(local))
    process = grace["detail"]["process"]
    assert (process["pid"], process["signalled"], process["exited"]) == (trainer.pid, True, True)
    assert process["after_timeout"] == "none"
    # Grace (30 s) ended early: checkpoint verified, trainer gone, the prefix quiet for 0.3 s.
    saved = transition_to(run, "stopping")["detail"]["grace_saved_s"]
    assert saved > 15, run["transitions"]

    text = shared.ctl("status", "ck-main")
    assert text.returncode == 0, text.stderr
    (line,) = [line for line in text.stdout.splitlines() if line.strip().startswith("checkpoint")]
    assert "verified" in line
    assert f"1 file(s), {len(local)} bytes verified" in line, text.stdout
    assert "grace ended early" in line and "saved" in line, text.stdout


def test_training_that_ignores_sigterm_is_killed_after_the_timeout(
    shared: Cli, fleet: Fleet, lab: Lab
) -> None:
    trainer = lab.start_trainer("--ignore-sigterm")
    (instance,) = fleet.launch()
    fleet.put("runs/ck-sigkill/COMPLETE")
    shared.attach(
        "ck-sigkill",
        instance,
        fleet.prefix("ck-sigkill"),
        *checkpoint_flags(trainer, "--sigterm-timeout-s", "0.5", "--quiet-s", "0.3"),
        "--grace-s",
        "30",
    )
    run = shared.wait_phase("ck-sigkill", "stopped", timeout=CHECKPOINT_TIMEOUT_S)

    assert trainer.process.wait(timeout=5) == -signal.SIGKILL
    assert not pid_alive(trainer.pid)
    assert list(trainer.checkpoint_dir.glob("step_*_final.pt")) == []
    assert (run["outcome"], run["checkpoint"]) == ("completed", "verified")
    assert phases(run) == CHECKPOINTED_PATH
    assert_chained(run["transitions"])
    process = transition_to(run, "grace")["detail"]["process"]
    assert process["pid"] == trainer.pid
    assert (process["signalled"], process["exited"], process["after_timeout"]) == (
        True,
        True,
        "sigkill",
    )
    assert process["waited_s"] >= 0.5
    assert fleet.state(instance) == "stopped"


def test_unverified_checkpoint_downgrades_terminate_to_stop(
    cli: Cli, fleet: Fleet, lab: Lab
) -> None:
    cli.start_daemon()
    trainer = lab.start_trainer()
    (instance,) = fleet.launch()
    fleet.put("runs/ck-nobucket/COMPLETE")
    cli.attach(
        "ck-nobucket",
        instance,
        fleet.prefix("ck-nobucket"),
        "--on-complete",
        "terminate",
        *checkpoint_flags(
            trainer,
            "--checkpoint-s3",
            "s3://no-such-bucket-x/ck/",
            "--checkpoint-attempts",
            "1",
            "--sigterm-timeout-s",
            "10",
        ),
        "--grace-s",
        "0.3",
    )
    run = cli.wait_phase("ck-nobucket", "stopped", timeout=CHECKPOINT_TIMEOUT_S)

    assert fleet.state(instance) == "stopped"
    assert (run["outcome"], run["checkpoint"]) == ("completed", "unverified")
    assert phases(run) == CHECKPOINTED_PATH
    assert_chained(run["transitions"])
    grace = transition_to(run, "grace")
    assert "NoSuchBucket" in grace["reason"] and "checkpoint_unverified" in grace["reason"]
    assert "after 1 attempt(s)" in grace["reason"], grace
    assert grace["detail"]["checkpoint"] == "unverified"
    stopping = transition_to(run, "stopping")
    assert "downgraded to stop" in stopping["reason"], stopping
    assert stopping["detail"]["downgraded"] == "terminate->stop"
    assert [(a["action"], a["outcome"]) for a in run["actions"]] == [("stop", "accepted")]
    calls = cli.daemon_status()["aws_calls"]
    assert "ec2:TerminateInstances" not in calls, calls
    assert calls.get("ec2:StopInstances") == 1, calls
    # The trainer was still ended gracefully before the upload failed.
    assert trainer.process.wait(timeout=5) == 0


def test_unsafe_paths_are_refused_at_attach_and_change_nothing(
    shared: Cli, fleet: Fleet, lab: Lab
) -> None:
    (instance,) = fleet.launch()
    wait_all_ended(shared)
    before = shared.db_dump()
    prefix = fleet.prefix("ck-badpath")
    base: tuple[str, ...] = ("attach", "ck-badpath", "--instance-id", instance)
    base += ("--s3-prefix", prefix, "--transport", "local")
    good_dir = str(lab.workdir())
    cases = [
        ("checkpoint_dir", "/data; rm -rf /", ("--checkpoint-dir",)),
        ("checkpoint_dir", "/data/ckpt\n/etc", ("--checkpoint-dir",)),
        ("checkpoint_dir", "/data/../etc", ("--checkpoint-dir",)),
        ("pid_file", "relative/path", ("--checkpoint-dir", good_dir, "--pid-file")),
    ]
    results = shared.ctl_all(*((*base, *flags, value) for _, value, flags in cases))

    for (what, value, _), done in zip(cases, results, strict=True):
        assert done.returncode == 1, done
        assert f"{what} {value!r} is not valid" in done.stderr, done
        assert done.stdout == "", done
        assert "Traceback" not in done.stderr, done
    assert shared.db_dump() == before
    assert shared.db_run("ck-badpath") is None
    assert fleet.state(instance) == "running"
    # No instance command was ever sent for it.
    log = shared.log_path.read_text().splitlines()
    assert not [line for line in log if "ck-badpath" in line and '"command_' in line]


def test_resume_restores_the_verified_checkpoint_and_restarts_training(
    cli: Cli, fleet: Fleet, lab: Lab
) -> None:
    cli.start_daemon()
    trainer = lab.start_trainer()
    resume_command = " ".join(lab.trainer_argv(trainer.checkpoint_dir, trainer.pid_file))
    instance, plain = fleet.launch(2)
    cli.attach(
        "ck-resume",
        instance,
        fleet.prefix("ck-resume"),
        *checkpoint_flags(trainer, "--sigterm-timeout-s", "10", "--quiet-s", "0.3"),
        "--grace-s",
        "30",
        "--resume-command",
        resume_command,
    )
    # A run that can be resumed, but has no verified checkpoint (no checkpointing at all).
    other = lab.workdir()
    fleet.put("runs/ck-unverified/COMPLETE")
    cli.attach(
        "ck-unverified",
        plain,
        fleet.prefix("ck-unverified"),
        "--pid-file",
        str(other / "train.pid"),
        "--resume-command",
        " ".join(lab.trainer_argv(other / "ckpt", other / "train.pid")),
    )
    cli.wait_db_phase("ck-resume", "running")
    fleet.put("runs/ck-resume/COMPLETE")
    first = cli.wait_phase("ck-resume", "stopped", timeout=CHECKPOINT_TIMEOUT_S)
    assert first["checkpoint"] == "verified", first
    assert trainer.process.wait(timeout=5) == 0
    manifest = read_manifest(fleet, "ck-resume")
    assert manifest["files"], manifest

    # Without a verified checkpoint, resume is refused and points at --from-scratch.
    cli.wait_db_phase("ck-unverified", "stopped")
    before = cli.db_dump()
    refused = cli.ctl("resume", "ck-unverified")
    assert refused.returncode == 1, refused
    assert "no verified checkpoint" in refused.stderr, refused
    assert "--from-scratch" in refused.stderr, refused
    assert "Traceback" not in refused.stderr, refused
    assert cli.db_dump() == before
    assert fleet.state(plain) == "stopped"

    for path in trainer.checkpoint_dir.iterdir():
        path.unlink()
    requested = cli.ctl_json("resume", "ck-resume")
    assert requested["phase"] == "resuming", requested
    cli.wait_db_phase("ck-resume", "running", timeout=CHECKPOINT_TIMEOUT_S)
    run = cli.run("ck-resume")

    assert run["attempt"] == 2, run
    assert run["phase"] == "running"
    assert phases(run) == [*CHECKPOINTED_PATH, "resuming", "running"]
    assert [t["seq"] for t in run["transitions"]] == list(range(1, 9))
    assert_chained(run["transitions"])
    assert [(i["instance_id"], i["source"]) for i in run["instances"]] == [(instance, "attached")]
    assert fleet.state(instance) == "running"

    # Every file of the manifest is back, with the manifest's SHA-256.
    for f in manifest["files"]:
        restored = trainer.checkpoint_dir / f["path"]
        assert restored.is_file(), f"{restored} was not restored"
        assert sha256(restored.read_bytes()) == f["sha256"], f

    # The pid file names a live trainer: the resumed one, not the first.
    pid = int(trainer.pid_file.read_text().strip())
    assert pid != trainer.pid
    assert pid_alive(pid), f"resumed trainer {pid} is not running"
    assert pid in lab.trainer_pids(), f"pid {pid} is not a trainer of this test"
    resumed = transition_to(run, "resuming")
    assert resumed["detail"] == {"from_scratch": False, "attempt": 2}
    started = run["transitions"][-1]
    assert started["detail"]["pid"] == pid
    assert started["detail"]["from_scratch"] is False


def test_an_untimed_spot_warning_through_sns_checkpoints_the_real_daemons_run(
    cli: Cli, fleet: Fleet, lab: Lab
) -> None:
    # EventBridge -> SNS -> SQS, as real moto queues and topics; the warning has an empty time.
    events = Events(fleet, "e2e-spot-sns")
    topic = Topic(fleet, events, raw=False)
    cli.start_daemon(SUPERVISOR_EVENTS_QUEUE_URL=events.url, SUPERVISOR_EVENTS_WAIT_S="1")
    trainer = lab.start_trainer()
    (instance,) = fleet.launch()
    flags = checkpoint_flags(trainer, "--sigterm-timeout-s", "10")
    cli.attach("ck-spot", instance, fleet.prefix("ck-spot"), *flags, "--spot")
    cli.wait_db_phase("ck-spot", "running")

    warning = spot_warning(instance)
    warning["time"] = ""
    topic.publish(warning)
    cli.wait_phase("ck-spot", "interrupting")
    assert trainer.process.wait(timeout=15) == 0  # SIGTERM: final checkpoint saved, exited
    wait_for(
        lambda: cli.ctl_json("status", "ck-spot", "--json")["checkpoint"] == "verified",
        CHECKPOINT_TIMEOUT_S,
        "ck-spot's checkpoint to be verified",
    )
    fleet.terminate(instance)  # AWS taking the instance back
    topic.publish(state_change(instance, "terminated"))
    run = cli.wait_phase("ck-spot", "interrupted")
    assert (run["outcome"], run["checkpoint"]) == ("interrupted", "verified")
    assert phases(run) == ["pending", "running", "interrupting", "interrupted"]
    interrupting = transition_to(run, "interrupting")
    # Without a time, the notice counts from when the daemon received the warning.
    assert 90 < interrupting["detail"]["seconds_left"] <= 120 - 15
    (final,) = trainer.checkpoint_dir.glob("step_*_final.pt")
    assert read_manifest(fleet, "ck-spot")["checkpoint"] == final.name
