"""A simulated training job that talks to its run prefix the way a real one does: it reports
through `supervisor.report`, and rewrites `logs/train.log` every step.

`started()` when it starts; every step `heartbeat()` (status.json) and `log()` with the loss;
at the end `completed()` with final metrics (final_metrics.json, history.json, then the
completion marker `COMPLETE`), or with `--outcome fail`, `failed()` (crash/error.log, then the
failure marker `FAILED` whose body is the reason). The supervisor never talks to the job: it
only reads the prefix. The final metrics (train_loss, val_loss, accuracy) are a deterministic
function of --lr and --method, so runs that differ in them can be compared.

With `--checkpoint-dir` it acts as a training process for checkpoint safety: it writes its pid
to `--pid-file`, writes `step_N.pt` into the checkpoint directory every step (keeping the last
two), and after writing COMPLETE it keeps running, like a job that finished its epochs but
still holds the GPU (evaluating, say). On SIGTERM, at any point, it writes a final checkpoint
`step_N_final.pt` and exits 0: the supervisor's instance program sends that SIGTERM, then
uploads the newest checkpoint. Started again (a resume) with checkpoints in the directory, as
the supervisor's restore leaves them, it goes on from the newest one's step and appends to the
log the earlier attempt left under the prefix.

Standard library, boto3 and `supervisor.report` (itself standard library and boto3) only,
like the instance-side code. AWS settings (endpoint, region, credentials) come from the
standard AWS chain, e.g. AWS_ENDPOINT_URL for a moto server.

    python -m supervisor.demo.job --bucket demo-runs --prefix runs/exp1/ --steps 8 --method mgda
    python -m supervisor.demo.job --bucket demo-runs --prefix runs/exp2/ --steps 6 \\
        --checkpoint-dir /tmp/exp2/ckpt --pid-file /tmp/exp2/train.pid
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import re
import signal
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import boto3
from botocore.exceptions import ClientError

from supervisor.report import Reporter

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

SLICE_S = 0.05
"""How often a checkpointing job looks for a stop request while it waits."""
CHECKPOINT_NAME = re.compile(r"^step_(\d+)(_final)?\.pt$")


class Stopped(Exception):
    """SIGTERM arrived: the job ends without a marker, like a killed process."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m supervisor.demo.job",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--bucket", required=True, help="the run prefix's bucket")
    parser.add_argument("--prefix", required=True, help="the run prefix's key, e.g. runs/exp1/")
    parser.add_argument("--steps", type=int, default=8, help="training steps to simulate (8)")
    parser.add_argument(
        "--step-s", type=float, default=0.5, metavar="SECONDS", help="seconds per step (0.5)"
    )
    parser.add_argument(
        "--lr",
        type=float,
        default=0.01,
        help="learning rate: how fast the simulated loss falls (0.01)",
    )
    parser.add_argument(
        "--method",
        default="baseline",
        help="a method name (e.g. a gradient method: mgda, pcgrad): it shifts val_loss and "
        "accuracy by a fixed amount of its own (baseline)",
    )
    parser.add_argument(
        "--log-file",
        type=Path,
        metavar="FILE",
        help="also append the log to this local file; with --outcome fail its tail goes into "
        "crash/error.log",
    )
    parser.add_argument(
        "--outcome",
        choices=("complete", "fail"),
        default="complete",
        help="report completed() at the end (COMPLETE), or failed() with --fail-reason "
        "(FAILED, whose body is the reason)",
    )
    parser.add_argument(
        "--fail-reason",
        default="exit code 1: CUDA error: out of memory",
        help="the body of FAILED when --outcome fail",
    )
    ck = parser.add_argument_group(
        "checkpointing (a real training process for checkpoint safety)",
        "With --checkpoint-dir the job writes step_N.pt every step, keeps running after "
        "COMPLETE, and on SIGTERM saves step_N_final.pt and exits 0.",
    )
    ck.add_argument(
        "--checkpoint-dir", type=Path, metavar="DIR", help="where step_N.pt files are written"
    )
    ck.add_argument(
        "--pid-file",
        type=Path,
        metavar="FILE",
        help="where the job writes its pid (required with --checkpoint-dir)",
    )
    ck.add_argument(
        "--checkpoint-kb", type=int, default=4, metavar="KB", help="size of each checkpoint (4)"
    )
    ck.add_argument(
        "--hold-s",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="after COMPLETE, how long to keep running if no SIGTERM comes; then exit 1 (120)",
    )
    return parser


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Job:
    def __init__(self, s3: S3Client, args: argparse.Namespace) -> None:
        self.s3 = s3
        self.bucket: str = args.bucket
        self.prefix: str = args.prefix if args.prefix.endswith("/") else args.prefix + "/"
        self.steps: int = max(args.steps, 1)
        self.lr: float = args.lr
        self.method: str = args.method
        self.log_file: Path | None = args.log_file
        self.log_lines: list[str] = []
        self.report = Reporter(f"s3://{self.bucket}/{self.prefix}", client=s3)

    def put(self, key: str, body: str, content_type: str = "text/plain") -> None:
        self.s3.put_object(
            Bucket=self.bucket,
            Key=self.prefix + key,
            Body=body.encode(),
            ContentType=content_type,
        )

    def continue_log(self) -> None:
        """Start from the log an earlier attempt left under the prefix, if any."""
        try:
            body = self.s3.get_object(Bucket=self.bucket, Key=self.prefix + "logs/train.log")
        except ClientError:
            return
        self.log_lines = body["Body"].read().decode(errors="replace").splitlines()

    def log(self, message: str) -> None:
        line = f"{_now()} {message}"
        print(line, flush=True)
        self.log_lines.append(line)
        if self.log_file is not None:
            with self.log_file.open("a") as local:
                local.write(line + "\n")
        # S3 has no append: a real job uploads its log file periodically; rewrite it whole.
        self.put("logs/train.log", "\n".join(self.log_lines) + "\n")

    def loss(self, step: int) -> float:
        return round(2.5 * math.exp(-step / self.steps * 150 * self.lr) + 0.1, 4)

    def trained(self, step: int) -> float:
        """Step `step` is done: report it (heartbeat and history) and return its loss."""
        loss = self.loss(step)
        self.report.heartbeat(step, loss=loss)
        self.report.log(step, loss=loss)
        return loss

    def resumed(self, step: int) -> None:
        """Rebuild the history an earlier attempt logged: the loss is a function of the step."""
        for earlier in range(1, step + 1):
            self.report.log(earlier, loss=self.loss(earlier))

    def final_metrics(self) -> dict[str, float]:
        train_loss = self.loss(self.steps)
        # Each method's own fixed offset: a stable hash, so every run of it gets the same.
        offset = hashlib.sha256(self.method.encode()).digest()[0] / 255
        val_loss = round(train_loss * (1.05 + 0.25 * offset), 4)
        return {
            "train_loss": train_loss,
            "val_loss": val_loss,
            "accuracy": round(1 / (1 + val_loss), 4),
        }

    def complete(self) -> None:
        metrics = self.final_metrics()
        self.log(f"training complete: {metrics}; reporting completed (writes COMPLETE)")
        self.report.completed(metrics, total_steps=self.steps)

    def fail(self, reason: str) -> None:
        self.log(f"training failed: {reason}")
        self.report.failed(reason, log_file=self.log_file)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Stopped


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.checkpoint_dir is not None or args.pid_file is not None:
        if args.checkpoint_dir is None or args.pid_file is None:
            _parser().error("--checkpoint-dir and --pid-file go together")
        return _train_with_checkpoints(args)
    signal.signal(signal.SIGTERM, _on_sigterm)
    job = Job(boto3.client("s3"), args)
    steps = job.steps
    try:
        job.report.started()
        job.log(f"training started: {steps} steps of {args.step_s}s, lr {job.lr}, {job.method}")
        for step in range(1, steps + 1):
            time.sleep(args.step_s)
            loss = job.trained(step)
            job.log(f"step {step}/{steps} loss={loss:.4f}")
        if args.outcome == "fail":
            job.fail(args.fail_reason)
            return 1
        job.complete()
        return 0
    except (Stopped, KeyboardInterrupt):
        print(f"{_now()} stopped by a signal before finishing", flush=True)
        return 143


# -- checkpointing mode -----------------------------------------------------------------------


class StopRequest:
    """A signal handler that only takes note: the job finishes what it is writing, then
    saves its final checkpoint."""

    def __init__(self) -> None:
        self.signal: str | None = None

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.signal = signal.Signals(signum).name

    def wait(self, seconds: float) -> bool:
        """Sleep up to `seconds`; True as soon as a stop was requested."""
        deadline = time.monotonic() + seconds
        while self.signal is None and (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, SLICE_S))
        return self.signal is not None


def _write_atomically(path: Path, data: bytes) -> None:
    # The temporary name matches no checkpoint pattern, so a reader never sees half a file.
    temp = path.with_name(f".{path.name}.partial")
    temp.write_bytes(data)
    os.replace(temp, path)


def _checkpoint(directory: Path, name: str, step: int, size: int) -> Path:
    header = f"demo checkpoint {name} step={step}\n".encode()
    path = directory / name
    _write_atomically(path, header + os.urandom(max(size - len(header), 0)))
    return path


def _newest_checkpoint(directory: Path) -> tuple[int, str] | None:
    """(step, file name) of the newest step_N.pt or step_N_final.pt in the directory."""
    found = [
        (int(match.group(1)), path.name)
        for path in directory.iterdir()
        if (match := CHECKPOINT_NAME.match(path.name)) and path.is_file()
    ]
    return max(found) if found else None


def _train_with_checkpoints(args: argparse.Namespace) -> int:
    stop = StopRequest()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    directory: Path = args.checkpoint_dir
    directory.mkdir(parents=True, exist_ok=True)
    args.pid_file.parent.mkdir(parents=True, exist_ok=True)
    _write_atomically(args.pid_file, f"{os.getpid()}\n".encode())
    job = Job(boto3.client("s3"), args)
    steps, size = job.steps, max(args.checkpoint_kb, 1) * 1024
    step = 0
    resumed = _newest_checkpoint(directory)
    job.report.started()
    if resumed is None:
        job.log(
            f"training started: pid {os.getpid()}, {steps} steps of {args.step_s}s, "
            f"checkpoints in {directory}"
        )
    else:
        step, name = resumed
        job.continue_log()
        job.resumed(step)
        job.log(f"resumed: pid {os.getpid()}, from {name} in {directory}, at step {step}/{steps}")
    while step < steps and not stop.wait(args.step_s):
        step += 1
        _checkpoint(directory, f"step_{step}.pt", step, size)
        (directory / f"step_{step - 2}.pt").unlink(missing_ok=True)  # keep the last two
        loss = job.trained(step)
        job.log(f"step {step}/{steps} loss={loss:.4f}; wrote step_{step}.pt ({size} bytes)")
    if stop.signal is None:
        job.complete()
        job.log("evaluating: the process keeps running (and holding the GPU) until told to stop")
        if not stop.wait(args.hold_s):
            job.log(f"nobody stopped the job within {args.hold_s:g}s; exiting without a checkpoint")
            return 1
    final = _checkpoint(directory, f"step_{step}_final.pt", step, size)
    job.log(
        f"{stop.signal} received: saved final checkpoint {final.name} ({size} bytes); exiting 0"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
