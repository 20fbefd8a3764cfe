"""The adapters' zombie parts: the zombies table and the append-only terminations log on both
store backends (a real SQLite file, a real PostgreSQL database), the queries the zombie sweep
and the report make, and the tagged describe against the real moto server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest

from supervisor.adapters import aws as aws_module
from supervisor.adapters.aws import Aws
from supervisor.adapters.faults import FaultPlan
from supervisor.adapters.sql_store import SqlStore
from supervisor.core.errors import TransientError
from supervisor.core.events import Action
from supervisor.core.machine import Decision, Transition, new_run
from supervisor.core.run import Outcome, Phase, Run
from supervisor.core.values import InstanceId, InstanceState
from supervisor.core.zombies import (
    RUN_TAG,
    AttemptOutcome,
    Cause,
    Termination,
    Zombie,
    ZombieKind,
    ZombieState,
)
from tests.adapters.backends import integrity_error, raw_execute
from tests.conftest import AMI, REGION, Fleet
from tests.core.builders import NOW, make_spec

INSTANCE = InstanceId("i-0123456789abcdef0")
OTHER = InstanceId("i-0fedcba9876543210")


def zombie(instance: str = INSTANCE, region: str = REGION, **changes: Any) -> Zombie:
    cause = Cause(ZombieKind.RUN_ENDED, "r1", Phase.CRASHED, NOW - timedelta(minutes=3))
    return replace(Zombie(InstanceId(instance), region, cause, marked_at=NOW), **changes)


def line(
    outcome: AttemptOutcome,
    *,
    at_hours: float = 0,
    action: Action = Action.TERMINATE,
    calls: int = 1,
    seconds: float = 60,
    code: str | None = None,
) -> Termination:
    return Termination(
        at=NOW + timedelta(hours=at_hours),
        instance_id=INSTANCE,
        region=REGION,
        run_id="r1",
        action=action,
        outcome=outcome,
        calls=calls,
        seconds_since_marked=seconds,
        error_code=code,
        message="m" if code else None,
    )


async def run_at(
    store: SqlStore,
    run_id: str,
    phase: Phase,
    *,
    instance: str = INSTANCE,
    region: str = REGION,
    ended_hours_ago: float = 1,
    outcome: Outcome | None = None,
) -> Run:
    """A run attached a day before NOW and moved to `phase` `ended_hours_ago` before NOW."""
    spec = make_spec(run_id=run_id, instance_id=instance, region=region)
    created = new_run(spec, now=NOW - timedelta(days=1))
    await store.create_run(created)
    at = NOW - timedelta(hours=ended_hours_ago)
    moved = created.run.evolve(
        phase=phase, outcome=outcome, version=2, phase_since=at, reason="moved by test"
    )
    decision = Decision(run=moved, transition=Transition(Phase.PENDING, phase, at, "test", {}))
    await store.commit(created.run, decision, now=at)
    return moved


# -- the zombies table ---------------------------------------------------------------------------


async def test_a_saved_zombie_round_trips(store: SqlStore) -> None:
    keeper = zombie(
        cause=Cause(ZombieKind.UNOWNED, "r9", Phase.STOPPED, None, keep_data=True),
        state=ZombieState.TERMINATING,
        action=Action.STOP,
        attempts=2,
        last_attempt_at=NOW,
        last_error="UnauthorizedOperation: no",
        note="n",
    )

    await store.save_zombie(keeper)

    assert await store.zombies() == [keeper]


async def test_one_row_per_instance_and_region_updated_in_place(store: SqlStore) -> None:
    first = zombie()
    elsewhere = zombie(region="eu-west-1")
    await store.save_zombie(first)
    await store.save_zombie(elsewhere)

    tried = replace(first, attempts=1, last_attempt_at=NOW, last_error="X: y")
    await store.save_zombie(tried)

    assert await store.zombies() == [elsewhere, tried]  # eu-west-1 before us-east-1


async def test_resolved_zombies_are_listed_only_when_asked(store: SqlStore) -> None:
    open_one = zombie()
    done = zombie(OTHER, state=ZombieState.CONFIRMED, resolved_at=NOW, note="terminated")
    await store.save_zombie(open_one)
    await store.save_zombie(done)

    assert await store.zombies() == [open_one]
    assert await store.zombies(open_only=False) == [open_one, done]


async def test_a_zombie_and_its_log_line_are_saved_together(store: SqlStore) -> None:
    confirmed = zombie(state=ZombieState.CONFIRMED, resolved_at=NOW)
    entry = line(AttemptOutcome.CONFIRMED, calls=2)

    await store.save_zombie(confirmed, entry)

    assert await store.zombies(open_only=False) == [confirmed]
    assert await store.terminations() == [entry]


async def test_the_terminations_log_is_append_only(store: SqlStore) -> None:
    await store.save_zombie(zombie(), line(AttemptOutcome.FAILED, code="InternalError"))

    with pytest.raises(integrity_error(store), match="append"):
        raw_execute(store, "UPDATE terminations SET outcome = 'confirmed'")
    with pytest.raises(integrity_error(store), match="append"):
        raw_execute(store, "DELETE FROM terminations")
    assert len(await store.terminations()) == 1


# -- the sweep's queries --------------------------------------------------------------------------


async def test_ended_run_instances_are_those_of_runs_ended_in_a_zombie_phase_lately(
    store: SqlStore,
) -> None:
    await run_at(store, "crashed", Phase.CRASHED, instance=INSTANCE)
    await run_at(store, "stopped-eu", Phase.STOPPED, instance=OTHER, region="eu-west-1")
    await run_at(store, "old", Phase.CRASHED, instance="i-00000000000000001", ended_hours_ago=200)
    await run_at(store, "done", Phase.DONE, instance="i-00000000000000002")
    await run_at(store, "failed", Phase.FAILED, instance="i-00000000000000003")
    await run_at(store, "running", Phase.RUNNING, instance="i-00000000000000004")

    found = await store.ended_run_instances(since=NOW - timedelta(days=7))

    assert sorted(found) == sorted([(INSTANCE, REGION), (OTHER, "eu-west-1")])


async def test_runs_on_instances_finds_owners_in_any_phase_and_named_runs(store: SqlStore) -> None:
    crashed = await run_at(store, "crashed", Phase.CRASHED, instance=INSTANCE)
    running = await run_at(store, "running", Phase.RUNNING, instance=INSTANCE)
    named = await run_at(store, "named", Phase.STOPPED, instance=OTHER)
    await run_at(store, "unrelated", Phase.CRASHED, instance="i-00000000000000009")

    found = await store.runs_on_instances([INSTANCE], ["named", "nobody"])

    assert sorted(r.spec.run_id for r in found) == ["crashed", "named", "running"]
    assert next(r for r in found if r.spec.run_id == "crashed") == crashed
    assert {r.spec.run_id: r.phase for r in found} == {
        "crashed": crashed.phase,
        "running": running.phase,
        "named": named.phase,
    }


async def test_runs_on_instances_takes_more_ids_than_one_query_binds(store: SqlStore) -> None:
    await run_at(store, "last", Phase.CRASHED, instance="i-0000000000000ffff")
    ids = [f"i-{n:017x}" for n in range(1, 1200)] + ["i-0000000000000ffff"]

    found = await store.runs_on_instances(ids)

    assert [r.spec.run_id for r in found] == ["last"]


async def test_active_owner_is_an_active_run_on_that_instance_and_region(store: SqlStore) -> None:
    await run_at(store, "ended", Phase.CRASHED, instance=INSTANCE)
    assert await store.active_owner(INSTANCE, REGION) is None

    await run_at(store, "again", Phase.RUNNING, instance=INSTANCE)

    assert await store.active_owner(INSTANCE, REGION) == "again"
    assert await store.active_owner(INSTANCE, "eu-west-1") is None


async def test_run_regions_are_the_regions_of_every_run(store: SqlStore) -> None:
    await run_at(store, "a", Phase.RUNNING)
    await run_at(store, "b", Phase.CRASHED, instance=OTHER, region="eu-west-1")

    assert await store.run_regions() == {REGION, "eu-west-1"}


# -- the report -----------------------------------------------------------------------------------


async def test_the_report_sums_up_each_day_and_the_runs(store: SqlStore) -> None:
    day1, day2 = f"{NOW:%Y-%m-%d}", f"{NOW + timedelta(days=1):%Y-%m-%d}"
    entries = [
        line(AttemptOutcome.UNAUTHORIZED, code="UnauthorizedOperation", seconds=300),
        line(AttemptOutcome.CONFIRMED, seconds=600, calls=2),
        line(AttemptOutcome.NOT_FOUND, seconds=400, code="InvalidInstanceID.NotFound"),
        line(AttemptOutcome.ACCEPTED, at_hours=25, seconds=300),
        line(AttemptOutcome.CONFIRMED, at_hours=25, calls=0, seconds=360),  # a sweep saw it
        line(AttemptOutcome.CONFIRMED, at_hours=26, action=Action.STOP, seconds=310),
        line(AttemptOutcome.FAILED, at_hours=-24 * 8, code="InternalError"),  # before the window
    ]
    for entry in entries:
        await store.save_zombie(zombie(state=ZombieState.CONFIRMED, resolved_at=NOW), entry)
    await store.save_zombie(zombie(OTHER))  # still open
    await run_at(store, "c1", Phase.STOPPED, outcome=Outcome.COMPLETED)
    await run_at(store, "c2", Phase.TERMINATED, outcome=Outcome.COMPLETED, instance=OTHER)
    await run_at(
        store, "x1", Phase.CRASHED, outcome=Outcome.CRASHED, instance="i-00000000000000001"
    )
    await run_at(store, "r1", Phase.RUNNING, instance="i-00000000000000002")

    report = await store.fleet_report(since=NOW - timedelta(days=7))

    first, second = report.days
    assert first.day == day1
    assert (first.terminations, first.stops, first.attempts) == (2, 0, 3)
    assert (first.succeeded, first.failed_attempts) == (2, 1)
    assert first.success_rate == pytest.approx(2 / 3)
    assert first.mean_s_to_terminated == pytest.approx(500)
    assert second.day == day2
    assert (second.terminations, second.stops, second.attempts) == (1, 1, 2)
    assert (second.succeeded, second.failed_attempts, second.success_rate) == (2, 0, 1.0)
    assert second.mean_s_to_terminated == pytest.approx(360)
    assert report.runs_by_outcome == {"completed": 2, "crashed": 1, "none": 1}
    assert report.crash_rate == pytest.approx(1 / 3)
    assert report.open_zombies == 1


async def test_an_empty_report_has_no_days_and_no_rates(store: SqlStore) -> None:
    report = await store.fleet_report(since=NOW - timedelta(days=7))

    assert (report.days, report.runs_by_outcome, report.open_zombies) == ((), {}, 0)
    assert report.crash_rate is None


# -- AWS: the tagged describe ---------------------------------------------------------------------


@pytest.fixture
async def aws(fleet: Fleet) -> AsyncIterator[Aws]:
    async with Aws() as adapter:
        yield adapter


def launch_tagged(fleet: Fleet, count: int, tags: dict[str, str]) -> list[str]:
    reply = fleet.ec2.run_instances(
        ImageId=AMI,
        MinCount=count,
        MaxCount=count,
        TagSpecifications=[
            {"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}
        ],
    )
    return [i["InstanceId"] for i in reply["Instances"]]


async def test_describe_tagged_finds_live_instances_with_the_tag_and_their_tags(
    aws: Aws, fleet: Fleet
) -> None:
    live = launch_tagged(fleet, 2, {RUN_TAG: "r9", "Name": "trainer"})
    stopped = launch_tagged(fleet, 1, {RUN_TAG: "r8"})
    fleet.stop(stopped[0])
    fleet.launch(2)  # untagged

    found = await aws.describe_tagged(RUN_TAG, REGION)

    assert sorted(s.instance_id for s in found) == sorted(live)
    for instance in found:
        assert instance.region == REGION
        assert instance.state is InstanceState.RUNNING
        assert instance.tags == {RUN_TAG: "r9", "Name": "trainer"}


async def test_describe_tagged_pages_through_the_results(
    aws: Aws, fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(aws_module, "DESCRIBE_BATCH", 5)  # AWS's smallest page; 1000 in use
    launched = [i for _ in range(7) for i in launch_tagged(fleet, 1, {RUN_TAG: "many"})]
    before = aws.counter.count("DescribeInstances")

    found = await aws.describe_tagged(RUN_TAG, REGION)

    assert sorted(s.instance_id for s in found) == sorted(launched)
    assert aws.counter.count("DescribeInstances") - before == 2


async def test_describe_tagged_translates_errors(fleet: Fleet) -> None:
    async with Aws(faults=FaultPlan.parse("DescribeInstances=RequestLimitExceeded")) as faulty:
        with pytest.raises(TransientError) as caught:
            await faulty.describe_tagged(RUN_TAG, REGION)
    assert caught.value.code == "RequestLimitExceeded"
