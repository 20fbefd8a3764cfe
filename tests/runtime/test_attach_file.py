"""`attach-file` in the daemon (its control API, in process, against moto): what is recorded
for an object it can read, one it may not read, and a link."""

from __future__ import annotations

import pytest

from supervisor.adapters.protocol import AttachFileRequest
from supervisor.core.errors import InvalidInput, UnknownRun
from tests.conftest import BUCKET
from tests.runtime.conftest import Harness


async def test_an_object_it_may_not_read_is_attached_without_its_size_and_again_refreshes(
    harness: Harness,
) -> None:
    (instance,) = harness.fleet.launch()
    daemon = await harness.start(faults="HeadObject=AccessDenied*1")
    await harness.attach("af-1", instance)
    uri = f"s3://{BUCKET}/elsewhere/analysis.ipynb"
    harness.fleet.put("elsewhere/analysis.ipynb", b"{}")
    request = AttachFileRequest(kind="analysis", uri=uri)

    denied = await daemon.views.attach_file("af-1", request)
    again = await daemon.views.attach_file("af-1", request)

    assert (denied.uri, denied.size) == (uri, None)
    assert again.size == 2  # the second HEAD is allowed: the same attachment, refreshed
    detail = await daemon.views.run_detail("af-1")
    assert [(a.kind, a.uri, a.size) for a in detail.attachments] == [("analysis", uri, 2)]
    assert harness.calls("HeadObject") == 2


async def test_refusals_store_nothing(harness: Harness) -> None:
    (instance,) = harness.fleet.launch()
    daemon = await harness.start()
    await harness.attach("af-2", instance)

    with pytest.raises(UnknownRun):
        await daemon.views.attach_file("ghost", AttachFileRequest(kind="other", uri="https://x.io"))
    with pytest.raises(InvalidInput, match="attachment kind 'notes' is not valid"):
        await daemon.views.attach_file("af-2", AttachFileRequest(kind="notes", uri="https://x.io"))
    with pytest.raises(InvalidInput, match=f"there is no object s3://{BUCKET}/runs/af-2/x"):
        await daemon.views.attach_file(
            "af-2", AttachFileRequest(kind="other", uri=f"s3://{BUCKET}/runs/af-2/x")
        )

    assert (await daemon.views.run_detail("af-2")).attachments == []
