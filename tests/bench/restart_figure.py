"""Figure 4: time from `Daemon.serve()` start to every monitor re-armed, the AWS calls made to
get there, and the process's resident memory then. One repetition per fresh process, so the
memory figure is the daemon's own."""

from __future__ import annotations

import asyncio
import resource
import shutil
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from structlog.testing import capture_logs

from supervisor.adapters.pg_store import PgStore
from supervisor.adapters.store import Store
from supervisor.runtime.daemon import Daemon
from supervisor.runtime.log_config import configure_logging
from supervisor.runtime.monitor import Monitor
from supervisor.runtime.service import open_store
from supervisor.runtime.settings import Settings
from tests.bench.cloud import CountingCloud
from tests.bench.fleet import REGION, seed_running

DB_NAME = "supervisor.db"
RUNNING_FOR = timedelta(hours=2)


@dataclass(frozen=True, slots=True)
class RestartSample:
    runs: int
    rearmed: int
    seconds: float
    spawned_s: float
    aws_calls: dict[str, int]
    aws_calls_before_rearmed: int
    described_ids: int
    rss_mb: float
    maxrss_mb: float
    first_checks_within_30s: int
    """Monitors whose first check falls within 30 s of the start: the load a restart puts on
    S3 at once (every one of them before the restart resumed the backoff level)."""


async def seed(folder: Path, runs: int) -> Path:
    """A SQLite file with `runs` active runs in `running` (seeded with synchronous=OFF: the
    seeding is not what is measured). Returns the file, checkpointed and closed."""
    path = folder / DB_NAME
    store = await Store.open(path)
    try:
        await store._writer.execute("PRAGMA synchronous = OFF")
        # Two hours into training: a fleet mid-run, every backoff at its 300 s cap.
        await seed_running(store, runs, running_for=RUNNING_FOR)
        await store._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        await store.close()
    return path


async def seed_postgresql(url: str, runs: int) -> None:
    """Issue 14: the same runs in the empty PostgreSQL database at `url`."""
    with capture_logs():  # its migrations' log lines, not the table's
        store = await PgStore.open(url)
    try:
        await seed_running(store, runs, running_for=RUNNING_FOR)
    finally:
        await store.close()


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text(encoding="utf-8").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _armed(monitor: Monitor) -> bool:
    """The monitor handled its Armed event: idle again, with its first check scheduled."""
    return not monitor.busy and monitor._wake_at is not None


def prepare(seeded: Path, state_dir: Path) -> None:
    """A fresh state directory holding a copy of the seeded database."""
    state_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(seeded, state_dir / DB_NAME)


async def measure(state_dir: Path, runs: int, database_url: str | None = None) -> RestartSample:
    """Start a daemon on `state_dir` (see `prepare`), or on the PostgreSQL database at
    `database_url` (issue 14); poll every 5 ms until all monitors are re-armed."""
    settings = Settings.load(
        None,
        state_dir=state_dir,
        database_url=database_url,
        # The default schedule, and sweeps far off: the start-up sweep still runs once at
        # start (one batched describe) and is counted on its own.
        reconcile_interval_s=3600.0,
        zombie_interval_s=3600.0,
    )
    configure_logging(state_dir / "supervisord.log", console=False, level=settings.log_level)
    cloud = CountingCloud(REGION)
    started = time.perf_counter()
    started_at = datetime.now(UTC)
    store = await open_store(settings)
    daemon = Daemon(settings, store, cloud)
    serving = asyncio.create_task(daemon.serve())
    try:
        waiting: list[Monitor] = []
        spawned = 0.0
        while True:
            await asyncio.sleep(0.005)
            if serving.done():
                serving.result()  # a failed start raises here
            if not waiting and len(daemon.monitors) >= runs:
                waiting = list(daemon.monitors.values())
                spawned = time.perf_counter() - started
            if waiting:
                waiting = [m for m in waiting if not _armed(m)]
                if not waiting:
                    break
        seconds = time.perf_counter() - started
        before = sum(cloud.calls.values())
        rss = _rss_mb()
        rearmed = sum(1 for m in daemon.monitors.values() if _armed(m))
        # Checks already made, plus those scheduled before start + 30 s (a monitor that has
        # checked is scheduled a whole interval later, so none is counted twice).
        soon = started_at + timedelta(seconds=30)
        due_soon = sum(1 for m in daemon.monitors.values() if m._wake_at and m._wake_at <= soon)
        within_30s = due_soon + cloud.calls.get("ListObjectsV2", 0)
    finally:
        daemon.request_shutdown("bench finished")
        await serving
        await store.close()
    return RestartSample(
        runs=runs,
        rearmed=rearmed,
        seconds=seconds,
        spawned_s=spawned,
        aws_calls=dict(cloud.calls),
        aws_calls_before_rearmed=before,
        described_ids=cloud.described_ids,
        rss_mb=rss,
        maxrss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        first_checks_within_30s=within_30s,
    )
