"""`python -m supervisor.demo` (`make demo`): the supervisor end to end, in well under a minute,
with nothing but this machine.

A local moto server stands in for EC2, S3 and SQS. The real daemon (`supervisord start`)
watches five runs attached with the real CLI (`supervisorctl attach`), each on an instance
launched in moto, with its timings compressed (polls 1 s doubling to 4 s, grace 2 s), and
consumes an SQS queue of EC2 events (SUPERVISOR_EVENTS_QUEUE_URL):

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
  demo-spot        a spot interruption, attached with --spot --on-interruption resume. While
                   its job trains (writing step_N.pt), the demo plays AWS: it puts the real
                   "EC2 Spot Instance Interruption Warning" JSON on the queue. The supervisor
                   SIGTERMs the job and verifies its final checkpoint in S3 inside the
                   two-minute notice (interrupting). The demo then terminates the instance in
                   moto, as AWS would, and queues the state-change JSON: the run is
                   interrupted, with the seconds that were left. It resumes by itself on a new
                   instance launched from a moto launch template: the checkpoint is restored
                   from S3 into the emptied directory, the job restarts from it (attempt 2),
                   finishes, and the new instance is terminated once its final checkpoint is
                   verified.

The demo waits until all five runs have ended (75 s deadline), shows what the supervisor
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
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import IO, TYPE_CHECKING, Any

import boto3
from botocore.exceptions import ClientError
from moto.server import ThreadedMotoServer

from supervisor.core.run import TERMINAL_PHASES, Outcome, Phase
from supervisor.demo.events import spot_warning, state_change
from supervisor.demo.screenshot import take_screenshot
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
TERMINAL = TERMINAL_PHASES - {Phase.INTERRUPTED}
"""Where the demo's runs end (demo-spot's interruption is not its end: it resumes by itself)."""
# demo-checkpoint: a long grace that "until-quiet" cuts short once the checkpoint is verified.
CHECKPOINT_GRACE_S = 30
QUIET_S = 1
SIGTERM_TIMEOUT_S = 10
# demo-spot: the events queue the daemon consumes, where its resumed attempt comes from, and
# how many checkpoints its job writes before AWS (the demo) sends the interruption warning.
QUEUE = "demo-events"
LAUNCH_TEMPLATE = "demo-spot-resume"
CHECKPOINTS_BEFORE_WARNING = 2

SPOT_MARGIN_S = 15  # SUPERVISOR_SPOT_MARGIN_S, the default

DAEMON_SETTINGS = {
    "SUPERVISOR_POLL_INITIAL_S": "1",
    "SUPERVISOR_POLL_MAX_S": "4",
    "SUPERVISOR_GRACE_S": "2",
    "SUPERVISOR_RECONCILE_INTERVAL_S": "1",
    "SUPERVISOR_RETRY_BASE_S": "0.2",
    "SUPERVISOR_SPOT_MARGIN_S": str(SPOT_MARGIN_S),
}


@dataclass(frozen=True, slots=True)
class Plan:
    """One demo run: how it is set up, and how it must end."""

    run_id: str
    on_complete: str | None
    steps: int | None
    """Steps of its simulated job; None: the job is never started."""
    phase: Phase
    outcome: Outcome
    instance_state: str
    reason: str | None = None
    """A text the run's final reason must contain, if any."""
    checkpoint: str | None = None
    """The run's checkpoint status at the end; set: checkpoint safety is on for the run."""
    method: str = "mgda"
    """The gradient method it "trains" with: a tag, and what `compare` groups by at the end."""

    @property
    def prefix_key(self) -> str:
        return f"runs/{self.run_id}/"

    @property
    def s3_prefix(self) -> str:
        return f"s3://{BUCKET}/{self.prefix_key}"


STOP = Plan("demo-stop", "stop", 6, Phase.STOPPED, Outcome.COMPLETED, "stopped")
TERMINATE = Plan(
    "demo-terminate", "terminate", 10, Phase.TERMINATED, Outcome.COMPLETED, "terminated"
)
CRASH = Plan(
    "demo-crash",
    None,
    None,
    Phase.CRASHED,
    Outcome.CRASHED,
    "terminated",
    reason="instance ended before training started",
    method="pcgrad",
)
CHECKPOINT = Plan(
    "demo-checkpoint",
    "terminate",
    6,
    Phase.TERMINATED,
    Outcome.COMPLETED,
    "terminated",
    checkpoint="verified",
    method="imtlg",
)
SPOT = Plan(
    "demo-spot",
    "terminate",
    8,
    Phase.TERMINATED,
    Outcome.COMPLETED,
    "terminated",
    checkpoint="verified",
    method="pcgrad",
)
PLANS = (STOP, TERMINATE, CRASH, CHECKPOINT, SPOT)


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


@dataclass(slots=True)
class SpotFacts:
    """demo-spot after the end: the supervisor's record, EC2's, and the job's log in S3."""

    detail: dict[str, Any]
    """`supervisorctl status demo-spot --json`."""
    instances: dict[str, dict[str, Any]]
    """Each of the run's instances as DescribeInstances shows it, by id."""
    log: list[str]
    """The job's logs/train.log in S3, both attempts."""
    template_id: str
    problems: list[str] = field(default_factory=list)


SPOT_PHASES = [
    Phase.PENDING, Phase.RUNNING, Phase.INTERRUPTING, Phase.INTERRUPTED, Phase.RESUMING,
    Phase.RUNNING,
]  # fmt: skip
"""How demo-spot's record must begin: interrupted on attempt 1, resumed as attempt 2."""
RESUMED_FROM = re.compile(r"resumed: .*from (step_\d+_final\.pt)")


def _tags(instance: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in instance.get("Tags", [])}


def _spot_problems(plan: Plan, facts: SpotFacts) -> list[str]:
    """Every way demo-spot's interruption and resume differ from the story."""
    who, detail = plan.run_id, facts.detail
    problems = []
    if detail.get("attempt") != 2:
        problems.append(
            f"{who}: expected attempt 2 (resumed once, on a new instance), got attempt "
            f"{detail.get('attempt')}: the spot run was not resumed"
        )
    transitions = detail.get("transitions", [])
    phases = [t.get("to") for t in transitions]
    if phases[: len(SPOT_PHASES)] != SPOT_PHASES:
        expected = [str(phase) for phase in SPOT_PHASES]
        problems.append(f"{who}: expected the phases to begin {expected}, got {phases}")
    interrupted = [t for t in transitions if t.get("to") == Phase.INTERRUPTED]
    if interrupted:
        facts_of = interrupted[0].get("detail", {})
        left = facts_of.get("seconds_left_when_verified")
        if facts_of.get("checkpoint") != "verified" or not left or left <= 0:
            problems.append(
                f"{who}: the checkpoint was not verified inside the notice "
                f"(checkpoint {facts_of.get('checkpoint')}, seconds left {left})"
            )
    resumed = [t for t in transitions[1:] if t.get("from") == Phase.RESUMING]
    if resumed and resumed[0].get("detail", {}).get("from_scratch") is not False:
        problems.append(f"{who}: attempt 2 did not start from the restored checkpoint")
    used = [(i.get("instance_id"), i.get("source")) for i in detail.get("instances", [])]
    if [source for _, source in used] != ["attached", "launched"] or used[0][0] == used[1][0]:
        problems.append(f"{who}: expected the attached instance, then a launched one: {used}")
    else:
        second = facts.instances.get(str(used[1][0]), {})
        tags = _tags(second)
        if tags.get(RUN_TAG) != who or tags.get("aws:ec2launchtemplate:id") != facts.template_id:
            problems.append(
                f"{who}: the new instance {used[1][0]} is not tagged {RUN_TAG}={who} and "
                f"launched from {facts.template_id}: {tags}"
            )
        for instance_id, _ in used:
            state = facts.instances.get(str(instance_id), {}).get("State", {}).get("Name")
            if state != "terminated":
                problems.append(f"{who}: expected {instance_id} terminated, EC2 says {state}")
    if not any(RESUMED_FROM.search(line) for line in facts.log):
        problems.append(
            f"{who}: the job's log has no 'resumed ... from step_N_final.pt': attempt 2 did "
            "not find the restored checkpoint"
        )
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
        self.sqs: Any = None
        self.queue_url = ""
        self.template_id = ""
        self.spot_stage = "training"
        """Where demo-spot's story is: training, warned, gone (instance taken), resumed."""
        self.spot_warned_at = 0.0
        self.dashboard_url = ""
        """The daemon's dashboard (SUPERVISOR_HTTP_ADDR on a free port), once started."""

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
        self.attach_spot(SPOT)
        final = self.wait_for_runs()
        self.screenshot_dashboard()
        self.wait_for_jobs()
        self.show_results()
        facts = self.inspect_checkpoint(CHECKPOINT)
        self.show_checkpoint(CHECKPOINT, facts)
        spot = self.inspect_spot(SPOT)
        self.show_spot(SPOT, spot)
        heading("the daemon itself: supervisord status")
        self.cli("supervisord", "status", check=False)
        heading(
            "the run database: the jobs reported through supervisor.report; which gradient "
            "method did best?"
        )
        self.cli("supervisorctl", "compare", "--by", "tag.method", "--metric", "val_loss")
        problems = self.compare(final) + facts.problems + spot.problems
        heading("supervisord: stopping the daemon (it finishes in-flight transitions first)")
        self.stop_daemon()
        return problems

    def start_aws(self) -> None:
        heading("AWS: starting a moto server on 127.0.0.1 to stand in for EC2, S3 and SQS")
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
        self.sqs = boto3.client("sqs")
        self.queue_url = self.sqs.create_queue(QueueName=QUEUE)["QueueUrl"]
        print(f"events queue (on AWS, EventBridge rules feed it): {self.queue_url}")

    def start_daemon(self) -> None:
        self.state_dir = Path(tempfile.mkdtemp(prefix="supervisor-demo-", dir="/tmp"))
        self.env = {
            **os.environ,
            "SUPERVISOR_STATE_DIR": str(self.state_dir),
            **DAEMON_SETTINGS,
            "SUPERVISOR_EVENTS_QUEUE_URL": self.queue_url,
            "SUPERVISOR_HTTP_ADDR": "127.0.0.1:0",  # issue 15: the dashboard, on a free port
        }
        timings = ", ".join(
            f"{k.removeprefix('SUPERVISOR_')}={v}" for k, v in DAEMON_SETTINGS.items()
        )
        heading("supervisord: starting the real daemon in the background, timings compressed")
        print(f"state directory {self.state_dir}; {timings}")
        print(f"and EVENTS_QUEUE_URL={self.queue_url}: it long-polls the queue for EC2 events")
        result = self.cli("supervisord", "start", timeout=45)
        match = re.search(r"pid (\d+)", result.stdout)
        self.daemon_pid = int(match.group(1)) if match else self.pid_from_file()
        self.dashboard_url = str(self.ctl_json_daemon_status().get("http_url") or "")
        if self.dashboard_url:
            print(f"dashboard: {self.dashboard_url}  (open it while the demo runs)")

    def launch_instances(self) -> None:
        assert self.ec2 is not None and self.s3 is not None
        heading(
            f"AWS: creating bucket {BUCKET} and a launch template, and launching one instance "
            "per run"
        )
        self.s3.create_bucket(Bucket=BUCKET)
        self.template_id = self.ec2.create_launch_template(
            LaunchTemplateName=LAUNCH_TEMPLATE,
            LaunchTemplateData={
                "ImageId": AMI,
                "InstanceType": "t3.micro",
                "InstanceMarketOptions": {"MarketType": "spot"},
            },
        )["LaunchTemplate"]["LaunchTemplateId"]
        print(
            f"launch template {LAUNCH_TEMPLATE} ({self.template_id}): where {SPOT.run_id} gets "
            "a new instance when it resumes"
        )
        for plan in PLANS:
            spot: dict[str, Any] = {}
            if plan is SPOT:
                spot = {"InstanceMarketOptions": {"MarketType": "spot"}}
            reply = self.ec2.run_instances(
                ImageId=AMI,
                MinCount=1,
                MaxCount=1,
                TagSpecifications=[
                    {"ResourceType": "instance", "Tags": [{"Key": RUN_TAG, "Value": plan.run_id}]}
                ],
                **spot,
            )
            instance_id = reply["Instances"][0]["InstanceId"]
            self.instances[plan.run_id] = instance_id
            kind = " (a spot instance)" if spot else ""
            print(f"{plan.run_id:<16} {instance_id}  tagged {RUN_TAG}={plan.run_id}{kind}")

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

    def attach_spot(self, plan: Plan) -> None:
        heading(
            f"{plan.run_id}: a spot run that is interrupted, then resumes by itself on a new "
            "instance (--spot --on-interruption resume)"
        )
        directory, pid_file = self.checkpoint_dir(plan), self.pid_file(plan)
        training = ("--checkpoint-dir", str(directory), "--pid-file", str(pid_file))
        print(
            f"its job trains like {CHECKPOINT.run_id}'s; once it has written "
            f"{CHECKPOINTS_BEFORE_WARNING} checkpoints, the demo plays AWS and sends the\n"
            "interruption warning. --resume-command starts attempt 2's training (the local "
            "transport runs it here,\nas if on the new instance); the job resumes from the "
            "newest checkpoint it finds in its directory."
        )
        self.attach(
            plan,
            "--spot",
            "--on-interruption",
            "resume",
            "--max-restarts",
            "1",
            "--launch-template-id",
            self.template_id,
            "--resume-command",
            shlex.join(self.job_command(plan, *training)),
            "--transport",
            "local",
            *training,
            "--grace-s",
            str(CHECKPOINT_GRACE_S),
            "--quiet-s",
            str(QUIET_S),
            "--sigterm-timeout-s",
            str(SIGTERM_TIMEOUT_S),
        )
        self.start_job(plan, *training)

    def checkpoint_dir(self, plan: Plan) -> Path:
        # Paths on the "instance" must match [A-Za-z0-9_.-/]+; mkdtemp's names do.
        assert self.state_dir is not None
        return self.state_dir / plan.run_id / "checkpoints"

    def pid_file(self, plan: Plan) -> Path:
        assert self.state_dir is not None
        return self.state_dir / plan.run_id / "train.pid"

    def job_command(self, plan: Plan, *extra: str) -> list[str]:
        assert plan.steps is not None
        return [
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
            "--method",
            plan.method,
            *extra,
        ]

    def start_job(self, plan: Plan, *extra: str) -> None:
        assert self.state_dir is not None
        log_path = self.state_dir / f"job-{plan.run_id}.log"
        command = self.job_command(plan, *extra)
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
        args += ["--tag", f"method={plan.method}", "--objective", "val_loss:min"]
        self.cli("supervisorctl", *args, *extra)

    def wait_for_runs(self) -> dict[str, dict[str, Any]]:
        heading(
            f"waiting for all five runs to end (deadline {DEADLINE_S:.0f}s): the daemon polls "
            "each run prefix 1s→4s, then waits the 2s grace"
        )
        print(
            f"({CHECKPOINT.run_id}: the checkpoint step first, then a {CHECKPOINT_GRACE_S}s grace "
            f"that ends once the prefix has been quiet for {QUIET_S}s;\n {SPOT.run_id}: the demo "
            "plays AWS as it goes, with the messages on the events queue)"
        )
        last_print = 0.0
        last_phases: tuple[str, ...] = ()
        while True:
            runs = self.runs()
            seen = [runs.get(p.run_id, {}) for p in PLANS]
            phases = tuple(f"{run.get('phase', '?')}/{run.get('attempt')}" for run in seen)
            now = time.monotonic()
            if phases != last_phases or now - last_print >= PROGRESS_EVERY_S:
                print(self.progress_line(runs))
                last_print, last_phases = now, phases
            if self.drive_spot(runs.get(SPOT.run_id, {})):
                continue  # what it did shows at once: look again without waiting
            if all(phase.partition("/")[0] in TERMINAL for phase in phases):
                return runs
            if self.elapsed() > DEADLINE_S:
                raise DemoError(
                    f"the runs did not all end within {DEADLINE_S:.0f}s of the demo's start: "
                    + ", ".join(f"{p.run_id} {ph}" for p, ph in zip(PLANS, phases, strict=True))
                    + " (phase/attempt)"
                )
            time.sleep(1.0)

    # -- demo-spot: the demo plays AWS ----------------------------------------------------------

    def drive_spot(self, run: dict[str, Any]) -> bool:
        """Take demo-spot's next step once its moment has come: the interruption warning while
        the job trains, AWS taking the instance back once the checkpoint is verified, then the
        report of the resume. True if it did something."""
        phase = run.get("phase")
        if phase == Phase.FAILED:
            raise DemoError(f"{SPOT.run_id} failed: {run.get('reason')}")
        if self.spot_stage == "training":
            written = list(self.checkpoint_dir(SPOT).glob("step_*.pt"))
            if phase == Phase.RUNNING and len(written) >= CHECKPOINTS_BEFORE_WARNING:
                self.send_spot_warning(SPOT)
                self.spot_stage = "warned"
                return True
        elif self.spot_stage == "warned":
            if run.get("checkpoint") == "unverified":
                raise DemoError(f"{SPOT.run_id}: the checkpoint inside the notice was not verified")
            if phase == Phase.INTERRUPTING and run.get("checkpoint") == "verified":
                self.take_instance_back(SPOT)
                self.spot_stage = "gone"
                return True
        elif (
            self.spot_stage == "gone" and (run.get("attempt") or 1) >= 2 and phase != Phase.RESUMING
        ):
            self.report_resume(SPOT)
            self.spot_stage = "resumed"
            return True
        return False

    def say(self, text: str) -> None:
        print(f"  [{self.elapsed():5.1f}s] {text}")

    def queue(self, body: dict[str, Any]) -> None:
        self.sqs.send_message(QueueUrl=self.queue_url, MessageBody=json.dumps(body))

    def send_spot_warning(self, plan: Plan) -> None:
        instance_id = self.instances[plan.run_id]
        body = spot_warning(instance_id, region=REGION, at=datetime.now(UTC))
        self.queue(body)
        self.spot_warned_at = time.monotonic()
        self.say(
            f"{plan.run_id}: AWS (the demo) reclaims the spot capacity: the interruption "
            f"warning for {instance_id} goes on the queue, as EventBridge delivers it:"
        )
        print(indent(json.dumps(body, indent=2), "             "))

    def take_instance_back(self, plan: Plan) -> None:
        assert self.ec2 is not None
        took = time.monotonic() - self.spot_warned_at
        detail = self.ctl_json("status", plan.run_id, "--json")
        warned = [t for t in detail["transitions"] if t["to"] == Phase.INTERRUPTING][-1]["detail"]
        self.say(
            f"{plan.run_id}: seen {took:.1f}s after the warning was queued: the supervisor has "
            "SIGTERMed the job and verified its final\n"
            f"           checkpoint in S3 (deadline: the warning's time + 120s - {SPOT_MARGIN_S}s "
            f"margin, {warned['seconds_left']:.0f}s away when the warning came)"
        )
        directory = self.checkpoint_dir(plan)
        names = sorted(path.name for path in directory.iterdir())
        for path in directory.iterdir():
            if path.is_file():
                path.unlink()
        instance_id = self.instances[plan.run_id]
        self.ec2.terminate_instances(InstanceIds=[instance_id])
        self.queue(state_change(instance_id, "terminated", region=REGION, at=datetime.now(UTC)))
        self.say(
            f"{plan.run_id}: AWS (the demo) takes {instance_id} back: terminated in moto, and "
            "its state-change event goes on the queue\n"
            f"           (the new instance's disk starts empty: {', '.join(names)} removed from "
            f"{directory})"
        )

    def report_resume(self, plan: Plan) -> None:
        detail = self.ctl_json("status", plan.run_id, "--json")
        transitions = detail["transitions"]
        interrupted = [t for t in transitions if t["to"] == Phase.INTERRUPTED][-1]
        facts = interrupted["detail"]
        left = facts.get("seconds_left_when_verified")
        self.say(
            f"{plan.run_id}: interrupted: checkpoint {facts.get('checkpoint')} with "
            f"{left if left is None else round(left)}s of the notice left; "
            f"{interrupted['reason'].rpartition('; ')[2]}"
        )
        resumed = [t for t in transitions if t["from"] == Phase.RESUMING][-1]
        self.say(
            f"{plan.run_id}: attempt {detail['attempt']} running on {detail['instance_id']}, "
            f"launched from {LAUNCH_TEMPLATE}; the checkpoint restored from S3, the job "
            f"restarted\n           with --resume-command (pid {resumed['detail'].get('pid')})"
        )
        assert self.s3 is not None
        with contextlib.suppress(ClientError):
            body = self.s3.get_object(Bucket=BUCKET, Key=plan.prefix_key + "logs/train.log")
            lines = body["Body"].read().decode(errors="replace").splitlines()
            for line in (line for line in lines if RESUMED_FROM.search(line)):
                print(f"           the job's log: {line}")

    def progress_line(self, runs: dict[str, dict[str, Any]]) -> str:
        parts = []
        for plan in PLANS:
            run = runs.get(plan.run_id, {})
            text = f"{plan.run_id.removeprefix('demo-')} {run.get('phase', '?')}"
            if run.get("outcome"):
                text += f"/{run['outcome']}"
            if (run.get("attempt") or 1) > 1:
                text += f" attempt {run['attempt']}"
            job = self.job_step(plan, run)
            if job:
                text += f" (job {job})"
            parts.append(text)
        return f"  [{self.elapsed():5.1f}s] " + " | ".join(parts)

    def job_step(self, plan: Plan, run: dict[str, Any]) -> str:
        """The job's progress from its heartbeat, as the supervisor would see it in S3."""
        job = self.jobs.get(plan.run_id)
        if job is None or self.s3 is None:
            return ""
        resumed = (run.get("attempt") or 1) > 1  # a job this demo did not start: the daemon did
        if job.poll() is not None and not resumed:
            return f"exited {job.returncode}"
        try:
            body = self.s3.get_object(Bucket=BUCKET, Key=plan.prefix_key + "status.json")["Body"]
            status = json.loads(body.read())
        except (ClientError, ValueError):  # not written yet: nothing to show
            return "starting"
        # status.json as supervisor.report writes it: {"state": "started"|"running", "step", ...}
        if status.get("state") != "running":
            return str(status.get("state"))
        return f"{status.get('step')}/{plan.steps}"

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

    def inspect_spot(self, plan: Plan) -> SpotFacts:
        """What the supervisor recorded for demo-spot, its instances in EC2 and the job's log,
        with every way they differ from the story."""
        assert self.ec2 is not None and self.s3 is not None
        detail = self.ctl_json("status", plan.run_id, "--json")
        ids = [i["instance_id"] for i in detail.get("instances", [])]
        reservations = self.ec2.describe_instances(InstanceIds=ids)["Reservations"] if ids else []
        instances = {str(i["InstanceId"]): dict(i) for r in reservations for i in r["Instances"]}
        log: list[str] = []
        with contextlib.suppress(ClientError):
            body = self.s3.get_object(Bucket=BUCKET, Key=plan.prefix_key + "logs/train.log")
            log = body["Body"].read().decode(errors="replace").splitlines()
        facts = SpotFacts(detail, instances, log, self.template_id)
        facts.problems = _spot_problems(plan, facts)
        return facts

    def show_spot(self, plan: Plan, facts: SpotFacts) -> None:
        heading(
            f"{plan.run_id}: what the supervisor recorded (supervisorctl status {plan.run_id}): "
            "interrupted, resumed, completed on attempt 2"
        )
        self.cli("supervisorctl", "status", plan.run_id)
        heading(f"{plan.run_id}: its two instances in EC2 (moto)")
        for used in facts.detail.get("instances", []):
            instance = facts.instances.get(used["instance_id"], {})
            tags = ", ".join(f"{k}={v}" for k, v in sorted(_tags(instance).items()))
            lifecycle = instance.get("InstanceLifecycle")
            print(
                f"  {used['instance_id']}  {instance.get('State', {}).get('Name', '?'):<11} "
                f"{used['source']}{f' ({lifecycle})' if lifecycle else ''}; tags: {tags or '-'}"
            )
        heading(
            f"{plan.run_id}: the job's log in S3 ({plan.s3_prefix}logs/train.log): attempt 1, "
            "the SIGTERM, attempt 2 from the restored checkpoint"
        )
        print(indent("\n".join(facts.log) or "(no log)"))

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

    # -- issue 15: the dashboard ----------------------------------------------------------------

    def ctl_json_daemon_status(self) -> dict[str, Any]:
        """`supervisord status --json`, quietly, parsed ({} if it does not answer)."""
        result = subprocess.run(
            [str(BIN / "supervisord"), "status", "--json"],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if result.returncode != 0:
            return {}
        answer = json.loads(result.stdout)
        return answer if isinstance(answer, dict) else {}

    def screenshot_dashboard(self) -> None:
        """A PNG of the runs page, with headless chromium when it is installed; kept after
        the demo (outside the state directory), its path printed."""
        if not self.dashboard_url:
            return
        heading(f"the dashboard: the runs page at {self.dashboard_url}")
        folder = Path(tempfile.mkdtemp(prefix="supervisor-demo-dashboard-", dir="/tmp"))
        path = folder / "runs.png"
        why_not = take_screenshot(self.dashboard_url, path)
        if why_not is None:
            print(f"screenshot of the runs page: {path}")
        else:
            folder.rmdir()
            print(why_not)


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
