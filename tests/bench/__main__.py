"""`make bench`: figures 4 (restart) and 5 (store) of issue 6, printed as a table and written
to bench-results.json at the repo root. Each figure is measured `--repeat` times; the table
gives the median and the spread (min-max).

Usage: python -m tests.bench [--repeat N] [--store-runs N] [--restart-runs N] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.bench import restart_figure, store_figure

ROOT = Path(__file__).resolve().parents[2]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench",
        description="Measure the store's transitions/s (figure 5) and the restart's re-arm "
        "time (figure 4) with no AWS; print a table and write a JSON file.",
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs of each figure (default 3)")
    parser.add_argument(
        "--store-runs", type=int, default=2000, help="lifecycles committed per store run"
    )
    parser.add_argument(
        "--restart-runs", type=int, default=10000, help="active runs the daemon re-adopts"
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench-results.json", help="where the JSON goes"
    )
    return parser


def _positive(parser: argparse.ArgumentParser, name: str, value: int) -> None:
    if value < 1:
        parser.error(f"--{name} {value}: must be at least 1")


def _spread(values: Sequence[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _row(name: str, values: Sequence[float], unit: str, fmt: str = "{:.1f}") -> str:
    s = _spread(values)
    median, low, high = (fmt.format(s[k]) for k in ("median", "min", "max"))
    return f"  {name:<44} {median:>10} {unit:<8} ({low} - {high})"


def _restart_once(seeded: Path, state_dir: Path, runs: int) -> dict[str, Any]:
    """One restart in a fresh interpreter, so its memory is the daemon's alone."""
    restart_figure.prepare(seeded, state_dir)
    done = subprocess.run(
        [sys.executable, "-m", "tests.bench", "--restart-once", str(state_dir), str(runs)],
        cwd=ROOT, check=True, capture_output=True, text=True,
    )  # fmt: skip
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["--restart-once"]:
        state_dir, runs = args_list[1:3]
        restarted = asyncio.run(restart_figure.measure(Path(state_dir), int(runs)))
        print(json.dumps(dataclasses.asdict(restarted)))
        return 0
    parser = _parser()
    args = parser.parse_args(args_list)
    for name in ("repeat", "store_runs", "restart_runs"):
        _positive(parser, name.replace("_", "-"), getattr(args, name))
    command = shlex.join(["python", "-m", "tests.bench", *args_list])
    machine = {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
    }
    print(f"command: {command}")
    print(f"machine: {machine}")

    store: dict[str, list[dict[str, Any]]] = {"FULL": [], "OFF": []}
    for i in range(args.repeat):
        for mode in ("FULL", "OFF"):
            sample = asyncio.run(store_figure.measure(args.store_runs, synchronous=mode))
            store[mode].append(dataclasses.asdict(sample))
            print(f"  store {i + 1}/{args.repeat} synchronous={mode}: "
                  f"{sample.per_second:.0f} writes/s")  # fmt: skip

    restarts: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-") as folder:
        (Path(folder) / "seed").mkdir()
        seeded = asyncio.run(restart_figure.seed(Path(folder) / "seed", args.restart_runs))
        for i in range(args.repeat):
            restarts.append(_restart_once(seeded, Path(folder) / f"r{i}", args.restart_runs))
            print(f"  restart {i + 1}/{args.repeat}: {restarts[-1]['seconds']:.2f} s")

    def col(samples: list[dict[str, Any]], key: str) -> list[float]:
        return [float(s[key]) for s in samples]

    full_rate, off_rate = col(store["FULL"], "per_second"), col(store["OFF"], "per_second")
    ratios = [off / full for off, full in zip(off_rate, full_rate, strict=True)]
    startup_calls = [
        float(sum(n for op, n in s["aws_calls"].items() if op != "ListObjectsV2")) for s in restarts
    ]
    print()
    print(f"Figure 5: store, {args.store_runs} runs x 6 commits, {args.repeat} runs "
          "(median, min - max)")  # fmt: skip
    print(_row("commits/s, synchronous=FULL (production)", full_rate, "/s", "{:.0f}"))
    print(_row("commit p50, FULL", col(store["FULL"], "p50_ms"), "ms", "{:.2f}"))
    print(_row("commit p95, FULL", col(store["FULL"], "p95_ms"), "ms", "{:.2f}"))
    print(_row("commits/s, synchronous=OFF (baseline)", off_rate, "/s", "{:.0f}"))
    print(_row("commit p50, OFF", col(store["OFF"], "p50_ms"), "ms", "{:.2f}"))
    print(_row("commit p95, OFF", col(store["OFF"], "p95_ms"), "ms", "{:.2f}"))
    print(_row("OFF / FULL (what durability costs)", ratios, "x", "{:.2f}"))
    print()
    print(f"Figure 4: restart with {args.restart_runs} active runs, {args.repeat} runs")
    print(_row("serve() start to all monitors spawned", col(restarts, "spawned_s"), "s", "{:.2f}"))
    print(_row("serve() start to all monitors re-armed", col(restarts, "seconds"), "s", "{:.2f}"))
    print(_row("start-up AWS calls (sweeps, not checks)", startup_calls, "calls", "{:.0f}"))
    print(_row("instance ids in those calls", col(restarts, "described_ids"), "ids", "{:.0f}"))
    print(_row("first checks due meanwhile (ListObjectsV2)",
               [float(s["aws_calls"].get("ListObjectsV2", 0)) for s in restarts], "calls",
               "{:.0f}"))  # fmt: skip
    print(_row("resident memory after re-arming (VmRSS)", col(restarts, "rss_mb"), "MB"))

    results = {
        "command": command,
        "machine": machine,
        "at": datetime.now(UTC).isoformat(),
        "store": {
            "runs": args.store_runs,
            "samples": store,
            "full_per_second": _spread(full_rate),
            "off_per_second": _spread(off_rate),
            "off_over_full": _spread(ratios),
        },
        "restart": {
            "runs": args.restart_runs,
            "samples": restarts,
            "rearmed_seconds": _spread(col(restarts, "seconds")),
            "spawned_seconds": _spread(col(restarts, "spawned_s")),
            "startup_aws_calls": _spread(startup_calls),
            "rss_mb": _spread(col(restarts, "rss_mb")),
        },
    }
    args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
