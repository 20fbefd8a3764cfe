"""deploy/supervisord@.service, the template unit for replicas: systemd's own checks of it
(`systemd-analyze security` and `verify`, offline), the single unit's sandbox kept whole, and
one state directory and replica id per instance, with the shared database settings from a
file only root reads."""

from __future__ import annotations

import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest

from tests.deploy.test_service import MOST_EXPOSURE, UNIT
from tests.e2e.conftest import SUPERVISORD

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "deploy" / "supervisord@.service"
# Where the two units may differ: what makes each instance a replica of its own.
PER_REPLICA = {"StateDirectory", "Environment", "EnvironmentFile"}


def sections(unit: Path) -> dict[str, dict[str, list[str]]]:
    """Each section's settings, each with every value it is given (keys may repeat)."""
    found: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    section = ""
    for raw in unit.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
        else:
            key, _, value = line.partition("=")
            found[section][key.strip()].append(value.strip())
    return {name: dict(settings) for name, settings in found.items()}


def analyze(*argv: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("systemd-analyze")
    assert tool is not None, "systemd-analyze is missing: `make test` installs systemd"
    return subprocess.run([tool, *argv], capture_output=True, text=True, timeout=120, check=False)


def test_systemd_analyze_rates_the_template_as_the_single_unit() -> None:
    done = analyze("security", "--offline=true", "--no-pager", str(TEMPLATE))
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "", done.stderr  # a misspelt setting would be skipped
    rating = done.stdout.rsplit("Overall exposure level for ", 1)[1].split()
    assert float(rating[1]) <= MOST_EXPOSURE, done.stdout
    assert rating[2] == "OK"


def test_systemd_analyze_verifies_an_instance_of_it(tmp_path: Path) -> None:
    # verify also checks that ExecStart= is executable: this checkout's supervisord stands in
    # for the installed one.
    text = TEMPLATE.read_text(encoding="utf-8")
    installed = "/opt/ec2-run-supervisor/bin/supervisord"
    assert f"ExecStart={installed} start --foreground" in text
    instance = tmp_path / "supervisord@a.service"
    instance.write_text(text.replace(installed, SUPERVISORD), encoding="utf-8")
    done = analyze("verify", "--man=no", str(instance))
    assert (done.returncode, done.stderr.strip()) == (0, ""), done.stderr


def test_each_replica_has_its_own_state_directory_and_id_and_the_shared_database() -> None:
    service = sections(TEMPLATE)["[Service]"]
    assert service["StateDirectory"] == ["supervisor/%i"]
    assert service["Environment"] == [
        "SUPERVISOR_STATE_DIR=/var/lib/supervisor/%i",
        "SUPERVISOR_REPLICA_ID=%H-%i",
    ]
    # The database URL (with its password) for every replica, then this replica's own
    # settings if it has any: the first must exist, the second may not.
    (config,) = service["ConfigurationDirectory"]
    assert service["EnvironmentFile"] == [
        f"/etc/{config}/replicas.env",
        f"-/etc/{config}/replica-%i.env",
    ]
    assert "SUPERVISOR_DATABASE_URL=postgresql://" in TEMPLATE.read_text(encoding="utf-8")


@pytest.mark.parametrize("section", ["[Unit]", "[Service]", "[Install]"])
def test_the_template_keeps_every_other_setting_of_the_single_unit(section: str) -> None:
    single, template = sections(UNIT)[section], sections(TEMPLATE)[section]
    if section == "[Unit]":
        for settings in (single, template):
            settings.pop("Description")
        # Leases expire by each replica's clock: start after it is synchronised.
        assert template.pop("After") == ["network-online.target time-sync.target"]
        single.pop("After")
    assert {k: v for k, v in template.items() if k not in PER_REPLICA} == {
        k: v for k, v in single.items() if k not in PER_REPLICA
    }
