"""The soak's driver: the real daemon under faults and SIGKILLs, runs living out their stories,
then the checks (tests/soak/checks.py) and one summary line.

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
from tests.runtime.trainers import Trainer, Trainers
from tests.soak import checks
from tests.soak.aws import BUCKET, Ec2Call, RecordingMotoServer, World, aws_env
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

    @property
    def window_s(self) -> float:
        return self.active_s if self.active_s is not None else self.budget_s * 0.55


@dataclass
class _Kills:
    done: int = 0
    armed: int = 0
    unexpected: int = 0
    restarts: int = 0
    next_at: float = 0.0
    armed_until: float | None = None
    expected_death: bool = False


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
        self.restarting: threading.Thread | None = None
        self.restart_error: str | None = None
        self._last_db = self._last_states = self._last_flush = 0.0
        self._alive_extra: set[str] = set()
        self._log_figures: Counter[str] = Counter()
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
        self.cli = Cli(state_dir, self._env(state_dir))
        self.daemon = DaemonProcess(self.cli)
        tables: dict[str, list[dict[str, Any]]] | None = None
        states: dict[str, str] = {}
        try:
            self.world = World(self.moto.url, self.rng)
            self.cli.env["SUPERVISOR_EVENTS_QUEUE_URL"] = self.world.queue_url
            self.client = Supervisor(state_dir=state_dir, timeout_s=10)
            self._start_daemon()
            try:
                self._drive()
                self.figures["drive_s"] = round(self._elapsed())
                self._settle()
                self.figures["settle_s"] = round(self._elapsed()) - self.figures["drive_s"]
            except BudgetExceeded as exc:  # still stop cleanly and check what there is
                self.violations.append(f"budget: {exc}")
            self.world.flush(everything=True)
            if self.restarting is not None:
                self.restarting.join(timeout=START_TIMEOUT_S)
            self.cli.stop_daemon()
            self.daemon.wait(10)
            tables = checks.read_database(self.cli.db_path)
            states = self.world.states(self._instances())
            assert self.moto.recorder is not None
            self.figures["aws_requests"] = self.moto.recorder.requests
        except Exception as exc:  # the harness's own failure is a failed soak, said loudly
            self.violations.append(f"harness: {type(exc).__name__}: {exc}")
            traceback.print_exc()
        finally:
            self._teardown(state_dir)
        if tables is not None:
            found = checks.evidence(self.plans, tables, states, self._calls())
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

    def _env(self, state_dir: Path) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("SUPERVISOR_", "AWS_"))}
        return {
            **base,
            **aws_env(self.moto.url),
            **SETTINGS,
            "SUPERVISOR_STATE_DIR": str(state_dir),
        }

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
        """Attach, act, kill and restart until every story has played out and every kill is
        done; the window stretches past `active_s` if the kills are not all done by then."""
        schedule = self._kill_schedule()
        while True:
            self.kills.next_at = (
                schedule[self.kills.done] if self.kills.done < len(schedule) else float("inf")
            )
            self._check_budget("driving the runs")
            now = self._elapsed()
            self._tick_daemon(now)
            self._tick_runs(now)
            self._tick_world(now)
            acted = all(self.state[p.run_id].finished for p in self.plans)
            if acted and self.kills.done >= self.options.kills and self._daemon_up():
                return
            time.sleep(TICK_S)

    def _settle(self) -> None:
        """After the last restart: until every run has ended and every zombie is gone."""
        while True:
            self._check_budget("waiting for the runs to settle")
            now = self._elapsed()
            self._tick_daemon(now)
            self._tick_world(now, force_states=True)
            ended = len(self.phases) == len(self.plans) and all(
                phase in TERMINAL for phase in self.phases.values()
            )
            if ended and not self._alive_extra:
                return
            time.sleep(TICK_S * 4)

    # -- the daemon ---------------------------------------------------------------------------

    def _fault_plan(self) -> str:
        seed = self.options.seed * 1000 + self.kills.restarts
        return (
            f"*={FAULT_CODES}@{FAULT_P}; *=Throttling,InternalError@{BURST_P}x{BURST_CALLS}; "
            f"seed={seed}"
        )

    def _start_daemon(self) -> None:
        self.daemon.start(SUPERVISOR_FAULTS=self._fault_plan())

    def _daemon_up(self) -> bool:
        """Started, not restarting, and not just killed."""
        return self.restarting is None and self.daemon.alive() and not self.kills.expected_death

    def _kill_schedule(self) -> list[float]:
        """The kill moments: uniform over the window, at least MIN_KILL_GAP_S apart (a restart
        takes ~2 s); a moment that falls while the daemon restarts waits for it to be up."""
        times = sorted(
            self.rng.uniform(2.0, self.options.window_s) for _ in range(self.options.kills)
        )
        for index in range(1, len(times)):
            times[index] = max(times[index], times[index - 1] + MIN_KILL_GAP_S)
        return times

    def _tick_daemon(self, now: float) -> None:
        if self.restarting is not None:
            if self.restarting.is_alive():
                return
            self.restarting = None
            if self.restart_error is not None:
                raise RuntimeError(f"the daemon did not restart: {self.restart_error}")
        if self.daemon.process is None:
            return
        if not self.daemon.alive():
            if self.kills.expected_death or self.kills.armed_until is not None:
                self.kills.done += 1
                self.kills.armed += self.kills.armed_until is not None
            else:
                self.kills.unexpected += 1
                print(
                    f"soak: the daemon (pid {self.daemon.pid}) died unexpectedly "
                    f"(exit {self.daemon.process.returncode}){self.cli.log_tail()}",
                    file=sys.stderr,
                )
            self.kills.expected_death = False
            self.kills.armed_until = None
            assert self.moto.recorder is not None
            self.moto.recorder.after_call = None
            self._restart_soon()
            return
        self._reap()
        if self.kills.armed_until is not None:
            if now > self.kills.armed_until:  # no Stop/Terminate came: strike now instead
                self.kills.armed_until = None
                assert self.moto.recorder is not None
                self.moto.recorder.after_call = None
                self._kill()
            return
        if self.kills.expected_death:
            return  # killed; its death is seen at the next tick
        if now >= self.kills.next_at and self.kills.done < self.options.kills:
            if self.rng.random() < ARMED_SHARE:
                self._arm()
            else:
                self._kill()

    def _kill(self) -> None:
        self._say(f"SIGKILL daemon {self.daemon.pid}")
        self.kills.expected_death = True
        self.daemon.kill()

    def _arm(self) -> None:
        pid = self.daemon.pid
        assert pid is not None and self.moto.recorder is not None
        self.kills.armed_until = self._elapsed() + ARMED_WAIT_S

        def strike(call: Ec2Call) -> None:
            if call.actor == "daemon" and call.ok and call.operation != "StartInstances":
                assert self.moto.recorder is not None
                self.moto.recorder.after_call = None
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

        self.moto.recorder.after_call = strike

    def _restart_soon(self) -> None:
        """Restart the dead daemon in a thread, after a short random downtime."""
        downtime = self.rng.uniform(0.0, 1.0)

        def restart() -> None:
            try:
                time.sleep(downtime)
                self.kills.restarts += 1
                self._say(f"restarting the daemon (restart {self.kills.restarts})")
                self._start_daemon()
                self._say(f"daemon {self.daemon.pid} up")
            except BaseException as exc:  # reported by the main loop
                self.restart_error = f"{type(exc).__name__}: {exc}"

        self.restarting = threading.Thread(target=restart, name="restart", daemon=True)
        self.restarting.start()

    def _reap(self) -> None:
        """Reap our exited children that no Popen waits for: the checkpoint programs a killed
        daemon had started (in sessions of their own; we are their subreaper). Only between
        restarts: a restart's new child is not known here until it is up."""
        popens = [t.process for t in self.trainers.made] + [self.daemon.process]
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
        if not self._daemon_up():
            return
        if state.trainer is not None and not state.trainer.checkpoints():
            return  # the trainer is still starting: the checkpoint step needs a file
        if plan.via_cli and self._cli_calls:
            return  # one CLI process (~1 s of CPU) per tick, so the loop keeps its pace
        self._cli_calls += plan.via_cli
        plan.attach_tries += 1
        prefix = f"s3://{BUCKET}/runs/{plan.run_id}/"
        fields = self._spec(plan, state.trainer)
        error = ""
        if plan.via_cli:
            done = self.cli.ctl(
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
                self.client.attach(plan.run_id, plan.instance_id, prefix, **fields)
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
        plan.steps.append(f"attached at {now:.1f}s" + (" (reply lost)" if error else ""))

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
        if not self.cli.db_path.exists():
            return {}
        uri = f"file:{self.cli.db_path}?mode=ro"
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
        if self.restarting is not None:
            self.restarting.join(timeout=30)
        if self.daemon.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.daemon.pid or 0, signal.SIGTERM)
            self.daemon.wait(10)
            self.daemon.kill()
            self.daemon.wait(5)
        for pid in _processes_mentioning(str(self.trainers.root)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.trainers.close()
        self._log_figures = checks.log_figures(self.cli.log_path)
        with contextlib.suppress(OSError):
            self._daemon_log = self.cli.log_path.read_text(encoding="utf-8", errors="replace")
        self._reap_all()
        with contextlib.suppress(Exception):
            self.moto.stop()
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
        line = "soak: " + " ".join(f"{k}={v}" for k, v in fields.items())
        print(line, flush=True)
        for violation in self.violations:
            print(f"  violation: {violation}", flush=True)
        self._print_log_of_runs_in(self.violations)
        if self.options.keep:
            print(f"soak: state kept in {state_dir}", flush=True)

    def _print_log_of_runs_in(self, violations: list[str]) -> None:
        """The daemon's last log lines about each run a phase violation names: the state
        directory is gone by now, and a soak that failed in CI is otherwise a riddle."""
        runs = sorted({m.group(1) for v in violations for m in [PHASE_VIOLATION.match(v)] if m})
        lines = getattr(self, "_daemon_log", "").splitlines()
        for run_id in runs[:4]:
            about = [line for line in lines if f'"{run_id}"' in line][-LOG_LINES_PER_RUN:]
            print(f"  daemon log, last {len(about)} lines about {run_id}:", flush=True)
            for line in about:
                print(f"    {line[:400]}", flush=True)


PHASE_VIOLATION = re.compile(r"phase: (\S+) ")
LOG_LINES_PER_RUN = 25


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
