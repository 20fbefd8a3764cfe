"""What the job reports through its run prefix lands in the run database: status.json (the
heartbeat, with step and W&B ids), final_metrics.json and history.json, each read once per
change of its ETag, never once per check. Real moto, real SQLite, the real daemon."""

from __future__ import annotations

import json

import pytest

from supervisor.core.run import Outcome
from supervisor.core.run import Phase as P
from tests.runtime.conftest import Harness
from tests.runtime.waiting import wait_for


def status(step: int, loss: float) -> str:
    return json.dumps(
        {
            "format": 1, "state": "running", "step": step, "metrics": {"loss": loss},
            "wandb_run_id": "abc123", "wandb_url": "https://wandb.ai/team/proj/runs/abc123",
            "time": "2026-11-23T12:00:00+00:00",
        }
    )  # fmt: skip


def gets(harness: Harness, run_id: str) -> int:
    """GetObject calls made so far (the reports are the only objects these runs read)."""
    return harness.calls("GetObject")


async def checks_made(harness: Harness, count: int) -> None:
    before = harness.calls("ListObjectsV2")

    async def listed() -> bool:
        return harness.calls("ListObjectsV2") >= before + count

    await wait_for(listed, what=f"{count} more prefix checks")


async def test_each_report_is_read_once_per_etag_change_and_stored(harness: Harness) -> None:
    (instance,) = harness.fleet.launch(1)
    await harness.start()
    prefix = "runs/rep/"
    harness.fleet.put(prefix + "status.json", status(10, 0.9))
    await harness.attach("rep", instance)
    await harness.wait_phase("rep", P.RUNNING)
    assert harness.store is not None

    async def stored_step(step: int) -> bool:
        data = await harness.store.run_data("rep")  # type: ignore[union-attr]
        return data is not None and data.step == step

    await wait_for(lambda: stored_step(10), what="status.json stored")
    first = gets(harness, "rep")
    assert first == 1
    await checks_made(harness, 5)  # checks go on; the unchanged heartbeat is not read again
    assert gets(harness, "rep") == first

    harness.fleet.put(prefix + "status.json", status(20, 0.5))  # a new ETag
    await wait_for(lambda: stored_step(20), what="the new status.json stored")
    assert gets(harness, "rep") == first + 1
    data = await harness.store.run_data("rep")
    assert data is not None and data.status is not None
    assert (data.wandb_run_id, data.status["metrics"]) == ("abc123", {"loss": 0.5})
    assert data.wandb_url == "https://wandb.ai/team/proj/runs/abc123"

    # completed(): final metrics (300 of them) and history, then the marker.
    metrics = {f"m{i:03d}": i / 7 for i in range(300)} | {"val_loss": 0.25}
    final = {"format": 1, "metrics": metrics, "total_steps": 1000, "wandb": None}
    history = {"format": 1, "records": [{"step": s, "loss": 1 / (s + 1)} for s in range(500)]}
    harness.fleet.put(prefix + "final_metrics.json", json.dumps(final))
    harness.fleet.put(prefix + "history.json", json.dumps(history))
    harness.fleet.put(prefix + "COMPLETE")
    run = await harness.wait_phase("rep", P.STOPPED)
    assert run.outcome is Outcome.COMPLETED
    data = await harness.store.run_data("rep")
    assert data is not None and data.final_metrics is not None and data.history is not None
    assert data.final_metrics == pytest.approx(metrics)
    assert (len(data.final_metrics), len(data.history), data.total_steps) == (301, 500, 1000)
    assert gets(harness, "rep") == first + 3  # status twice, final metrics once, history once
    etags = dict(run.report_etags)
    assert set(etags) == {"status.json", "final_metrics.json", "history.json"}


async def test_a_restart_does_not_read_an_unchanged_report_again(harness: Harness) -> None:
    (instance,) = harness.fleet.launch(1)
    await harness.start()
    harness.fleet.put("runs/again/status.json", status(3, 1.0))
    await harness.attach("again", instance)
    assert harness.store is not None

    async def read() -> bool:
        return (await harness.run("again")).report_etags != ()

    await wait_for(read, what="status.json read and its ETag committed")
    await harness.stop()

    await harness.start()
    await harness.wait_phase("again", P.RUNNING)
    await checks_made(harness, 3)
    assert harness.calls("GetObject") == 0  # the ETag was persisted with the run


async def test_a_malformed_report_is_noted_once_and_does_not_stop_the_run(
    harness: Harness,
) -> None:
    (instance,) = harness.fleet.launch(1)
    await harness.start()
    harness.fleet.put("runs/bad/final_metrics.json", "{not json")
    await harness.attach("bad", instance)

    async def noted() -> bool:
        return (await harness.run("bad")).report_etags != ()

    await wait_for(noted, what="the bad file noted")
    await checks_made(harness, 3)
    assert harness.calls("GetObject") == 1  # not read again until it changes
    assert harness.daemon is not None
    monitor = harness.daemon.monitors["bad"]
    invalid = [e for e in monitor.recent if e.event == "report_invalid"]
    assert len(invalid) == 1 and "final_metrics.json is not JSON" in invalid[0].fields["error"]
    harness.fleet.put("runs/bad/COMPLETE")
    assert (await harness.wait_phase("bad", P.STOPPED)).outcome is Outcome.COMPLETED
