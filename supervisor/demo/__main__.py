"""`python -m supervisor.demo` (`make demo`): the supervisor end to end, in well under a minute,
with nothing but this machine.

A local moto server stands in for EC2 and S3. The real daemon (`supervisord start`) watches
three runs attached with the real CLI (`supervisorctl attach`), each on an instance launched in
moto, with its timings compressed (polls 1 s doubling to 4 s, grace 2 s):

  demo-stop       a job (a local process) finishes and writes COMPLETE to its run prefix;
                  the supervisor waits out the grace period and stops the instance.
  demo-terminate  the same with --on-complete terminate: the instance is terminated.
  demo-crash      the instance dies before its job ever starts; the supervisor records the
                  run as crashed ("instance ended before training started").

The demo waits until all three runs have ended (75 s deadline), shows what the supervisor
recorded and what EC2 says, then stops everything it started and removes its state directory.
It exits 0 only if every run ended as expected.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO, TYPE_CHECKING, Any

import boto3
from botocore.exceptions import ClientError
from moto.server import ThreadedMotoServer

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client
    from mypy_boto3_s3 import S3Client

BUCKET = "demo-runs"
AMI = "ami-12c6146b"
REGION = "us-east-1"
RUN_TAG = "supervisor:run-id"
DEADLINE_S = 75.0
PROGRESS_EVERY_S = 3.0
STEP_S = 0.5
BIN = Path(sys.executable).parent
TERMINAL = frozenset({"stopped", "terminated", "crashed", "done", "failed", "detached"})

DAEMON_SETTINGS = {
    "SUPERVISOR_POLL_INITIAL_S": "1",
    "SUPERVISOR_POLL_MAX_S": "4",
    "SUPERVISOR_GRACE_S": "2",
    "SUPERVISOR_RECONCILE_INTERVAL_S": "1",
    "SUPERVISOR_RETRY_BASE_S": "0.2",
}


@dataclass(frozen=True, slots=True)
class Plan:
    """One demo run: how it is set up, and how it must end."""

    run_id: str
    on_complete: str | None
    steps: int | None
    """Steps of its simulated job; None: the job is never started."""
    phase: str
    outcome: str
    instance_state: str
    reason: str | None = None
    """A text the run's final reason must contain, if any."""

    @property
    def prefix_key(self) -> str:
        return f"runs/{self.run_id}/"

    @property
    def s3_prefix(self) -> str:
        return f"s3://{BUCKET}/{self.prefix_key}"


PLANS = (
    Plan("demo-stop", "stop", 6, "stopped", "completed", "stopped"),
    Plan("demo-terminate", "terminate", 10, "terminated", "completed", "terminated"),
    Plan(
        "demo-crash",
        None,
        None,
        "crashed",
        "crashed",
        "terminated",
        reason="instance ended before training started",
    ),
)


class DemoError(Exception):
    """The demo cannot go on; the message says why."""


class Interrupted(BaseException):
    """SIGTERM or Ctrl-C: clean up and leave."""


def heading(text: str) -> None:
    print(f"\n== {text}")


def indent(text: str, prefix: str = "  ") -> str:
    return "\n".join(prefix + line for line in text.rstrip("\n").splitlines())


class Demo:
    def __init__(self, *, keep: bool) -> None:
        self.keep = keep
        self.started = time.monotonic()
        self.moto: Any = None
        self.url = ""
        self.state_dir: Path | None = None
        self.env: dict[str, str] = {}
        self.daemon_pid: int | None = None
        self.daemon_stopped = False
        self.jobs: dict[str, subprocess.Popen[bytes]] = {}
        self.job_logs: dict[str, Path] = {}
        self.instances: dict[str, str] = {}
        self.ec2: EC2Client | None = None
        self.s3: S3Client | None = None

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    # -- the story ----------------------------------------------------------------------------

    def run(self) -> list[str]:
        """Run the demo; return what differed from the expected ends (empty: all good)."""
        self.start_aws()
        self.start_daemon()
        self.launch_instances()
        self.crash_before_start(PLANS[2])
        for plan in PLANS[:2]:
            self.attach_and_train(plan)
        final = self.wait_for_runs()
        self.wait_for_jobs()
        self.show_results()
        problems = self.compare(final)
        heading("supervisord: stopping the daemon (it finishes in-flight transitions first)")
        self.stop_daemon()
        return problems

    def start_aws(self) -> None:
        heading("AWS: starting a moto server on 127.0.0.1 to stand in for EC2 and S3")
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
        self.moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.moto.start()
        host, port = self.moto.get_host_and_port()
        self.url = f"http://{host}:{port}"
        print(f"moto server: {self.url}")
        # This process and every child use the standard AWS chain, pointed at moto only.
        for key in [k for k in os.environ if k.startswith(("AWS_", "SUPERVISOR_"))]:
            del os.environ[key]
        os.environ.update(
            {
                "AWS_ENDPOINT_URL": self.url,
                "AWS_ACCESS_KEY_ID": "demo",
                "AWS_SECRET_ACCESS_KEY": "demo",
                "AWS_DEFAULT_REGION": REGION,
                "AWS_CONFIG_FILE": "/dev/null",
                "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
            }
        )
        self.ec2 = boto3.client("ec2")
        self.s3 = boto3.client("s3")

    def start_daemon(self) -> None:
        self.state_dir = Path(tempfile.mkdtemp(prefix="supervisor-demo-", dir="/tmp"))
        self.env = {**os.environ, "SUPERVISOR_STATE_DIR": str(self.state_dir), **DAEMON_SETTINGS}
        timings = ", ".join(
            f"{k.removeprefix('SUPERVISOR_')}={v}" for k, v in DAEMON_SETTINGS.items()
        )
        heading("supervisord: starting the real daemon in the background, timings compressed")
        print(f"state directory {self.state_dir}; {timings}")
        result = self.cli("supervisord", "start", timeout=45)
        match = re.search(r"pid (\d+)", result.stdout)
        self.daemon_pid = int(match.group(1)) if match else self.pid_from_file()

    def launch_instances(self) -> None:
        assert self.ec2 is not None and self.s3 is not None
        heading(f"AWS: creating bucket {BUCKET} and launching one instance per run")
        self.s3.create_bucket(Bucket=BUCKET)
        for plan in PLANS:
            reply = self.ec2.run_instances(
                ImageId=AMI,
                MinCount=1,
                MaxCount=1,
                TagSpecifications=[
                    {"ResourceType": "instance", "Tags": [{"Key": RUN_TAG, "Value": plan.run_id}]}
                ],
            )
            instance_id = reply["Instances"][0]["InstanceId"]
            self.instances[plan.run_id] = instance_id
            print(f"{plan.run_id:<15} {instance_id}  tagged {RUN_TAG}={plan.run_id}")

    def crash_before_start(self, plan: Plan) -> None:
        assert self.ec2 is not None
        instance_id = self.instances[plan.run_id]
        heading(f"{plan.run_id}: its instance dies before the job starts; then it is attached")
        # moto's instances are "running" at once, and the daemon describes a new run's instance
        # ~0.2 s after attach; terminating first makes the "before training" path certain.
        print(f"terminating {instance_id} through boto3 (no job will ever run for it)")
        self.ec2.terminate_instances(InstanceIds=[instance_id])
        self.attach(plan)

    def attach_and_train(self, plan: Plan) -> None:
        assert plan.steps is not None and self.state_dir is not None
        heading(
            f"{plan.run_id}: attach with --on-complete {plan.on_complete}, then start its job "
            f"({plan.steps} steps of {STEP_S}s writing to {plan.s3_prefix})"
        )
        self.attach(plan)
        log_path = self.state_dir / f"job-{plan.run_id}.log"
        command = [
            sys.executable,
            "-m",
            "supervisor.demo.job",
            "--bucket",
            BUCKET,
            "--prefix",
            plan.prefix_key,
            "--steps",
            str(plan.steps),
            "--step-s",
            str(STEP_S),
            "--outcome",
            "complete",
        ]
        print(f"$ python -m supervisor.demo.job {shlex.join(command[3:])}  (log: {log_path})")
        with open(log_path, "wb") as log_file:
            self.jobs[plan.run_id] = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
            )
        self.job_logs[plan.run_id] = log_path

    def attach(self, plan: Plan) -> None:
        args = [
            "attach",
            plan.run_id,
            "--instance-id",
            self.instances[plan.run_id],
            "--s3-prefix",
            plan.s3_prefix,
        ]
        if plan.on_complete is not None:
            args += ["--on-complete", plan.on_complete]
        self.cli("supervisorctl", *args)

    def wait_for_runs(self) -> dict[str, dict[str, Any]]:
        heading(
            f"waiting for all three runs to end (deadline {DEADLINE_S:.0f}s): the daemon polls "
            "each run prefix 1s→4s, then waits the 2s grace"
        )
        last_print = 0.0
        last_phases: tuple[str, ...] = ()
        while True:
            runs = self.runs()
            phases = tuple(str(runs.get(p.run_id, {}).get("phase", "?")) for p in PLANS)
            now = time.monotonic()
            if phases != last_phases or now - last_print >= PROGRESS_EVERY_S:
                print(self.progress_line(runs))
                last_print, last_phases = now, phases
            if all(phase in TERMINAL for phase in phases):
                return runs
            if self.elapsed() > DEADLINE_S:
                raise DemoError(
                    f"the runs did not all end within {DEADLINE_S:.0f}s of the demo's start: "
                    + ", ".join(f"{p.run_id} {ph}" for p, ph in zip(PLANS, phases, strict=True))
                )
            time.sleep(1.0)

    def progress_line(self, runs: dict[str, dict[str, Any]]) -> str:
        parts = []
        for plan in PLANS:
            run = runs.get(plan.run_id, {})
            text = f"{plan.run_id} {run.get('phase', '?')}"
            if run.get("outcome"):
                text += f"/{run['outcome']}"
            step = self.job_step(plan)
            if step:
                text += f" (job {step})"
            parts.append(text)
        return f"  [{self.elapsed():5.1f}s] " + " | ".join(parts)

    def job_step(self, plan: Plan) -> str:
        """The job's progress from its heartbeat, as the supervisor would see it in S3."""
        job = self.jobs.get(plan.run_id)
        if job is None or self.s3 is None:
            return ""
        if job.poll() is not None:
            return f"exited {job.returncode}"
        try:
            body = self.s3.get_object(Bucket=BUCKET, Key=plan.prefix_key + "status.json")["Body"]
            status = json.loads(body.read())
        except (ClientError, ValueError):  # not written yet: nothing to show
            return "starting"
        return f"step {status.get('step')}/{status.get('steps')}"

    def wait_for_jobs(self) -> None:
        for job in self.jobs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                job.wait(timeout=5)

    def show_results(self) -> None:
        heading("what the supervisor recorded: supervisorctl status")
        self.cli("supervisorctl", "status")
        for plan in PLANS:
            heading(f"{plan.run_id}: its transitions (supervisorctl status {plan.run_id})")
            self.cli("supervisorctl", "status", plan.run_id)
        heading("what EC2 (moto) says about the instances now")
        for plan, state in zip(PLANS, self.instance_states(), strict=True):
            print(
                f"  {plan.run_id:<15} {self.instances[plan.run_id]}  {state:<11} "
                f"(expected {plan.instance_state})"
            )
        heading(f"the run prefix {PLANS[0].s3_prefix}: what the job left for the supervisor")
        assert self.s3 is not None
        listing = self.s3.list_objects_v2(Bucket=BUCKET, Prefix=PLANS[0].prefix_key)
        for obj in listing.get("Contents", []):
            print(f"  {obj['Size']:>6}  {obj['Key']}")
        heading("the daemon itself: supervisord status")
        self.cli("supervisord", "status", check=False)

    def instance_states(self) -> list[str]:
        assert self.ec2 is not None
        ids = [self.instances[p.run_id] for p in PLANS]
        reply = self.ec2.describe_instances(InstanceIds=ids)
        states = {
            i["InstanceId"]: i["State"]["Name"]
            for reservation in reply["Reservations"]
            for i in reservation["Instances"]
        }
        return [str(states.get(instance_id, "unknown")) for instance_id in ids]

    def compare(self, runs: dict[str, dict[str, Any]]) -> list[str]:
        problems = []
        for plan, state in zip(PLANS, self.instance_states(), strict=True):
            run = runs.get(plan.run_id, {})
            got = (run.get("phase"), run.get("outcome"))
            if got != (plan.phase, plan.outcome):
                problems.append(
                    f"{plan.run_id}: expected {plan.phase}/{plan.outcome}, got "
                    f"{got[0]}/{got[1]} ({run.get('reason')})"
                )
            if plan.reason is not None and plan.reason not in str(run.get("reason")):
                problems.append(
                    f"{plan.run_id}: expected a reason with {plan.reason!r}, got "
                    f"{run.get('reason')!r}"
                )
            if state != plan.instance_state:
                problems.append(
                    f"{plan.run_id}: expected instance {plan.instance_state}, EC2 says {state}"
                )
            job = self.jobs.get(plan.run_id)
            if job is not None and job.poll() != 0:
                log = self.job_logs[plan.run_id].read_text(errors="replace")
                problems.append(
                    f"{plan.run_id}: its job ended with {job.poll()}; last lines:\n"
                    + indent("\n".join(log.splitlines()[-5:]), "    ")
                )
        return problems

    # -- helpers ------------------------------------------------------------------------------

    def cli(
        self, program: str, *args: str, check: bool = True, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        """Run one of the project's commands, echoed with its output like a shell session."""
        print(f"$ {program} {shlex.join(args)}")
        result = subprocess.run(
            [str(BIN / program), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            start_new_session=True,  # Ctrl-C reaches the demo only; the demo cleans up
        )
        output = (result.stdout + result.stderr).strip()
        if output:
            print(indent(output))
        if check and result.returncode != 0:
            raise DemoError(f"`{program} {args[0]}` exited with status {result.returncode}")
        return result

    def runs(self) -> dict[str, dict[str, Any]]:
        result = subprocess.run(
            [str(BIN / "supervisorctl"), "status", "--json"],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            start_new_session=True,
        )
        if result.returncode != 0:
            raise DemoError(f"`supervisorctl status --json` failed: {result.stderr.strip()}")
        return {run["run_id"]: run for run in json.loads(result.stdout)}

    def pid_from_file(self) -> int | None:
        if self.state_dir is None:
            return None
        try:
            text = (self.state_dir / "supervisord.pid").read_text().strip()
        except OSError:
            return None
        return int(text) if text.isdigit() else None

    def our_daemon(self, pid: int | None) -> bool:
        """True while `pid` is alive and is the daemon of this demo's state directory."""
        if pid is None or self.state_dir is None:
            return False
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            return False
        return f"SUPERVISOR_STATE_DIR={self.state_dir}".encode() in environ

    def stop_daemon(self) -> None:
        pid = self.daemon_pid or self.pid_from_file()
        if self.daemon_stopped or not self.our_daemon(pid):
            return
        try:
            self.cli("supervisord", "stop", check=False, timeout=40)
        except subprocess.TimeoutExpired:
            print("supervisord stop timed out")
        # `supervisord stop` returns once the daemon released its lock; the process itself
        # may still be a moment away from exiting.
        deadline = time.monotonic() + 5
        while self.our_daemon(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.our_daemon(pid):
            assert pid is not None
            print(f"supervisord (pid {pid}) still alive after 5s: killing its process group")
            kill_group(pid)
        self.daemon_stopped = True

    def cleanup(self) -> None:
        for run_id, job in self.jobs.items():
            if job.poll() is None:
                print(f"stopping the job of {run_id} (pid {job.pid})")
                kill_group(job.pid, job)
        with contextlib.suppress(Exception):
            self.stop_daemon()
        if self.moto is not None:
            with contextlib.suppress(Exception):
                self.moto.stop()
            self.moto = None
        if self.state_dir is not None:
            if self.keep:
                print(f"state directory kept: {self.state_dir}")
            else:
                shutil.rmtree(self.state_dir, ignore_errors=True)

    def daemon_log_tail(self, lines: int = 15) -> str:
        if self.state_dir is None:
            return ""
        try:
            text = (self.state_dir / "supervisord.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def kill_group(pgid: int, process: subprocess.Popen[bytes] | None = None) -> None:
    """SIGTERM a process group, then SIGKILL it if its leader is still there after 3 s."""

    def gone() -> bool:
        return process.poll() is not None if process is not None else not _alive(pgid)

    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + 3
        while not gone() and time.monotonic() < deadline:
            time.sleep(0.05)
        if gone():
            break
    if process is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is as good as gone: its parent (not us) reaps it.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signal.Signals(signum).name)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m supervisor.demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the state directory (SQLite database, daemon log, job logs) and print its path",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    stdout: IO[str] = sys.stdout
    if isinstance(stdout, io.TextIOWrapper):
        stdout.reconfigure(line_buffering=True)
    demo = Demo(keep=args.keep)
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    problems: list[str] = []
    code = 1
    try:
        problems = demo.run()
        code = 1 if problems else 0
    except Interrupted as exc:
        print(f"\ninterrupted ({exc}): cleaning up")
        code = 130
    except Exception as exc:  # DemoError, or a bug: report it, then clean up
        if not isinstance(exc, DemoError):
            traceback.print_exc(file=sys.stdout)
        problems = [str(exc) or repr(exc)]
        print(f"\nerror: {problems[0]}")
        tail = demo.daemon_log_tail()
        if tail:
            print("\nlast lines of supervisord.log:\n" + indent(tail))
    finally:
        # A second Ctrl-C must not cut the cleanup short; each of its steps is bounded.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        heading("cleaning up: jobs, daemon, moto server, state directory")
        demo.cleanup()
    if code == 130:
        return code
    if problems:
        heading(f"demo FAILED after {demo.elapsed():.1f}s")
        print("\n".join(problems))
        return 1
    heading(f"demo passed in {demo.elapsed():.1f}s: every run ended as expected")
    return 0


if __name__ == "__main__":
    sys.exit(main())
