"""`python -m supervisor.demo` (`make demo`): the supervisor end to end, in well under a minute,
with nothing but this machine.

A local moto server stands in for EC2 and S3. The real daemon (`supervisord start`) watches
four runs attached with the real CLI (`supervisorctl attach`), each on an instance launched in
moto, with its timings compressed (polls 1 s doubling to 4 s, grace 2 s):

  demo-stop        a job (a local process) finishes and writes COMPLETE to its run prefix;
                   the supervisor waits out the grace period and stops the instance.
  demo-terminate   the same with --on-complete terminate: the instance is terminated.
  demo-crash       the instance dies before its job ever starts; the supervisor records the
                   run as crashed ("instance ended before training started").
  demo-checkpoint  checkpoint safety, with the local transport (the daemon runs the instance
                   program, `python -m supervisor.instance`, as a subprocess on this machine).
                   The job writes step_N.pt checkpoints, writes COMPLETE and keeps running;
                   the supervisor SIGTERMs it, the job saves step_N_final.pt and exits 0, the
                   instance program uploads it with its SHA-256, the daemon verifies it in S3,
                   and only then terminates the instance, ending the 30 s grace early once
                   the prefix is quiet.

The demo waits until all four runs have ended (75 s deadline), shows what the supervisor
recorded, what EC2 says and what S3 holds, then stops everything it started and removes its
state directory. It exits 0 only if every run ended as expected.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import hashlib
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
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, TYPE_CHECKING, Any

import boto3
from botocore.exceptions import ClientError
from moto.server import ThreadedMotoServer

from supervisor.runtime.service import process_alive

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
# demo-checkpoint: a long grace that "until-quiet" cuts short once the checkpoint is verified.
CHECKPOINT_GRACE_S = 30
QUIET_S = 1
SIGTERM_TIMEOUT_S = 10

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
    checkpoint: str | None = None
    """The run's checkpoint status at the end; set: checkpoint safety is on for the run."""

    @property
    def prefix_key(self) -> str:
        return f"runs/{self.run_id}/"

    @property
    def s3_prefix(self) -> str:
        return f"s3://{BUCKET}/{self.prefix_key}"


STOP = Plan("demo-stop", "stop", 6, "stopped", "completed", "stopped")
TERMINATE = Plan("demo-terminate", "terminate", 10, "terminated", "completed", "terminated")
CRASH = Plan(
    "demo-crash",
    None,
    None,
    "crashed",
    "crashed",
    "terminated",
    reason="instance ended before training started",
)
CHECKPOINT = Plan(
    "demo-checkpoint",
    "terminate",
    6,
    "terminated",
    "completed",
    "terminated",
    checkpoint="verified",
)
PLANS = (STOP, TERMINATE, CRASH, CHECKPOINT)


@dataclass(frozen=True, slots=True)
class LocalFile:
    name: str
    size: int
    sha256: str
    mtime_ns: int


@dataclass(frozen=True, slots=True)
class StoredFile:
    key: str
    size: int
    checksum: str | None
    """S3's ChecksumSHA256 (base64), as HeadObject returns it with ChecksumMode=ENABLED."""


@dataclass(slots=True)
class CheckpointFacts:
    """demo-checkpoint after the end: the job's directory, S3, and the supervisor's record."""

    prefix: str
    local: list[LocalFile]
    stored: list[StoredFile]
    manifest: dict[str, Any] | None
    detail: dict[str, Any]
    """`supervisorctl status RUN --json`."""
    problems: list[str] = field(default_factory=list)


MANIFEST = "_manifest.json"


def _sha256(path: Path) -> str:
    with path.open("rb") as stream:
        return hashlib.file_digest(stream, "sha256").hexdigest()


def _hex(checksum: str | None) -> str | None:
    """S3's base64 SHA-256 of a single-PUT object as hex; None for a multipart composite."""
    if not checksum or "-" in checksum:
        return None
    try:
        return base64.b64decode(checksum, validate=True).hex()
    except binascii.Error:
        return None


def _checkpoint_problems(plan: Plan, facts: CheckpointFacts) -> list[str]:
    """Every way the job's final checkpoint, S3, the manifest and the record disagree."""
    who = plan.run_id
    problems = []
    finals = [f for f in facts.local if f.name.endswith("_final.pt")]
    if not finals:
        problems.append(f"{who}: no step_N_final.pt on disk: the job saved no final checkpoint")
    manifest = facts.manifest
    if manifest is None:
        return [*problems, f"{who}: no {MANIFEST} under s3://{BUCKET}/{facts.prefix}"]
    if finals and manifest.get("checkpoint") != finals[-1].name:
        problems.append(
            f"{who}: the manifest names {manifest.get('checkpoint')}, the job's final "
            f"checkpoint is {finals[-1].name}"
        )
    process = manifest.get("process") or {}
    if not (process.get("signalled") and process.get("exited")):
        problems.append(f"{who}: the job was not ended by SIGTERM (manifest: {process})")
    stored = {o.key: o for o in facts.stored}
    local = {f.name: f for f in facts.local}
    for entry in manifest.get("files", []):
        key, name = entry.get("key", ""), entry.get("path", "")
        obj, mine = stored.get(key), local.get(name)
        if obj is None:
            problems.append(f"{who}: {key} is in the manifest, not in S3")
        elif obj.size != entry.get("size") or _hex(obj.checksum) != entry.get("sha256"):
            problems.append(f"{who}: {key} in S3 ({obj.size} bytes) differs from the manifest")
        if mine is None:
            problems.append(f"{who}: {name} is in the manifest, not on disk")
        elif mine.size != entry.get("size") or mine.sha256 != entry.get("sha256"):
            problems.append(f"{who}: the local {name} differs from the manifest")
    transitions = facts.detail.get("transitions", [])
    verified = [t for t in transitions if t.get("reason", "").startswith("checkpoint verified")]
    if not verified:
        problems.append(f"{who}: no 'checkpoint verified' transition")
    elif verified[-1].get("detail", {}).get("bytes") != manifest.get("total_bytes"):
        problems.append(f"{who}: the bytes verified differ from the manifest's total_bytes")
    saved = [t["detail"]["grace_saved_s"] for t in transitions if "grace_saved_s" in t["detail"]]
    if not saved or saved[-1] <= 0:
        problems.append(f"{who}: grace did not end early (until-quiet)")
    return problems


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
        self.crash_before_start(CRASH)
        for plan in (STOP, TERMINATE):
            self.attach_and_train(plan)
        self.attach_and_train_with_checkpoints(CHECKPOINT)
        final = self.wait_for_runs()
        self.wait_for_jobs()
        self.show_results()
        facts = self.inspect_checkpoint(CHECKPOINT)
        self.show_checkpoint(CHECKPOINT, facts)
        heading("the daemon itself: supervisord status")
        self.cli("supervisord", "status", check=False)
        problems = self.compare(final) + facts.problems
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
            print(f"{plan.run_id:<16} {instance_id}  tagged {RUN_TAG}={plan.run_id}")

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
        heading(
            f"{plan.run_id}: attach with --on-complete {plan.on_complete}, then start its job "
            f"({plan.steps} steps of {STEP_S}s writing to {plan.s3_prefix})"
        )
        self.attach(plan)
        self.start_job(plan)

    def attach_and_train_with_checkpoints(self, plan: Plan) -> None:
        heading(
            f"{plan.run_id}: the job is told to stop (SIGTERM), saves its final checkpoint, "
            "the supervisor verifies it in S3 before terminating"
        )
        directory, pid_file = self.checkpoint_dir(plan), self.pid_file(plan)
        print(
            f"its job writes step_N.pt every {STEP_S}s (keeping the last 2), writes COMPLETE "
            f"after {plan.steps} steps, then keeps\nrunning (evaluating, holding the GPU) until "
            "it gets SIGTERM. With --transport local the daemon runs\nthe instance program "
            "(python -m supervisor.instance checkpoint) as a subprocess on this machine."
        )
        self.attach(
            plan,
            "--transport",
            "local",
            "--checkpoint-dir",
            str(directory),
            "--pid-file",
            str(pid_file),
            "--grace-s",
            str(CHECKPOINT_GRACE_S),
            "--quiet-s",
            str(QUIET_S),
            "--sigterm-timeout-s",
            str(SIGTERM_TIMEOUT_S),
        )
        self.start_job(plan, "--checkpoint-dir", str(directory), "--pid-file", str(pid_file))

    def checkpoint_dir(self, plan: Plan) -> Path:
        # Paths on the "instance" must match [A-Za-z0-9_.-/]+; mkdtemp's names do.
        assert self.state_dir is not None
        return self.state_dir / plan.run_id / "checkpoints"

    def pid_file(self, plan: Plan) -> Path:
        assert self.state_dir is not None
        return self.state_dir / plan.run_id / "train.pid"

    def start_job(self, plan: Plan, *extra: str) -> None:
        assert plan.steps is not None and self.state_dir is not None
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
            *extra,
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

    def attach(self, plan: Plan, *extra: str) -> None:
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
        self.cli("supervisorctl", *args, *extra)

    def wait_for_runs(self) -> dict[str, dict[str, Any]]:
        heading(
            f"waiting for all four runs to end (deadline {DEADLINE_S:.0f}s): the daemon polls "
            "each run prefix 1s→4s, then waits the 2s grace"
        )
        print(
            f"({CHECKPOINT.run_id}: the checkpoint step first, then a {CHECKPOINT_GRACE_S}s grace "
            f"that ends once the prefix has been quiet for {QUIET_S}s)"
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
            text = f"{plan.run_id.removeprefix('demo-')} {run.get('phase', '?')}"
            if run.get("outcome"):
                text += f"/{run['outcome']}"
            job = self.job_step(plan)
            if job:
                text += f" (job {job})"
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
        text = f"{status.get('step')}/{status.get('steps')}"
        phase = status.get("phase")
        return text if phase == "training" else f"{text} {phase}"

    def wait_for_jobs(self) -> None:
        for job in self.jobs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                job.wait(timeout=5)

    def show_results(self) -> None:
        heading("what the supervisor recorded: supervisorctl status")
        self.cli("supervisorctl", "status")
        for plan in (STOP, TERMINATE, CRASH):
            heading(f"{plan.run_id}: its transitions (supervisorctl status {plan.run_id})")
            self.cli("supervisorctl", "status", plan.run_id)
        heading("what EC2 (moto) says about the instances now")
        for plan, state in zip(PLANS, self.instance_states(), strict=True):
            print(
                f"  {plan.run_id:<16} {self.instances[plan.run_id]}  {state:<11} "
                f"(expected {plan.instance_state})"
            )
        heading(f"the run prefix {STOP.s3_prefix}: what the job left for the supervisor")
        assert self.s3 is not None
        listing = self.s3.list_objects_v2(Bucket=BUCKET, Prefix=STOP.prefix_key)
        for obj in listing.get("Contents", []):
            print(f"  {obj['Size']:>6}  {obj['Key']}")

    def inspect_checkpoint(self, plan: Plan) -> CheckpointFacts:
        """What the job left on disk, what S3 holds, and what the supervisor recorded, with
        every way they disagree."""
        assert self.s3 is not None
        directory = self.checkpoint_dir(plan)
        local = sorted(
            (
                LocalFile(path.name, path.stat().st_size, _sha256(path), path.stat().st_mtime_ns)
                for path in (directory.iterdir() if directory.is_dir() else ())
                if path.is_file() and not path.name.startswith(".")
            ),
            key=lambda f: (f.mtime_ns, f.name),
        )
        prefix = plan.prefix_key + "checkpoints/"
        stored = []
        for obj in self.s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", []):
            head = self.s3.head_object(Bucket=BUCKET, Key=obj["Key"], ChecksumMode="ENABLED")
            stored.append(StoredFile(obj["Key"], obj["Size"], head.get("ChecksumSHA256")))
        manifest: dict[str, Any] | None = None
        with contextlib.suppress(ClientError, ValueError):
            body = self.s3.get_object(Bucket=BUCKET, Key=prefix + MANIFEST)["Body"].read()
            manifest = json.loads(body)
        facts = CheckpointFacts(
            prefix, local, stored, manifest, self.ctl_json("status", plan.run_id, "--json")
        )
        facts.problems = _checkpoint_problems(plan, facts)
        return facts

    def show_checkpoint(self, plan: Plan, facts: CheckpointFacts) -> None:
        heading(
            f"{plan.run_id}: what the supervisor recorded (supervisorctl status {plan.run_id}); "
            "the checkpoint line has the bytes verified and the grace saved"
        )
        self.cli("supervisorctl", "status", plan.run_id)

        heading(
            f"{plan.run_id}: how the job ended (expected: SIGTERM, step_N_final.pt saved, "
            "exit code 0)"
        )
        job = self.jobs.get(plan.run_id)
        if job is not None:
            print(f"  job pid {job.pid}: exit code {job.poll()}")
        process = (facts.manifest or {}).get("process") or {}
        if process:
            sent = "sent SIGTERM to" if process.get("signalled") else "did not signal"
            end = "exited" if process.get("exited") else "was still running"
            print(
                f"  the instance program {sent} pid {process.get('pid')}; it {end} after "
                f"{process.get('waited_s')}s (the manifest's 'process')"
            )
        log = self.job_logs[plan.run_id].read_text(errors="replace").splitlines()
        print("  last lines of the job's log:")
        print(indent("\n".join(log[-2:]), "    "))
        print(f"  {self.checkpoint_dir(plan)}  (size, SHA-256, name):")
        for f in facts.local:
            print(f"    {f.size:>6}  {f.sha256}  {f.name}")

        heading(
            f"{plan.run_id}: the checkpoint in S3 next to the local file and the manifest "
            f"(s3://{BUCKET}/{facts.prefix})"
        )
        files = {f["key"]: f for f in (facts.manifest or {}).get("files", [])}
        local = {f.name: f for f in facts.local}
        for obj in facts.stored:
            name = obj.key.removeprefix(facts.prefix)
            if name == MANIFEST:
                total = (facts.manifest or {}).get("total_bytes")
                print(
                    f"  {obj.size:>6}  {name}  (written last: {len(files)} file(s), {total} bytes)"
                )
                continue
            entry = files.get(obj.key, {})
            mine = local.get(name)
            sizes = {obj.size, entry.get("size"), mine.size if mine else None}
            hashes = {_hex(obj.checksum), entry.get("sha256"), mine.sha256 if mine else None}
            print(f"  {obj.size:>6}  {name}  (local file: {mine.size if mine else '-'} bytes)")
            print(f"          SHA-256 in S3  {_hex(obj.checksum) or obj.checksum}")
            print(f"          local file     {mine.sha256 if mine else '(no such local file)'}")
            print(f"          manifest       {entry.get('sha256', '(not in the manifest)')}")
            agree = len(sizes) == 1 and len(hashes) == 1
            print("          " + ("the same bytes everywhere" if agree else "DIFFERENT"))

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
            if plan.checkpoint is not None and run.get("checkpoint") != plan.checkpoint:
                problems.append(
                    f"{plan.run_id}: expected checkpoint {plan.checkpoint}, got "
                    f"{run.get('checkpoint')}"
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
        return {run["run_id"]: run for run in self.ctl_json("status", "--json")}

    def ctl_json(self, *args: str) -> Any:
        """`supervisorctl ARGS` (with --json among them), quietly, parsed."""
        result = subprocess.run(
            [str(BIN / "supervisorctl"), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            start_new_session=True,
        )
        if result.returncode != 0:
            raise DemoError(f"`supervisorctl {shlex.join(args)}` failed: {result.stderr.strip()}")
        return json.loads(result.stdout)

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
        with contextlib.suppress(Exception):
            self.end_strays()
        if self.moto is not None:
            with contextlib.suppress(Exception):
                self.moto.stop()
            self.moto = None
        if self.state_dir is not None:
            if self.keep:
                print(f"state directory kept: {self.state_dir}")
            else:
                shutil.rmtree(self.state_dir, ignore_errors=True)

    def end_strays(self) -> None:
        """End any process still carrying this demo's state directory in its environment:
        a job, or an instance program the daemon started in a session of its own."""
        if self.state_dir is None:
            return
        marker = f"SUPERVISOR_STATE_DIR={self.state_dir}".encode()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                environ = (entry / "environ").read_bytes().split(b"\0")
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            pid = int(entry.name)
            if marker in environ and process_alive(pid):
                text = command.decode(errors="replace").strip()[:120]
                print(f"stopping a leftover process (pid {pid}): {text}")
                end_process(pid)

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
        return process.poll() is not None if process is not None else not process_alive(pgid)

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


def end_process(pid: int) -> None:
    """SIGTERM one process, then SIGKILL it if it is still there after 3 s."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 3
        while process_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not process_alive(pid):
            return


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
