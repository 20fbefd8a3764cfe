"""Figure 8 (issue 14): failover time at 1,000 runs on PostgreSQL, beside a clean hand-over
and a single daemon's restart measured in the same run.

Three replica processes share 1,000 active runs (running, two hours in) on one PostgreSQL
database. Each is the real `Daemon` on `PgStore` with LISTEN notices, as `supervisord` builds
it, but with the counting fake of our own `Cloud` port (tests/bench/cloud.py), so every AWS
call is counted by operation and none can be hidden; SIGTERM shuts it down as supervisord
does. Each replica process writes, every `REPORT_EVERY_S`, the runs it holds now, when it
first held each (claimed) and when that run's monitor had handled its `Armed` event (idle,
first check scheduled: re-armed), and its calls so far.

One repetition, on a fresh copy of the seeded database: the three start and spread the runs
(fair shares); the replica holding the most is SIGKILLed; the clock runs from the kill to the
moment the last of its runs is re-armed on a survivor. The survivors' calls in that window
are counted by operation. Then the baseline: the survivor holding the most gets SIGTERM (a
clean stop hands its runs back) and the clock runs from the signal to the last of its runs
re-armed on the last replica. Finally a single daemon restarts on a copy of the same 1,000
runs (figure 4's measure): re-arming from the database with no lease to wait for.

Expected: kill → re-armed ≤ the lease time the dead replica had left (at most the TTL) plus
one claim interval (TTL / 3); a clean hand-over ≈ the shutdown plus one claim interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg

from supervisor.runtime.daemon import Daemon
from supervisor.runtime.log_config import configure_logging
from supervisor.runtime.service import open_notices, open_store
from supervisor.runtime.settings import Settings
from tests.bench.cloud import CountingCloud
from tests.bench.fleet import REGION
from tests.bench.restart_figure import _armed

ROOT = Path(__file__).resolve().parents[2]
REPORT_EVERY_S = 0.02
REPLICAS = ("replica-a", "replica-b", "replica-c")
WAIT_S = 300.0


# -- one replica process (python -m tests.bench --failover-replica ...) -------------------------


async def replica_main(state_dir: Path, url: str, replica_id: str, ttl_s: float) -> None:
    """Run one replica until SIGTERM (or SIGKILL), writing its report (`report_path`) in
    `state_dir` (made by `ReplicaProcess.start`)."""
    settings = Settings.load(
        None,
        state_dir=state_dir,
        database_url=url,
        replica_id=replica_id,
        lease_ttl_s=ttl_s,
        # The sweeps far off: what is counted is what taking runs over costs.
        reconcile_interval_s=3600.0,
        zombie_interval_s=3600.0,
        idle_interval_s=3600.0,
    )
    configure_logging(settings.log_path, console=False, level=settings.log_level)
    cloud = CountingCloud(REGION)
    store = await open_store(settings)
    try:
        async with open_notices(settings) as notices:
            daemon = Daemon(settings, store, cloud, notices=notices)
            loop = asyncio.get_running_loop()
            loop.add_signal_handler(signal.SIGTERM, daemon.request_shutdown, "SIGTERM")
            serving = asyncio.create_task(daemon.serve())
            claimed: dict[str, float] = {}
            armed: dict[str, float] = {}
            while not serving.done():
                now = time.time()
                held = {run_id for run_id, _ in daemon.lease_book.items()}
                for run_id in held:
                    claimed.setdefault(run_id, now)
                for monitor in list(daemon.monitors.values()):
                    if monitor.run_id in held and _armed(monitor):
                        armed.setdefault(monitor.run_id, now)
                for gone in set(claimed) - held:  # handed back or lost: a new claim counts anew
                    claimed.pop(gone, None)
                    armed.pop(gone, None)
                _write_report(
                    report_path(state_dir),
                    {"pid": os.getpid(), "claimed": claimed, "armed": armed,
                     "calls": dict(cloud.calls)},
                )  # fmt: skip
                await asyncio.sleep(REPORT_EVERY_S)
            await serving
    finally:
        await store.close()


def report_path(state_dir: Path) -> Path:
    return state_dir / "failover-report.json"


def _write_report(path: Path, report: dict[str, Any]) -> None:
    partial = path.with_suffix(".part")
    partial.write_text(json.dumps(report), encoding="utf-8")
    partial.replace(path)  # whole reports only


@dataclass
class ReplicaProcess:
    """One replica process of this figure, and its last report."""

    name: str
    state_dir: Path
    url: str
    ttl_s: float
    process: subprocess.Popen[bytes] | None = None
    report: dict[str, Any] = field(default_factory=dict)

    def start(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("SUPERVISOR_")}
        with (self.state_dir / "console.out").open("ab") as console:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tests.bench", "--failover-replica", str(self.state_dir),
                 self.url, self.name, str(self.ttl_s)],
                cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=console, stderr=console,
                start_new_session=True,
            )  # fmt: skip

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def read(self) -> dict[str, Any]:
        with contextlib.suppress(FileNotFoundError, ValueError):
            self.report = json.loads(report_path(self.state_dir).read_text(encoding="utf-8"))
        if self.process is not None and self.process.poll() not in (None, 0, -signal.SIGKILL):
            tail = (self.state_dir / "console.out").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{self.name} exited {self.process.returncode}: {tail}")
        return self.report

    @property
    def armed(self) -> dict[str, float]:
        return dict(self.report.get("armed", {}))

    @property
    def claimed(self) -> dict[str, float]:
        return dict(self.report.get("claimed", {}))

    @property
    def calls(self) -> Counter[str]:
        return Counter(self.report.get("calls", {}))

    def signal(self, signum: signal.Signals) -> float:
        assert self.process is not None
        at = time.time()
        self.process.send_signal(signum)
        return at

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(60)


@contextlib.contextmanager
def _replicas(folder: Path, url: str, ttl_s: float) -> Iterator[list[ReplicaProcess]]:
    """The replicas, started a third of a claim interval apart: replicas started at once
    would renew and claim in step, and a survivor would claim the moment a dead one's leases
    expire, which real ones, started at any time, do not."""
    made = [ReplicaProcess(name, folder / name, url, ttl_s) for name in REPLICAS]
    try:
        for replica in made:
            replica.start()
            time.sleep(ttl_s / 3 / len(made))
        yield made
    finally:
        for replica in made:
            replica.stop()


def _wait(condition: Any, what: str, replicas: list[ReplicaProcess]) -> None:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        for replica in replicas:
            if replica.alive:
                replica.read()
        if condition():
            return
        time.sleep(REPORT_EVERY_S)
    held = {r.name: len(r.armed) for r in replicas}
    raise RuntimeError(f"waited {WAIT_S:.0f} s for {what}: armed per replica {held}")


def _held_by(url: str, owner: str) -> tuple[set[str], tuple[float, float]]:
    """The runs `owner` holds in the database now, and its leases' earliest and latest
    expiry (POSIX time)."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT run_id, lease_until FROM runs WHERE owner = %s", (owner,)
        ).fetchall()
    ends = [datetime.fromisoformat(until).timestamp() for _, until in rows]
    return {str(run_id) for run_id, _ in rows}, (min(ends), max(ends))


def _take_over(
    leaving: ReplicaProcess, staying: list[ReplicaProcess], how: signal.Signals, url: str,
    replicas: list[ReplicaProcess],
) -> dict[str, Any]:  # fmt: skip
    """Signal `leaving` (SIGKILL or SIGTERM); the time until every run it held is claimed and
    re-armed on `staying`, and the calls `staying` made meanwhile."""
    for replica in staying:
        replica.read()
    before = sum((r.calls for r in staying), Counter())
    runs, (left_min, left_max) = _held_by(url, leaving.name)
    signalled = leaving.signal(how)
    left_min, left_max = left_min - signalled, left_max - signalled

    def taken() -> bool:
        armed: dict[str, float] = {}
        for replica in staying:
            armed |= {r: t for r, t in replica.armed.items() if r in runs and t >= signalled}
        return set(armed) == runs

    _wait(taken, f"the {len(runs)} runs of {leaving.name} re-armed", replicas)
    assert leaving.process is not None
    leaving.process.wait(60)
    claimed = [t for r in staying for run, t in r.claimed.items() if run in runs]
    armed = [t for r in staying for run, t in r.armed.items() if run in runs]
    after = sum((r.calls for r in staying), Counter())
    calls = {op: after[op] - before[op] for op in after if after[op] - before[op]}
    return {
        "runs": len(runs),
        "lease_left_s": [left_min, left_max],
        "first_claim_s": min(claimed) - signalled,
        "all_claimed_s": max(claimed) - signalled,
        "all_rearmed_s": max(armed) - signalled,
        "calls": calls,
        "calls_not_checks": sum(n for op, n in calls.items() if op != "ListObjectsV2"),
        "per_replica": {r.name: sum(1 for run in r.armed if run in runs) for r in staying},
    }


def repetition(
    url: str, runs: int, ttl_s: float, folder: Path, rng: random.Random
) -> dict[str, Any]:
    """One kill and one clean stop among three replicas on the database at `url` (seeded
    with `runs` unowned active runs), each at a moment drawn from `rng` within a claim
    interval (not just after a renewal)."""
    with _replicas(folder, url, ttl_s) as replicas:
        share = -(-runs // len(replicas))
        slack = max(2, share // 10)  # as `core.leases.surplus`
        started = time.time()

        def spread_out() -> bool:
            armed = [len(r.armed) for r in replicas]
            return sum(armed) == runs and min(armed) >= share - slack

        _wait(spread_out, "the runs to spread over the three replicas", replicas)
        spread = {r.name: len(r.armed) for r in replicas}
        settle_s = time.time() - started
        victim = max(replicas, key=lambda r: len(r.armed))
        survivors = [r for r in replicas if r is not victim]
        time.sleep(rng.uniform(0, ttl_s / 3))
        killed = _take_over(victim, survivors, signal.SIGKILL, url, replicas)
        leaving = max(survivors, key=lambda r: len(r.armed))
        last = [r for r in survivors if r is not leaving]
        time.sleep(rng.uniform(0, ttl_s / 3))
        handed = _take_over(leaving, last, signal.SIGTERM, url, replicas)
        return {
            "spread": spread,
            "settle_s": settle_s,
            "kill": killed,
            "clean_stop": handed,
        }
