"""`supervisorctl tail --training` through the real daemon: the job's log object in moto,
followed while it grows and printed once line by line until the run ends."""

from __future__ import annotations

import signal
import subprocess
import threading

import pytest

from supervisor.client import Supervisor
from tests.conftest import BUCKET, Fleet
from tests.e2e.conftest import SUPERVISORCTL, Cli, wait_for

pytestmark = pytest.mark.e2e


def printed(lines: list[str], expected: str) -> None:
    """Wait until the follower's output is exactly `expected`."""
    wait_for(
        lambda: "".join(lines) == expected,
        message=lambda: f"the output to be {expected!r}; got {''.join(lines)!r}",
    )


def test_tail_training_follow_prints_lines_appended_after_it_started_until_the_run_ends(
    shared: Cli, fleet: Fleet
) -> None:
    (instance,) = fleet.launch()
    Supervisor(shared.socket_path).attach("train-log-1", instance, fleet.prefix("train-log-1"))
    shared.wait_db_phase("train-log-1", "running")
    key = "runs/train-log-1/logs/train.log"
    log = "epoch 0 step 0 loss 2.3026\n"
    fleet.put(key, log)

    lines: list[str] = []
    follower = subprocess.Popen(
        [SUPERVISORCTL, "tail", "train-log-1", "--training", "-f"],
        env=shared.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert follower.stdout is not None
    reader = threading.Thread(target=lambda: lines.extend(follower.stdout or ()), daemon=True)
    try:
        reader.start()
        printed(lines, log)
        for step in range(1, 4):  # the job re-uploads its growing log, as `aws s3 cp` does
            log += f"epoch 0 step {step} loss {2.3 - step / 10:.4f}\n"
            fleet.put(key, log)
            printed(lines, log)
        assert follower.poll() is None, "tail --training -f exited before the run ended"
        fleet.put("runs/train-log-1/COMPLETE")
        code = follower.wait(timeout=20)
        reader.join(timeout=5)
    finally:
        if follower.poll() is None:
            follower.send_signal(signal.SIGKILL)
            follower.wait()
    stderr = follower.stderr.read() if follower.stderr else ""

    assert code == 0, stderr
    assert lines == log.splitlines(keepends=True)  # each line once, in order
    assert stderr == f"supervisorctl: the run ended (stopped): end of s3://{BUCKET}/{key}\n"


def test_tail_training_without_a_log_or_with_a_misplaced_flag_says_what_to_do(
    shared: Cli, fleet: Fleet
) -> None:
    (instance,) = fleet.launch()
    client = Supervisor(shared.socket_path)
    client.attach("train-log-2", instance, fleet.prefix("train-log-2"))
    try:
        missing, misplaced = shared.ctl_all(
            ("tail", "train-log-2", "--training", "--key", "logs/rank0.log"),
            ("tail", "train-log-2", "--key", "logs/rank0.log"),
        )
    finally:
        client.detach("train-log-2")

    assert (missing.returncode, missing.stdout) == (1, "")
    assert missing.stderr == (
        f"supervisorctl: no training log at s3://{BUCKET}/runs/train-log-2/logs/rank0.log: the "
        "job has not written it (yet); check the key (--key), or wait for it with -f\n"
    )
    assert misplaced.returncode == 2
    assert misplaced.stderr == "supervisorctl: --key: only with --training (the training log)\n"
