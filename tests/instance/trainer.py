"""A stand-in training process for the instance program's tests. Standard library only.

Writes its pid to --pid-file, then every --step-s seconds writes `step_<n>.pt` (--size random
bytes) into --checkpoint-dir, keeping the last two. On SIGTERM it writes a final checkpoint
`step_<n>_final.pt` and exits 0, like a trainer that saves on preemption; with
--ignore-sigterm it carries on, so the caller's timeout path runs.

Files are written under a temporary name and renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import argparse
import os
import signal
import time
from pathlib import Path
from types import FrameType

stop_requested = False


def on_sigterm(signum: int, frame: FrameType | None) -> None:
    global stop_requested
    stop_requested = True


def write_atomically(path: Path, data: bytes) -> None:
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_bytes(data)
    os.replace(temp, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint-dir", type=Path, required=True)
    parser.add_argument("--pid-file", type=Path, required=True)
    parser.add_argument("--ignore-sigterm", action="store_true")
    parser.add_argument("--step-s", type=float, default=0.05)
    parser.add_argument("--size", type=int, default=1024)
    args = parser.parse_args()

    signal.signal(signal.SIGTERM, signal.SIG_IGN if args.ignore_sigterm else on_sigterm)
    args.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    write_atomically(args.pid_file, f"{os.getpid()}\n".encode())

    step = 0
    while not stop_requested:
        step += 1
        write_atomically(args.checkpoint_dir / f"step_{step}.pt", os.urandom(args.size))
        (args.checkpoint_dir / f"step_{step - 2}.pt").unlink(missing_ok=True)
        time.sleep(args.step_s)
    write_atomically(args.checkpoint_dir / f"step_{step}_final.pt", os.urandom(args.size))


if __name__ == "__main__":
    main()
