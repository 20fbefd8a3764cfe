"""The shell commands a person copies, run as written with the real AWS CLI (awscli, a dev
dependency) against the moto server, through the real daemon: the README's completion marker
command, and deploy/user-data.sh uploading the training log that `tail --training` prints."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from supervisor.runtime.settings import ENV_PREFIX, Settings
from tests.conftest import BUCKET, Fleet
from tests.e2e.conftest import BIN_DIR, Cli, wait_for

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
USER_DATA = REPO / "deploy" / "user-data.sh"
AWS_CLI = BIN_DIR / "aws"


def documented_marker_commands() -> list[str]:
    """Every command in README.md (inline or a line of a block) that writes a COMPLETE marker
    with the AWS CLI, as written."""
    text = README.read_text(encoding="utf-8")
    commands: list[str] = re.findall(r"(?:`|^)(aws [^`\n]*/COMPLETE\b[^`\n]*)", text, re.M)
    assert commands, "README.md shows no `aws ... /COMPLETE` marker command"
    return commands


def for_prefix(command: str, prefix: str) -> str:
    """The documented command, writing under `prefix` instead of the example's run prefix."""
    changed, count = re.subn(r"s3://\S+/COMPLETE\b", f"{prefix}COMPLETE", command)
    assert count == 1, f"no single s3://.../COMPLETE in {command}"
    return changed


def shell(command: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """`command` run by bash, as a user pastes it, with this venv's `aws` first on PATH."""
    assert AWS_CLI.exists(), f"{AWS_CLI} is missing: run `make install` (awscli is a dev dep)"
    path = os.pathsep.join([str(BIN_DIR), env.get("PATH", "/usr/bin:/bin")])
    return subprocess.run(
        ["bash", "-c", command],
        env={**env, "PATH": path},
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("number", range(len(documented_marker_commands())))
def test_each_marker_command_of_the_readme_completes_a_run(
    shared: Cli, fleet: Fleet, tmp_path: Path, number: int
) -> None:
    run_id = f"readme-marker-{number}"
    (instance,) = fleet.launch()
    prefix = fleet.prefix(run_id)
    shared.attach(run_id, instance, prefix)
    shared.wait_db_phase(run_id, "running")

    command = for_prefix(documented_marker_commands()[number], prefix)
    done = shell(command, shared.env, tmp_path)
    assert done.returncode == 0, f"`{command}` exited {done.returncode}: {done.stderr}"
    marker = fleet.s3.head_object(Bucket=BUCKET, Key=f"runs/{run_id}/COMPLETE")
    assert marker["ContentLength"] == 0

    detail = shared.wait_phase(run_id, "stopped", timeout=60)
    assert detail["outcome"] == "completed"
    assert fleet.state(instance) == "stopped"


def test_the_first_try_settings_of_the_readme_are_the_daemons() -> None:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Running it against AWS") :]
    section = section[: section.index("\n## ")]
    exported = dict(re.findall(rf"\b{ENV_PREFIX}([A-Z_]+)=(\S+)", section))
    assert exported, "the first try sets no compressed SUPERVISOR_* timings"
    # Each is a real setting and loads: a typo would be ignored with a warning at best.
    settings = Settings.load(None, **{name.lower(): value for name, value in exported.items()})
    assert settings.poll_initial_s <= 5 and settings.poll_max_s <= 10
    assert settings.grace_s <= 30 and settings.reconcile_interval_s <= 30


def test_the_dev_null_form_the_readme_once_showed_uploads_nothing(
    aws_env: dict[str, str], fleet: Fleet, tmp_path: Path
) -> None:
    # Why the README names `-`: the CLI skips /dev/null as a special file and exits 2.
    done = shell(f"aws s3 cp /dev/null s3://{BUCKET}/runs/dev-null/COMPLETE", aws_env, tmp_path)
    assert done.returncode != 0
    assert "Skipping file /dev/null" in done.stdout + done.stderr
    listed = fleet.s3.list_objects_v2(Bucket=BUCKET, Prefix="runs/dev-null/")
    assert listed["KeyCount"] == 0


# The job: two log lines, then it waits (for the test to look at the uploaded log), then writes
# the README's marker and a last line.
TRAINER = """\
import pathlib, subprocess, sys, time
print("epoch 0 loss 2.30", flush=True)
while not pathlib.Path("go").exists():
    time.sleep(0.05)
print("epoch 1 loss 1.70", flush=True)
subprocess.run(["bash", "-c", sys.argv[1]], check=True)
print("marker written", flush=True)
"""


def test_user_data_uploads_the_training_log_that_tail_training_prints(
    shared: Cli, fleet: Fleet, tmp_path: Path
) -> None:
    (instance,) = fleet.launch()
    prefix = fleet.prefix("kit-log")
    shared.attach("kit-log", instance, prefix)
    shared.wait_db_phase("kit-log", "running")
    fleet.put("tools/instance.py", (REPO / "supervisor" / "instance.py").read_bytes())
    root = tmp_path / "instance"
    env = {
        **shared.env,
        "SUPERVISOR_INSTANCE_PY": f"s3://{BUCKET}/tools/instance.py",
        "RUN_PREFIX": prefix,
        "INSTANCE_PY": str(root / "opt" / "instance.py"),
        "WORK_DIR": str(root / "work"),
        "PID_FILE": str(root / "run" / "train.pid"),
        "LOG_FILE": str(root / "log" / "train.log"),
        "LOG_UPLOAD_INTERVAL_S": "0.5",
    }
    marker = for_prefix(documented_marker_commands()[0], prefix)
    user_data = subprocess.Popen(
        ["bash", str(USER_DATA), sys.executable, "-c", TRAINER, marker],
        env={**env, "PATH": os.pathsep.join([str(BIN_DIR), env.get("PATH", "/usr/bin:/bin")])},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        # While the job trains, the kit's upload makes the log readable through the daemon.
        def tail_shows_the_first_line() -> bool:
            assert user_data.poll() is None, user_data.communicate()[0]
            done = shared.ctl("tail", "kit-log", "--training")
            return done.returncode == 0 and done.stdout == "epoch 0 loss 2.30\n"

        wait_for(tail_shows_the_first_line, timeout=180, message="the first line in S3")
        (root / "work" / "go").touch()
        output, _ = user_data.communicate(timeout=300)
    finally:
        if user_data.poll() is None:
            user_data.kill()
            user_data.communicate()
    assert user_data.returncode == 0, output
    shared.wait_phase("kit-log", "stopped", timeout=60)
    # At exit the whole log went up: `tail --training` of the ended run prints all of it.
    done = shared.ctl("tail", "kit-log", "--training", "--from-start")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "epoch 0 loss 2.30\nepoch 1 loss 1.70\nmarker written\n"
    listed = fleet.s3.list_objects_v2(Bucket=BUCKET, Prefix="runs/kit-log/")
    assert "runs/kit-log/FAILED" not in [o["Key"] for o in listed.get("Contents", [])]
