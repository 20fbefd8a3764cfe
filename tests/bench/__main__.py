"""`make bench`: the measured figures of issue 6, printed as a table and written to
bench-results.json at the repo root. Each figure is measured `--repeat` times (figure 3: one
window cut in three); the table gives the median and the spread (min - max).

  1, 2  AWS calls per run-hour and completion-to-stop latency: a simulated fleet against a
        moto server, watched by the naive baseline, by the daemon polling only, and by the
        daemon with its events queue (tests/bench/fleet_figures.py)
  3     the daemon's CPU per run-hour and resident memory at the default schedule
        (tests/bench/daemon_cost.py)
  4     restart re-arm time (tests/bench/restart_figure.py)
  5     store commits/s (tests/bench/store_figure.py)
  6     the CLI's wall time per verb against a bare interpreter, and 300 attaches from a
        shell loop (tests/bench/cli_figure.py)
  7     idle instance-seconds from a job's end to the stop accepted, by kind of job, against
        the naive poller and the previous defaults (tests/bench/idle_figure.py, issue 13)
  8     failover time at 1,000 runs on PostgreSQL: a replica SIGKILLed, beside a clean
        hand-over and a single daemon's restart (tests/bench/failover_figure.py, issue 14)

Usage: python -m tests.bench [--only 1,2,3,4,5,6,7,8] [--repeat N] [options]  (see --help)
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import platform
import random
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from tests import pg_server
from tests.bench import (
    cli_figure,
    client_cost,
    daemon_cost,
    failover_figure,
    fleet_figures,
    idle_figure,
    restart_figure,
    store_figure,
)
from tests.bench.moto_world import MotoWorld
from tests.bench.table import row, spread

ROOT = Path(__file__).resolve().parents[2]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Measure issue 6's figures; print a table (median, min - max) and write "
        "a JSON file with the command, the machine and every sample.",
        epilog="""figures:
  1  AWS calls per run-hour by operation: the naive baseline (per run, every 60 s: one
     HeadObject per marker name + one DescribeInstances), the daemon polling only, the
     daemon with its SQS events queue; and the ratios baseline / ours.
  2  completion-to-stop-call latency p50/p95/max (grace 0) for the same three modes.
     1 and 2 come from the same runs: a fleet of --fleet-runs moto instances per daemon
     mode (--baseline-runs for the baseline), jobs that write a completion marker after
     0.5 to 1 x --fleet-hours simulated hours; every daemon interval and the baseline's
     period are divided by --factor through the settings (SUPERVISOR_*), never by code.
  3  the daemon's own CPU seconds per run-hour, % of one core and resident memory, at the
     default schedule, with each of --cost-runs runs seeded in `running` (2 h old).
  4  restart: time to re-arm --restart-runs monitors (no AWS).
  5  store: commits/s through the real Store (no AWS).
  6  CLI: each verb's median wall time (--cli-reps runs each, side by side with a bare
     `python -c pass`) against a daemon on moto with a seeded run, and the time to attach
     --cli-loop-runs runs from a shell loop.
  7  idle instance-seconds: job end (marker or FAILED written) to the stop call accepted,
     p50/p90 per kind of job (progress heartbeats, silent, crash) for the naive poller
     (every 60 s, then a fixed 300 s wait), the daemon at the current defaults and at the
     previous ones (fixed grace, crashed runs kept), polling only, --idle-runs runs of each
     kind per watcher, jobs of 0.5 to 1 x --idle-hours, time / --idle-factor; and the AWS
     calls per run-hour of each.
  8  failover on PostgreSQL: three replica processes share --failover-runs active runs;
     the one holding most is SIGKILLed: kill to every one of its runs claimed and its
     monitor re-armed on the survivors, and their AWS calls meanwhile; then a survivor is
     stopped cleanly (SIGTERM: it hands its runs back) and timed the same way; and a single
     daemon's restart re-arms the same runs. Leases of --failover-ttl seconds.

examples:
  python -m tests.bench                          # everything, about 13 minutes on 2 cores
  python -m tests.bench --only 1,2 --repeat 5    # the fleet figures only, 5 repetitions
  python -m tests.bench --only 3 --cost-runs 1000 --cost-window 120
  python -m tests.bench --only 6                 # the CLI's speed only, about a minute
  python -m tests.bench --only 7 --repeat 1      # idle instance-seconds, about 2 minutes""",
    )
    parser.add_argument(
        "--only", default="1,2,3,4,5,6,7,8", help="figures to measure, e.g. 1,2 or 7 (default all)"
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs of each figure (default 3)")
    parser.add_argument(
        "--store-runs", type=int, default=2000, help="lifecycles committed per store run"
    )
    parser.add_argument(
        "--restart-runs", type=int, default=10000, help="active runs the daemon re-adopts"
    )
    parser.add_argument(
        "--fleet-runs",
        type=int,
        default=20,
        help="runs (moto instances) per daemon mode for figures 1-2 (default 20; moto's "
        "DescribeInstances cost grows with the ids asked, which bounds this)",
    )
    parser.add_argument(
        "--baseline-runs",
        type=int,
        default=10,
        help="runs watched by the naive baseline (default 10: it makes 4 calls per run per "
        "period, which moto serves without falling behind at --factor 120)",
    )
    parser.add_argument(
        "--fleet-hours",
        type=float,
        default=1.0,
        help="simulated hours of the longest job (they end from half of it to all of it)",
    )
    parser.add_argument(
        "--factor",
        type=float,
        default=120.0,
        help="time compression of figures 1-2: 30 s poll -> 30/factor s (default 120)",
    )
    parser.add_argument(
        "--fleet-sequential",
        action="store_true",
        help="run the two daemon modes one after the other, not side by side",
    )
    parser.add_argument(
        "--cost-runs", default="1000,10000", help="watched runs for figure 3, comma-separated"
    )
    parser.add_argument(
        "--cost-instances",
        type=int,
        default=1000,
        help="moto instances for figure 3; runs beyond it share instances (default 1000)",
    )
    parser.add_argument(
        "--cost-window",
        type=float,
        default=60.0,
        help="seconds measured per figure-3 size, cut in 3 parts (default 60: one sweep)",
    )
    parser.add_argument(
        "--cost-settle",
        type=float,
        default=10.0,
        help="seconds from the daemon answering to the figure-3 window (default 10)",
    )
    parser.add_argument(
        "--cli-reps", type=int, default=15, help="figure 6: runs of each command (default 15)"
    )
    parser.add_argument(
        "--cli-loop-runs",
        type=int,
        default=300,
        help="figure 6: runs attached by the shell loop (default 300)",
    )
    parser.add_argument(
        "--idle-runs",
        type=int,
        default=4,
        help="figure 7: runs of each kind of job per watcher (default 4)",
    )
    parser.add_argument(
        "--idle-hours",
        type=float,
        default=0.5,
        help="figure 7: simulated hours of the longest job (default 0.5)",
    )
    parser.add_argument(
        "--idle-events",
        action="store_true",
        help="figure 7: also the daemon with its events queue (a fourth process side by side)",
    )
    parser.add_argument(
        "--idle-factor",
        type=float,
        default=30.0,
        help="figure 7: time compression (default 30: S3's whole seconds bound it)",
    )
    parser.add_argument(
        "--failover-runs",
        type=int,
        default=1000,
        help="figure 8: active runs the replicas share (default 1000)",
    )
    parser.add_argument(
        "--failover-ttl",
        type=float,
        default=6.0,
        help="figure 8: the replicas' SUPERVISOR_LEASE_TTL_S (default 6; 30 in production)",
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench-results.json", help="where the JSON goes"
    )
    return parser


def _positive(parser: argparse.ArgumentParser, name: str, value: int) -> None:
    if value < 1:
        parser.error(f"--{name} {value}: must be at least 1")


_spread = spread
_row = row


def _restart_once(
    seeded: Path | None, state_dir: Path, runs: int, database_url: str | None = None
) -> dict[str, Any]:
    """One restart in a fresh interpreter, so its memory is the daemon's alone; on the
    PostgreSQL database at `database_url` when given (issue 14)."""
    if seeded is None:  # on PostgreSQL at `database_url`
        state_dir.mkdir(parents=True, exist_ok=True)
    else:
        restart_figure.prepare(seeded, state_dir)
    on_postgresql = [database_url] if database_url else []
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.bench",
            "--restart-once",
            str(state_dir),
            str(runs),
            *on_postgresql,
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _fleet(args: argparse.Namespace, world: MotoWorld) -> tuple[list[str], dict[str, Any]]:
    """Figures 1 and 2: `--repeat` repetitions of the three modes."""
    reps: list[dict[str, fleet_figures.ModeResult]] = []
    for i in range(args.repeat):
        world.reset()  # moto's describe cost grows with the instances it holds
        rep = asyncio.run(
            fleet_figures.repetition(
                world,
                i,
                args.fleet_runs,
                args.baseline_runs,
                args.fleet_hours,
                args.factor,
                concurrent=not args.fleet_sequential,
            )
        )
        reps.append(rep)
        totals = ", ".join(f"{m} {fleet_figures.total_per_run_hour(r):.1f}" for m, r in rep.items())
        print(f"  fleet {i + 1}/{args.repeat}: calls/run-hour {totals}")
    return fleet_figures.report(reps, args)


def _idle(args: argparse.Namespace, world: MotoWorld) -> tuple[list[str], dict[str, Any]]:
    """Figure 7: `--repeat` repetitions of the three watchers side by side, pooled."""
    reps: list[dict[str, idle_figure.WatcherResult]] = []
    for i in range(args.repeat):
        world.reset()
        rep = asyncio.run(
            idle_figure.repetition(
                world, i, args.idle_runs, args.idle_hours, args.idle_factor, events=args.idle_events
            )
        )
        reps.append(rep)
        calls = ", ".join(f"{w} {r.calls_per_run_hour:.1f}" for w, r in rep.items())
        print(f"  idle {i + 1}/{args.repeat}: calls/run-hour {calls}")
    return idle_figure.report(reps, args)


def _cost(
    args: argparse.Namespace, world: MotoWorld, sizes: list[int]
) -> tuple[list[str], dict[str, Any]]:
    """Figure 3 at each size, on one set of moto instances."""
    world.reset()
    instances = world.launch(min(args.cost_instances, max(sizes)))
    world.bucket(daemon_cost.BUCKET)
    samples = []
    with tempfile.TemporaryDirectory(prefix="sv", dir="/tmp") as folder:
        for runs in sizes:
            sample = asyncio.run(
                daemon_cost.measure(
                    world,
                    instances,
                    runs,
                    Path(folder),
                    settle_s=args.cost_settle,
                    window_s=args.cost_window,
                )
            )
            samples.append(sample)
            print(
                f"  cost {runs} runs: {sample.core_percent:.1f}% of a core, {sample.rss_mb:.0f} MB"
            )
    lines, document = daemon_cost.report(samples, args)
    client = client_cost.measure(world)
    lines[-1:-1] = [
        f"  client CPU per prefix check, {client.calls} calls, least of 3 rounds:",
        f"    straight to moto (a new TCP connection per call) {client.moto_ms:8.2f} ms",
        f"    kept-alive connections (the proxy, as S3)         {client.keep_alive_ms:8.2f} ms",
    ]
    document["client_cpu_per_check_ms"] = dataclasses.asdict(client)
    return lines, document


def _store_and_restart(
    args: argparse.Namespace, figures: set[int]
) -> tuple[list[str], dict[str, Any]]:
    """Figures 5 and 4: the table's lines and the JSON."""
    lines: list[str] = []
    results: dict[str, Any] = {}

    def col(samples: list[dict[str, Any]], key: str) -> list[float]:
        return [float(s[key]) for s in samples]

    if 5 in figures:
        store: dict[str, list[dict[str, Any]]] = {"FULL": [], "OFF": []}
        for i in range(args.repeat):
            for mode in ("FULL", "OFF"):
                sample = asyncio.run(store_figure.measure(args.store_runs, synchronous=mode))
                store[mode].append(dataclasses.asdict(sample))
                print(
                    f"  store {i + 1}/{args.repeat} synchronous={mode}: "
                    f"{sample.per_second:.0f} writes/s"
                )
        full_rate, off_rate = col(store["FULL"], "per_second"), col(store["OFF"], "per_second")
        ratios = [off / full for off, full in zip(off_rate, full_rate, strict=True)]
        lines += [
            f"Figure 5: store, {args.store_runs} runs x 6 commits, {args.repeat} runs "
            "(median, min - max)",
            _row("commits/s, synchronous=FULL (production)", full_rate, "/s", "{:.0f}"),
            _row("commit p50, FULL", col(store["FULL"], "p50_ms"), "ms", "{:.2f}"),
            _row("commit p95, FULL", col(store["FULL"], "p95_ms"), "ms", "{:.2f}"),
            _row("commits/s, synchronous=OFF (baseline)", off_rate, "/s", "{:.0f}"),
            _row("commit p50, OFF", col(store["OFF"], "p50_ms"), "ms", "{:.2f}"),
            _row("commit p95, OFF", col(store["OFF"], "p95_ms"), "ms", "{:.2f}"),
            _row("OFF / FULL (what durability costs)", ratios, "x", "{:.2f}"),
            "",
        ]
        results["store"] = {
            "runs": args.store_runs,
            "samples": store,
            "full_per_second": _spread(full_rate),
            "off_per_second": _spread(off_rate),
            "off_over_full": _spread(ratios),
        }
        # Issue 14: the same writes through PgStore, on a local server made durable.
        with pg_server.running(durable=True) as server:
            pg: list[dict[str, Any]] = []
            for i in range(args.repeat):
                url = server.url(server.create_database("bench"))
                sample = asyncio.run(store_figure.measure_postgresql(args.store_runs, url))
                pg.append(dataclasses.asdict(sample))
                print(f"  store {i + 1}/{args.repeat} postgresql: {sample.per_second:.0f} writes/s")
        pg_rate = col(pg, "per_second")
        lines[-1:-1] = [
            _row("commits/s, PostgreSQL (durable, local TCP)", pg_rate, "/s", "{:.0f}"),
            _row("commit p50, PostgreSQL", col(pg, "p50_ms"), "ms", "{:.2f}"),
            _row("commit p95, PostgreSQL", col(pg, "p95_ms"), "ms", "{:.2f}"),
        ]
        results["store"] |= {"postgresql_samples": pg, "postgresql_per_second": _spread(pg_rate)}
    if 4 in figures:
        restarts: list[dict[str, Any]] = []
        with tempfile.TemporaryDirectory(prefix="bench-") as folder:
            (Path(folder) / "seed").mkdir()
            seeded = asyncio.run(restart_figure.seed(Path(folder) / "seed", args.restart_runs))
            for i in range(args.repeat):
                restarts.append(_restart_once(seeded, Path(folder) / f"r{i}", args.restart_runs))
                print(f"  restart {i + 1}/{args.repeat}: {restarts[-1]['seconds']:.2f} s")
        startup_calls = [
            float(sum(n for op, n in s["aws_calls"].items() if op != "ListObjectsV2"))
            for s in restarts
        ]
        lines += [
            f"Figure 4: restart with {args.restart_runs} active runs, {args.repeat} runs",
            _row(
                "serve() start to all monitors spawned", col(restarts, "spawned_s"), "s", "{:.2f}"
            ),
            _row("serve() start to all monitors re-armed", col(restarts, "seconds"), "s", "{:.2f}"),
            _row("start-up AWS calls (sweeps, not checks)", startup_calls, "calls", "{:.0f}"),
            _row("instance ids in those calls", col(restarts, "described_ids"), "ids", "{:.0f}"),
            _row(
                "first checks due meanwhile (ListObjectsV2)",
                [float(s["aws_calls"].get("ListObjectsV2", 0)) for s in restarts],
                "calls",
                "{:.0f}",
            ),
            _row(
                "first checks within 30 s of start (runs 2 h in)",
                col(restarts, "first_checks_within_30s"),
                "checks",
                "{:.0f}",
            ),
            _row("resident memory after re-arming (VmRSS)", col(restarts, "rss_mb"), "MB"),
            "",
        ]
        results["restart"] = {
            "runs": args.restart_runs,
            "samples": restarts,
            "rearmed_seconds": _spread(col(restarts, "seconds")),
            "spawned_seconds": _spread(col(restarts, "spawned_s")),
            "startup_aws_calls": _spread(startup_calls),
            "rss_mb": _spread(col(restarts, "rss_mb")),
        }
        # Issue 14: the same restart on PostgreSQL (re-arming reads: the test server's
        # settings), each repetition on a fresh copy of the seeded database.
        pg_restarts: list[dict[str, Any]] = []
        with pg_server.running() as server, tempfile.TemporaryDirectory(prefix="bench-") as folder:
            seeded_db = server.create_database("seeded")
            asyncio.run(restart_figure.seed_postgresql(server.url(seeded_db), args.restart_runs))
            for i in range(args.repeat):
                copy = f"{seeded_db}_r{i}"
                with psycopg.connect(server.url("postgres"), autocommit=True) as conn:
                    conn.execute(f'CREATE DATABASE "{copy}" TEMPLATE "{seeded_db}"'.encode())
                pg_restarts.append(
                    _restart_once(None, Path(folder) / f"r{i}", args.restart_runs,
                                  server.url(copy))
                )  # fmt: skip
                print(f"  restart {i + 1}/{args.repeat} postgresql: "
                      f"{pg_restarts[-1]['seconds']:.2f} s")  # fmt: skip
        lines[-1:-1] = [
            _row(
                "PostgreSQL: serve() start to all re-armed",
                col(pg_restarts, "seconds"),
                "s",
                "{:.2f}",
            ),
            _row("PostgreSQL: resident memory then", col(pg_restarts, "rss_mb"), "MB"),
        ]
        results["restart"] |= {
            "postgresql_samples": pg_restarts,
            "postgresql_rearmed_seconds": _spread(col(pg_restarts, "seconds")),
        }
    return lines, results


# -- figure 8 (issue 14): failover --------------------------------------------------------------


def _failover(args: argparse.Namespace) -> tuple[list[str], dict[str, Any]]:
    """Figure 8: `--repeat` kills and clean stops among three replicas, each on a fresh copy
    of the seeded runs, and as many single-daemon restarts of the same runs."""
    runs, ttl = args.failover_runs, args.failover_ttl
    reps: list[dict[str, Any]] = []
    restarts: list[dict[str, Any]] = []
    with pg_server.running() as server, tempfile.TemporaryDirectory(prefix="bench-") as folder:
        seeded = server.create_database("failover")
        asyncio.run(restart_figure.seed_postgresql(server.url(seeded), runs))
        for i in range(args.repeat):
            urls = []
            for what in ("replicas", "restart"):
                copy = f"{seeded}_{what}{i}"
                with psycopg.connect(server.url("postgres"), autocommit=True) as conn:
                    conn.execute(f'CREATE DATABASE "{copy}" TEMPLATE "{seeded}"'.encode())
                urls.append(server.url(copy))
            rep = failover_figure.repetition(
                urls[0], runs, ttl, Path(folder) / f"f{i}", random.Random(i)
            )
            reps.append(rep)
            restarts.append(_restart_once(None, Path(folder) / f"r{i}", runs, urls[1]))
            print(
                f"  failover {i + 1}/{args.repeat}: kill -> re-armed "
                f"{rep['kill']['all_rearmed_s']:.2f} s, clean stop -> re-armed "
                f"{rep['clean_stop']['all_rearmed_s']:.2f} s, restart "
                f"{restarts[-1]['seconds']:.2f} s"
            )

    def col(part: str, key: str) -> list[float]:
        return [float(r[part][key]) for r in reps]

    def lease_left(part: str, end: int) -> list[float]:
        return [float(r[part]["lease_left_s"][end]) for r in reps]

    def per_run(part: str) -> list[float]:
        return [r[part]["calls_not_checks"] / r[part]["runs"] for r in reps]

    lines = [
        f"Figure 8: failover, {runs} active runs on PostgreSQL, three replicas, lease TTL "
        f"{ttl:g} s (claims every {ttl / 3:g} s), {args.repeat} runs",
        _row("runs held by the SIGKILLed replica", col("kill", "runs"), "runs", "{:.0f}"),
        _row("its leases' time left at the kill (latest)", lease_left("kill", 1), "s", "{:.2f}"),
        _row("kill to its first run claimed", col("kill", "first_claim_s"), "s", "{:.2f}"),
        _row("kill to all its runs claimed", col("kill", "all_claimed_s"), "s", "{:.2f}"),
        _row("kill to all its runs re-armed", col("kill", "all_rearmed_s"), "s", "{:.2f}"),
        _row("AWS calls per run taken over (not checks)", per_run("kill"), "calls", "{:.3f}"),
        _row(
            "first checks due meanwhile (ListObjectsV2)",
            [float(r["kill"]["calls"].get("ListObjectsV2", 0)) for r in reps],
            "calls",
            "{:.0f}",
        ),
        _row(
            "baseline: runs of the SIGTERMed replica", col("clean_stop", "runs"), "runs", "{:.0f}"
        ),
        _row("SIGTERM to all its runs re-armed", col("clean_stop", "all_rearmed_s"), "s", "{:.2f}"),
        _row(
            "AWS calls per run handed over (not checks)", per_run("clean_stop"), "calls", "{:.3f}"
        ),
        _row(
            f"baseline: one daemon's restart, {runs} runs",
            [float(r["seconds"]) for r in restarts],
            "s",
            "{:.2f}",
        ),
        f"  expected kill -> re-armed: <= lease left + one claim interval "
        f"<= {ttl + ttl / 3:g} s here, <= 40 s at the default TTL of 30 s",
        "",
    ]
    document = {
        "runs": runs,
        "lease_ttl_s": ttl,
        "samples": reps,
        "restart_samples": restarts,
        "kill_rearmed_seconds": _spread(col("kill", "all_rearmed_s")),
        "clean_stop_rearmed_seconds": _spread(col("clean_stop", "all_rearmed_s")),
        "restart_seconds": _spread([float(r["seconds"]) for r in restarts]),
    }
    return lines, document


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["--failover-replica"]:
        state_dir, url, replica_id, ttl_s = args_list[1:5]
        asyncio.run(failover_figure.replica_main(Path(state_dir), url, replica_id, float(ttl_s)))
        return 0
    if args_list[:1] == ["--restart-once"]:
        state_dir, runs, *database_url = args_list[1:4]
        restarted = asyncio.run(restart_figure.measure(Path(state_dir), int(runs), *database_url))
        print(json.dumps(dataclasses.asdict(restarted)))
        return 0
    parser = _parser()
    args = parser.parse_args(args_list)
    for name in (
        "repeat",
        "store_runs",
        "restart_runs",
        "fleet_runs",
        "baseline_runs",
        "cost_instances",
        "cli_reps",
        "cli_loop_runs",
        "idle_runs",
        "failover_runs",
    ):
        _positive(parser, name.replace("_", "-"), getattr(args, name))
    try:
        figures = {int(f) for f in args.only.split(",") if f.strip()}
        cost_runs = [int(n) for n in args.cost_runs.split(",") if n.strip()]
    except ValueError:
        parser.error("--only and --cost-runs take comma-separated integers, e.g. 1,2,3")
    if not figures <= {1, 2, 3, 4, 5, 6, 7, 8}:
        parser.error(f"--only {args.only}: the figures are 1 to 8")
    if not 1 <= args.failover_ttl <= 3600:
        parser.error(f"--failover-ttl {args.failover_ttl}: from 1 to 3600 seconds")
    if min(args.factor, args.fleet_hours, args.cost_window, args.idle_hours, args.idle_factor) <= 0:
        parser.error(
            "--factor, --fleet-hours, --cost-window, --idle-hours and --idle-factor must be "
            "positive"
        )
    command = shlex.join(["python", "-m", "tests.bench", *args_list])
    machine = {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
    }
    print(f"command: {command}")
    print(f"machine: {machine}")
    started = time.monotonic()
    lines, results = _store_and_restart(args, figures)
    if figures & {1, 2, 3, 6, 7}:
        with MotoWorld() as world:
            if figures & {1, 2}:
                fleet_lines, results["fleet"] = _fleet(args, world)
                lines += fleet_lines
            if 3 in figures:
                cost_lines, results["cost"] = _cost(args, world, cost_runs)
                lines += cost_lines
            if 6 in figures:
                cli_lines, results["cli"] = cli_figure.report(
                    cli_figure.measure(world, args.cli_reps, args.cli_loop_runs)
                )
                lines += cli_lines
            if 7 in figures:
                idle_lines, results["idle"] = _idle(args, world)
                lines += idle_lines
    if 8 in figures:
        failover_lines, results["failover"] = _failover(args)
        lines += failover_lines
    print()
    print("\n".join(lines).rstrip())
    elapsed = time.monotonic() - started
    print(f"\ntotal time: {elapsed:.0f} s")
    document = {
        "command": command,
        "machine": machine,
        "at": datetime.now(UTC).isoformat(),
        "seconds": elapsed,
        **results,
    }
    args.out.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
