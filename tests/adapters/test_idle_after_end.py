"""Issue 13, measured: the idle instance-seconds after a job's end, as the run database holds
them: per run in the query path's `show` row, summed per UTC day in the fleet report.

Runs are driven through the real core and committed by the real store (the report on both
backends); the query adapter then reads a SQLite file as `supervisorctl show` does."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from supervisor.adapters.query import RunDatabase
from supervisor.adapters.sql_store import SqlStore
from supervisor.adapters.store import Store
from supervisor.core.events import (
    Action,
    ActionSucceeded,
    Event,
    InstanceObserved,
    ObjectRead,
    PrefixListed,
    Tick,
)
from supervisor.core.machine import new_run
from supervisor.core.records import IdleDay
from supervisor.core.run import Phase
from supervisor.core.spec import RunSpec
from supervisor.core.values import InstanceState
from tests.core.builders import NOW, obj, run_step

DAY1 = NOW - timedelta(days=2)
DAY2 = NOW - timedelta(days=1)
STOPPED = ActionSucceeded(Action.STOP, InstanceState.STOPPED)


def completed(ended: datetime, acked: datetime) -> list[tuple[Event, datetime]]:
    """The marker written at `ended`, found 10 s later; grace over; the stop accepted at
    `acked`."""
    found = ended + timedelta(seconds=10)
    return [
        (PrefixListed((obj("COMPLETE", at=ended),)), found),
        (Tick(), found + timedelta(seconds=60)),  # the grace's end (grace_s 60)
        (STOPPED, acked),
    ]


def crashed(ended: datetime, acked: datetime | None) -> list[tuple[Event, datetime]]:
    """The FAILED marker written at `ended`, found and read 5 s later; the stop (on_crash stop)
    accepted at `acked`, or none (on_crash keep)."""
    found = ended + timedelta(seconds=5)
    steps: list[tuple[Event, datetime]] = [
        (PrefixListed((obj("FAILED", at=ended),)), found),
        (ObjectRead("FAILED", "CUDA out of memory"), found),
    ]
    return [*steps, (STOPPED, acked)] if acked is not None else steps


async def drive(
    store: SqlStore, run_id: str, number: int, steps: list[tuple[Event, datetime]], **spec: Any
) -> Phase:
    start = steps[0][1] - timedelta(hours=1)
    decision = new_run(
        RunSpec.build(
            run_id=run_id, instance_id=f"i-{number:017x}", region="us-east-1",
            s3_prefix=f"s3://my-runs/runs/{run_id}/", grace_s=60, grace_mode="fixed", **spec,
        ),
        now=start,
    )  # fmt: skip
    await store.create_run(decision)
    run = decision.run
    for event, at in [(InstanceObserved(InstanceState.RUNNING), start), *steps]:
        decision = run_step(run, event, now=at)
        await store.commit(run, decision, now=at)
        run = decision.run
    return run.phase


async def seed(store: SqlStore) -> None:
    s = timedelta(seconds=1)
    phases = [
        await drive(store, "done-1", 1, completed(DAY1, DAY1 + 90 * s)),
        await drive(store, "crash-1", 2, crashed(DAY1 + 3600 * s, DAY1 + 3620 * s)),
        await drive(store, "done-2", 3, completed(DAY2, DAY2 + 100 * s)),
        await drive(store, "kept", 4, crashed(DAY2, None), on_crash="keep"),
        await drive(store, "left", 5, completed(DAY2, DAY2)[:2], on_complete="none"),
    ]
    assert phases == [Phase.STOPPED, Phase.STOPPED, Phase.STOPPED, Phase.CRASHED, Phase.DONE]


@pytest.fixture
async def seeded(tmp_path: Path) -> Path:
    path = tmp_path / "runs.db"
    store = await Store.open(path)
    try:
        await seed(store)
    finally:
        await store.close()
    return path


async def test_the_report_sums_the_idle_seconds_after_the_end_per_day_of_the_end(
    store: SqlStore,
) -> None:
    """On both backends (the `store` fixture)."""
    await seed(store)
    report = await store.fleet_report(since=NOW - timedelta(days=7))
    recent = await store.fleet_report(since=DAY2 - timedelta(hours=1))
    # the kept and the left-running runs ended on DAY2 too: no figure, so not counted
    assert report.idle_days == (
        IdleDay(DAY1.date().isoformat(), runs=2, idle_s=110.0),
        IdleDay(DAY2.date().isoformat(), runs=1, idle_s=100.0),
    )
    assert recent.idle_days == (IdleDay(DAY2.date().isoformat(), runs=1, idle_s=100.0),)


@pytest.mark.parametrize(
    ("run_id", "ended", "idle"),
    [
        ("done-1", DAY1, 90.0),
        ("crash-1", DAY1 + timedelta(hours=1), 20.0),
        ("done-2", DAY2, 100.0),
        ("kept", DAY2, None),  # on_crash keep: never stopped, no figure (not zero)
        ("left", DAY2, None),  # on_complete none: never stopped
    ],
)
def test_show_has_each_runs_end_and_idle_seconds_after_it(
    seeded: Path, run_id: str, ended: datetime, idle: float | None
) -> None:
    with RunDatabase(seeded) as db:
        row = db.run(run_id)
    assert (row.job_ended_at, row.idle_after_end_s) == (ended, idle)
    as_json = row.json()
    assert as_json["idle_after_end_s"] == idle
    assert as_json["job_ended_at"] == ended.isoformat().replace("+00:00", "Z")
