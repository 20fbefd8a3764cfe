"""`python -m tests.soak`: see tests/soak/__init__.py."""

from __future__ import annotations

import argparse
import sys

from tests.soak.harness import Options, Soak


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.soak", description=__doc__)
    parser.add_argument("--runs", type=int, default=200, help="runs to attach (200)")
    parser.add_argument(
        "--kills", type=int, default=20, help="SIGKILLs of the daemon, at least (20)"
    )
    parser.add_argument(
        "--seed", type=int, default=1, help="seeds the stories, kills and faults (1)"
    )
    parser.add_argument(
        "--budget-s",
        type=float,
        default=540.0,
        help="the whole soak's time limit; exceeding it fails (540)",
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
    if args.runs < 1 or args.kills < 0 or args.budget_s <= 0:
        parser.error("--runs must be >= 1, --kills >= 0 and --budget-s > 0")
    options = Options(
        runs=args.runs,
        kills=args.kills,
        seed=args.seed,
        budget_s=args.budget_s,
        active_s=args.active_s,
        keep=args.keep,
        verbose=args.verbose,
    )
    return Soak(options).run()


if __name__ == "__main__":
    sys.exit(main())
