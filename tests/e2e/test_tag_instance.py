"""`supervisorctl attach --tag-instance` (or `tag_instance = true` in a --spec file) with the
real daemon: the instance carries `supervisor:run-id` once the attach returns. The refusals
(no such instance, no permission) are in tests/runtime/test_attach_tag.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from supervisor.core.zombies import RUN_TAG
from tests.conftest import Fleet
from tests.e2e.conftest import Cli

pytestmark = pytest.mark.e2e
RUNS = ("tag-flag", "tag-spec", "tag-none")


def tags_of(fleet: Fleet, instance: str) -> dict[str, str]:
    reply = fleet.ec2.describe_instances(InstanceIds=[instance])
    found = reply["Reservations"][0]["Instances"][0].get("Tags", [])
    return {t["Key"]: t["Value"] for t in found}


def test_attach_tags_the_instance_with_the_flag_or_the_spec_key_and_not_without(
    shared: Cli, fleet: Fleet, tmp_path: Path
) -> None:
    by_flag, by_spec, untagged = fleet.launch(3)
    spec = tmp_path / "run.toml"
    spec.write_text(
        f'run_id = "tag-spec"\ninstance_id = "{by_spec}"\n'
        f's3_prefix = "{fleet.prefix("tag-spec")}"\ntag_instance = true\n'
    )

    attached = shared.ctl_all(
        ("attach", "tag-flag", "--instance-id", by_flag, "--s3-prefix", fleet.prefix("tag-flag"),
         "--tag-instance", "--json"),
        ("attach", "--spec", str(spec), "--json"),
        ("attach", "tag-none", "--instance-id", untagged, "--s3-prefix", fleet.prefix("tag-none"),
         "--json"),
    )  # fmt: skip

    assert [done.returncode for done in attached] == [0, 0, 0], attached
    assert [json.loads(done.stdout)["run_id"] for done in attached] == list(RUNS)
    assert tags_of(fleet, by_flag) == {RUN_TAG: "tag-flag"}
    assert tags_of(fleet, by_spec) == {RUN_TAG: "tag-spec"}
    assert tags_of(fleet, untagged) == {}
    stored = {r: json.loads(row["spec_json"]) for r in RUNS if (row := shared.db_run(r))}
    assert {r: fields["tag_instance"] for r, fields in stored.items()} == {
        "tag-flag": True,
        "tag-spec": True,
        "tag-none": False,
    }

    # End the runs, and the tagged instances with them (a tagged instance without an active
    # run is a zombie to the shared daemon).
    detached = shared.ctl_all(*(("detach", run_id) for run_id in RUNS))
    assert [done.returncode for done in detached] == [0, 0, 0], detached
    for instance in (by_flag, by_spec, untagged):
        fleet.terminate(instance)
