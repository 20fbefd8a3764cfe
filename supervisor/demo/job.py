"""A simulated training job that talks to its run prefix the way a real one does.

Every step it rewrites `status.json` (the heartbeat) and `logs/train.log`; at the end it writes
`final_metrics.json` and then the completion marker `COMPLETE`, or the failure marker `FAILED`
whose body is the reason. The supervisor never talks to the job: it only reads the prefix.

With `--checkpoint-dir` it acts as a training process for checkpoint safety: it writes its pid
to `--pid-file`, writes `step_N.pt` into the checkpoint directory every step (keeping the last
two), and after writing COMPLETE it keeps running, like a job that finished its epochs but
still holds the GPU (evaluating, say). On SIGTERM, at any point, it writes a final checkpoint
`step_N_final.pt` and exits 0: the supervisor's instance program sends that SIGTERM, then
uploads the newest checkpoint. Started again (a resume) with checkpoints in the directory, as
the supervisor's restore leaves them, it goes on from the newest one's step and appends to the
log the earlier attempt left under the prefix.

Standard library and boto3 only, like the instance-side code. AWS settings (endpoint, region,
credentials) come from the standard AWS chain, e.g. AWS_ENDPOINT_URL for a moto server.

    python -m supervisor.demo.job --bucket demo-runs --prefix runs/exp1/ --steps 8
    python -m supervisor.demo.job --bucket demo-runs --prefix runs/exp2/ --steps 6 \\
        --checkpoint-dir /tmp/exp2/ckpt --pid-file /tmp/exp2/train.pid
"""

from __future__ import annotations

import argparse
import json
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
        "--outcome",
        choices=("complete", "fail"),
        default="complete",
        help="write COMPLETE at the end, or FAILED with --fail-reason as its body",
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
    def __init__(self, s3: S3Client, bucket: str, prefix: str) -> None:
        self.s3 = s3
        self.bucket = bucket
        self.prefix = prefix if prefix.endswith("/") else prefix + "/"
        self.log_lines: list[str] = []

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
        # S3 has no append: a real job uploads its log file periodically; rewrite it whole.
        self.put("logs/train.log", "\n".join(self.log_lines) + "\n")

    def heartbeat(self, step: int, steps: int, phase: str, loss: float | None) -> None:
        status = {"step": step, "steps": steps, "phase": phase, "loss": loss, "at": _now()}
        self.put("status.json", json.dumps(status), "application/json")

    def complete(self, steps: int, loss: float) -> None:
        self.put(
            "final_metrics.json",
            json.dumps({"steps": steps, "final_loss": round(loss, 4)}),
            "application/json",
        )
        self.heartbeat(steps, steps, "complete", round(loss, 4))
        self.log("training complete; writing COMPLETE")
        self.put("COMPLETE", f"steps={steps} final_loss={loss:.4f}\n")


def _loss(step: int, steps: int) -> float:
    return 2.5 * math.exp(-step / steps * 1.5) + 0.1


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Stopped


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.checkpoint_dir is not None or args.pid_file is not None:
        if args.checkpoint_dir is None or args.pid_file is None:
            _parser().error("--checkpoint-dir and --pid-file go together")
        return _train_with_checkpoints(args)
    signal.signal(signal.SIGTERM, _on_sigterm)
    job = Job(boto3.client("s3"), args.bucket, args.prefix)
    steps = max(args.steps, 1)
    loss = 2.5
    try:
        job.heartbeat(0, steps, "starting", None)
        job.log(f"training started: {steps} steps of {args.step_s}s")
        for step in range(1, steps + 1):
            time.sleep(args.step_s)
            loss = _loss(step, steps)
            job.heartbeat(step, steps, "training", round(loss, 4))
            job.log(f"step {step}/{steps} loss={loss:.4f}")
        if args.outcome == "fail":
            job.heartbeat(steps, steps, "failed", round(loss, 4))
            job.log(f"training failed: {args.fail_reason}")
            job.put("FAILED", args.fail_reason + "\n")
            return 1
        job.complete(steps, loss)
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
    job = Job(boto3.client("s3"), args.bucket, args.prefix)
    steps, size = max(args.steps, 1), max(args.checkpoint_kb, 1) * 1024
    step, loss = 0, 2.5
    resumed = _newest_checkpoint(directory)
    if resumed is None:
        job.heartbeat(0, steps, "starting", None)
        job.log(
            f"training started: pid {os.getpid()}, {steps} steps of {args.step_s}s, "
            f"checkpoints in {directory}"
        )
    else:
        step, name = resumed
        job.continue_log()
        job.heartbeat(step, steps, "resuming", None)
        job.log(f"resumed: pid {os.getpid()}, from {name} in {directory}, at step {step}/{steps}")
    while step < steps and not stop.wait(args.step_s):
        step += 1
        loss = _loss(step, steps)
        _checkpoint(directory, f"step_{step}.pt", step, size)
        (directory / f"step_{step - 2}.pt").unlink(missing_ok=True)  # keep the last two
        job.heartbeat(step, steps, "training", round(loss, 4))
        job.log(f"step {step}/{steps} loss={loss:.4f}; wrote step_{step}.pt ({size} bytes)")
    if stop.signal is None:
        job.complete(steps, loss)
        job.heartbeat(steps, steps, "evaluating", round(loss, 4))
        job.log("evaluating: the process keeps running (and holding the GPU) until told to stop")
        if not stop.wait(args.hold_s):
            job.log(f"nobody stopped the job within {args.hold_s:g}s; exiting without a checkpoint")
            return 1
    final = _checkpoint(directory, f"step_{step}_final.pt", step, size)
    job.heartbeat(step, steps, "stopped", round(loss, 4))
    job.log(
        f"{stop.signal} received: saved final checkpoint {final.name} ({size} bytes); exiting 0"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
