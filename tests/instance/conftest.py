"""Fixtures for the instance-side program: run it as a real subprocess (as a module, and as
a single file copied where `supervisor` cannot be imported), start stand-in trainers, and kill
every process a test leaves behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from supervisor.core.checkpoint import Manifest, StoredObject

REPO = Path(__file__).resolve().parents[2]
PROGRAM = REPO / "supervisor" / "instance.py"
TRAINER = Path(__file__).with_name("trainer.py")


@dataclass(frozen=True)
class Outcome:
    """One run of the program: exit code, the JSON result (stdout's only line), its logs."""

    code: int
    result: dict[str, Any]
    stderr: str
    stdout_chars: int


@dataclass(frozen=True)
class Program:
    """Runs the instance program the way a transport does: an argument vector, no shell."""

    command: tuple[str, ...]
    env: dict[str, str]
    cwd: Path

    def __call__(self, *args: str, timeout: float = 30.0, only_line: bool = True) -> Outcome:
        done = subprocess.run(
            [*self.command, *args],
            env=self.env,
            cwd=self.cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        lines = done.stdout.splitlines()
        assert lines, f"no result line; stderr: {done.stderr}"
        assert len(lines) == 1 or not only_line, f"stdout must be one JSON line: {done.stdout!r}"
        result = json.loads(lines[-1])
        assert isinstance(result, dict)
        return Outcome(done.returncode, result, done.stderr, len(done.stdout))


@pytest.fixture
def program(aws_env: dict[str, str]) -> Program:
    """`python -m supervisor.instance`, from the repository."""
    return Program((sys.executable, "-m", "supervisor.instance"), {**os.environ, **aws_env}, REPO)


@pytest.fixture
def single_file_program(aws_env: dict[str, str], tmp_path: Path) -> Program:
    """`python instance.py` from a copy of the file, with boto3 importable but not
    `supervisor` (which the editable install would otherwise put on every path: `-S` skips
    the .pth files, PYTHONPATH gives back only the plain site-packages directory)."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(PROGRAM, elsewhere / "instance.py")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(aws_env, PYTHONPATH=sysconfig.get_paths()["purelib"])
    probe = subprocess.run(
        [sys.executable, "-S", "-c", "import supervisor"], env=env, cwd=elsewhere, check=False
    )
    assert probe.returncode != 0, "supervisor must not be importable for this fixture"
    return Program((sys.executable, "-S", "instance.py"), env, elsewhere)


@pytest.fixture(params=["module", "single-file"])
def any_program(request: pytest.FixtureRequest) -> Program:
    program: Program = request.getfixturevalue(
        "program" if request.param == "module" else "single_file_program"
    )
    return program


def is_alive(pid: int) -> bool:
    """Exists and is not a zombie."""
    try:
        os.kill(pid, 0)
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (ProcessLookupError, FileNotFoundError):
        return False
    return state not in ("Z", "X")


@dataclass
class Processes:
    """Everything a test started; all of it is killed at teardown."""

    children: list[subprocess.Popen[bytes]] = field(default_factory=list)
    others: list[int] = field(default_factory=list)

    def kill_all(self) -> None:
        for child in self.children:
            if child.poll() is None:
                child.kill()
            child.wait(timeout=10)
        for pid in self.others:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def processes() -> Iterator[Processes]:
    tracked = Processes()
    yield tracked
    tracked.kill_all()


@dataclass(frozen=True)
class Trainer:
    process: subprocess.Popen[bytes]
    checkpoint_dir: Path
    pid_file: Path

    @property
    def pid(self) -> int:
        return self.process.pid


@pytest.fixture
def start_trainer(tmp_path: Path, processes: Processes) -> Callable[..., Trainer]:
    """Start tests/instance/trainer.py and wait until it has written a checkpoint."""

    def start(*options: str) -> Trainer:
        checkpoint_dir = tmp_path / "ckpt"
        pid_file = tmp_path / "train.pid"
        child = subprocess.Popen(
            [
                sys.executable,
                str(TRAINER),
                "--checkpoint-dir",
                str(checkpoint_dir),
                "--pid-file",
                str(pid_file),
                *options,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )
        processes.children.append(child)
        deadline = time.monotonic() + 10
        while not (pid_file.exists() and any(checkpoint_dir.glob("step_*.pt"))):
            assert child.poll() is None, f"the trainer exited with {child.returncode}"
            assert time.monotonic() < deadline, "the trainer wrote no checkpoint in 10 s"
            time.sleep(0.02)
        return Trainer(child, checkpoint_dir, pid_file)

    return start


def stored_objects(s3: Any, manifest: Manifest) -> dict[str, StoredObject | None]:
    """What S3 says about each file of the manifest (HeadObject with checksums enabled)."""
    stored: dict[str, StoredObject | None] = {}
    for f in manifest.files:
        try:
            head = s3.head_object(Bucket=manifest.bucket, Key=f.key, ChecksumMode="ENABLED")
        except ClientError:
            stored[f.key] = None
            continue
        stored[f.key] = StoredObject(f.key, head["ContentLength"], head.get("ChecksumSHA256"))
    return stored


def bucket_keys(s3: Any, bucket: str) -> list[str]:
    reply = s3.list_objects_v2(Bucket=bucket)
    return sorted(o["Key"] for o in reply.get("Contents", []))
