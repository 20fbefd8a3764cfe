"""The real daemon as a process of its own, for figures 1-3: started the way `supervisord start`
starts its detached child (`start --foreground --detached-child`: JSON log file, no console),
but as this harness's child so that it is measured and stopped by its pid alone.

What is read from it: its AWS calls by operation (the adapter's CallCounter, as the daemon
exposes it on `/metrics` over the control socket), its own CPU time and resident memory
(/proc/PID), and its JSON log lines (timestamps of `action_requested`, `prefix_checked`...).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from supervisor.adapters.control import ControlClient, DaemonNotRunning
from supervisor.runtime.settings import Settings

START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def daemon_env(
    aws: Mapping[str, str], state_dir: Path, settings: Mapping[str, str]
) -> dict[str, str]:
    """This process's environment without its SUPERVISOR_* settings, plus AWS pointed at moto,
    the state directory and `settings` (names without the SUPERVISOR_ prefix)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("SUPERVISOR_")}
    base.pop("AWS_PROFILE", None)
    extra = {f"SUPERVISOR_{name.upper()}": value for name, value in settings.items()}
    return {**base, **aws, **extra, "SUPERVISOR_STATE_DIR": str(state_dir)}


class LogTail:
    """The daemon's JSON log lines, read incrementally (only whole lines)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""

    def read(self) -> list[dict[str, Any]]:
        try:
            with self.path.open("rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self._offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        events: list[dict[str, Any]] = []
        for line in lines:
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if isinstance(event, dict):
                    events.append(event)
        return events


def log_time(event: Mapping[str, Any]) -> float:
    """A log line's ISO UTC timestamp as seconds since the epoch (the harness's clock)."""
    return datetime.fromisoformat(str(event["timestamp"])).timestamp()


def calls_by_operation(metrics_text: str) -> Counter[str]:
    """AWS calls by operation from the `supervisor_aws_calls` counter (all outcomes)."""
    calls: Counter[str] = Counter()
    for family in text_string_to_metric_families(metrics_text):
        if family.name == "supervisor_aws_calls":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    calls[sample.labels["operation"]] += int(sample.value)
    return calls


class DaemonProcess:
    """One supervisord process on its own state directory."""

    def __init__(self, state_dir: Path, env: dict[str, str]) -> None:
        self.state_dir = state_dir
        self.env = env
        self.settings = Settings.load(None, state_dir=state_dir)
        self.process: subprocess.Popen[bytes] | None = None
        self.log = LogTail(self.settings.log_path)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        """Start the process; return at once (see `wait_ready`)."""
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        console = (self.state_dir / "console.out").open("ab")
        with console:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "supervisor.cli.supervisord",
                    "start",
                    "--foreground",
                    "--detached-child",
                ],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=console,
                cwd="/",
                start_new_session=True,
            )

    async def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Until the control socket answers; raise with the log's tail if the process dies."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"supervisord exited {self.process.returncode}: {self.tail()}")
            if self.settings.socket_path.exists():
                try:
                    async with ControlClient(self.settings.socket_path, timeout_s=5) as client:
                        await client.status()
                    return
                except (DaemonNotRunning, OSError):
                    pass
            await asyncio.sleep(0.1)
        raise RuntimeError(f"supervisord did not answer in {timeout_s:.0f}s: {self.tail()}")

    async def aws_calls(self) -> Counter[str]:
        """The daemon's AWS calls so far, by operation, read from its `/metrics`."""
        async with ControlClient(self.settings.socket_path, timeout_s=60) as client:
            return calls_by_operation(await client.metrics())

    def cpu_seconds(self) -> float:
        """User + system CPU time of the daemon process (all its threads) so far."""
        stat = Path(f"/proc/{self.pid}/stat").read_text()
        fields = stat.rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited within STOP_TIMEOUT_S."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(STOP_TIMEOUT_S)

    def tail(self, lines: int = 20) -> str:
        text = ""
        for path in (self.settings.log_path, self.state_dir / "console.out"):
            with contextlib.suppress(OSError):
                text += "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) + "\n"
        return text


@contextlib.contextmanager
def running(daemon: DaemonProcess) -> Iterator[DaemonProcess]:
    """Start the daemon; always stop it on the way out."""
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()
