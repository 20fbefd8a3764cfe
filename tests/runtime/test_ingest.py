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
    invalid = [e for e in monitor.recent if e.event == "report_unreadable"]
    assert len(invalid) == 1 and "final_metrics.json is not JSON" in invalid[0].fields["error"]
    harness.fleet.put("runs/bad/COMPLETE")
    assert (await harness.wait_phase("bad", P.STOPPED)).outcome is Outcome.COMPLETED


# -- the shapes people write, and a lasting note for a file that cannot be read ---------------

WANDB_SUMMARY = {
    "val_loss": 0.25, "accuracy": 0.91, "_step": 4999, "_runtime": 3600.5,
    "_timestamp": 1763812800.125, "_wandb": {"runtime": 3600},
    "weights": {"_type": "histogram", "values": [1, 2], "bins": [0.0, 0.5, 1.0]},
    "best_checkpoint": "ckpt-4000",
}  # fmt: skip
"""`json.dump(wandb.run.summary._json_dict, f)` at the end of a run."""
WANDB_HISTORY = {"_step": [0, 100, 200], "loss": [2.5, 1.25, 0.75], "_runtime": [0.5, 60, 120]}
"""`json.dump(run.history().to_dict("list"), f)`: W&B's history as columns."""


async def test_a_wandb_summary_and_a_history_of_columns_are_recorded(harness: Harness) -> None:
    (instance,) = harness.fleet.launch(1)
    await harness.start()
    await harness.attach("wb", instance)
    await harness.wait_phase("wb", P.RUNNING)
    harness.fleet.put("runs/wb/final_metrics.json", json.dumps(WANDB_SUMMARY))
    harness.fleet.put("runs/wb/history.json", json.dumps(WANDB_HISTORY))
    harness.fleet.put("runs/wb/COMPLETE")

    assert (await harness.wait_phase("wb", P.STOPPED)).outcome is Outcome.COMPLETED
    assert harness.store is not None
    data = await harness.store.run_data("wb")
    assert data is not None
    assert data.final_metrics == {"val_loss": 0.25, "accuracy": 0.91}
    assert data.total_steps == 4999
    assert data.history == [
        {"step": 0, "loss": 2.5}, {"step": 100, "loss": 1.25}, {"step": 200, "loss": 0.75},
    ]  # fmt: skip
    assert await harness.store.report_problems("wb") == []


async def test_an_unreadable_report_leaves_a_note_that_outlives_the_monitor(
    harness: Harness,
) -> None:
    (instance,) = harness.fleet.launch(1)
    await harness.start()
    await harness.attach("ragged", instance)
    await harness.wait_phase("ragged", P.RUNNING)
    harness.fleet.put("runs/ragged/history.json", json.dumps({"step": [0, 1, 2], "loss": [1.0]}))
    harness.fleet.put("runs/ragged/final_metrics.json", json.dumps({"val_loss": 0.5}))
    harness.fleet.put("runs/ragged/COMPLETE")
    assert (await harness.wait_phase("ragged", P.STOPPED)).outcome is Outcome.COMPLETED
    assert harness.daemon is not None
    assert "ragged" not in harness.daemon.monitors  # the run ended: its monitor is gone

    detail = await harness.daemon.views.run_detail("ragged")
    (problem,) = detail.report_problems
    assert problem.key == "history.json"
    assert problem.note.startswith("history.json: its columns differ in length ('step' 3, ")
    assert 'the README, section "Report files"' in problem.note
    tailed = [item async for item in harness.daemon.views.tail("ragged", follow=False)]
    notes = [
        i.event for i in tailed if i.event is not None and i.event.event == "report_unreadable"
    ]
    assert len(notes) == 1 and notes[0].fields == {"key": "history.json", "error": problem.note}
    data = await harness.store.run_data("ragged")  # type: ignore[union-attr]
    assert data is not None and data.final_metrics == {"val_loss": 0.5} and data.history is None

    await harness.stop()  # the note is in the database, not only in the daemon's memory
    await harness.start()
    assert [p.note for p in (await harness.daemon.views.run_detail("ragged")).report_problems] == [
        problem.note
    ]


async def test_a_report_over_its_size_limit_is_noted_and_a_readable_version_clears_the_note(
    harness: Harness,
) -> None:
    (instance,) = harness.fleet.launch(1)
    await harness.start()
    await harness.attach("big", instance)
    await harness.wait_phase("big", P.RUNNING)
    assert harness.store is not None
    big = json.dumps({"records": [{"step": 0, "pad": "x" * (1024 * 1024)}]})
    harness.fleet.put("runs/big/history.json", big)

    async def noted() -> bool:
        return bool(await harness.store.report_problems("big"))  # type: ignore[union-attr]

    await wait_for(noted, what="the oversized history noted")
    (problem,) = await harness.store.report_problems("big")
    assert problem.note.startswith(f"history.json is {len(big)} bytes; reports over 1048576 ")
    assert harness.calls("GetObject") == 0  # over the limit: not read at all

    harness.fleet.put("runs/big/history.json", json.dumps([{"step": 1, "loss": 0.5}]))

    async def cleared() -> bool:
        return await harness.store.report_problems("big") == []  # type: ignore[union-attr]

    await wait_for(cleared, what="the note removed once a version reads")
    data = await harness.store.run_data("big")
    assert data is not None and data.history == [{"step": 1, "loss": 0.5}]
