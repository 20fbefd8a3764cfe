"""deploy/supervisord.service: systemd's own rating of its sandbox (`systemd-analyze security`,
offline, so no running systemd is needed), and the real daemon at work under as much of that
sandbox as this machine applies without systemd as PID 1: no new privileges, no W+X memory,
no capabilities, umask 0077, and every file read-only except the state directory."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from tests.conftest import Fleet
from tests.e2e.conftest import SUPERVISORD, cli_for, wait_for

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "deploy" / "supervisord.service"
# The figure `systemd-analyze security` gives the unit: 0 (locked down) to 10 (exposed). A
# plain unit with User= rates 8.5 "EXPOSED"; up to 3.9 is "OK".
MOST_EXPOSURE = 3.0


def service_section() -> dict[str, list[str]]:
    """The unit's [Service] settings, each with every value it is given (keys may repeat)."""
    settings: dict[str, list[str]] = defaultdict(list)
    section = ""
    for raw in UNIT.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
        elif section == "[Service]":
            key, _, value = line.partition("=")
            settings[key.strip()].append(value.strip())
    return dict(settings)


def test_systemd_analyze_rates_the_unit_3_or_lower() -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze is not None, "systemd-analyze is missing: `make test` installs systemd"
    done = subprocess.run(
        [analyze, "security", "--offline=true", "--no-pager", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    # A misspelt setting is skipped with a warning and would quietly weaken the sandbox.
    assert done.stderr.strip() == "", done.stderr
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", done.stdout)
    assert found, done.stdout
    assert float(found.group(1)) <= MOST_EXPOSURE, done.stdout
    assert found.group(2) == "OK"


def test_the_state_directory_is_the_one_writable_place_and_the_daemons() -> None:
    service = service_section()
    assert service["ProtectSystem"] == ["strict"]
    (state,) = service["StateDirectory"]
    # StateDirectory= is writable under ProtectSystem=strict, and it is where the daemon keeps
    # its database, socket, pid file and log.
    assert service["Environment"] == [f"SUPERVISOR_STATE_DIR=/var/lib/{state}"]
    assert service["UMask"] == ["0077"]
    (exec_start,) = service["ExecStart"]
    assert exec_start.endswith("/bin/supervisord start --foreground")
    # ProtectHome hides ~: the optional settings file lives with the unit's configuration.
    assert service["ProtectHome"] == ["true"]
    (config,) = service["ConfigurationDirectory"]
    assert service["EnvironmentFile"] == [f"-/etc/{config}/supervisord.env"]


# Runs in the daemon's place: applies what the unit asks of the kernel, checks that the mount
# namespace it runs in is read-only outside the state directory, then becomes the daemon.
SANDBOX = """\
import ctypes, errno, os, sys
state_dir, outside, umask, *command = sys.argv[1:]
libc = ctypes.CDLL(None, use_errno=True)
def prctl(*args):
    if libc.prctl(*args, *[0] * (5 - len(args))) != 0:
        sys.exit(f"prctl{args}: {os.strerror(ctypes.get_errno())}")
prctl(38, 1)  # PR_SET_NO_NEW_PRIVS: NoNewPrivileges=true
prctl(65, 1)  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN: MemoryDenyWriteExecute=true
with open("/proc/sys/kernel/cap_last_cap") as f:
    for cap in range(int(f.read()) + 1):
        prctl(24, cap)  # PR_CAPBSET_DROP: CapabilityBoundingSet= (empty)
os.umask(int(umask, 8))
try:
    open(os.path.join(outside, "written-outside"), "w").close()
    sys.exit(f"{outside} is writable: the read-only remount did not take")
except OSError as exc:
    if exc.errno != errno.EROFS:
        raise
os.execv(command[0], command)
"""
# ProtectSystem=strict with the state directory writable (StateDirectory=): in a mount
# namespace of its own, the state directory is bound onto itself, then the root remounted
# read-only (on this machine everything the daemon touches is on the root file system).
MOUNTS = 'mount --bind "$1" "$1" && mount -o remount,bind,ro / && shift && exec "$@"'


def status_field(pid: int, name: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{name}:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no {name} in /proc/{pid}/status")


@pytest.mark.e2e
def test_the_daemon_stops_a_completed_run_inside_the_units_sandbox(
    aws_env: dict[str, str], fleet: Fleet, tmp_path: Path
) -> None:
    service = service_section()
    for setting in ("NoNewPrivileges", "MemoryDenyWriteExecute"):
        assert service[setting] == ["true"], f"the unit no longer sets {setting}=true"
    assert service["CapabilityBoundingSet"] == [""]
    (umask,) = service["UMask"]
    sandbox = tmp_path / "sandbox.py"
    sandbox.write_text(SANDBOX)
    outside = tmp_path / "outside"
    outside.mkdir()

    with cli_for(aws_env) as cli:
        command = [
            "unshare", "--mount", "--propagation", "private", "sh", "-c", MOUNTS, "sandbox",
            str(cli.state_dir), sys.executable, "-I", str(sandbox), str(cli.state_dir),
            str(outside), umask, SUPERVISORD, "start", "--foreground",
        ]  # fmt: skip
        daemon = subprocess.Popen(
            command,
            env=cli.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:

            def answers() -> bool:
                assert daemon.poll() is None, daemon.communicate()[0] + cli.log_tail()
                return cli.socket_path.exists() and cli.ctl("status").returncode == 0

            wait_for(answers, timeout=60, message="the sandboxed daemon's control socket")
            # The process that answers is the daemon itself (unshare, sh and the sandbox exec).
            assert status_field(daemon.pid, "NoNewPrivs") == "1"
            assert int(status_field(daemon.pid, "CapBnd"), 16) == 0
            assert int(status_field(daemon.pid, "CapEff"), 16) == 0

            (instance,) = fleet.launch()
            cli.attach("sandboxed", instance, fleet.prefix("sandboxed"))
            cli.wait_db_phase("sandboxed", "running", timeout=30)
            fleet.put("runs/sandboxed/COMPLETE")
            detail = cli.wait_phase("sandboxed", "stopped", timeout=30)
            assert detail["outcome"] == "completed"
            assert fleet.state(instance) == "stopped"

            daemon.send_signal(signal.SIGTERM)  # KillSignal=SIGTERM
            output, _ = daemon.communicate(timeout=60)
        finally:
            if daemon.poll() is None:
                daemon.kill()
                daemon.communicate()
        assert daemon.returncode == 0, output + cli.log_tail()
        assert not (outside / "written-outside").exists()
        # UMask=0077: nothing the daemon made is open to the group or to others.
        made = [cli.state_dir, *cli.state_dir.rglob("*")]
        assert cli.db_path in made
        opened = {str(p): oct(p.stat().st_mode & 0o777) for p in made if p.stat().st_mode & 0o077}
        assert opened == {}
