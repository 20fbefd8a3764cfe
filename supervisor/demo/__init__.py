"""A self-contained demo: the real daemon and CLI against a local moto server standing in for
AWS, with four simulated training runs (`python -m supervisor.demo --help`).

moto is the demo's own extra (`pip install 'ec2-run-supervisor[demo]'`), not a dependency of
the supervisor: without it, importing this package says so in one line."""

import importlib.util

if importlib.util.find_spec("moto") is None:
    raise SystemExit(
        "supervisor.demo needs moto, which is not installed: run `make demo`, or "
        "`pip install 'ec2-run-supervisor[demo]'` (from a checkout: `pip install '.[demo]'`)"
    )
