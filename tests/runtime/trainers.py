"""Real training processes for runtime tests: tests/instance/trainer.py, started under one
validated temporary directory and always killed at teardown, with any trainer a resume started
from their pid files (the `trainers` fixture in conftest.py)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.runtime.waiting import WAIT_S, wait_for

TRAINER = Path(__file__).resolve().parents[1] / "instance" / "trainer.py"


@dataclass
class Trainer:
    checkpoint_dir: Path
    pid_file: Path
    process: subprocess.Popen[bytes] | None = None

    def spec(self, **overrides: Any) -> dict[str, Any]:
        """Spec fields for a checkpointed run of this trainer over the local transport."""
        fields: dict[str, Any] = {
            "transport": "local",
            "checkpoint_dir": str(self.checkpoint_dir),
            "pid_file": str(self.pid_file),
            "sigterm_timeout_s": 5.0,
            "quiet_s": 0.3,
            "grace_s": 30.0,
            "on_complete": "stop",
        }
        return {**fields, **overrides}

    def resume_command(self) -> list[str]:
        return [
            sys.executable,
            str(TRAINER),
            "--checkpoint-dir",
            str(self.checkpoint_dir),
            "--pid-file",
            str(self.pid_file),
        ]

    def checkpoints(self) -> list[Path]:
        return sorted(self.checkpoint_dir.glob("step_*.pt"))

    def exit_code(self, timeout_s: float = 10.0) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout_s)

    async def exited(self, within_s: float = WAIT_S) -> int:
        process = self.process
        assert process is not None

        async def gone() -> bool:
            return process.poll() is not None

        await wait_for(gone, within_s=within_s, what=f"trainer {process.pid} to exit")
        code = process.poll()
        assert code is not None
        return code

    async def started(self, checkpoints: int = 2, within_s: float = WAIT_S) -> None:
        """Wait until the trainer wrote its pid file and some checkpoints."""

        async def ready() -> bool:
            return self.pid_file.exists() and len(self.checkpoints()) >= checkpoints

        await wait_for(ready, within_s=within_s, what=f"trainer in {self.checkpoint_dir}")


@dataclass
class Trainers:
    """Makes trainers under one validated temporary directory; `close()` kills every trainer
    started here or recorded in one of their pid files (a resumed one), then removes it all."""

    root: Path = field(
        default_factory=lambda: Path(tempfile.mkdtemp(prefix="ck", dir="/tmp")).resolve()
    )
    made: list[Trainer] = field(default_factory=list)

    def make(self, name: str) -> Trainer:
        base = self.root / name
        base.mkdir()
        trainer = Trainer(base / "ckpt", base / "train.pid")
        self.made.append(trainer)
        return trainer

    def start(
        self,
        name: str,
        *,
        ignore_sigterm: bool = False,
        step_s: float = 0.1,
        size: int = 4096,
    ) -> Trainer:
        trainer = self.make(name)
        argv = [
            *trainer.resume_command(),
            "--step-s",
            str(step_s),
            "--size",
            str(size),
            *(["--ignore-sigterm"] if ignore_sigterm else []),
        ]
        trainer.process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        return trainer

    def close(self) -> None:
        for trainer in self.made:
            if trainer.process is not None and trainer.process.poll() is None:
                trainer.process.kill()
                trainer.process.wait(timeout=10)
            pid = pid_in(trainer.pid_file)
            # Only one of our trainers for this very pid file, never a reused pid.
            if pid is not None and is_trainer(pid, trainer.pid_file):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)


def pid_in(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None


def is_trainer(pid: int, pid_file: Path) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return str(TRAINER).encode() in cmdline and str(pid_file).encode() in cmdline


def is_running(pid: int) -> bool:
    """Alive and not a zombie (an orphaned trainer's reaper may be slow)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def clear(directory: Path) -> None:
    for path in directory.iterdir():
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
