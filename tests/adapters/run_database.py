"""Builders for run-database tests: real runs driven through the pure core and committed by the
real `Store`, with what the job reported written to `run_data` as the 0006 schema holds it.

A seeded database is a real SQLite file, so the query adapter and the real `supervisorctl`
read exactly what the daemon would have left there.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from supervisor.adapters.sql_store import SqlStore
from supervisor.adapters.store import AttachmentRecord, Store
from supervisor.core.events import Event, InstanceObserved, ObjectRead
from supervisor.core.machine import Decision, new_run
from supervisor.core.spec import RunSpec
from supervisor.core.values import InstanceState
from tests.core.builders import listed, run_step

NOW = datetime(2026, 11, 22, 12, tzinfo=UTC)
"""The clock of every seeded run: runs are attached `age` before it."""
BUCKET = "my-runs"


@dataclass(frozen=True)
class Seed:
    """One run to put in the database."""

    run_id: str
    outcome: str | None = "completed"
    """completed, crashed, or None (still running)."""
    config: dict[str, Any] | None = None
    tags: dict[str, str] = field(default_factory=dict)
    objectives: tuple[str, ...] = ()
    metrics: dict[str, float] | None = None
    """The final metrics (run_data.final_metrics_json); None: none reported."""
    step: int | None = None
    total_steps: int | None = None
    history: list[dict[str, Any]] | None = None
    wandb: dict[str, Any] | None = None
    crash_log: str | None = None
    """The excerpt of a crash report attached to the run."""
    age: timedelta = timedelta(hours=1)
    spec: dict[str, Any] = field(default_factory=dict)


def _events(outcome: str | None) -> list[Event]:
    running: list[Event] = [InstanceObserved(InstanceState.RUNNING)]
    if outcome == "completed":
        return [*running, listed("COMPLETE")]
    if outcome == "crashed":
        return [*running, listed("FAILED"), ObjectRead("FAILED", "CUDA out of memory")]
    return running


async def seed(path: Path, seeds: list[Seed], *, now: datetime = NOW) -> None:
    """Create the database at `path` (migrated by `Store.open`) holding `seeds`, each attached
    its `age` before `now`. Tests that query through the real CLI, whose `--since` reads the
    wall clock, pass the current time: a fixed date would age out of their window."""
    store = await Store.open(path)
    try:
        await seed_runs(store, seeds, now=now)
        for s in seeds:
            _write_run_data(path, s, now - s.age)
    finally:
        await store.close()


async def seed_runs(store: SqlStore, seeds: list[Seed], *, now: datetime = NOW) -> None:
    """The runs of `seeds` with their transitions and crash logs, through `store` (either
    backend's); what the jobs reported (run_data) is `seed`'s, on SQLite."""
    for number, s in enumerate(seeds):
        at = now - s.age
        spec_fields: dict[str, Any] = {
            "run_id": s.run_id,
            "instance_id": f"i-{number:017x}",
            "region": "us-east-1",
            "s3_prefix": f"s3://{BUCKET}/runs/{s.run_id}/",
            "grace_s": 60,
            "tags": s.tags,
            "config": s.config,
            "objectives": list(s.objectives),
            # a crashed seed ends in phase crashed (its instance kept), as queries expect
            **({"on_crash": "keep"} if s.outcome == "crashed" else {}),
            **s.spec,
        }
        decision: Decision = new_run(RunSpec.build(**spec_fields), now=at)
        await store.create_run(decision)
        run = decision.run
        for event in _events(s.outcome):
            decision = run_step(run, event, now=at)
            await store.commit(run, decision, now=at)
            run = decision.run
        assert (run.outcome or None) == s.outcome, (s.run_id, run.phase, run.outcome)
        if s.crash_log is not None:
            await store.attach(
                AttachmentRecord(
                    run_id=s.run_id,
                    kind="crash-log",
                    uri=f"s3://{BUCKET}/runs/{s.run_id}/crash/error.log",
                    added_at=at,
                    size=len(s.crash_log),
                    excerpt=s.crash_log,
                )
            )


def _write_run_data(path: Path, s: Seed, at: datetime) -> None:
    """What the job reported, as plain SQL rows of the 0006 `run_data` table."""
    if s.metrics is None and s.step is None and s.history is None:
        return
    final = None
    if s.metrics is not None:
        final = json.dumps({"metrics": s.metrics, "wandb": s.wandb})
    status = {"state": "running", "step": s.step} if s.step is not None else None
    with contextlib.closing(sqlite3.connect(path)) as db, db:  # commit, then close
        db.execute(
            "INSERT INTO run_data (run_id, status_json, status_at, step, wandb_run_id, wandb_url, "
            "final_metrics_json, history_json, total_steps, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                s.run_id,
                json.dumps(status) if status else None,
                at.isoformat() if status else None,
                s.step,
                (s.wandb or {}).get("run_id"),
                (s.wandb or {}).get("url"),
                final,
                json.dumps(s.history) if s.history is not None else None,
                s.total_steps,
                at.isoformat(),
            ),
        )


# -- a known set: the gradient methods of the example --------------------------------

OBJECTIVES = ("val_loss:min", "acc:max")
WANDB = {"run_id": "w8x2k", "url": "https://wandb.ai/team/deco/runs/w8x2k", "project": "deco"}
CRASH = "\n".join(f"trace line {i}" for i in range(1, 31)) + "\n"
HISTORY = [{"step": 100, "val_loss": 0.5}, {"step": 200, "val_loss": 0.3}]


def method(run_id: str, gradient_method: str | None, **fields: object) -> Seed:
    config: dict[str, Any] = {"gradient_method": gradient_method} if gradient_method else {}
    config |= {"optimizer": {"lr": 3e-4, "betas": [0.9, 0.99]}, "amp": True}
    return Seed(run_id, config=config, objectives=OBJECTIVES, **fields)  # type: ignore[arg-type]


SEEDS = [
    method(
        "mgda-1",
        "mgda",
        metrics={"val_loss": 0.30, "acc": 0.80, "grad_norm": 2.0},
        tags={"seed": "1", "team": "vision"},
        step=1000,
        total_steps=1000,
        history=HISTORY,
        wandb=WANDB,
        spec={"name": "deco hop bs96 mgda", "instance_type": "p4d.24xlarge", "spot": True},
    ),
    method("mgda-2", "mgda", metrics={"val_loss": 0.25, "acc": 0.85, "eval/top-1": 0.7}),
    method("mgda-3", "mgda", outcome="crashed", step=12, crash_log=CRASH, tags={"seed": "10"}),
    method("pcgrad-1", "pcgrad", metrics={"val_loss": 0.40, "acc": 0.90}, age=timedelta(days=3)),
    method("pcgrad-2", "pcgrad", metrics={"val_loss": 0.20, "acc": 0.70}, tags={"seed": "2"}),
    method("imtlg-1", "imtlg", metrics={"val_loss": 0.35, "acc": 0.88}, age=timedelta(days=10)),
    method("imtlg-2", "imtlg", outcome=None, step=40),
    method("baseline-1", None, metrics={"val_loss": 0.50}),
]
