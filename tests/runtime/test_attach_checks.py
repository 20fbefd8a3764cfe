"""What `attach` refuses before anything is stored, in-process against the real moto server
and SQLite: an instance AWS does not know in the region, a bucket that does not answer, a run
prefix shared with or nested in an active run's, and a run id already taken. Each refusal is
one line naming the value and what to do; the runs, their transitions and the running
monitors are the same after it as before.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from supervisor.core.errors import InvalidInput
from supervisor.core.run import Phase
from tests.conftest import BUCKET
from tests.runtime.conftest import Harness
from tests.runtime.waiting import wait_for

P = Phase
NO_SUCH_INSTANCE = "i-0123456789abcdef0"

Snapshot = tuple[list[tuple[str, str, int]], dict[str, list[tuple[int, str]]], list[str]]


async def snapshot(harness: Harness) -> Snapshot:
    """The runs table (id, phase, version), every run's transitions, the monitors running."""
    assert harness.store is not None and harness.daemon is not None
    runs = [
        (str(r.run.spec.run_id), r.run.phase.value, r.run.version)
        for r in await harness.store.runs()
    ]
    transitions = {
        run_id: [
            (t.seq, t.transition.to_phase.value) for t in await harness.store.transitions(run_id)
        ]
        for run_id, _, _ in runs
    }
    return runs, transitions, sorted(harness.daemon.monitors)


def monitor_gone(harness: Harness, run_id: str) -> Callable[[], Awaitable[bool]]:
    async def gone() -> bool:
        assert harness.daemon is not None
        return run_id not in harness.daemon.monitors

    return gone


async def refused(harness: Harness, run_id: str, instance: str, **fields: Any) -> str:
    """Attach, expect a refusal that changes nothing; return its message."""
    before = await snapshot(harness)
    with pytest.raises(InvalidInput) as caught:
        await harness.attach(run_id, instance, **fields)
    message = str(caught.value)
    assert "\n" not in message
    assert await snapshot(harness) == before
    return message


@pytest.fixture
async def watching(harness: Harness) -> Harness:
    """A daemon watching run r1 (prefix s3://runs-bucket/runs/r1/), which is running."""
    (instance,) = harness.fleet.launch()
    await harness.start()
    await harness.attach("r1", instance)
    await harness.wait_phase("r1", P.RUNNING)
    return harness


async def test_an_attach_is_verified_with_one_describe_and_one_list(harness: Harness) -> None:
    (instance,) = harness.fleet.launch()
    await harness.start()
    await harness.attach("r1", instance)
    assert harness.calls("DescribeInstances") == 1
    assert harness.calls("ListObjectsV2") >= 1  # the verification; the monitor's come later
    assert (await harness.wait_phase("r1", P.RUNNING)).instance_id == instance


async def test_an_instance_unknown_in_the_region_is_refused_naming_it(
    watching: Harness,
) -> None:
    message = await refused(watching, "typo", NO_SUCH_INSTANCE)
    assert message.startswith(f"instance {NO_SUCH_INSTANCE} not found in region us-east-1: ")
    assert "check --instance-id and --region" in message
    assert "--no-verify" in message
    assert await watching.store.get_run("typo") is None  # type: ignore[union-attr]


async def test_an_instance_in_another_region_is_not_found_there(watching: Harness) -> None:
    (instance,) = watching.fleet.launch()  # in us-east-1
    message = await refused(watching, "elsewhere", instance, region="eu-west-1")
    assert message.startswith(f"instance {instance} not found in region eu-west-1: ")


async def test_a_bucket_that_does_not_exist_is_refused_naming_it_and_the_code(
    watching: Harness,
) -> None:
    (instance,) = watching.fleet.launch()
    message = await refused(watching, "r2", instance, s3_prefix="s3://no-such-bucket-x/runs/r2/")
    assert message.startswith(
        "bucket no-such-bucket-x does not exist or is not reachable: NoSuchBucket "
    )
    assert "--no-verify" in message


async def test_no_verify_attaches_a_run_before_its_instance_exists(harness: Harness) -> None:
    await harness.start()
    view = await harness.attach(
        "early", NO_SUCH_INSTANCE, s3_prefix="s3://no-bucket-yet/early/", no_verify=True
    )
    assert view.phase == P.PENDING
    assert harness.calls("DescribeInstances") == 0
    run = await harness.run("early")
    assert (run.instance_id, run.spec.s3_prefix) == (NO_SUCH_INSTANCE, "s3://no-bucket-yet/early/")


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        (
            "DescribeInstances=RequestLimitExceeded*4",
            f"could not verify instance {NO_SUCH_INSTANCE} in region us-east-1 "
            "(DescribeInstances: RequestLimitExceeded: ",
        ),
        (
            "ListObjectsV2=SlowDown*4",
            f"could not verify run prefix s3://{BUCKET}/runs/r1/ (ListObjectsV2: SlowDown: ",
        ),
    ],
)
async def test_aws_not_answering_the_checks_is_retried_then_refused_storing_nothing(
    harness: Harness, fault: str, expected: str
) -> None:
    (instance,) = harness.fleet.launch()
    target = NO_SUCH_INSTANCE if fault.startswith("Describe") else instance
    await harness.start(faults=fault)
    message = await refused(harness, "r1", target)
    assert message.startswith(expected)
    assert "AWS did not answer after 4 attempts: attach again in a while" in message
    assert message.endswith("Nothing was attached.")
    operation = fault.partition("=")[0]
    assert harness.calls(operation) == 4  # three retries, as for every AWS call


async def test_a_transient_error_retried_in_time_lets_the_attach_through(
    harness: Harness,
) -> None:
    (instance,) = harness.fleet.launch()
    await harness.start(faults="DescribeInstances=RequestLimitExceeded*2")
    await harness.attach("r1", instance)
    assert harness.calls("DescribeInstances") == 3
    await harness.wait_phase("r1", P.RUNNING)


@pytest.mark.parametrize(
    ("prefix", "how"),
    [
        (f"s3://{BUCKET}/runs/r1/", "is the same as"),
        (f"s3://{BUCKET}/runs/r1", "is the same as"),  # the same, once normalised
        (f"s3://{BUCKET}/runs/r1/eval/", "overlaps"),  # inside r1's
        (f"s3://{BUCKET}/runs/", "overlaps"),  # around r1's
        (f"s3://{BUCKET}", "overlaps"),  # the whole bucket
    ],
)
async def test_a_prefix_shared_with_or_nested_in_an_active_runs_is_refused_naming_it(
    watching: Harness, prefix: str, how: str
) -> None:
    (instance,) = watching.fleet.launch()
    message = await refused(watching, "r2", instance, s3_prefix=prefix)
    assert f" {how} s3://{BUCKET}/runs/r1/, the prefix of active run 'r1'" in message
    assert message.startswith("run prefix s3://")


async def test_prefixes_beside_each_other_are_accepted(watching: Harness) -> None:
    first, second = watching.fleet.launch(2)
    await watching.attach("r1-eval", first, s3_prefix=f"s3://{BUCKET}/runs/r1-eval/")
    await watching.attach("r2", second, s3_prefix="s3://other-bucket/runs/r1/", no_verify=True)
    assert {"r1", "r1-eval", "r2"} <= set(watching.daemon.monitors)  # type: ignore[union-attr]


async def test_an_ended_runs_prefix_may_be_used_again(watching: Harness) -> None:
    watching.fleet.put("runs/r1/COMPLETE")
    await watching.wait_phase("r1", P.STOPPED)
    watching.fleet.s3.delete_object(Bucket=BUCKET, Key="runs/r1/COMPLETE")
    (instance,) = watching.fleet.launch()
    await watching.attach("r1-again", instance, s3_prefix=f"s3://{BUCKET}/runs/r1/")
    await watching.wait_phase("r1-again", P.RUNNING)


async def test_an_active_run_id_is_refused_with_a_new_id_as_the_way_forward(
    watching: Harness,
) -> None:
    (instance,) = watching.fleet.launch()
    message = await refused(watching, "r1", instance, s3_prefix=f"s3://{BUCKET}/runs/r1b/")
    assert message == (
        "run id 'r1' is taken: that run is still active (running), and a run id names one "
        "run for good; attach this run under a new run id (e.g. r1-2). Nothing was attached."
    )
    assert "detach" not in message


async def test_an_ended_run_id_is_refused_with_a_way_forward_that_works(
    watching: Harness,
) -> None:
    watching.fleet.put("runs/r1/COMPLETE")
    await watching.wait_phase("r1", P.STOPPED)
    (instance,) = watching.fleet.launch()

    message = await refused(watching, "r1", instance, s3_prefix=f"s3://{BUCKET}/runs/r1b/")

    assert message.startswith(
        "run id 'r1' is taken: that run has ended (stopped, outcome completed), and a run id "
        "names one run for good; attach this run under a new run id (e.g. r1-2)."
    )
    assert "resume" not in message  # r1 has no resume_command: a resume would be refused
    await watching.attach("r1-2", instance, s3_prefix=f"s3://{BUCKET}/runs/r1b/")
    await watching.wait_phase("r1-2", P.RUNNING)


async def test_an_ended_resumable_run_id_names_the_resume_that_works(harness: Harness) -> None:
    first, second = harness.fleet.launch(2)
    await harness.start()
    await harness.attach(
        "r1", first, resume_command=["python3", "train.py"], pid_file="/tmp/sv-train.pid",
        on_crash="keep",
    )  # fmt: skip
    await harness.wait_phase("r1", P.RUNNING)
    harness.fleet.put("runs/r1/FAILED", "exit 1")
    await harness.wait_phase("r1", P.CRASHED)
    # The crash report is looked for after the transition; the monitor ends after that.
    await wait_for(monitor_gone(harness, "r1"), what="r1's monitor to end")

    message = await refused(harness, "r1", second, s3_prefix=f"s3://{BUCKET}/runs/r1b/")

    assert message.endswith(
        "attach this run under a new run id (e.g. r1-2), or run the old one again with "
        "`supervisorctl resume r1 --from-scratch`. Nothing was attached."
    )
    assert harness.daemon is not None
    resumed = await harness.daemon.views.request("r1", "resume", from_scratch=True)
    assert resumed.phase == P.RESUMING
    await harness.stop()  # before the resume goes on to start a job on the instance
