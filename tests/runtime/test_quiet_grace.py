"""The default until-quiet grace of a run without checkpointing, against the real moto server:
it ends once the prefix is quiet and no multipart upload is in progress under it; an upload
in progress keeps the run in grace (each look one ListObjectsV2 and one ListMultipartUploads)."""

from __future__ import annotations

from supervisor.core.run import Outcome
from supervisor.core.run import Phase as P
from tests.conftest import BUCKET
from tests.runtime.conftest import Harness
from tests.runtime.waiting import wait_for

GRACE = {"grace_s": 600.0, "quiet_s": 0.3}
"""A grace limit no test reaches: only the quiet prefix can end it within the test."""


async def test_a_quiet_prefix_without_uploads_ends_the_grace_early(harness: Harness) -> None:
    await harness.start()
    (instance,) = harness.fleet.launch()
    await harness.attach("r1", instance, **GRACE)
    await harness.wait_phase("r1", P.RUNNING)
    harness.fleet.put("runs/r1/COMPLETE")

    run = await harness.wait_phase("r1", P.STOPPED, P.STOPPING)
    assert run.outcome is Outcome.COMPLETED
    assert "prefix quiet for 0.3s and no upload in progress" in run.reason
    assert harness.calls("ListMultipartUploads") >= 1


async def test_an_upload_in_progress_keeps_the_run_in_grace_until_it_ends(
    harness: Harness,
) -> None:
    await harness.start()
    (instance,) = harness.fleet.launch()
    await harness.attach("r1", instance, **GRACE)
    await harness.wait_phase("r1", P.RUNNING)
    s3 = harness.fleet.s3
    upload = s3.create_multipart_upload(Bucket=BUCKET, Key="runs/r1/checkpoints/model.pt")
    harness.fleet.put("runs/r1/COMPLETE")
    await harness.wait_phase("r1", P.GRACE)

    async def looked_three_times() -> bool:
        return harness.calls("ListMultipartUploads") >= 3

    await wait_for(looked_three_times, what="three quiet looks")
    assert (await harness.run("r1")).phase is P.GRACE  # quiet, but the upload goes on
    assert harness.calls("StopInstances") == 0

    s3.abort_multipart_upload(
        Bucket=BUCKET, Key="runs/r1/checkpoints/model.pt", UploadId=upload["UploadId"]
    )
    run = await harness.wait_phase("r1", P.STOPPED, P.STOPPING)
    assert "no upload in progress" in run.reason


async def test_a_fixed_grace_makes_no_quiet_look(harness: Harness) -> None:
    await harness.start(grace_s=0.3)
    (instance,) = harness.fleet.launch()
    await harness.attach("r1", instance, grace_mode="fixed")
    await harness.wait_phase("r1", P.RUNNING)
    harness.fleet.put("runs/r1/COMPLETE")

    run = await harness.wait_phase("r1", P.STOPPED, P.STOPPING)
    assert run.reason.startswith("grace over")
    assert harness.calls("ListMultipartUploads") == 0
