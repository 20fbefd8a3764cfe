"""The soak's driver: the real daemon under faults and SIGKILLs, runs living out their stories,
then the checks (tests/soak/checks.py), one summary line and a table.

With `--replicas N` (N >= 2) the daemon is N replicas on one PostgreSQL database (a throwaway
server, tests/pg_server.py), each in a `Slot` of its own (state directory, process, client,
and its own port onto moto, so the tap knows which replica called what). They are SIGKILLed
and SIGSTOPped at random (SIGCONT after 0.3-2 lease TTLs: mostly after their leases moved),
some of each as moto answers their Stop/Terminate, before they commit its result. A killed
replica is restarted in its slot, half the time under the same replica id (as the systemd
template does: its earlier leases are handed back at its start) and half the time under a new
one (as a daemon started by hand, `<hostname>-<pid>`: its leases are claimed once they
expire); both paths of failover are taken.

One thread does everything but two things: moto serves in its own threads (in this process, so
every EC2 Stop/Terminate that reaches it is recorded), and a daemon restart (`supervisord
start`, ~2 s) runs in a thread so the world keeps moving while the daemon is down. Everything
is bounded: `--budget-s` for the whole soak (exceeded: a loud failure), one trainer process per
checkpointed run (15 % of runs, each alive only until its run's checkpoint step ends it).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import random
import re
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from supervisor.adapters.control import ControlClient
from supervisor.client import Supervisor
from supervisor.core.run import TERMINAL_PHASES
from tests.e2e.conftest import SUPERVISORD, TIMINGS, Cli
from tests.pg_server import PostgresServer
from tests.runtime.trainers import Trainer, Trainers
from tests.soak import checks, database
from tests.soak.aws import BUCKET, WATCHED, Ec2Call, RecordingMotoServer, World, aws_env
from tests.soak.plan import CrashBy, RunPlan, Story, make_plans

_PR_SET_CHILD_SUBREAPER = 36
TERMINAL = frozenset(str(phase) for phase in TERMINAL_PHASES)
TICK_S = 0.05
DB_POLL_S = 0.5
STATE_POLL_S = 1.0
ATTACH_RETRY_S = 0.5
ARMED_SHARE = 0.3
"""Kills that wait for the daemon's next successful Stop/Terminate and strike as moto answers
it: the daemon dies between the call and the commit of its result."""
ARMED_WAIT_S = 4.0
MIN_KILL_GAP_S = 3.0
START_TIMEOUT_S = 30.0
FINAL_RESERVE_S = 15.0
"""Kept from the budget for the clean stop, the checks and the teardown (at most 15 %)."""
SPOT_WAIT_S = 20.0
"""A spot warning waits for the run to be seen running, at most this long."""
FAULT_CODES = "Throttling,RequestLimitExceeded,InternalError,ServiceUnavailable,SlowDown"
FAULT_P = 0.05
BURST_P = 0.02
BURST_CALLS = 3
SETTINGS = {
    **TIMINGS,
    "SUPERVISOR_POLL_INITIAL_S": "0.5",
    "SUPERVISOR_POLL_MAX_S": "2",
    "SUPERVISOR_POLL_MAX_WITH_EVENTS_S": "2",
    "SUPERVISOR_GRACE_S": "0.3",
    "SUPERVISOR_RECONCILE_INTERVAL_S": "0.5",
    "SUPERVISOR_RETRY_BASE_S": "0.05",
    "SUPERVISOR_SHUTDOWN_TIMEOUT_S": "3",
    "SUPERVISOR_EVENTS_WAIT_S": "1",
    "SUPERVISOR_AUTO_TERMINATE": "1",
    "SUPERVISOR_ZOMBIE_INTERVAL_S": "1",
    "SUPERVISOR_ZOMBIE_WAIT_S": "1",
    "SUPERVISOR_TERMINATION_COOLDOWN_S": "2",
}
"""Compressed timings: polls 0.5 s doubling to 2 s, sweeps every 0.5 s (zombies every 1 s),
retries after 50/100/200 ms, zombies acted on 1 s after they are seen."""
LEASE_TTL_S = 5.0
"""The replicas' lease TTL: a claim round every 5/3 s, a dead or frozen replica's runs claimed
by the others within ~7 s, and an action starts only with 5/3 s of its lease left."""
FREEZE_TTLS = (0.3, 2.0)
"""A SIGSTOP lasts this many lease TTLs, drawn uniformly: some end before the leases expire
(the replica carries on), most after (its runs were claimed: it wakes and must not act)."""
NEW_ID_SHARE = 0.5
"""Restarts of a killed replica under a new replica id; the others keep theirs."""
PROGRESS_S = 10.0


class BudgetExceeded(Exception):
    pass


class DaemonProcess:
    """The real daemon: the very process `supervisord start` detaches (`supervisord start
    --foreground --detached-child`: JSON logs to the state directory's log only), started here
    directly so that a restart costs one interpreter start, not two (the detaching CLI imports
    the whole daemon just to spawn it, ~1.2 s of CPU on this machine)."""

    def __init__(self, cli: Cli) -> None:
        self.cli = cli
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(self, **extra_env: str) -> int:
        """Start it; return its pid once its socket answers (or raise, with the log's tail)."""
        with self.cli.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [SUPERVISORD, "start", "--foreground", "--detached-child"],
                env={**self.cli.env, **extra_env},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd="/",
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"supervisord exited with {self.process.returncode} before it answered"
                    f"{self.cli.log_tail()}"
                )
            if self.cli.socket_path.exists() and _answers(self.cli.socket_path):
                return self.process.pid
            time.sleep(0.05)
        raise RuntimeError(
            f"supervisord did not answer within {START_TIMEOUT_S:g}s{self.cli.log_tail()}"
        )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()

    def wait(self, timeout_s: float) -> None:
        if self.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=timeout_s)


@dataclass(frozen=True)
class Options:
    runs: int = 200
    kills: int = 20
    seed: int = 1
    budget_s: float = 540.0
    active_s: float | None = None
    """The window in which runs are attached and the daemon killed (default 55 % of the
    budget); the rest is for runs to settle, the clean stop and the checks."""
    keep: bool = False
    verbose: bool = False
    replicas: int = 1
    """1: the one daemon on its SQLite file; 2 or more: replicas on PostgreSQL."""
    stops: int = 0
    """SIGSTOPs of a replica (with replicas only)."""

    @property
    def window_s(self) -> float:
        return self.active_s if self.active_s is not None else self.budget_s * 0.55

    @property
    def replicated(self) -> bool:
        return self.replicas > 1


@dataclass
class _Kills:
    """SIGKILLs and SIGSTOPs: done, armed (struck as moto answered a Stop/Terminate), and
    the one strike armed now, if any."""

    done: int = 0
    armed: int = 0
    unexpected: int = 0
    restarts: int = 0
    new_ids: int = 0
    started: int = 0
    """Kills started (the schedule's index): a death is counted in `done` once it is seen."""
    stops: int = 0
    armed_stops: int = 0
    stops_started: int = 0
    next_at: float = 0.0
    next_stop_at: float = float("inf")
    armed_until: float | None = None
    armed_kind: str = ""
    """`kill` or `stop`."""
    armed_slot: Slot | None = None


@dataclass
class Slot:
    """One daemon's place in the soak: its state directory (in `cli`), its process and its
    client; with replicas, its replica id (`actor`, as the tap records its calls) and every
    id it has had."""

    index: int
    cli: Cli
    daemon: DaemonProcess
    client: Supervisor
    actor: str = "daemon"
    ids: list[str] = field(default_factory=list)
    restarting: threading.Thread | None = None
    restart_error: str | None = None
    expected_death: bool = False
    armed_death: bool = False
    frozen_until: float | None = None
    starts: int = 0
    kills: int = 0
    stops: int = 0

    @property
    def name(self) -> str:
        return f"r{self.index}"

    def up(self) -> bool:
        """Started, not restarting, not just killed, not frozen."""
        return (
            self.restarting is None
            and self.daemon.alive()
            and not self.expected_death
            and self.frozen_until is None
        )


@dataclass
class _RunState:
    trainer: Trainer | None = None
    attached_at: float | None = None
    next_try: float = 0.0
    spot_take_at: float | None = None
    warned_at: float | None = None
    finished: bool = False


@dataclass
class Soak:
    options: Options
    rng: random.Random = field(init=False)
    plans: list[RunPlan] = field(init=False)
    violations: list[str] = field(default_factory=list)
    figures: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.options.seed)
        self.plans = make_plans(self.rng, self.options.runs, self.options.window_s)
        self.state: dict[str, _RunState] = {p.run_id: _RunState() for p in self.plans}
        self.phases: dict[str, str] = {}
        self.kills = _Kills()
        self.slots: list[Slot] = []
        self.pg: PostgresServer | None = None
        self.pg_url = ""
        self.pg_phases: database.Phases | None = None
        self._strike_lock = threading.Lock()
        self._last_db = self._last_states = self._last_flush = self._last_progress = 0.0
        self._alive_extra: set[str] = set()
        self._log_figures: Counter[str] = Counter()
        self._slot_figures: dict[int, Counter[str]] = {}
        self._cli_calls = 0

    # -- the whole soak -----------------------------------------------------------------------

    def run(self) -> int:
        started = time.monotonic()
        self.reserve_s = min(FINAL_RESERVE_S, self.options.budget_s * 0.15)
        self.deadline = started + self.options.budget_s - self.reserve_s
        self.t0 = started
        _become_subreaper()
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
        self.moto = RecordingMotoServer()
        self.moto.start()
        state_dir = Path(tempfile.mkdtemp(prefix="soak", dir="/tmp"))
        self.trainers = Trainers()
        tables: dict[str, list[dict[str, Any]]] | None = None
        leases: database.LeaseHistory | None = None
        states: dict[str, str] = {}
        try:
            self.world = World(self.moto.url, self.rng)
            if self.options.replicated:
                self._start_postgresql()
            self._make_slots(state_dir)
            self._start_all()
            self._say(f"{len(self.slots)} daemon(s) up")
            try:
                self._drive()
                self.figures["drive_s"] = round(self._elapsed())
                self._settle()
                self.figures["settle_s"] = round(self._elapsed()) - self.figures["drive_s"]
            except BudgetExceeded as exc:  # still stop cleanly and check what there is
                self.violations.append(f"budget: {exc}")
            self.world.flush(everything=True)
            self._stop_all()
            if self.options.replicated:
                tables = database.read_tables(self.pg_url)
                leases = database.read_lease_history(self.pg_url)
            else:
                tables = checks.read_database(self.slots[0].cli.db_path)
            states = self.world.states(self._instances())
            assert self.moto.recorder is not None
            self.figures["aws_requests"] = self.moto.recorder.requests
        except Exception as exc:  # the harness's own failure is a failed soak, said loudly
            self.violations.append(f"harness: {type(exc).__name__}: {exc}")
            traceback.print_exc()
        finally:
            self._teardown(state_dir)
        if tables is not None:
            found = checks.evidence(self.plans, tables, states, self._calls(), leases)
            self.violations += checks.run_all(found)
            self.figures.update(found.counts)
        self.figures.update(self._log_figures)
        self.figures["seconds"] = round(time.monotonic() - started)
        if time.monotonic() - started > self.options.budget_s:
            self.violations.append(
                f"budget: the soak took {time.monotonic() - started:.0f}s, over --budget-s "
                f"{self.options.budget_s:g}"
            )
        own, children = (
            resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
        )
        self.figures["cpu_harness_s"] = round(own.ru_utime + own.ru_stime)
        self.figures["cpu_children_s"] = round(children.ru_utime + children.ru_stime)
        if self.kills.unexpected:
            self.violations.append(
                f"daemon: died {self.kills.unexpected} time(s) without being killed"
            )
        self._report(state_dir)
        return 1 if self.violations else 0

    def _env(self, state_dir: Path, aws_url: str) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("SUPERVISOR_", "AWS_"))}
        env = {
            **base,
            **aws_env(aws_url),
            **SETTINGS,
            "SUPERVISOR_STATE_DIR": str(state_dir),
            "SUPERVISOR_EVENTS_QUEUE_URL": self.world.queue_url,
        }
        if self.options.replicated:
            env |= {
                "SUPERVISOR_DATABASE_URL": self.pg_url,
                "SUPERVISOR_LEASE_TTL_S": f"{LEASE_TTL_S:g}",
            }
        return env

    def _start_postgresql(self) -> None:
        """A throwaway server, its database migrated and given the lease log (before any
        replica starts, so the log holds every lease from the first)."""
        self.pg = PostgresServer.start()
        self.pg_url = self.pg.url(self.pg.create_database("soak"))
        database.prepare(self.pg_url)
        self.pg_phases = database.Phases(self.pg_url)

    def _make_slots(self, root: Path) -> None:
        """One slot: the state directory `root`, moto's own port (the tap records its calls
        as `daemon`). Replicas: `root/rN` each, each with a port of its own onto moto."""
        for index in range(self.options.replicas):
            state_dir = root / f"r{index}" if self.options.replicated else root
            state_dir.mkdir(exist_ok=True)

            def actor(index: int = index) -> str:
                return self.slots[index].actor

            url = self.moto.add_port(actor) if self.options.replicated else self.moto.url
            cli = Cli(state_dir, self._env(state_dir, url))
            slot = Slot(
                index,
                cli,
                DaemonProcess(cli),
                Supervisor(state_dir=state_dir, timeout_s=10),
            )
            if self.options.replicated:
                slot.actor = f"soak-r{index}"
            slot.ids.append(slot.actor)
            self.slots.append(slot)

    def _start_all(self) -> None:
        """Start every daemon; replicas side by side (each start is a second or two of CPU,
        and they contend for the database's migration lock, which the harness took already)."""
        if not self.options.replicated:
            self._start(self.slots[0])
            return
        errors: list[str] = []

        def start(slot: Slot) -> None:
            try:
                self._start(slot)
            except Exception as exc:  # raised below, for every replica that failed
                errors.append(f"{slot.actor}: {exc}")

        threads = [threading.Thread(target=start, args=(slot,)) for slot in self.slots]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise RuntimeError("; ".join(errors))

    def _stop_all(self) -> None:
        """The clean stop at the end: every restart finished, every frozen replica thawed,
        then `supervisord stop` (replicas: its SIGTERM to each at once, then the wait for
        each, so their hand-backs overlap; `supervisord stop` does no more)."""
        for slot in self.slots:
            if slot.restarting is not None:
                slot.restarting.join(timeout=START_TIMEOUT_S)
                slot.restarting = None
            self._thaw(slot)
        if not self.options.replicated:
            self.slots[0].cli.stop_daemon()
            self.slots[0].daemon.wait(10)
            return
        for slot in self.slots:
            if slot.daemon.pid is not None and slot.daemon.alive():
                os.kill(slot.daemon.pid, signal.SIGTERM)
        for slot in self.slots:
            slot.daemon.wait(30)
            if slot.daemon.alive():
                raise RuntimeError(f"{slot.actor} did not stop within 30 s of its SIGTERM")

    def _say(self, text: str) -> None:
        if self.options.verbose:
            print(f"soak: {self._elapsed():7.2f}s {text}", file=sys.stderr, flush=True)

    def _elapsed(self) -> float:
        return time.monotonic() - self.t0

    def _check_budget(self, doing: str) -> None:
        if time.monotonic() > self.deadline:
            raise BudgetExceeded(
                f"--budget-s {self.options.budget_s:g} (less {self.reserve_s:g}s for the "
                f"checks) exceeded while {doing}; "
                f"{sum(p.attached for p in self.plans)}/{len(self.plans)} runs attached, "
                f"{self.kills.done}/{self.options.kills} kills; {self._pending()}"
            )

    def _pending(self) -> str:
        """What is not over yet, for a budget failure."""
        unfinished = [p.run_id for p in self.plans if not self.state[p.run_id].finished]
        open_runs = [f"{r} {ph}" for r, ph in sorted(self.phases.items()) if ph not in TERMINAL]
        return (
            f"stories not played out: {unfinished[:8]}; runs not ended: {open_runs[:8]}; "
            f"zombie instances still running: {sorted(self._alive_extra)[:8]}"
        )

    # -- the active window --------------------------------------------------------------------

    def _drive(self) -> None:
        """Attach, act, kill, freeze and restart until every story has played out and every
        kill and stop is done; the window stretches past `active_s` if they are not all done
        by then."""
        schedule = self._kill_schedule(self.options.kills)
        stops = self._kill_schedule(self.options.stops) if self.options.replicated else []
        while True:
            started, stopped = self.kills.started, self.kills.stops_started
            self.kills.next_at = schedule[started] if started < len(schedule) else float("inf")
            self.kills.next_stop_at = stops[stopped] if stopped < len(stops) else float("inf")
            self._check_budget("driving the runs")
            now = self._elapsed()
            self._tick_daemon(now)
            self._tick_runs(now)
            self._tick_world(now)
            self._progress(now)
            acted = all(self.state[p.run_id].finished for p in self.plans)
            struck = (
                self.kills.done >= self.options.kills
                and self.kills.stops >= (self.options.stops if self.options.replicated else 0)
                and self.kills.armed_until is None
            )
            if acted and struck and all(slot.up() for slot in self.slots):
                return
            time.sleep(TICK_S)

    def _settle(self) -> None:
        """After the last restart: until every run has ended and every zombie is gone."""
        while True:
            self._check_budget("waiting for the runs to settle")
            now = self._elapsed()
            self._tick_daemon(now)
            self._tick_world(now, force_states=True)
            self._progress(now)
            ended = len(self.phases) == len(self.plans) and all(
                phase in TERMINAL for phase in self.phases.values()
            )
            if ended and not self._alive_extra:
                return
            time.sleep(TICK_S * 4)

    def _progress(self, now: float) -> None:
        """One line every PROGRESS_S: how far the soak is."""
        if now - self._last_progress < PROGRESS_S:
            return
        self._last_progress = now
        ended = sum(1 for phase in self.phases.values() if phase in TERMINAL)
        attached = sum(p.attached for p in self.plans)
        line = (
            f"soak: progress {now:5.0f}s attached={attached}/{len(self.plans)} ended={ended} "
            f"kills={self.kills.done}/{self.options.kills}"
        )
        if self.options.replicated:
            up = sum(slot.up() for slot in self.slots)
            frozen = sum(slot.frozen_until is not None for slot in self.slots)
            line += (
                f" stops={self.kills.stops}/{self.options.stops} "
                f"replicas_up={up}/{len(self.slots)} frozen={frozen}"
            )
        print(line, flush=True)

    # -- the daemons --------------------------------------------------------------------------

    def _fault_plan(self, slot: Slot) -> str:
        seed = self.options.seed * 1000 + self.kills.restarts + 100 * slot.index
        return (
            f"*={FAULT_CODES}@{FAULT_P}; *=Throttling,InternalError@{BURST_P}x{BURST_CALLS}; "
            f"seed={seed}"
        )

    def _start(self, slot: Slot) -> None:
        extra = {"SUPERVISOR_FAULTS": self._fault_plan(slot)}
        if self.options.replicated:
            extra["SUPERVISOR_REPLICA_ID"] = slot.actor
        slot.daemon.start(**extra)
        slot.starts += 1

    def _daemon_up(self) -> bool:
        """Some daemon is up to take an attach."""
        return any(slot.up() for slot in self.slots)

    def _kill_schedule(self, count: int) -> list[float]:
        """The kill (or stop) moments: uniform over the window, at least MIN_KILL_GAP_S
        apart (a restart takes ~2 s); a moment that falls while no daemon may be struck
        waits for one."""
        times = sorted(self.rng.uniform(2.0, self.options.window_s) for _ in range(count))
        for index in range(1, len(times)):
            times[index] = max(times[index], times[index - 1] + MIN_KILL_GAP_S)
        return times

    def _tick_daemon(self, now: float) -> None:
        for slot in self.slots:
            self._tick_slot(slot, now)
        # A restart's new child is not known here until it is up: no reaping meanwhile.
        if all(slot.restarting is None for slot in self.slots):
            self._reap()
        with self._strike_lock:
            armed = self.kills.armed_slot
            if armed is not None and self.kills.armed_until is not None:
                if now > self.kills.armed_until:  # no Stop/Terminate came: strike now instead
                    kind = self.kills.armed_kind
                    self._disarm()
                    if not armed.up():
                        self._requeue(kind)
                    elif kind == "kill":
                        self._kill(armed)
                    else:
                        self._freeze(armed)
                return
        if now >= self.kills.next_at and self.kills.started < self.options.kills:
            target = self._target()
            if target is not None:
                self.kills.started += 1
                if self.rng.random() < ARMED_SHARE:
                    self._arm(target, "kill")
                else:
                    self._kill(target)
                return
        stops = self.options.stops if self.options.replicated else 0
        if now >= self.kills.next_stop_at and self.kills.stops_started < stops:
            target = self._target()
            if target is not None:
                self.kills.stops_started += 1
                if self.rng.random() < ARMED_SHARE:
                    self._arm(target, "stop")
                else:
                    self._freeze(target)

    def _target(self) -> Slot | None:
        """The daemon to strike: one that is up; with replicas, only while another one is
        up too (the fleet keeps taking attaches and commands), drawn at random."""
        up = [slot for slot in self.slots if slot.up() and slot is not self.kills.armed_slot]
        if not self.options.replicated:
            return up[0] if up else None
        return self.rng.choice(up) if len(up) >= 2 else None

    def _tick_slot(self, slot: Slot, now: float) -> None:
        if slot.restarting is not None:
            if slot.restarting.is_alive():
                return
            slot.restarting = None
            if slot.restart_error is not None:
                raise RuntimeError(f"{slot.actor} did not restart: {slot.restart_error}")
        if slot.daemon.process is None:
            return
        if not slot.daemon.alive():
            with self._strike_lock:
                if slot.expected_death:
                    self.kills.done += 1
                    self.kills.armed += slot.armed_death
                    slot.kills += 1
                else:
                    self.kills.unexpected += 1
                    print(
                        f"soak: {slot.actor} (pid {slot.daemon.pid}) died unexpectedly "
                        f"(exit {slot.daemon.process.returncode}){slot.cli.log_tail()}",
                        file=sys.stderr,
                    )
                    if self.kills.armed_slot is slot:
                        self._requeue(self.kills.armed_kind)
                        self._disarm()
                slot.expected_death = slot.armed_death = False
                slot.frozen_until = None
            self._restart_soon(slot)
            return
        if slot.frozen_until is not None and now >= slot.frozen_until:
            self._thaw(slot)

    def _kill(self, slot: Slot) -> None:
        self._say(f"SIGKILL {slot.actor} {slot.daemon.pid}")
        slot.expected_death = True
        slot.daemon.kill()

    def _freeze(self, slot: Slot, *, armed: bool = False) -> None:
        """SIGSTOP for 0.3-2 lease TTLs (SIGCONT from `_tick_slot`)."""
        pid = slot.daemon.pid
        if pid is None:
            return
        slot.frozen_until = self._elapsed() + self.rng.uniform(*FREEZE_TTLS) * LEASE_TTL_S
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGSTOP)
        self.kills.stops += 1
        self.kills.armed_stops += armed
        slot.stops += 1
        self._say(f"SIGSTOP {slot.actor} {pid} until {slot.frozen_until:.1f}s")

    def _thaw(self, slot: Slot) -> None:
        if slot.frozen_until is None:
            return
        slot.frozen_until = None
        if slot.daemon.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(slot.daemon.pid, signal.SIGCONT)
        self._say(f"SIGCONT {slot.actor} {slot.daemon.pid}")

    def _arm(self, slot: Slot, kind: str) -> None:
        """Strike `slot` (`kill` or `stop`) as moto answers its next successful Stop or
        Terminate: it dies or freezes between the call and the commit of its result."""
        pid = slot.daemon.pid
        assert pid is not None and self.moto.recorder is not None
        self.kills.armed_until = self._elapsed() + ARMED_WAIT_S
        self.kills.armed_kind = kind
        self.kills.armed_slot = slot
        actor = slot.actor

        def strike(call: Ec2Call) -> None:
            if call.actor != actor or not call.ok or call.operation == "StartInstances":
                return
            with self._strike_lock:
                if self.kills.armed_slot is not slot:
                    return
                self._disarm()
                if kind == "kill":
                    slot.expected_death = slot.armed_death = True
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                else:
                    self._freeze(slot, armed=True)

        self.moto.recorder.after_call = strike

    def _disarm(self) -> None:
        """(Under `_strike_lock`.)"""
        assert self.moto.recorder is not None
        self.moto.recorder.after_call = None
        self.kills.armed_until = None
        self.kills.armed_slot = None

    def _requeue(self, kind: str) -> None:
        """An armed strike that cannot happen (its daemon is down): strike again later."""
        if kind == "kill":
            self.kills.started -= 1
        else:
            self.kills.stops_started -= 1

    def _restart_soon(self, slot: Slot) -> None:
        """Restart the dead daemon in a thread, after a short random downtime; a replica
        under its own id or (NEW_ID_SHARE) a new one."""
        downtime = self.rng.uniform(0.0, 1.0)
        new_id = self.options.replicated and self.rng.random() < NEW_ID_SHARE

        def restart() -> None:
            try:
                time.sleep(downtime)
                self.kills.restarts += 1
                if new_id:
                    self.kills.new_ids += 1
                    slot.actor = f"soak-r{slot.index}-{slot.starts + 1}"
                    slot.ids.append(slot.actor)
                self._say(f"restarting {slot.actor} (restart {self.kills.restarts})")
                self._start(slot)
                self._say(f"{slot.actor} {slot.daemon.pid} up")
            except BaseException as exc:  # reported by the main loop
                slot.restart_error = f"{type(exc).__name__}: {exc}"

        slot.restarting = threading.Thread(target=restart, name="restart", daemon=True)
        slot.restarting.start()

    def _reap(self) -> None:
        """Reap our exited children that no Popen waits for: the checkpoint programs a killed
        daemon had started (in sessions of their own; we are their subreaper). Only between
        restarts: a restart's new child is not known here until it is up."""
        popens = [t.process for t in self.trainers.made]
        popens += [slot.daemon.process for slot in self.slots]
        for process in popens:
            if process is not None:
                process.poll()
        mine = {p.pid for p in popens if p is not None and p.returncode is None}
        for pid in _zombie_children():
            if pid not in mine:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)

    # -- runs ---------------------------------------------------------------------------------

    def _tick_runs(self, now: float) -> None:
        self._cli_calls = 0
        for plan in self.plans:
            state = self.state[plan.run_id]
            if state.finished:
                continue
            if not plan.instance_id and now >= plan.attach_at - 1.0:
                self._prepare(plan, state)
            if (
                plan.instance_id
                and not plan.attached
                and now >= plan.attach_at
                and now >= state.next_try
            ):
                self._attach(plan, state, now)
            if plan.attached and state.attached_at is not None:
                self._act(plan, state, now)

    def _prepare(self, plan: RunPlan, state: _RunState) -> None:
        plan.instance_id = self.world.launch()
        if plan.checkpoint:
            state.trainer = self.trainers.start(plan.run_id, step_s=0.3, size=2048)
        if plan.story is Story.CRASH_BEFORE:
            self.world.end_instance(plan.instance_id, str(plan.crash_by))
            plan.steps.append(f"{plan.crash_by} before attach")
            plan.acted = True

    def _spec(self, plan: RunPlan, trainer: Trainer | None) -> dict[str, Any]:
        fields: dict[str, Any] = {"on_complete": plan.on_complete}
        if plan.spot:
            fields["spot"] = True
        if plan.tag_instance:
            fields["tag_instance"] = True
        if plan.story is Story.CRASH_AFTER:
            # A FAILED marker leaves the instance running (a zombie the sweep must catch), as
            # the story's checks expect; on_crash=stop is covered by the runtime and e2e tests.
            fields["on_crash"] = "keep"
        if trainer is not None:
            fields |= {
                "transport": "local",
                "checkpoint_dir": str(trainer.checkpoint_dir),
                "pid_file": str(trainer.pid_file),
                "sigterm_timeout_s": 5.0,
                "quiet_s": 0.3,
                "grace_s": 5.0,
            }
        return fields

    def _attach(self, plan: RunPlan, state: _RunState, now: float) -> None:
        up = [slot for slot in self.slots if slot.up()]
        if not up:
            return
        if state.trainer is not None and not state.trainer.checkpoints():
            return  # the trainer is still starting: the checkpoint step needs a file
        if plan.via_cli and self._cli_calls:
            return  # one CLI process (~1 s of CPU) per tick, so the loop keeps its pace
        self._cli_calls += plan.via_cli
        plan.attach_tries += 1
        slot = self.rng.choice(up) if self.options.replicated else up[0]
        prefix = f"s3://{BUCKET}/runs/{plan.run_id}/"
        fields = self._spec(plan, state.trainer)
        error = ""
        if plan.via_cli:
            done = slot.cli.ctl(
                "attach",
                plan.run_id,
                "--instance-id",
                plan.instance_id,
                "--s3-prefix",
                prefix,
                *_flags(fields),
                "--json",
            )
            error = (
                ""
                if done.returncode == 0
                else f"exit {done.returncode}: {done.stderr.strip()[:300]}"
            )
        else:
            try:
                slot.client.attach(plan.run_id, plan.instance_id, prefix, **fields)
            except Exception as exc:  # refused, not running, killed mid-request
                error = f"{type(exc).__name__}: {exc}"
        if error and not self._in_database(plan.run_id):
            state.next_try = now + ATTACH_RETRY_S
            if self.options.verbose:
                print(
                    f"soak: attach {plan.run_id} failed (try {plan.attach_tries}): {error}",
                    file=sys.stderr,
                )
            return
        plan.attached = True
        state.attached_at = now
        through = f" through {slot.actor}" if self.options.replicated else ""
        reply = " (reply lost)" if error else ""
        plan.steps.append(f"attached at {now:.1f}s{through}{reply}")

    def _act(self, plan: RunPlan, state: _RunState, now: float) -> None:
        assert state.attached_at is not None
        due = now >= state.attached_at + plan.act_after
        if plan.story is Story.CRASH_BEFORE:
            state.finished = True
        elif plan.story in (Story.COMPLETE, Story.ZOMBIE):
            if not plan.acted and due:
                self.world.put(f"runs/{plan.run_id}/{plan.marker}", "ok\n", notify=plan.notify)
                plan.steps.append(f"{plan.marker} at {now:.1f}s")
                plan.acted = True
            if plan.acted and (plan.story is Story.COMPLETE or plan.zombie_instance):
                state.finished = True
            elif plan.acted and self.phases.get(plan.run_id) in TERMINAL:
                plan.zombie_instance = self.world.launch_zombie(plan.run_id)
                self._alive_extra.add(plan.zombie_instance)
                plan.steps.append(f"zombie {plan.zombie_instance} at {now:.1f}s")
                state.finished = True
        elif plan.story is Story.CRASH_AFTER:
            if due:
                if plan.crash_by is CrashBy.FAILED_MARKER:
                    self.world.put(
                        f"runs/{plan.run_id}/FAILED", "loss is nan\n", notify=plan.notify
                    )
                    self._alive_extra.add(plan.instance_id)
                else:
                    self.world.end_instance(plan.instance_id, str(plan.crash_by))
                if state.trainer is not None and state.trainer.process is not None:
                    state.trainer.process.kill()  # the job dies with its instance
                plan.steps.append(
                    f"{plan.crash_by} at {now:.1f}s (run was {self.phases.get(plan.run_id)})"
                )
                plan.acted = state.finished = True
        elif plan.story is Story.SPOT:
            if state.warned_at is None and due:
                seen_running = self.phases.get(plan.run_id) not in (None, "pending")
                if seen_running or now > state.attached_at + plan.act_after + SPOT_WAIT_S:
                    self.world.spot_warning(plan.instance_id)
                    state.warned_at = now
                    plan.steps.append(
                        f"spot warning at {now:.1f}s (run was {self.phases.get(plan.run_id)})"
                    )
            if state.warned_at is not None and now >= state.warned_at + plan.spot_gap:
                self.world.end_instance(plan.instance_id, "terminate")
                plan.steps.append(
                    f"reclaimed at {now:.1f}s (run was {self.phases.get(plan.run_id)})"
                )
                plan.acted = state.finished = True

    # -- the world ------------------------------------------------------------------------------

    def _tick_world(self, now: float, *, force_states: bool = False) -> None:
        if now - self._last_flush >= self.rng.uniform(0.2, 0.8):
            self.world.flush()
            self._last_flush = now
        if now - self._last_db >= DB_POLL_S:
            self.phases = self._read_phases()
            self._last_db = now
        every = STATE_POLL_S if force_states else STATE_POLL_S * 3
        if self._alive_extra and now - self._last_states >= every:
            states = self.world.states(self._alive_extra)
            self._alive_extra = {i for i, s in states.items() if s in ("pending", "running")}
            self._last_states = now

    def _read_phases(self) -> dict[str, str]:
        if self.pg_phases is not None:
            return self.pg_phases.read()
        db_path = self.slots[0].cli.db_path
        if not db_path.exists():
            return {}
        uri = f"file:{db_path}?mode=ro"
        try:
            with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=5)) as db:
                return dict(db.execute("SELECT run_id, phase FROM runs").fetchall())
        except sqlite3.Error:
            return self.phases

    def _in_database(self, run_id: str) -> bool:
        return run_id in self._read_phases()

    def _instances(self) -> set[str]:
        found = {p.instance_id for p in self.plans if p.instance_id}
        return found | {p.zombie_instance for p in self.plans if p.zombie_instance}

    def _calls(self) -> list[Ec2Call]:
        return self.moto.calls() if self.moto.recorder is not None else []

    # -- the end ------------------------------------------------------------------------------

    def _teardown(self, state_dir: Path) -> None:
        for slot in self.slots:
            if slot.restarting is not None:
                slot.restarting.join(timeout=30)
            self._thaw(slot)
            if slot.daemon.alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.daemon.pid or 0, signal.SIGTERM)
                slot.daemon.wait(10)
                slot.daemon.kill()
                slot.daemon.wait(5)
        for pid in _processes_mentioning(str(self.trainers.root)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.trainers.close()
        logs: list[str] = []
        for slot in self.slots:
            figures = checks.log_figures(slot.cli.log_path)
            self._log_figures.update(figures)
            self._slot_figures[slot.index] = figures
            with contextlib.suppress(OSError):
                text = slot.cli.log_path.read_text(encoding="utf-8", errors="replace")
                prefix = f"{slot.name} " if self.options.replicated else ""
                logs += [prefix + line for line in text.splitlines()]
        if self.options.replicated:
            logs.sort(key=lambda line: m.group(1) if (m := LOG_TIME.search(line)) else "")
        self._daemon_log = "\n".join(logs)
        self._reap_all()
        with contextlib.suppress(Exception):
            self.moto.stop()
        if self.pg_phases is not None:
            self.pg_phases.close()
        if self.pg is not None:
            self.pg.stop()
        if not self.options.keep:
            shutil.rmtree(state_dir, ignore_errors=True)

    def _reap_all(self) -> None:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                time.sleep(0.05)
                if not _children():
                    return

    def _report(self, state_dir: Path) -> None:
        f = self.figures
        phases = ",".join(
            f"{k.removeprefix('phase_')}:{v}"
            for k, v in sorted(f.items())
            if k.startswith("phase_")
        )
        sent = self.world.sent if hasattr(self, "world") else Counter[str]()
        fields = {
            "seed": self.options.seed,
            "runs": len(self.plans),
            "attached": f["attached"],
            "kills": self.kills.done,
            "armed_kills": self.kills.armed,
            "restarts": self.kills.restarts,
            "faults": f["faults"],
            "aws_requests": f["aws_requests"],
            "sqs_sent": sent["messages"],
            "sqs_duplicates": sent["duplicates"],
            "daemon_stops": f["stops"],
            "daemon_terminates": f["terminates"],
            "redrives": f["redrives"],
            "zombies": f["zombies"],
            "checkpointed": f["checkpointed"],
            "verified": f["verified"],
            "transitions": f["transitions"],
            "checkpoint_checks_failed": f"{f['checkpoint_checks_failed']}/{f['checkpoint_checks']}",
            "crash_reports_unread": f["crash_reports_unread"],
            "receive_failures": f["receive_failures"],
            "log_errors": f["log_errors"],
            "phases": phases or "-",
            "cpu_s": f"{f['cpu_harness_s']}+{f['cpu_children_s']}",
            "drive_s": f["drive_s"],
            "settle_s": f["settle_s"],
            "seconds": f["seconds"],
            "violations": len(self.violations),
        }
        if self.options.replicated:
            fields = {
                "seed": self.options.seed,
                "replicas": self.options.replicas,
                **{k: v for k, v in fields.items() if k != "seed"},
            }
            fields |= {
                "stops": self.kills.stops,
                "armed_stops": self.kills.armed_stops,
                "new_ids": self.kills.new_ids,
                "lease_checked": f["lease_checked"],
                "leases_lost": f["leases_lost"],
                "claims": f["claims"],
            }
            fields["violations"] = fields.pop("violations")
        line = "soak: " + " ".join(f"{k}={v}" for k, v in fields.items())
        print(line, flush=True)
        for row in self._table():
            print(f"soak: {row}", flush=True)
        for violation in self.violations:
            print(f"  violation: {violation}", flush=True)
        for line in self._error_lines()[:ERROR_LINES]:
            print(f"  log error: {line[:600]}", flush=True)
        self._print_log_of_runs_in(self.violations)
        if self.options.keep:
            print(f"soak: state kept in {state_dir}", flush=True)

    def _error_lines(self) -> list[str]:
        """The daemons' error lines (`log_errors`): not a check's violation, but each one is
        worth a look, and the state directory is gone by now."""
        lines = getattr(self, "_daemon_log", "").splitlines()
        return [line for line in lines if '"level": "error"' in line or '"critical"' in line]

    def _table(self) -> list[str]:
        """The summary table: each daemon (with replicas: each slot, its ids over its
        restarts) and each check with its violations."""
        calls = self._calls()
        rows = [f"{'daemon':<8}{'replica ids':<24}{'starts':>7}{'kills':>6}{'stops':>6}"
                f"{'actions':>8}{'claims':>7}{'lost':>6}"]  # fmt: skip
        for slot in self.slots:
            figures = self._slot_figures.get(slot.index, Counter[str]())
            actions = sum(1 for c in calls if c.actor in slot.ids and c.operation in WATCHED)
            ids = slot.ids[0] + (f" (+{len(slot.ids) - 1} new)" if len(slot.ids) > 1 else "")
            rows.append(
                f"{slot.name:<8}{ids:<24}{slot.starts:>7}{slot.kills:>6}{slot.stops:>6}"
                f"{actions:>8}{figures['claims']:>7}{figures['leases_lost']:>6}"
            )
        found = Counter(v.split(":", 1)[0] for v in self.violations)
        checked = CHECKS if self.options.replicated else CHECKS[:-1]
        rows.append(f"{'check':<62}{'violations':>12}")
        for key, what in checked:
            rows.append(f"{what:<62}{found.pop(key, 0):>12}")
        for key, count in sorted(found.items()):
            rows.append(f"{key + ' (the soak itself)':<62}{count:>12}")
        return rows

    def _print_log_of_runs_in(self, violations: list[str]) -> None:
        """The daemon's last log lines about each run a phase or lease violation names (with
        replicas, every replica's, in time order): the state directory is gone by now, and a
        soak that failed in CI is otherwise a riddle."""
        runs = sorted(
            {m.group(1) or m.group(2) for v in violations for m in [RUN_VIOLATION.search(v)] if m}
        )
        lines = getattr(self, "_daemon_log", "").splitlines()
        for run_id in runs[:4]:
            about = [line for line in lines if f'"{run_id}"' in line][-LOG_LINES_PER_RUN:]
            print(f"  daemon log, last {len(about)} lines about {run_id}:", flush=True)
            for line in about:
                print(f"    {line[:400]}", flush=True)


CHECKS = (
    ("ledger", "ledger: runs or transitions lost or doubled"),
    ("chain", "chain: broken transition chains"),
    ("phase", "phase: runs not in their story's phase"),
    ("instance", "instance: instances not in their run's state"),
    ("checkpoint", "checkpoint: terminates without a verified checkpoint"),
    ("action", "action: stop/terminate again after success, or unexplained"),
    ("lease", "lease: actions by a replica without a valid lease"),
)
"""The checks' violation prefixes (checks.py), in the table's order; `lease` with replicas."""
RUN_VIOLATION = re.compile(r"^phase: (\S+) |^lease: .* run (\S+)'s lease")
LOG_LINES_PER_RUN = 25
ERROR_LINES = 5
LOG_TIME = re.compile(r'"timestamp": "([^"]+)"')


def _answers(socket_path: Path) -> bool:
    """Whether the daemon answers a status request on its socket (as `supervisord start`
    checks it)."""

    async def probe() -> bool:
        try:
            async with ControlClient(socket_path, timeout_s=2) as client:
                await client.status()
        except Exception:
            return False
        return True

    return asyncio.run(probe())


def _flags(fields: dict[str, Any]) -> list[str]:
    """`supervisorctl attach` flags for spec fields."""
    argv: list[str] = []
    for key, value in fields.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            argv.append(flag)
        else:
            argv += [flag, str(value)]
    return argv


def _become_subreaper() -> None:
    """Adopt the daemons `supervisord start` detaches (and their children), so they can be
    reaped here; this machine's init does not reap them."""
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def _children() -> list[tuple[int, str]]:
    """(pid, state letter) of this process's children."""
    me = os.getpid()
    found: list[tuple[int, str]] = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        if len(fields) > 1 and int(fields[1]) == me:
            found.append((int(proc.name), fields[0]))
    return found


def _zombie_children() -> list[int]:
    return [pid for pid, state in _children() if state == "Z"]


def _processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line contains `text` (a directory only this soak made)."""
    found: list[int] = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(int(proc.name))
    return found
