"""`supervisorctl attach-file` through the real daemon: an object or a link is recorded and
shown by `status`; a bad URI, a missing object and an unknown run are refused clearly."""

from __future__ import annotations

import json

import pytest

from supervisor.client import Supervisor
from tests.conftest import BUCKET, Fleet
from tests.e2e.conftest import Cli

pytestmark = pytest.mark.e2e

DMESG = "".join(f"[{n:>6}.000] NVRM: Xid 79, GPU has fallen off the bus\n" for n in range(1, 13))


def test_attach_file_records_an_object_and_a_link_shown_by_status(
    shared: Cli, fleet: Fleet
) -> None:
    (instance,) = fleet.launch()
    client = Supervisor(shared.socket_path)  # arranging and cleaning up without a CLI start
    client.attach("files-1", instance, fleet.prefix("files-1"))
    fleet.put("runs/files-1/crash/dmesg.txt", DMESG)
    dmesg = f"s3://{BUCKET}/runs/files-1/crash/dmesg.txt"
    link = "https://wandb.ai/team/project/runs/abc123"
    try:
        crash_log, wandb = shared.ctl_all(
            ("attach-file", "files-1", "--kind", "crash-log", dmesg, "--json"),
            ("attach-file", "files-1", "--kind", "other", link),
        )
        (as_text,) = shared.ctl_all(("status", "files-1"))
        detail = client.status("files-1")
    finally:
        client.detach("files-1")

    assert crash_log.returncode == 0, crash_log.stderr
    attached = json.loads(crash_log.stdout)
    assert (attached["kind"], attached["uri"], attached["size"]) == ("crash-log", dmesg, len(DMESG))
    assert (wandb.returncode, wandb.stdout) == (0, f"files-1: attached other: {link}\n")
    kinds = {(a.kind, a.uri) for a in detail.attachments}
    assert kinds == {("crash-log", dmesg), ("other", link)}
    assert f"attached   crash-log: {dmesg}, {len(DMESG)} bytes" in as_text.stdout
    assert "| [    12.000] NVRM: Xid 79, GPU has fallen off the bus" in as_text.stdout
    assert f"attached   other: {link}" in as_text.stdout


def test_a_bad_uri_a_missing_object_and_an_unknown_run_are_refused_clearly(
    shared: Cli, fleet: Fleet
) -> None:
    (instance,) = fleet.launch()
    client = Supervisor(shared.socket_path)
    client.attach("files-2", instance, fleet.prefix("files-2"))
    try:
        local, missing, ghost = shared.ctl_all(
            ("attach-file", "files-2", "--kind", "analysis", "/home/me/analysis.ipynb"),
            ("attach-file", "files-2", "--kind", "other", f"s3://{BUCKET}/runs/files-2/none"),
            ("attach-file", "files-ghost", "--kind", "other", "https://example.com/x"),
        )
        detail = client.status("files-2")
    finally:
        client.detach("files-2")

    assert (local.returncode, local.stdout) == (1, "")
    assert local.stderr == (
        "supervisorctl: attachment '/home/me/analysis.ipynb' is a local path: an attachment "
        "records where a file is kept for good, and a path on one machine is not. Upload it "
        "first (aws s3 cp FILE s3://BUCKET/KEY) and attach the s3:// URI\n"
    )
    assert missing.returncode == 1
    assert f"there is no object s3://{BUCKET}/runs/files-2/none" in missing.stderr
    assert "nothing was attached" in missing.stderr
    assert ghost.returncode == 1
    assert "no run 'files-ghost' is attached" in ghost.stderr
    assert detail.attachments == []
