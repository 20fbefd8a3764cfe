"""The store port's methods for any SQL backend, over a few primitives a backend provides.

`SqlStore` runs the statements of `supervisor.adapters.statements` (built from the column
declarations of `supervisor.adapters.schema`) and decodes their rows. A backend subclasses it
and provides reading, reading in pages, writing in one transaction (with the version check),
closing, and the exception its driver raises for a key that is taken: the SQLite adapter
(`supervisor.adapters.store.Store`) does, and so will a PostgreSQL one, rendering the `?`
placeholders with its `schema.Dialect`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

from supervisor.adapters import statements as sql
from supervisor.adapters.schema import DUTY_LEASES, INBOX, OUTBOX, REPLICAS, RUNS, Row
from supervisor.adapters.schema import timestamp as _iso
from supervisor.core.duties import DutyLease
from supervisor.core.errors import DutyLost, InvalidInput, LeaseLost, StaleVersion
from supervisor.core.inbox import (
    ANSWER_CHANNEL,
    INBOX_CHANNEL,
    RELEASED_CHANNEL,
    TRANSITION_CHANNEL,
    InboxAnswer,
    InboxItem,
    InboxKind,
    InboxState,
    decode_body,
    encode_body,
)
from supervisor.core.leases import Lease, LeasedRun, Replica, ReplicaState, ReplicaStatus
from supervisor.core.machine import Decision, run_id_taken
from supervisor.core.outbox import (
    DeliveryState,
    Notice,
    NotifyEvent,
    OutboxRow,
    TargetDelivery,
    transition_notice,
    zombie_notice,
)
from supervisor.core.records import (
    ActionRecord,
    AttachmentRecord,
    FleetReport,
    IdleDay,
    InstanceRecord,
    ReportProblemRecord,
    RunDataRecord,
    RunRecord,
    TerminationDay,
    TransitionRecord,
    idle_after_end_s,
)
from supervisor.core.reports import FinalMetrics, History, Report, StatusReport
from supervisor.core.run import TERMINAL_PHASES, Outcome, Run
from supervisor.core.values import InstanceId
from supervisor.core.zombies import (
    SUCCESSFUL_OUTCOMES,
    TERMINATED_OUTCOMES,
    ZOMBIE_PHASES,
    AttemptOutcome,
    Termination,
    Zombie,
    ZombieState,
)

_TERMINAL = tuple(sorted(TERMINAL_PHASES))
_ACTIVE = f" WHERE phase NOT IN ({sql.placeholders(_TERMINAL)})"
"""The runs a daemon watches (parameters: `_TERMINAL`)."""
_ENDED = RUNS.project(("job_ended_at", "action_acked_at"))
"""What the idle instance-seconds after a job's end are counted from."""
_IN_CHUNK = 500  # ids per `IN (...)`: well under SQLite's limit on bound parameters

# -- replicas: the run inbox and duty leases ----------------------------------------------------
_INSERT_INBOX = INBOX.insert()
_ANSWERED = ("state", "answer_json", "answered_at", "answered_by")
_ANSWER_INBOX = INBOX.update(_ANSWERED, where=("id", "state"))
_INBOX_ITEM_I = INBOX.project(
    ("id", "run_id", "kind", "body_json", "created_at", "created_by"), alias="i"
)
_INBOX_ANSWER = INBOX.project(("state", "answer_json", "answered_by"))
_DUTY = DUTY_LEASES.project()


class SqlStore(ABC):
    """The run database over SQL (implements `supervisor.runtime.ports.RunStore`)."""

    _key_taken: ClassVar[tuple[type[BaseException], ...]]
    """What the driver raises when an INSERT meets a taken key."""

    # -- what a backend provides --------------------------------------------------------------

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def _read(self, text: str, params: Iterable[Any] = ()) -> list[Row]:
        """The rows of one query (`?` placeholders), on a connection that does not write."""

    @abstractmethod
    def _pages(self, text: str, params: Iterable[Any], page: int) -> AsyncIterator[list[Row]]:
        """The rows of one query, `page` at a time."""

    @abstractmethod
    async def _write(
        self, statements: Iterable[sql.Statement], *, stale_if_unchanged: str = ""
    ) -> None:
        """Run statements in one transaction, in order.

        With `stale_if_unchanged`, the first statement must change a row (a version-checked
        UPDATE); otherwise everything is rolled back and `StaleVersion` raised with that text.
        """

    # -- the port ------------------------------------------------------------------------------

    async def create_run(self, decision: Decision, *, lease: Lease | None = None) -> None:
        """Insert a new run with its first transition (with `lease`: owned under it from the
        start). Raises `InvalidInput` if it exists."""
        run, t = decision.run, decision.transition
        assert t is not None and run.version == 1
        spec = run.spec
        first = InstanceRecord(spec.instance_id, spec.region, t.at, "attached")
        statements = [
            sql.insert_run(run, now=t.at),
            sql.insert_transition(spec.run_id, run.version, t),
            sql.insert_instance(spec.run_id, first),
        ]
        if lease is not None:
            statements.append(
                (
                    "UPDATE runs SET owner = ?, epoch = ?, lease_until = ? WHERE run_id = ?",
                    (lease.owner, lease.epoch, _iso(lease.until), spec.run_id),
                )
            )
        try:
            await self._write(statements)
        except self._key_taken:
            existing = await self.get_run(spec.run_id)
            raise InvalidInput(
                run_id_taken(existing.run)
                if existing is not None
                else f"run id {spec.run_id!r} is taken: attach this run under a new run id"
            ) from None

    async def commit(
        self, before: Run, decision: Decision, *, now: datetime, lease: Lease | None = None
    ) -> None:
        """Persist a decision: the transition and run row together, or the changed fields
        alone (`persist`). Raises `StaleVersion` when `before` is not the stored version, and
        with `lease`, `LeaseLost` when the run is no longer owned under it (fencing)."""
        run, t = decision.run, decision.transition
        if t is None and not decision.persist:
            return
        run_id = run.spec.run_id
        statements = [sql.update_run(run, before_version=before.version, now=now)]
        if lease is not None:
            statements[0] = _fenced_update(statements[0], lease)
        if run.instance_id != before.instance_id:  # a resume launched a new instance
            launched = InstanceRecord(run.instance_id, run.spec.region, now, "launched")
            statements.append(sql.insert_instance(run_id, launched, if_new=True))
        if t is not None:
            statements.append(sql.insert_transition(run_id, run.version, t))
            statements += self._notify(TRANSITION_CHANNEL, run_id)  # tail -f on other replicas
            statements += self._outbox(transition_notice(before, decision, self.notify_on))
        try:
            await self._write(
                statements,
                stale_if_unchanged=f"run {run_id} is no longer at version {before.version}",
            )
        except StaleVersion:
            if lease is not None:
                await self._raise_if_lost(run_id, lease)
            raise

    async def record_action(self, record: ActionRecord, *, lease: Lease | None = None) -> None:
        await self._fenced_write([sql.insert_action(record)], record.run_id, lease)

    async def attach(
        self,
        record: AttachmentRecord,
        *,
        lease: Lease | None = None,
        duty: DutyLease | None = None,
    ) -> None:
        """Attach a file or link to a run; attaching the same one again refreshes it. Fenced
        by the run's `lease` (its monitor), or by a fleet-wide `duty` (the crash-report
        pass over ended runs)."""
        if duty is not None:
            await self._duty_fenced_write([sql.upsert_attachment(record)], duty)
            return
        await self._fenced_write([sql.upsert_attachment(record)], record.run_id, lease)

    async def record_report(
        self,
        run_id: str,
        key: str,
        report: Report,
        *,
        read_at: datetime,
        now: datetime,
        lease: Lease | None = None,
    ) -> None:
        """Store what the job reported (one file's content, at `key`), replacing that file's
        last one; a note that an earlier version of the file could not be read goes."""
        last_step: int | None = None
        match report:
            case StatusReport():
                sets: dict[str, Any] = {
                    "status_json": report.model_dump(mode="json"),
                    "status_at": read_at,
                    "step": report.step,
                    "wandb_run_id": report.wandb_run_id,
                    "wandb_url": report.wandb_url,
                }
            case FinalMetrics():
                wandb = report.wandb
                sets = {
                    "final_metrics_json": {
                        "metrics": report.metrics,
                        "wandb": wandb.model_dump() if wandb else None,
                        "runtime_s": report.runtime_s,
                    },
                    "total_steps": report.total_steps,
                }
                if wandb is not None and wandb.run_id:
                    sets |= {"wandb_run_id": wandb.run_id, "wandb_url": wandb.url}
            case History():
                sets = {"history_json": report.records}
                last_step = report.last_step
        statements = [sql.upsert_run_data(run_id, sets, now=now)]
        if last_step is not None:
            # total_steps: the final metrics' own count wins over the history's last step.
            statements.append(
                (
                    "UPDATE run_data SET total_steps = ? WHERE run_id = ? AND total_steps IS NULL",
                    (last_step, run_id),
                )
            )
        statements.append(
            ("DELETE FROM report_problems WHERE run_id = ? AND key = ?", (run_id, key))
        )
        await self._fenced_write(statements, run_id, lease)

    async def record_report_problem(
        self, problem: ReportProblemRecord, *, lease: Lease | None = None
    ) -> None:
        """Note that a report file could not be read, replacing the note on its last version."""
        await self._fenced_write([sql.upsert_report_problem(problem)], problem.run_id, lease)

    async def report_problems(self, run_id: str) -> list[ReportProblemRecord]:
        rows = await self._read(
            f"SELECT {sql.REPORT_PROBLEM_SELECT.sql} FROM report_problems "
            "WHERE run_id = ? ORDER BY noted_at, key",
            (run_id,),
        )
        return [sql.report_problem_record(row) for row in rows]

    async def run_data(self, run_id: str) -> RunDataRecord | None:
        rows = await self._read(
            f"SELECT {sql.RUN_DATA_SELECT.sql} FROM run_data WHERE run_id = ?", (run_id,)
        )
        return sql.run_data_record(rows[0]) if rows else None

    async def record_audit(
        self, *, at: datetime, source: str, kind: str, subject: str | None, detail: dict[str, Any]
    ) -> None:
        """Something seen that caused nothing (a message no run owns, a malformed one)."""
        await self._write(
            [sql.insert_audit(at=at, source=source, kind=kind, subject=subject, detail=detail)]
        )

    # -- reads ----------------------------------------------------------------------------

    async def audit(self, *, limit: int = 100) -> list[dict[str, Any]]:
        """The newest audit entries first."""
        rows = await self._read(
            f"SELECT {sql.AUDIT_SELECT.sql} FROM audit ORDER BY id DESC LIMIT ?", (limit,)
        )
        return [sql.audit_entry(row) for row in rows]

    async def get_run(self, run_id: str) -> RunRecord | None:
        rows = await self._read(f"SELECT {sql.RUN_COLUMNS} FROM runs WHERE run_id = ?", (run_id,))
        return sql.run_record(rows[0]) if rows else None

    async def runs(self, *, active_only: bool = False) -> list[RunRecord]:
        text = f"SELECT {sql.RUN_COLUMNS} FROM runs"
        params: tuple[Any, ...] = ()
        if active_only:
            text += _ACTIVE
            params = _TERMINAL
        rows = await self._read(text + " ORDER BY created_at, run_id", params)
        return [sql.run_record(row) for row in rows]

    async def active_runs(self, *, page: int = 500) -> AsyncIterator[list[RunRecord]]:
        """Every run not in a terminal phase, `page` at a time: a restart starts each page's
        monitors while the next is read, and never holds all the rows at once."""
        text = f"SELECT {sql.RUN_COLUMNS} FROM runs{_ACTIVE} ORDER BY created_at, run_id"
        async for rows in self._pages(text, _TERMINAL, page):
            yield [sql.run_record(row) for row in rows]

    async def transitions(self, run_id: str, *, after_seq: int = 0) -> list[TransitionRecord]:
        rows = await self._read(
            f"SELECT {sql.TRANSITION_SELECT.sql} FROM transitions "
            "WHERE run_id = ? AND seq > ? ORDER BY seq",
            (run_id, after_seq),
        )
        return [sql.transition_record(row) for row in rows]

    async def instances(self, run_id: str) -> list[InstanceRecord]:
        """The run's instance history: the attached one, then any a resume launched."""
        rows = await self._read(
            f"SELECT {sql.INSTANCE_SELECT.sql} FROM instances WHERE run_id = ? "
            # The attached one first, then launches in time order (no rowid on PostgreSQL).
            "ORDER BY attached_at, CASE source WHEN 'attached' THEN 0 ELSE 1 END, instance_id",
            (run_id,),
        )
        return [sql.instance_record(row) for row in rows]

    async def crashed_without_crash_log(self, *, since: datetime) -> list[RunRecord]:
        """Runs that crashed (outcome crashed: phase crashed, or stopped/terminated by
        on_crash) at `since` or later and have no crash log attached: a daemon killed between
        the crash's commit and reading the report leaves these."""
        rows = await self._read(
            f"SELECT {sql.RUN_COLUMNS} FROM runs WHERE outcome = ? AND phase_since >= ? AND NOT "
            "EXISTS (SELECT 1 FROM attachments a WHERE a.run_id = runs.run_id AND "
            "a.kind = 'crash-log') ORDER BY phase_since, run_id",
            (Outcome.CRASHED.value, _iso(since)),
        )
        return [sql.run_record(row) for row in rows]

    async def attachments(self, run_id: str) -> list[AttachmentRecord]:
        rows = await self._read(
            f"SELECT {sql.ATTACHMENT_SELECT.sql} FROM attachments WHERE run_id = ? ORDER BY id",
            (run_id,),
        )
        return [sql.attachment_record(row) for row in rows]

    async def actions(self, run_id: str) -> list[ActionRecord]:
        rows = await self._read(
            f"SELECT {sql.ACTION_SELECT.sql} FROM actions WHERE run_id = ? ORDER BY id",
            (run_id,),
        )
        return [sql.action_record(row) for row in rows]

    # -- zombies and terminations --------------------------------------------------------------

    async def save_zombie(
        self,
        zombie: Zombie,
        termination: Termination | None = None,
        *,
        duty: DutyLease | None = None,
    ) -> None:
        """Upsert the zombie's row and append its terminations-log line, in one transaction;
        with `duty` (the sweep's leader lease), only while it is still held (`DutyLost`)."""
        statements = [sql.upsert_zombie(zombie)]
        if termination is not None:
            statements.append(sql.insert_termination(termination))
        statements += self._outbox(zombie_notice(zombie, self.notify_on))
        await self._duty_fenced_write(statements, duty)

    async def zombies(self, *, open_only: bool = True) -> list[Zombie]:
        """Zombie records, oldest mark first; by default only open ones (still zombies)."""
        text = f"SELECT {sql.ZOMBIE_SELECT.sql} FROM zombies"
        params: tuple[Any, ...] = ()
        if open_only:
            states = sorted(s for s in ZombieState if s.open)
            text += f" WHERE state IN ({sql.placeholders(states)})"
            params = tuple(states)
        # region too: one instance may be a zombie in two regions (one order on both backends)
        rows = await self._read(text + " ORDER BY marked_at, instance_id, region", params)
        return [sql.zombie(row) for row in rows]

    async def terminations(self, *, since: datetime | None = None) -> list[Termination]:
        """The terminations log, oldest first."""
        rows = await self._read(
            f"SELECT {sql.TERMINATION_SELECT.sql} FROM terminations WHERE at >= ? ORDER BY id",
            (_iso(since) if since is not None else "",),
        )
        return [sql.termination(row) for row in rows]

    async def ended_run_instances(self, *, since: datetime) -> list[tuple[InstanceId, str]]:
        """(instance id, region) of the current instance of every run that entered a zombie
        phase (`ZOMBIE_PHASES`) at or after `since`."""
        phases = sorted(ZOMBIE_PHASES)
        rows = await self._read(
            "SELECT DISTINCT instance_id, region FROM runs "
            f"WHERE phase IN ({sql.placeholders(phases)}) AND phase_since >= ?",
            (*phases, _iso(since)),
        )
        return [(InstanceId(instance_id), region) for instance_id, region in rows]

    async def runs_on_instances(
        self, instance_ids: Iterable[str], run_ids: Iterable[str] = ()
    ) -> list[Run]:
        """Every run, in any phase, whose current instance is one of `instance_ids`, and every
        run named in `run_ids`."""
        found: dict[str, Run] = {}
        for column, values in (("instance_id", instance_ids), ("run_id", run_ids)):
            unique = sorted(set(values))
            for start in range(0, len(unique), _IN_CHUNK):
                chunk = unique[start : start + _IN_CHUNK]
                rows = await self._read(
                    f"SELECT {sql.RUN_COLUMNS} FROM runs "
                    f"WHERE {column} IN ({sql.placeholders(chunk)})",
                    chunk,
                )
                for row in rows:
                    run = sql.run_record(row).run
                    found[run.spec.run_id] = run
        return list(found.values())

    async def active_owner(self, instance_id: str, region: str) -> str | None:
        """The active run whose current instance this is, if there is one."""
        rows = await self._read(
            f"SELECT run_id FROM runs{_ACTIVE} AND instance_id = ? AND region = ? LIMIT 1",
            (*_TERMINAL, instance_id, region),
        )
        return str(rows[0][0]) if rows else None

    async def runs_by_phase_and_outcome(self) -> dict[tuple[str, str | None], int]:
        """How many runs are in each (phase, outcome): one GROUP BY, for `/metrics` and
        `supervisord status` (no run is loaded)."""
        rows = await self._read("SELECT phase, outcome, COUNT(*) FROM runs GROUP BY phase, outcome")
        return {(str(phase), outcome): int(n) for phase, outcome, n in rows}

    async def run_regions(self) -> set[str]:
        rows = await self._read("SELECT DISTINCT region FROM runs")
        return {str(region) for (region,) in rows}

    async def fleet_report(self, *, since: datetime) -> FleetReport:
        """Terminations per UTC day since `since`; runs attached since then, by outcome."""
        terminated = _sql_list(TERMINATED_OUTCOMES)
        succeeded = _sql_list(SUCCESSFUL_OUTCOMES)
        failed = _sql_list({AttemptOutcome.UNAUTHORIZED, AttemptOutcome.FAILED})
        terminations = f"action = 'terminate' AND outcome IN ({terminated})"
        stops = f"action = 'stop' AND outcome IN ({terminated})"
        day_rows = await self._read(
            "SELECT substr(at, 1, 10) AS day, "
            f"{_count(terminations)} AS terminations, "
            f"{_count(stops)} AS stops, "
            f"{_count('calls > 0')} AS attempts, "
            f"{_count(f'calls > 0 AND outcome IN ({succeeded})')} AS succeeded, "
            f"{_count(f'outcome IN ({failed})')} AS failed, "
            f"AVG(CASE WHEN action = 'terminate' AND outcome IN ({terminated}) "
            "THEN seconds_since_marked END) AS mean_s "
            "FROM terminations WHERE at >= ? GROUP BY day ORDER BY day",
            (_iso(since),),
        )
        outcome_rows = await self._read(
            "SELECT outcome, COUNT(*) AS n FROM runs WHERE created_at >= ? GROUP BY outcome",
            (_iso(since),),
        )
        open_states = sorted(s for s in ZombieState if s.open)
        count = await self._read(
            f"SELECT COUNT(*) FROM zombies WHERE state IN ({sql.placeholders(open_states)})",
            open_states,
        )
        ended_rows = await self._read(
            f"SELECT {_ENDED.sql} FROM runs "
            "WHERE job_ended_at >= ? AND action_acked_at IS NOT NULL ORDER BY job_ended_at",
            (_iso(since),),
        )
        return FleetReport(
            idle_days=_idle_days(ended_rows),
            since=since,
            days=tuple(
                TerminationDay(
                    day=day,
                    terminations=int(terminations),
                    stops=int(stops),
                    attempts=int(attempts),
                    succeeded=int(succeeded),
                    failed_attempts=int(failed),
                    mean_s_to_terminated=mean_s,
                )
                for day, terminations, stops, attempts, succeeded, failed, mean_s in day_rows
            ),
            runs_by_outcome={outcome or "none": int(n) for outcome, n in outcome_rows},
            open_zombies=int(count[0][0]) if count else 0,
        )

    # -- leases (issue 14) ------------------------------------------------------------------
    #
    # A run's lease is three columns of its row (owner, epoch, lease_until), written only by
    # the statements here. A claim takes unowned or expired active runs and bumps each one's
    # epoch; the owner's monitor then writes only under (owner, epoch): `_fenced_write`, and
    # `commit` with its `lease`.

    single_writer: bool = False
    """True for a database one daemon holds alone (SQLite, behind the state-directory lock):
    its leases cannot be taken by anybody else."""

    _skip_locked: ClassVar[str] = ""
    """What makes a claim's SELECT pass over rows another transaction holds: PostgreSQL's
    ` FOR UPDATE SKIP LOCKED`. SQLite has one writer at a time (BEGIN IMMEDIATE) and needs
    none."""

    @abstractmethod
    async def _write_returning(self, statement: sql.Statement) -> list[Row]:
        """Run one statement (an UPDATE ... RETURNING) in its own transaction; its rows."""

    async def _fenced_write(
        self, statements: list[sql.Statement], run_id: str, lease: Lease | None
    ) -> None:
        """Write `statements` in one transaction; with `lease`, only while the run is still
        owned under it (else nothing is written and `LeaseLost` raised). On PostgreSQL the
        fence's UPDATE also holds the run's row until the commit, so no claim comes between."""
        if lease is None:
            await self._write(statements)
            return
        fence = (
            "UPDATE runs SET epoch = epoch WHERE run_id = ? AND owner = ? AND epoch = ?",
            (run_id, lease.owner, lease.epoch),
        )
        try:
            await self._write([fence, *statements], stale_if_unchanged=f"run {run_id}")
        except StaleVersion:
            raise _lost(run_id, lease) from None

    async def _raise_if_lost(self, run_id: str, lease: Lease) -> None:
        """After a commit found no row to change: `LeaseLost` if the lease is why."""
        rows = await self._read("SELECT owner, epoch FROM runs WHERE run_id = ?", (run_id,))
        if not rows or (rows[0][0], int(rows[0][1])) != (lease.owner, lease.epoch):
            raise _lost(run_id, lease) from None

    async def claim_runs(
        self, owner: str, *, limit: int, now: datetime, until: datetime, only: str | None = None
    ) -> list[LeasedRun]:
        """Claim up to `limit` active runs that nobody owns or whose lease expired before
        `now`, oldest first, in one statement (one transaction): each one's owner becomes
        `owner`, its epoch +1, its lease runs to `until`. Returns their rows, to arm their
        monitors from with no AWS call. With `only`, that run alone, also when `owner` holds
        it already (re-armed under a new epoch)."""
        if limit <= 0:
            return []
        claimable = "owner IS NULL OR lease_until IS NULL OR lease_until < ?"
        params: tuple[Any, ...] = (_iso(now),)
        if only is not None:
            claimable = f"({claimable} OR owner = ?) AND run_id = ?"
            params += (owner, only)
        rows = await self._write_returning(
            (
                "UPDATE runs SET owner = ?, epoch = epoch + 1, lease_until = ? "
                f"WHERE run_id IN (SELECT run_id FROM runs{_ACTIVE} AND ({claimable}) "
                f"ORDER BY created_at, run_id LIMIT ?{self._skip_locked}) "
                f"RETURNING {sql.RUN_COLUMNS}, epoch",
                (owner, _iso(until), *_TERMINAL, *params, limit),
            )
        )
        width = len(sql.RUN_SELECT)
        return [
            LeasedRun(sql.run_record(row), Lease(owner, int(row[width]), until))
            for row in sorted(rows, key=lambda row: (row[_CREATED], row[0]))
        ]

    async def renew_leases(self, owner: str, *, until: datetime) -> dict[str, int]:
        """Extend every lease `owner` still holds on an active run to `until`, in one
        statement; the runs still held, with their epochs (a run missing was claimed by
        another replica: its monitor here must stop)."""
        rows = await self._write_returning(
            (
                f"UPDATE runs SET lease_until = ?{_ACTIVE} AND owner = ? RETURNING run_id, epoch",
                (_iso(until), *_TERMINAL, owner),
            )
        )
        return {str(run_id): int(epoch) for run_id, epoch in rows}

    async def release_runs(
        self, owner: str, leases: Iterable[tuple[str, int]], *, notify: bool = True
    ) -> int:
        """Hand back runs (run id, epoch) `owner` holds: unowned, any replica may claim them
        at once, and (`notify`, where notices exist) the replicas are told so. A run no
        longer held under that epoch is left alone. Returns how many."""
        released = 0
        pairs = list(leases)
        for start in range(0, len(pairs), _IN_CHUNK):
            chunk = pairs[start : start + _IN_CHUNK]
            condition = " OR ".join("(run_id = ? AND epoch = ?)" for _ in chunk)
            rows = await self._write_returning(
                (
                    "UPDATE runs SET owner = NULL, lease_until = NULL "
                    f"WHERE owner = ? AND ({condition}) RETURNING run_id",
                    (owner, *(value for pair in chunk for value in pair)),
                )
            )
            released += len(rows)
        if released and notify and self._notices:  # after the commit: claimable now
            await self._write(self._notify(RELEASED_CHANNEL, owner))
        return released

    async def release_every_lease(self) -> int:
        """Hand back every run's lease, whoever holds it. Only for a daemon that knows it is
        alone (SQLite's state-directory lock): at its start, it then claims every run."""
        rows = await self._write_returning(
            (
                "UPDATE runs SET owner = NULL, lease_until = NULL "
                "WHERE owner IS NOT NULL RETURNING run_id",
                (),
            )
        )
        return len(rows)

    async def record_replica(self, replica: Replica) -> None:
        """Insert or refresh this replica's heartbeat row."""
        values = {
            "replica_id": replica.replica_id,
            "host": replica.host,
            "pid": replica.pid,
            "started_at": replica.started_at,
            "heartbeat_at": replica.heartbeat_at,
            "state": replica.state.value,
            "lease_ttl_s": replica.lease_ttl_s,
        }
        await self._write([(_UPSERT_REPLICA, REPLICAS.encode(values))])

    async def replicas(self) -> list[ReplicaStatus]:
        """Every replica's row, newest heartbeat first, with the active runs it owns."""
        rows = await self._read(
            f"SELECT {_REPLICA_SELECT.sql}, (SELECT COUNT(*) FROM runs{_ACTIVE} "
            "AND owner = r.replica_id) FROM replicas r ORDER BY heartbeat_at DESC, replica_id",
            _TERMINAL,
        )
        statuses = []
        for row in rows:
            v = _REPLICA_SELECT.decode(row)
            v["state"] = ReplicaState(v["state"])
            statuses.append(ReplicaStatus(Replica(**v), int(row[len(_REPLICA_SELECT)])))
        return statuses

    # -- replicas: the run inbox and duty leases (issue 14) -----------------------------------

    _notices: ClassVar[bool] = False
    """Whether the backend sends notices (PostgreSQL's NOTIFY, in the writing transaction)
    that a replica may wait for instead of polling."""

    def _notify(self, channel: str, payload: str) -> list[sql.Statement]:
        if not self._notices:
            return []
        return [("SELECT pg_notify(?, ?)", (channel, payload))]

    async def post_to_inbox(self, item: InboxItem) -> None:
        """Write a pending inbox row (and, where notices exist, tell the replicas)."""
        values = {
            "id": item.id,
            "run_id": item.run_id,
            "kind": item.kind,
            "body_json": encode_body(item.body),
            "created_at": item.created_at,
            "created_by": item.created_by,
            "state": InboxState.PENDING,
            "answer_json": None,
            "answered_at": None,
            "answered_by": None,
        }
        await self._write(
            [(_INSERT_INBOX, INBOX.encode(values)), *self._notify(INBOX_CHANNEL, item.run_id)]
        )

    async def pending_inbox(self, *, limit: int = 1000) -> list[InboxItem]:
        """Pending inbox rows of active runs, oldest first (a row for a run that has ended
        meanwhile waits for `expire_inbox`)."""
        rows = await self._read(
            f"SELECT {_INBOX_ITEM_I.sql} FROM inbox i JOIN runs r ON r.run_id = i.run_id "
            f"WHERE i.state = ? AND r.phase NOT IN ({sql.placeholders(_TERMINAL)}) "
            "ORDER BY i.created_at, i.id LIMIT ?",
            (InboxState.PENDING.value, *_TERMINAL, limit),
        )
        items = []
        for row in rows:
            v = _INBOX_ITEM_I.decode(row)
            items.append(
                InboxItem(
                    id=v["id"],
                    run_id=v["run_id"],
                    kind=InboxKind(v["kind"]),
                    body=decode_body(v["body_json"]),
                    created_at=v["created_at"],
                    created_by=v["created_by"],
                )
            )
        return items

    async def answer_inbox(self, item_id: str, answer: InboxAnswer, *, now: datetime) -> bool:
        """Answer a pending row; False if it was no longer pending (answered, or withdrawn by
        its writer): the first answer stands."""
        body: dict[str, Any] = {"error": answer.error, "message": answer.message}
        if answer.run is not None:
            values = sql.run_values(answer.run, created_at=now, updated_at=now)
            body["run"] = dict(zip(sql.RUN_SELECT.names, RUNS.encode(values), strict=True))
        values = {
            "state": answer.state,
            "answer_json": body,
            "answered_at": now,
            "answered_by": answer.answered_by,
        }
        try:
            await self._write(
                [
                    (_ANSWER_INBOX, (*INBOX.encode(values, _ANSWERED), item_id, "pending")),
                    *self._notify(ANSWER_CHANNEL, item_id),
                ],
                stale_if_unchanged=f"inbox row {item_id} is no longer pending",
            )
        except StaleVersion:
            return False
        return True

    async def inbox_answer(self, item_id: str) -> InboxAnswer | None:
        """The row's answer; None while it is pending (or if there is no such row)."""
        rows = await self._read(
            f"SELECT {_INBOX_ANSWER.sql} FROM inbox WHERE id = ? AND state <> ?",
            (item_id, InboxState.PENDING.value),
        )
        if not rows:
            return None
        v = _INBOX_ANSWER.decode(rows[0])
        body = v["answer_json"] or {}
        run = None
        if body.get("run") is not None:
            stored = body["run"]
            run = sql.run_record(tuple(stored[name] for name in sql.RUN_SELECT.names)).run
        return InboxAnswer(
            state=InboxState(v["state"]),
            run=run,
            error=body.get("error"),
            message=body.get("message") or "",
            answered_by=v["answered_by"],
        )

    async def expire_inbox(
        self, *, now: datetime, keep: timedelta, duty: DutyLease | None = None
    ) -> None:
        """The leader's tidying: pending rows of runs that have ended are failed (nobody will
        carry them out), and answered rows older than `keep` deleted; with `duty`, only while
        it is still held (`DutyLost`)."""
        message = {
            "error": "InvalidTransition",
            "message": "the run ended before its owner took this",
        }
        ended = (
            "UPDATE inbox SET state = ?, answer_json = ?, answered_at = ? WHERE state = ? AND "
            "run_id IN (SELECT run_id FROM runs "
            f"WHERE phase IN ({sql.placeholders(_TERMINAL)}))"
        )
        encoded = INBOX.encode(
            {"answer_json": message, "answered_at": now}, ("answer_json", "answered_at")
        )
        await self._duty_fenced_write(
            [
                (ended, (InboxState.FAILED.value, *encoded, InboxState.PENDING.value, *_TERMINAL)),
                (
                    "DELETE FROM inbox WHERE state <> ? AND answered_at < ?",
                    (InboxState.PENDING.value, _iso(now - keep)),
                ),
            ],
            duty,
        )

    async def hold_duty(
        self, name: str, owner: str, *, now: datetime, until: datetime, take_over: bool = False
    ) -> DutyLease:
        """Take the duty `name` until `until` if it is free, expired (at `now`) or already
        `owner`'s (a renewal); with `take_over`, whoever holds it. Returns the lease as it is
        afterwards: `owner`'s or another replica's. Each change of holder increments the
        epoch."""
        condition = (
            "1 = 1"
            if take_over
            else ("duty_leases.owner = excluded.owner OR duty_leases.lease_until <= ?")
        )
        params: tuple[Any, ...] = (name, owner, 1, _iso(until))
        if not take_over:
            params += (_iso(now),)
        await self._write(
            [
                (
                    "INSERT INTO duty_leases (name, owner, epoch, lease_until) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, "
                    "epoch = CASE WHEN duty_leases.owner = excluded.owner "
                    "THEN duty_leases.epoch ELSE duty_leases.epoch + 1 END, "
                    f"lease_until = excluded.lease_until WHERE {condition}",
                    params,
                )
            ]
        )
        rows = await self._read(f"SELECT {_DUTY.sql} FROM duty_leases WHERE name = ?", (name,))
        return DutyLease(**_DUTY.decode(rows[0]))

    async def release_duty(self, name: str, owner: str, *, now: datetime) -> None:
        """Give the duty up (a stopping replica), so another takes it without waiting."""
        await self._write(
            [
                (
                    "UPDATE duty_leases SET lease_until = ? WHERE name = ? AND owner = ?",
                    (_iso(now), name, owner),
                )
            ]
        )

    # -- notifications: the outbox (issue 15) -------------------------------------------------
    #
    # A row per event that notifies, written by `commit` (a transition) and `save_zombie` in
    # the same transaction, so fenced with it under a lease: a commit that fails writes none.

    notify_on: frozenset[NotifyEvent] = frozenset()
    """The events that get an outbox row (none until the daemon sets them: without URLs
    nobody would send the rows)."""

    def notify_on_events(self, events: frozenset[NotifyEvent]) -> None:
        """Write an outbox row, from now on, for each transition or zombie that is one of
        `events`."""
        self.notify_on = events

    def _outbox(self, notice: Notice | None) -> list[sql.Statement]:
        if notice is None:
            return []
        values = {
            "key": notice.key,
            "run_id": notice.run_id,
            "seq": notice.seq,
            "events": ",".join(notice.events),
            "facts_json": notice.facts(),
            "created_at": notice.at,
            "state": DeliveryState.PENDING,
            "attempts": 0,
            "last_try_at": None,
            "last_error": None,
            "sent_at": None,
            "sender": None,
            "deliveries_json": {},
        }
        # A key seen before (a zombie saved again under the same mark) keeps its one row.
        return [(_INSERT_OUTBOX, OUTBOX.encode(values))]

    async def pending_outbox(
        self, sender: str, *, leader: bool, alive_since: datetime, limit: int = 100
    ) -> list[OutboxRow]:
        """Pending rows `sender` is to deliver, oldest first: those of runs whose lease it
        holds (or held last, for a run that has ended); and if it is the `leader`, zombie
        rows and rows of runs whose owner is gone (none, or no heartbeat since
        `alive_since`). On a database one daemon holds alone, every pending row."""
        text = f"SELECT {_OUTBOX_O.sql} FROM outbox o"
        params: tuple[Any, ...] = ()
        where = "o.state = ?"
        if not self.single_writer:
            text += " LEFT JOIN runs r ON r.run_id = o.run_id"
            where += (
                " AND ((o.seq IS NOT NULL AND r.owner = ?) OR (? = 1 AND (o.seq IS NULL OR "
                "r.run_id IS NULL OR r.owner IS NULL OR r.owner NOT IN (SELECT replica_id FROM "
                "replicas WHERE state = 'running' AND heartbeat_at >= ?))))"
            )
            params = (sender, 1 if leader else 0, _iso(alive_since))
        rows = await self._read(
            f"{text} WHERE {where} ORDER BY o.created_at, o.key LIMIT ?",
            (DeliveryState.PENDING.value, *params, limit),
        )
        return [_outbox_row(_OUTBOX_O.decode(row)) for row in rows]

    async def claim_outbox(self, key: str, *, attempts: int, sender: str, now: datetime) -> bool:
        """Take the row for one delivery round, if it is still pending after `attempts`
        rounds: two replicas never send the same round (False: another took it, or it is
        done)."""
        try:
            await self._write(
                [
                    (
                        "UPDATE outbox SET attempts = attempts + 1, sender = ?, last_try_at = ? "
                        "WHERE key = ? AND state = ? AND attempts = ?",
                        (sender, _iso(now), key, DeliveryState.PENDING.value, attempts),
                    )
                ],
                stale_if_unchanged=f"outbox row {key}",
            )
        except StaleVersion:
            return False
        return True

    async def record_outbox(
        self,
        key: str,
        deliveries: Iterable[TargetDelivery],
        *,
        state: DeliveryState,
        last_error: str | None,
        now: datetime,
    ) -> None:
        """Record how the row's targets fared so far, and its state (`sent` or `failed`
        once every target is done with)."""
        body = {d.target: d.stored() for d in deliveries}
        done = _iso(now) if state is not DeliveryState.PENDING else None
        await self._write(
            [
                (
                    "UPDATE outbox SET state = ?, last_error = ?, sent_at = ?, "
                    "deliveries_json = ? WHERE key = ?",
                    (state.value, last_error, done, OUTBOX.encode(
                        {"deliveries_json": body}, ("deliveries_json",))[0], key),
                )
            ]
        )  # fmt: skip

    async def outbox_rows(
        self, *, run_id: str | None = None, state: DeliveryState | None = None
    ) -> list[OutboxRow]:
        """Every outbox row (of one run, in one state), oldest first."""
        conditions, params = [], []
        if run_id is not None:
            conditions.append("o.run_id = ?")
            params.append(run_id)
        if state is not None:
            conditions.append("o.state = ?")
            params.append(state.value)
        where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        rows = await self._read(
            f"SELECT {_OUTBOX_O.sql} FROM outbox o{where} ORDER BY o.created_at, o.key", params
        )
        return [_outbox_row(_OUTBOX_O.decode(row)) for row in rows]

    async def outbox_counts(self) -> dict[str, int]:
        """Outbox rows by state."""
        rows = await self._read("SELECT state, COUNT(*) FROM outbox GROUP BY state")
        return {str(state): int(n) for state, n in rows}

    # -- fleet-wide duties: writes fenced by the duty lease (issue 14) ------------------------

    async def _duty_fenced_write(
        self, statements: list[sql.Statement], duty: DutyLease | None
    ) -> None:
        """Write `statements` in one transaction; with `duty`, only while its holder and epoch
        are still the duty's (else nothing is written and `DutyLost` raised), as a monitor's
        writes are fenced by its run's lease. On PostgreSQL the fence's UPDATE also holds the
        duty's row until the commit, so no take-over comes between."""
        if duty is None:
            await self._write(statements)
            return
        fence = (
            "UPDATE duty_leases SET epoch = epoch WHERE name = ? AND owner = ? AND epoch = ?",
            (duty.name, duty.owner, duty.epoch),
        )
        try:
            await self._write([fence, *statements], stale_if_unchanged=f"duty {duty.name}")
        except StaleVersion:
            raise DutyLost(
                f"duty {duty.name}: replica {duty.owner} no longer holds it (epoch {duty.epoch})"
            ) from None


_INSERT_OUTBOX = OUTBOX.insert(on_conflict="ignore")
_OUTBOX_O = OUTBOX.project(alias="o")


def _outbox_row(v: dict[str, Any]) -> OutboxRow:
    return OutboxRow(
        notice=Notice.from_stored(v["key"], v["events"], v["facts_json"]),
        state=DeliveryState(v["state"]),
        attempts=v["attempts"],
        last_error=v["last_error"],
        sender=v["sender"],
        deliveries=tuple(
            TargetDelivery.from_stored(target, stored)
            for target, stored in sorted((v["deliveries_json"] or {}).items())
        ),
    )


_UPSERT_REPLICA = REPLICAS.insert(on_conflict="update")
_REPLICA_SELECT = REPLICAS.project(alias="r")
_CREATED = sql.RUN_SELECT.names.index("created_at")


def _fenced_update(statement: sql.Statement, lease: Lease) -> sql.Statement:
    """A run's version-checked UPDATE, also conditioned on the lease it is written under."""
    text, params = statement
    return f"{text} AND owner = ? AND epoch = ?", (*params, lease.owner, lease.epoch)


def _lost(run_id: str, lease: Lease) -> LeaseLost:
    return LeaseLost(
        f"run {run_id}: replica {lease.owner} no longer holds its lease (epoch {lease.epoch})"
    )


def _idle_days(rows: Iterable[Row]) -> tuple[IdleDay, ...]:
    """Rows read with `_ENDED`, oldest end first: their idle seconds after the end, per UTC
    day of the end."""
    per_day: dict[str, list[float]] = {}
    for row in rows:
        v = _ENDED.decode(row)
        ended, idle = v["job_ended_at"], idle_after_end_s(v["job_ended_at"], v["action_acked_at"])
        if idle is not None:
            per_day.setdefault(ended.astimezone(UTC).date().isoformat(), []).append(idle)
    return tuple(IdleDay(day, len(idle), sum(idle)) for day, idle in per_day.items())


def _sql_list(values: Iterable[str]) -> str:
    """Our own enum values as an SQL list literal (never user input)."""
    return ", ".join(f"'{value}'" for value in sorted(values))


def _count(condition: str) -> str:
    """How many rows of the group meet `condition`, in SQL both backends take (PostgreSQL
    sums no booleans)."""
    return f"SUM(CASE WHEN {condition} THEN 1 ELSE 0 END)"
