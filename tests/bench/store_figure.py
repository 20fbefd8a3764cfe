"""Figure 5: sustained transitions per second through `Store` with the production durability
settings (WAL, synchronous=FULL, BEGIN IMMEDIATE per commit), and the same writes with
synchronous=OFF as a baseline: the ratio is what durability costs."""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from supervisor.adapters.store import Store
from tests.bench.fleet import decisions, lifecycle, spec


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
        finally:
            await store.close()
    latencies.sort()
    return StoreSample(
        synchronous=synchronous,
        runs=runs,
        writes=len(latencies),
        seconds=seconds,
        per_second=len(latencies) / seconds,
        p50_ms=_percentile(latencies, 50) * 1000,
        p95_ms=_percentile(latencies, 95) * 1000,
    )
