"""Figure 5: sustained transitions per second through `Store` with the production durability
settings (WAL, synchronous=FULL, BEGIN IMMEDIATE per commit), and the same writes with
synchronous=OFF as a baseline: the ratio is what durability costs. Issue 14: the same writes
through `PgStore` on a local PostgreSQL server with its durability settings on."""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from structlog.testing import capture_logs

from supervisor.adapters.pg_store import PgStore
from supervisor.adapters.sql_store import SqlStore
from supervisor.adapters.store import Store
from supervisor.core.machine import Decision
from supervisor.core.run import Run
from tests.bench.fleet import decisions, lifecycle, spec

Plan = tuple[Decision, list[tuple[Run, Decision]]]
"""A run's creation and its later decisions, each with the run it was taken on."""


@dataclass(frozen=True, slots=True)
class StoreSample:
    synchronous: str
    runs: int
    writes: int
    seconds: float
    per_second: float
    p50_ms: float
    p95_ms: float


def _percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


async def measure(runs: int, *, synchronous: str) -> StoreSample:
    """Commit `runs` whole lifecycles (creation + 5 decisions each), one writer, in order."""
    plans = [decisions(spec(i), lifecycle()) for i in range(runs)]  # the core's work: not timed
    with tempfile.TemporaryDirectory(prefix="bench-store-") as folder:
        store = await Store.open(Path(folder) / "supervisor.db")
        try:
            if synchronous != "FULL":
                await store._writer.execute(f"PRAGMA synchronous = {synchronous}")
            return await _drive(store, plans, synchronous)
        finally:
            await store.close()


# -- issue 14: the same writes on PostgreSQL -------------------------------------------------------

DURABLE = ("fsync", "synchronous_commit", "full_page_writes")
"""What the test server turns off and a production server keeps on (`pg_server.running(
durable=True)` keeps them on)."""


def check_durable(url: str) -> None:
    """Refuse to measure a server that does not sync its commits."""
    with psycopg.connect(url) as conn:
        shown = [conn.execute(f"SHOW {name}".encode()).fetchone() for name in DURABLE]
    if shown != [("on",)] * len(DURABLE):
        raise RuntimeError(f"the server's {DURABLE} are {shown}: start it durable")


async def measure_postgresql(runs: int, url: str) -> StoreSample:
    """The same lifecycles through `PgStore` into the empty database at `url` (a durable
    server on the same machine, over TCP)."""
    plans = [decisions(spec(i), lifecycle()) for i in range(runs)]
    check_durable(url)
    with capture_logs():  # its migrations' log lines, not the table's
        store = await PgStore.open(url)
    try:
        return await _drive(store, plans, "postgresql")
    finally:
        await store.close()


async def _drive(store: SqlStore, plans: list[Plan], label: str) -> StoreSample:
    now = datetime.now(UTC)
    latencies: list[float] = []
    started = time.perf_counter()
    for first, later in plans:
        t0 = time.perf_counter()
        await store.create_run(first)
        latencies.append(time.perf_counter() - t0)
        for before, decision in later:
            t0 = time.perf_counter()
            await store.commit(before, decision, now=now)
            latencies.append(time.perf_counter() - t0)
    seconds = time.perf_counter() - started
    latencies.sort()
    return StoreSample(
        synchronous=label,
        runs=len(plans),
        writes=len(latencies),
        seconds=seconds,
        per_second=len(latencies) / seconds,
        p50_ms=_percentile(latencies, 50) * 1000,
        p95_ms=_percentile(latencies, 95) * 1000,
    )
