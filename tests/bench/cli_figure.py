"""Figure 6: how fast the CLI answers. Each verb's wall time against a bare `python -c pass`
of the same interpreter, measured side by side (every repetition runs each command once, in
turn, so a busy machine slows all of them alike), against a real daemon on a moto server with
a seeded database; then the wall time of attaching many runs from a shell loop.

The CLI runs as a user's shell runs it: the console scripts of this venv, with only
SUPERVISOR_STATE_DIR set (no settings file), so it finds the daemon as `supervisorctl` does.
As installed, with its bytecode cached: PYTHONDONTWRITEBYTECODE is dropped from the CLI's
environment and one untimed round goes first (it writes the package's `__pycache__`; an
installed wheel has them from the start), so no timed run compiles the package's sources.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.bench.daemon_process import DaemonProcess, daemon_env, running
from tests.bench.moto_world import MotoWorld
from tests.bench.table import row, spread

BIN_DIR = Path(sys.executable).parent
SUPERVISORCTL = str(BIN_DIR / "supervisorctl")
SUPERVISORD = str(BIN_DIR / "supervisord")
BUCKET = "bench-cli"
SEEDED_RUN = "seeded-run"
BUDGET_RATIO = 4.0
"""Issue 12: each verb within 4x a bare interpreter's start."""


@dataclass(frozen=True, slots=True)
class CliTimes:
    repetitions: int
    seconds: dict[str, list[float]]
    """Wall seconds of each command, one sample per repetition; "python -c pass" first."""
    loop_runs: int
    loop_seconds: float
    """A shell loop attaching `loop_runs` runs, one `supervisorctl attach` each."""


def _cli_env(state_dir: Path) -> dict[str, str]:
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.upper().startswith("SUPERVISOR_") and k != "PYTHONDONTWRITEBYTECODE"
    }
    return {**base, "SUPERVISOR_STATE_DIR": str(state_dir)}


def _timed(argv: Sequence[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{shlex.join(argv)} exited {done.returncode}: {done.stderr}")
    return elapsed


def _attach_argv(run_id: str, instance_id: str) -> list[str]:
    prefix = f"s3://{BUCKET}/runs/{run_id}/"
    return [SUPERVISORCTL, "attach", run_id, "--instance-id", instance_id, "--s3-prefix", prefix]


def _commands(instance_for_attach: str, repetition: int) -> dict[str, list[str]]:
    return {
        "python -c pass": [sys.executable, "-c", "pass"],
        "supervisorctl --help": [SUPERVISORCTL, "--help"],
        "supervisorctl status": [SUPERVISORCTL, "status"],
        "supervisorctl status --json": [SUPERVISORCTL, "status", "--json"],
        "supervisorctl status RUN": [SUPERVISORCTL, "status", SEEDED_RUN],
        "supervisorctl attach": _attach_argv(f"timed{repetition}", instance_for_attach),
        "supervisorctl runs": [SUPERVISORCTL, "runs"],
        "supervisorctl show RUN": [SUPERVISORCTL, "show", SEEDED_RUN],
        "supervisord status": [SUPERVISORD, "status"],
    }


def measure(world: MotoWorld, repetitions: int = 15, loop_runs: int = 300) -> CliTimes:
    """Start a daemon on moto, seed it, time each verb `repetitions` times, then the loop."""
    world.reset()
    world.bucket(BUCKET)
    instances = world.launch(2 + repetitions + loop_runs)
    seeded, warm_up, timed, looped = (
        instances[0],
        instances[1],
        instances[2 : 2 + repetitions],
        instances[2 + repetitions :],
    )
    with tempfile.TemporaryDirectory(prefix="svc", dir="/tmp") as folder:
        state_dir = Path(folder) / "state"
        daemon = DaemonProcess(state_dir, daemon_env(world.aws_env, state_dir, {}))
        with running(daemon):
            asyncio.run(daemon.wait_ready())
            env = _cli_env(state_dir)
            _timed(_attach_argv(SEEDED_RUN, seeded), env)
            for argv in _commands(warm_up, -1).values():  # bytecode written, files cached
                _timed(argv, env)
            seconds: dict[str, list[float]] = {}
            for repetition in range(repetitions):
                for name, argv in _commands(timed[repetition], repetition).items():
                    seconds.setdefault(name, []).append(_timed(argv, env))
            loop_seconds = _attach_loop(looped, env, Path(folder))
    return CliTimes(repetitions, seconds, len(looped), loop_seconds)


def _attach_loop(instances: list[str], env: dict[str, str], folder: Path) -> float:
    """`for i in $(seq N); do supervisorctl attach ...; done` in bash, timed as a whole."""
    ids = folder / "instance-ids"
    ids.write_text("\n".join(instances) + "\n")
    script = (
        'i=0; while read -r id; do i=$((i+1)); "$CTL" attach "loop-$i" --instance-id "$id" '
        '--s3-prefix "s3://$BUCKET/runs/loop-$i/" > /dev/null || exit 1; done < "$IDS"'
    )
    loop_env = {**env, "CTL": SUPERVISORCTL, "BUCKET": BUCKET, "IDS": str(ids)}
    return _timed(["bash", "-c", script], loop_env)


def report(times: CliTimes) -> tuple[list[str], dict[str, Any]]:
    bare = statistics.median(times.seconds["python -c pass"])
    lines = [
        f"Figure 6: CLI wall time, {times.repetitions} repetitions side by side, against a "
        f"daemon on moto (median, min - max); budget {BUDGET_RATIO:g}x the bare interpreter",
    ]
    ratios: dict[str, float] = {}
    for name, samples in times.seconds.items():
        lines.append(row(name, [s * 1000 for s in samples], "ms", "{:.0f}"))
        ratios[name] = statistics.median(samples) / bare
    lines.append("  median / bare interpreter's median:")
    for name, ratio in ratios.items():
        if name != "python -c pass":
            verdict = "within" if ratio <= BUDGET_RATIO else "OVER"
            lines.append(f"    {name:<42} {ratio:6.2f}x  {verdict}")
    lines.append(
        f"  {times.loop_runs} attaches from a shell loop: {times.loop_seconds:.1f} s "
        f"({times.loop_seconds / times.loop_runs * 1000:.0f} ms each)"
    )
    lines.append("")
    document = {
        "repetitions": times.repetitions,
        "seconds": times.seconds,
        "median_s": {name: spread(samples)["median"] for name, samples in times.seconds.items()},
        "over_bare": ratios,
        "attach_loop": {"runs": times.loop_runs, "seconds": times.loop_seconds},
    }
    return lines, document
