"""`python -m tests.soak`: see tests/soak/__init__.py."""

from __future__ import annotations

import argparse
import sys

from tests.soak.harness import Options, Soak

SINGLE = {"runs": 200, "kills": 20, "stops": 0, "budget_s": 540.0}
REPLICATED = {"runs": 150, "kills": 10, "stops": 8, "budget_s": 420.0}
"""Defaults by mode: the one daemon, or replicas (3 daemons on a 2-core machine: fewer runs,
the same few minutes)."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.soak", description=__doc__)
    parser.add_argument(
        "--replicas",
        type=int,
        default=1,
        help="daemons: 1, the one daemon on SQLite (default); 2 or more, replicas on one "
        "PostgreSQL database (a throwaway server)",
    )
    parser.add_argument(
        "--runs", type=int, default=None, help="runs to attach (200; with replicas 150)"
    )
    parser.add_argument(
        "--kills",
        type=int,
        default=None,
        help="SIGKILLs of a daemon, at least (20; with replicas 10)",
    )
    parser.add_argument(
        "--stops",
        type=int,
        default=None,
        help="SIGSTOPs of a replica, each SIGCONTed 0.3-2 lease TTLs later (replicas: 8)",
    )
    parser.add_argument(
        "--seed", type=int, default=1, help="seeds the stories, kills and faults (1)"
    )
    parser.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="the whole soak's time limit; exceeding it fails (540; with replicas 420)",
    )
    parser.add_argument(
        "--active-s",
        type=float,
        default=None,
        help="the window for attaches and kills (default: 55%% of the budget)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the state directory for a look")
    parser.add_argument("--verbose", action="store_true", help="say why each attach failed")
    args = parser.parse_args(argv)
    defaults = REPLICATED if args.replicas > 1 else SINGLE
    runs = args.runs if args.runs is not None else int(defaults["runs"])
    kills = args.kills if args.kills is not None else int(defaults["kills"])
    stops = args.stops if args.stops is not None else int(defaults["stops"])
    budget_s = args.budget_s if args.budget_s is not None else defaults["budget_s"]
    if args.replicas < 1 or runs < 1 or kills < 0 or stops < 0 or budget_s <= 0:
        parser.error(
            "--replicas and --runs must be >= 1, --kills and --stops >= 0 and --budget-s > 0"
        )
    if stops and args.replicas < 2:
        parser.error(f"--stops {stops} needs --replicas 2 or more (the one daemon is not frozen)")
    options = Options(
        runs=runs,
        kills=kills,
        seed=args.seed,
        budget_s=budget_s,
        active_s=args.active_s,
        keep=args.keep,
        verbose=args.verbose,
        replicas=args.replicas,
        stops=stops,
    )
    return Soak(options).run()


if __name__ == "__main__":
    sys.exit(main())
