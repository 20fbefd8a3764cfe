"""`attach --tag-instance`, in-process against the real moto server and SQLite: the instance is
tagged `supervisor:run-id` before the run is stored; when tagging fails, the attach fails with
what to do about it, and nothing is stored.

moto tags any well-formed instance id, known or not, so the "no such instance" case skips
attach's own check that the instance exists (`no_verify`) and has the fault plan give AWS's
answer to CreateTags (`InvalidInstanceID.NotFound`).
"""

from __future__ import annotations

import pytest

from supervisor.core.errors import InvalidInput
from supervisor.core.run import Phase
from supervisor.core.zombies import RUN_TAG
from tests.conftest import Fleet
from tests.runtime.conftest import Harness

P = Phase
NO_SUCH_INSTANCE = "i-0123456789abcdef0"


def tags_of(fleet: Fleet, instance: str) -> dict[str, str]:
    reply = fleet.ec2.describe_instances(InstanceIds=[instance])
    found = reply["Reservations"][0]["Instances"][0].get("Tags", [])
    return {t["Key"]: t["Value"] for t in found}


async def test_tag_instance_tags_the_instance_with_the_run_id_before_watching_it(
    harness: Harness,
) -> None:
    tagged, untagged = harness.fleet.launch(2)
    await harness.start(faults="CreateTags=RequestLimitExceeded*2")

    view = await harness.attach("r1", tagged, tag_instance=True)
    await harness.attach("r2", untagged)

    assert view.phase == P.PENDING
    assert tags_of(harness.fleet, tagged) == {RUN_TAG: "r1"}
    assert tags_of(harness.fleet, untagged) == {}
    assert harness.calls("CreateTags") == 3  # throttled twice, retried like any AWS action
    run = await harness.wait_phase("r1", P.RUNNING)
    assert run.spec.tag_instance is True
    assert (await harness.run("r2")).spec.tag_instance is False


@pytest.mark.parametrize(
    ("fault", "instance", "expected"),
    [
        (
            "InvalidInstanceID.NotFound",
            NO_SUCH_INSTANCE,
            f"instance {NO_SUCH_INSTANCE} in us-east-1 does not exist: check --instance-id "
            "and --region",
        ),
        (
            "UnauthorizedOperation",
            None,
            "may not tag instance {instance} in us-east-1: allow ec2:CreateTags for the "
            "supervisor:run-id key (statement TagAttachedInstancesWithTheRunIdOnly in "
            "deploy/iam-policy.json), or attach without --tag-instance",
        ),
        (
            "RequestLimitExceeded*4",
            None,
            "AWS did not answer after 4 attempts: attach again in a while",
        ),
    ],
)
async def test_a_failed_tag_fails_the_attach_with_what_to_do_and_stores_nothing(
    harness: Harness, fault: str, instance: str | None, expected: str
) -> None:
    instance = instance or harness.fleet.launch()[0]
    unknown = instance == NO_SUCH_INSTANCE
    daemon = await harness.start(faults=f"CreateTags={fault}")
    assert harness.store is not None

    with pytest.raises(InvalidInput) as caught:
        await harness.attach("r1", instance, tag_instance=True, no_verify=unknown)

    message = str(caught.value)
    assert message.startswith(f"could not tag instance {instance} in us-east-1 with {RUN_TAG}=r1")
    assert expected.format(instance=instance) in message
    assert message.endswith("Nothing was attached.")
    assert await harness.store.runs() == []
    assert await harness.store.transitions("r1") == []
    assert daemon.monitors == {}
    if not unknown:
        assert tags_of(harness.fleet, instance) == {}
    # Nothing was left behind: the same run attaches once the cause is gone.
    await harness.attach("r1", instance, no_verify=unknown)
    assert (await harness.run("r1")).phase is P.PENDING


async def test_a_run_id_already_attached_is_refused_before_any_instance_is_tagged(
    harness: Harness,
) -> None:
    first, second = harness.fleet.launch(2)
    await harness.start()
    await harness.attach("r1", first)

    with pytest.raises(InvalidInput, match="run id 'r1' is taken"):
        await harness.attach("r1", second, tag_instance=True)

    # A tag naming r1 on the second instance would make it look like r1's zombie.
    assert tags_of(harness.fleet, second) == {}
    assert harness.calls("CreateTags") == 0
    assert (await harness.run("r1")).instance_id == first
