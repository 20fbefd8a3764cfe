"""A simulated training job that talks to its run prefix the way a real one does.

Every step it rewrites `status.json` (the heartbeat) and `logs/train.log`; at the end it writes
`final_metrics.json` and then the completion marker `COMPLETE`, or the failure marker `FAILED`
whose body is the reason. The supervisor never talks to the job: it only reads the prefix.

Standard library and boto3 only, like the instance-side code. AWS settings (endpoint, region,
credentials) come from the standard AWS chain, e.g. AWS_ENDPOINT_URL for a moto server.

    python -m supervisor.demo.job --bucket demo-runs --prefix runs/exp1/ --steps 8
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import time
from datetime import UTC, datetime
from types import FrameType
from typing import TYPE_CHECKING

import boto3

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


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

    def log(self, message: str) -> None:
        line = f"{_now()} {message}"
        print(line, flush=True)
        self.log_lines.append(line)
        # S3 has no append: a real job uploads its log file periodically; rewrite it whole.
        self.put("logs/train.log", "\n".join(self.log_lines) + "\n")

    def heartbeat(self, step: int, steps: int, phase: str, loss: float | None) -> None:
        status = {"step": step, "steps": steps, "phase": phase, "loss": loss, "at": _now()}
        self.put("status.json", json.dumps(status), "application/json")


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Stopped


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    job = Job(boto3.client("s3"), args.bucket, args.prefix)
    steps = max(args.steps, 1)
    loss = 2.5
    try:
        job.heartbeat(0, steps, "starting", None)
        job.log(f"training started: {steps} steps of {args.step_s}s")
        for step in range(1, steps + 1):
            time.sleep(args.step_s)
            loss = 2.5 * math.exp(-step / steps * 1.5) + 0.1
            job.heartbeat(step, steps, "training", round(loss, 4))
            job.log(f"step {step}/{steps} loss={loss:.4f}")
        if args.outcome == "fail":
            job.heartbeat(steps, steps, "failed", round(loss, 4))
            job.log(f"training failed: {args.fail_reason}")
            job.put("FAILED", args.fail_reason + "\n")
            return 1
        job.put(
            "final_metrics.json",
            json.dumps({"steps": steps, "final_loss": round(loss, 4)}),
            "application/json",
        )
        job.heartbeat(steps, steps, "complete", round(loss, 4))
        job.log("training complete; writing COMPLETE")
        job.put("COMPLETE", f"steps={steps} final_loss={loss:.4f}\n")
        return 0
    except (Stopped, KeyboardInterrupt):
        print(f"{_now()} stopped by a signal before finishing", flush=True)
        return 143


if __name__ == "__main__":
    sys.exit(main())
