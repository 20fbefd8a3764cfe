"""The fault soak (issue 6): `make soak`, or `python -m tests.soak [--runs 200] [--kills 20]
[--seed N] [--budget-s 540]`.

Runs live out seeded stories (complete, crash before or after start, spot reclaim, zombie)
against the real `supervisord` and a moto server in this process, while every AWS operation of
the daemon fails now and then (throttling and 5xx, alone and in bursts: SUPERVISOR_FAULTS),
queue messages arrive twice and out of order, and the daemon is SIGKILLed and restarted again
and again. At the end, checks.py reads the database and moto and prints one summary line; the
exit status is 1 on any violation. No file here is named test_*.py: tests/e2e/test_soak.py is
the short version that `make test` runs.

`--replicas 3` (issue 14): three replicas on one PostgreSQL database (a throwaway server from
tests/pg_server.py, migrated and given a lease log by database.py), SIGKILLed and SIGSTOPped
(`--stops`) at random, with one more check: no AWS action by a replica that did not hold the
lease it acts under at that moment (`checks.check_leases`). A progress line every 10 s, and a
table of daemons and checks at the end, in both modes.
"""
