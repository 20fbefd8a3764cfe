"""The soak's end-of-run checks, over what the daemon recorded (its SQLite file, read only),
what moto says now, and every EC2 Stop/Terminate request that reached moto.

Each check returns one line per violation; none of them reads a clock or calls AWS.

What "made twice for the same intent after it succeeded" means here (`check_single_action`):

- An *intent* is what the daemon commits before it acts. For a run: a transition into
  `stopping` or `terminating` (its `at`). For a zombie: its row in `zombies` with the action it
  took (from `marked_at`).
- Its success is *recorded* at the first of: the run's `action_acked_at` (committed after the
  call succeeded, for the run's newest intent), the run leaving the acting phase (a transition
  whose `from` is `stopping`/`terminating`); for a zombie, the first line of `terminations`
  with outcome accepted, confirmed or not-found for that instance and action.
- A successful (2xx) call by the daemon that reached moto *after* that moment, on the same
  instance with the same operation, is a violation: the daemon knew the intent was done and
  acted again. Moto stamps a call once its answer exists, and the daemon stamps the record
  after it read that answer, so the first success is always before its own record.
- A second success *before* the record is not a violation: a daemon killed between the call
  and the commit of its result never recorded the success, and must re-drive the call after
  the restart (EC2's stop and terminate are idempotent). These are counted as `redrives`.
- A successful Stop/Terminate by the daemon that no intent explains (no run's acting
  transition and no zombie on that instance before it) is a violation too.

Calls made by the harness itself (playing AWS: crashes, spot reclaims) are not the daemon's and
are left out of both this check and the checkpoint check.

With replicas (`check_leases`): every Stop/Terminate/Start a replica sent must have arrived at
the tap while that replica held the lease it acts under, by the lease history the harness
logged in PostgreSQL (tests/soak/database.py): the run's lease while the run was active, the
leader duty's lease for a zombie (an instance tagged with an ended run's id, or an ended run's
own instance left running). Held means: the lease's newest state stamped before the call names
that replica and has not expired at the call's arrival.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from supervisor.core.run import TERMINAL_PHASES
from tests.soak.aws import WATCHED, Ec2Call
from tests.soak.database import LeaseHistory, LeaseState
from tests.soak.plan import CrashBy, RunPlan, Story

ACTING = {"stopping": "StopInstances", "terminating": "TerminateInstances"}
ZOMBIE_OPERATION = {"stop": "StopInstances", "terminate": "TerminateInstances"}
ALIVE = frozenset({"pending", "running"})
ENDED_STATES = {"stopped": {"stopping", "stopped"}, "terminated": {"shutting-down", "terminated"}}
SUCCESSFUL_ZOMBIE_OUTCOMES = frozenset({"accepted", "confirmed", "not-found"})
VERIFIED_REASON = "checkpoint verified"


def ts(value: str | None) -> float | None:
    return datetime.fromisoformat(value).timestamp() if value else None


@dataclass
class Evidence:
    plans: list[RunPlan]
    runs: dict[str, dict[str, Any]]
    transitions: dict[str, list[dict[str, Any]]]
    instances: list[dict[str, Any]]
    actions: list[dict[str, Any]]
    zombies: dict[str, dict[str, Any]]
    terminations: list[dict[str, Any]]
    states: dict[str, str]
    """Every instance the harness launched, as moto describes it now."""
    calls: list[Ec2Call]
    counts: Counter[str] = field(default_factory=Counter)
    """Figures for the summary line, filled in by the checks."""
    leases: LeaseHistory | None = None
    """With replicas: every lease's history (None: one daemon, nothing to check)."""

    @property
    def by_instance(self) -> dict[str, RunPlan]:
        """Run plans by their own instance and by their zombie instance."""
        found = {p.instance_id: p for p in self.plans if p.instance_id}
        found.update({p.zombie_instance: p for p in self.plans if p.zombie_instance})
        return found

    def daemon_calls(self, *operations: str) -> list[Ec2Call]:
        return [
            c for c in self.calls if c.actor != "harness" and c.ok and c.operation in operations
        ]


def read_database(path: Path) -> dict[str, list[dict[str, Any]]]:
    """Every row the checks need, through a read-only connection."""
    uri = f"file:{path}?mode=ro"
    tables = ("runs", "transitions", "instances", "actions", "zombies", "terminations")
    with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=10)) as db:
        db.row_factory = sqlite3.Row
        return {
            table: [dict(row) for row in db.execute(f"SELECT * FROM {table} ORDER BY rowid")]
            for table in tables
        }


def evidence(
    plans: list[RunPlan],
    tables: dict[str, list[dict[str, Any]]],
    states: dict[str, str],
    calls: list[Ec2Call],
    leases: LeaseHistory | None = None,
) -> Evidence:
    transitions: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in tables["transitions"]:
        transitions[row["run_id"]].append(row)
    for rows in transitions.values():
        rows.sort(key=lambda r: (r["seq"], r["id"]))
    return Evidence(
        plans=plans,
        runs={row["run_id"]: row for row in tables["runs"]},
        transitions=dict(transitions),
        instances=tables["instances"],
        actions=tables["actions"],
        zombies={row["instance_id"]: row for row in tables["zombies"]},
        terminations=tables["terminations"],
        states=states,
        calls=calls,
        leases=leases,
    )


def run_all(e: Evidence) -> list[str]:
    return [
        *check_ledger(e),
        *check_chains(e),
        *check_phases(e),
        *check_instances(e),
        *check_checkpoint_invariant(e),
        *check_single_action(e),
        *check_leases(e),
    ]


# -- nothing lost or duplicated -----------------------------------------------------------------


def check_ledger(e: Evidence) -> list[str]:
    """Every planned run attached and in `runs` exactly once, nothing else there; one instance
    row per run (its own instance); no transition twice; every action of a known run."""
    found: list[str] = []
    planned = {p.run_id for p in e.plans}
    for plan in e.plans:
        if not plan.attached:
            found.append(f"ledger: {plan.run_id} was never attached ({plan.attach_tries} tries)")
        elif plan.run_id not in e.runs:
            found.append(f"ledger: {plan.run_id} was attached but is not in the database (lost)")
    found += [
        f"ledger: {run_id} is in the database but was never attached"
        for run_id in sorted(set(e.runs) - planned)
    ]
    attached = sum(p.attached for p in e.plans)
    if len(e.runs) != attached:
        found.append(f"ledger: {len(e.runs)} runs in the database, {attached} attached")
    rows = Counter(r["run_id"] for r in e.instances)
    for plan in e.plans:
        if plan.run_id not in e.runs:
            continue
        mine = [r["instance_id"] for r in e.instances if r["run_id"] == plan.run_id]
        if mine != [plan.instance_id]:
            found.append(
                f"ledger: {plan.run_id} has instance rows {mine}, expected [{plan.instance_id}]"
            )
    found += [f"ledger: instance rows of unknown run {r}" for r in sorted(set(rows) - set(e.runs))]
    for run_id, transitions in e.transitions.items():
        seqs = Counter(t["seq"] for t in transitions)
        twice = sorted(s for s, n in seqs.items() if n > 1)
        if twice:
            found.append(f"ledger: {run_id} has transitions with the same seq twice: {twice}")
        if run_id not in e.runs:
            found.append(f"ledger: transitions of unknown run {run_id}")
    found += [
        f"ledger: action {a['id']} of unknown run {a['run_id']}"
        for a in e.actions
        if a["run_id"] not in e.runs
    ]
    e.counts["attached"] = sum(p.attached for p in e.plans)
    e.counts["transitions"] = sum(len(t) for t in e.transitions.values())
    return found


def check_chains(e: Evidence) -> list[str]:
    """Per run: seq 1..N without a gap, the first from nothing to pending, each `from` the
    previous `to`; the run's row at version N in the last `to` phase."""
    found: list[str] = []
    for run_id, row in sorted(e.runs.items()):
        transitions = e.transitions.get(run_id, [])
        seqs = [t["seq"] for t in transitions]
        if seqs != list(range(1, len(seqs) + 1)):
            found.append(f"chain: {run_id} seq is not 1..{len(seqs)}: {seqs}")
            continue
        previous: str | None = None
        for t in transitions:
            if t["from_phase"] != previous:
                found.append(
                    f"chain: {run_id} seq {t['seq']} goes {t['from_phase']} -> {t['to_phase']}, "
                    f"but the run was {previous}"
                )
                break
            previous = t["to_phase"]
        if transitions and transitions[0]["to_phase"] != "pending":
            found.append(f"chain: {run_id} starts in {transitions[0]['to_phase']}, not pending")
        if row["version"] != len(transitions) or row["phase"] != previous:
            found.append(
                f"chain: {run_id} row says v{row['version']} {row['phase']}, its transitions "
                f"end at seq {len(transitions)} {previous}"
            )
    return found


# -- phases and instances -------------------------------------------------------------------------


def _verified(row: dict[str, Any]) -> bool:
    return bool(row.get("checkpoint") == "verified")


def _keeps_data(plan: RunPlan, row: dict[str, Any]) -> bool:
    """The zombie rule: a run with checkpointing and no verified checkpoint keeps its data."""
    return plan.checkpoint and not _verified(row)


def check_phases(e: Evidence) -> list[str]:
    found: list[str] = []
    phases: Counter[str] = Counter()
    for plan in e.plans:
        row = e.runs.get(plan.run_id)
        if row is None:
            continue  # the ledger says so
        phases[row["phase"]] += 1
        expected = plan.expected_phases(_verified(row))
        if row["phase"] not in expected:
            found.append(
                f"phase: {plan.run_id} ({plan.story}, on_complete={plan.on_complete}, "
                f"checkpoint={'yes' if plan.checkpoint else 'no'}) is {row['phase']} "
                f"({row['reason'][:160]}), expected {'/'.join(sorted(expected))}; "
                f"harness: {'; '.join(plan.steps)}"
            )
    e.counts.update({f"phase_{k}": v for k, v in phases.items()})
    return found


def check_instances(e: Evidence) -> list[str]:
    """No instance that should be stopped or terminated is still running, and each is in the
    state its run's phase says; an instance left running on purpose (done) still runs."""
    found: list[str] = []

    def expect(instance_id: str, allowed: set[str], why: str) -> None:
        state = e.states.get(instance_id, "unknown")
        if state not in allowed:
            found.append(
                f"instance: {instance_id} is {state}, expected {'/'.join(sorted(allowed))}: {why}"
            )

    for plan in e.plans:
        row = e.runs.get(plan.run_id)
        if row is None:
            continue
        phase, instance = row["phase"], plan.instance_id
        if phase in ENDED_STATES:
            expect(instance, ENDED_STATES[phase], f"run {plan.run_id} is {phase}")
        elif phase == "done":
            expect(instance, {"running"}, f"run {plan.run_id} is done (on_complete=none)")
        elif phase == "interrupted":
            expect(instance, ENDED_STATES["terminated"], f"spot run {plan.run_id} was reclaimed")
        elif phase == "crashed":
            if plan.story is Story.CRASH_AFTER and plan.crash_by is CrashBy.FAILED_MARKER:
                # Its instance ran on after the run crashed: the zombie sweep ends it.
                end = "stopped" if _keeps_data(plan, row) else "terminated"
                expect(instance, ENDED_STATES[end], f"run {plan.run_id} crashed, instance a zombie")
            else:
                how = "stopped" if plan.crash_by is CrashBy.STOP else "terminated"
                expect(instance, ENDED_STATES[how], f"run {plan.run_id} crashed ({plan.crash_by})")
        else:
            found.append(f"instance: {instance} of run {plan.run_id} is still watched ({phase})")
        if plan.zombie_instance:
            end = "stopped" if _keeps_data(plan, row) else "terminated"
            expect(plan.zombie_instance, ENDED_STATES[end], f"zombie tagged {plan.run_id}")
    e.counts["zombies"] = sum(1 for p in e.plans if p.zombie_instance) + sum(
        1 for p in e.plans if p.story is Story.CRASH_AFTER and p.crash_by is CrashBy.FAILED_MARKER
    )
    return found


# -- the checkpoint invariant -------------------------------------------------------------------


def check_checkpoint_invariant(e: Evidence) -> list[str]:
    """No instance of a run with checkpointing (its own, or a zombie tagged with its id) was
    terminated by the daemon unless that run's checkpoint was verified before the call."""
    found: list[str] = []
    owners = e.by_instance
    for call in e.daemon_calls("TerminateInstances"):
        for instance in call.instance_ids:
            plan = owners.get(instance)
            if plan is None or not plan.checkpoint:
                continue
            row = e.runs.get(plan.run_id, {})
            verified_at = min(
                (
                    ts(t["at"]) or 0.0
                    for t in e.transitions.get(plan.run_id, [])
                    if str(t["reason"]).startswith(VERIFIED_REASON)
                ),
                default=None,
            )
            if not _verified(row) or verified_at is None or verified_at > call.at:
                found.append(
                    f"checkpoint: {instance} (run {plan.run_id}, checkpoint "
                    f"{row.get('checkpoint')}) was terminated by the daemon at "
                    f"{datetime.fromtimestamp(call.at).isoformat()} without a verified "
                    f"checkpoint before it (verified at {verified_at})"
                )
    for plan in e.plans:
        ended = e.runs.get(plan.run_id)
        if (
            ended is not None
            and plan.checkpoint
            and ended["phase"] == "terminated"
            and not _verified(ended)
        ):
            found.append(
                f"checkpoint: {plan.run_id} is terminated with checkpoint {ended['checkpoint']}"
            )
    e.counts["checkpointed"] = sum(p.checkpoint for p in e.plans)
    e.counts["verified"] = sum(
        1 for p in e.plans if p.checkpoint and _verified(e.runs.get(p.run_id, {}))
    )
    return found


# -- one successful call per intent ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Intent:
    owner: str
    instance_id: str
    operation: str
    since: float
    recorded: float | None
    """When its success (or its end) was first recorded in the database; None: never."""


def intents(e: Evidence) -> list[Intent]:
    found: list[Intent] = []
    for run_id, transitions in e.transitions.items():
        row = e.runs.get(run_id)
        if row is None:
            continue
        for index, t in enumerate(transitions):
            operation = ACTING.get(t["to_phase"])
            if operation is None:
                continue
            since = ts(t["at"]) or 0.0
            later = transitions[index + 1 :]
            left = next((ts(x["at"]) for x in later if x["from_phase"] == t["to_phase"]), None)
            marks = [left] if left is not None else []
            newest = not any(x["to_phase"] in ACTING for x in later)
            acked = ts(row.get("action_acked_at"))
            if newest and acked is not None and acked >= since:
                marks.append(acked)
            found.append(
                Intent(
                    f"run {run_id} seq {t['seq']}",
                    row["instance_id"],
                    operation,
                    since,
                    min(marks, default=None),
                )
            )
    for instance_id, zombie in e.zombies.items():
        action = zombie.get("action")
        if action not in ZOMBIE_OPERATION:
            continue
        recorded = [
            ts(t["at"]) or 0.0
            for t in e.terminations
            if t["instance_id"] == instance_id
            and t["action"] == action
            and t["outcome"] in SUCCESSFUL_ZOMBIE_OUTCOMES
        ]
        found.append(
            Intent(
                f"zombie {instance_id} (run {zombie['run_id']})",
                instance_id,
                ZOMBIE_OPERATION[action],
                ts(zombie["marked_at"]) or 0.0,
                min(recorded, default=None),
            )
        )
    return found


def check_single_action(e: Evidence) -> list[str]:
    """See the module docstring."""
    found: list[str] = []
    by_key: dict[tuple[str, str], list[Intent]] = defaultdict(list)
    for intent in intents(e):
        by_key[(intent.instance_id, intent.operation)].append(intent)
    successes: Counter[str] = Counter()
    calls = e.daemon_calls("StopInstances", "TerminateInstances")
    for call in sorted(calls, key=lambda c: c.at):
        for instance in call.instance_ids:
            candidates = [
                i for i in by_key.get((instance, call.operation), []) if i.since <= call.at
            ]
            if not candidates:
                found.append(
                    f"action: {call.operation} {instance} succeeded at "
                    f"{datetime.fromtimestamp(call.at).isoformat()} and no intent explains it "
                    f"(no acting transition or zombie on it before)"
                )
                continue
            intent = max(candidates, key=lambda i: i.since)
            successes[intent.owner] += 1
            if intent.recorded is not None and call.at > intent.recorded:
                found.append(
                    f"action: {call.operation} {instance} succeeded again at "
                    f"{datetime.fromtimestamp(call.at).isoformat()}, "
                    f"{call.at - intent.recorded:.3f}s after {intent.owner} recorded it done"
                )
            elif successes[intent.owner] > 1:
                e.counts["redrives"] += 1
    e.counts["stops"] = sum(1 for c in calls if c.operation == "StopInstances")
    e.counts["terminates"] = sum(1 for c in calls if c.operation == "TerminateInstances")
    return found


# -- replicas: no action without a valid lease -----------------------------------------------------

LEADER_DUTY = "leader"


def _ended_at(transitions: list[dict[str, Any]]) -> float | None:
    """When the run reached its first terminal phase (its lease ends there)."""
    terminal = {str(phase) for phase in TERMINAL_PHASES}
    return next((ts(t["at"]) for t in transitions if t["to_phase"] in terminal), None)


def _state_at(history: list[LeaseState], at: float) -> LeaseState | None:
    return next((s for s in reversed(history) if s.logged_at <= at), None)


def check_leases(e: Evidence) -> list[str]:
    """See the module docstring. Every action that reached moto counts, whatever moto
    answered: an action is the request, not its success."""
    if e.leases is None:
        return []
    found: list[str] = []
    owners = e.by_instance
    calls = [c for c in e.calls if c.actor != "harness" and c.operation in WATCHED]
    for call in sorted(calls, key=lambda c: c.sent_at):
        at = call.sent_at
        for instance in call.instance_ids:
            plan = owners.get(instance)
            if plan is None:
                found.append(f"lease: {call.actor} {call.operation} {instance}: no run's")
                continue
            ended = _ended_at(e.transitions.get(plan.run_id, []))
            own = instance == plan.instance_id and (ended is None or at < ended)
            key = ("run", plan.run_id) if own else ("duty", LEADER_DUTY)
            state = _state_at(e.leases.get(key, []), at)
            e.counts["lease_checked"] += 1
            if state is not None and state.valid_for(call.actor, at):
                continue
            then = (
                "nobody held it"
                if state is None or state.owner is None
                else f"{state.owner} held it (epoch {state.epoch}) until "
                f"{datetime.fromtimestamp(state.until or 0).isoformat()}"
            )
            what = f"run {plan.run_id}'s lease" if own else f"the {LEADER_DUTY} duty lease"
            found.append(
                f"lease: {call.actor} sent {call.operation} {instance} at "
                f"{datetime.fromtimestamp(at).isoformat()} without {what}: {then}"
            )
    return found


LOGGED = {
    "fault_injected": "faults",
    "checkpoint_checked": "checkpoint_checks",
    "crash_report_unread": "crash_reports_unread",
    "queue_receive_failed": "receive_failures",
    "lease_lost": "leases_lost",
}
"""Log events counted for the summary (the three before the last show what faults cost; see
the report of issue 6's soak). With replicas, also the runs claimed (`runs_claimed`'s runs)."""


def log_figures(log_path: Path) -> Counter[str]:
    """Faults injected, a few costly consequences, and error lines, from the daemon's JSON
    log (every restart appends to it)."""
    figures: Counter[str] = Counter()
    try:
        lines = log_path.read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return figures
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if not isinstance(entry, dict):
            continue
        name = LOGGED.get(str(entry.get("event")))
        if name is not None:
            figures[name] += 1
        if entry.get("event") == "runs_claimed" and isinstance(entry.get("runs"), int):
            figures["claims"] += entry["runs"]
        if entry.get("event") == "checkpoint_checked" and entry.get("ok") is False:
            figures["checkpoint_checks_failed"] += 1
        if entry.get("level") in ("error", "critical"):
            figures["log_errors"] += 1
    return figures
