"""A `resume` refused by the daemon names the phases a run can be resumed from: the same four
the transition table takes a resume in (an interrupted run is one of them)."""

from __future__ import annotations

import pytest

from supervisor.core.errors import InvalidTransition
from supervisor.core.machine import ACCEPTS
from supervisor.core.run import Phase
from tests.runtime.conftest import Harness

P = Phase
RESUMABLE = "only a stopped, terminated, crashed or interrupted run can be resumed"


def test_the_refusal_names_exactly_the_phases_that_take_a_resume() -> None:
    takes_a_resume = {phase for phase, accepted in ACCEPTS.items() if accepted and all(
        event.__name__ == "ResumeRequested" for event in accepted
    )}  # fmt: skip
    assert takes_a_resume == {P.STOPPED, P.TERMINATED, P.CRASHED, P.INTERRUPTED}


async def test_resume_of_a_running_or_detached_run_is_refused_naming_the_resumable_phases(
    harness: Harness,
) -> None:
    (instance,) = harness.fleet.launch()
    daemon = await harness.start()
    await harness.attach("r1", instance)
    await harness.wait_phase("r1", P.RUNNING)
    with pytest.raises(InvalidTransition, match=f"is running: {RESUMABLE}$"):
        await daemon.views.request("r1", "resume")

    await daemon.views.request("r1", "detach")
    await harness.wait_phase("r1", P.DETACHED)
    assert harness.store is not None
    before = await harness.store.transitions("r1")
    # A detached run takes no resume either: the same sentence, not the table's internals.
    with pytest.raises(InvalidTransition, match=f"is detached: {RESUMABLE}$"):
        await daemon.views.request("r1", "resume")
    assert await harness.store.transitions("r1") == before
    assert (await harness.run("r1")).phase is P.DETACHED
