"""The zombie sweep: finds instances still running after their run ended, or tagged
`supervisor:run-id` with no active run to own them, records them, and (with auto-terminate)
terminates them after the wait, never twice within the cooldown. With replicas it runs on the
one that holds the duty lease `leader` (`runtime.duties`), and every write it makes (a zombie's
row, its terminations-log line) is fenced by that lease: a replica that lost the duty cannot
write, and with its action's intent refused, makes no call.

Every decision is the pure core's (`supervisor.core.zombies`); this module only gathers what
they need, carries out the calls and commits the results. Per sweep and region it makes one
filtered DescribeInstances per 1000 tagged instances, plus one DescribeInstanceStatus per 100
other candidates (the instances of runs ended within the lookback, and open zombies).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import structlog

from supervisor.core.duties import DutyLease
from supervisor.core.errors import DutyLost, ExternalError, NotFoundError
from supervisor.core.events import Action
from supervisor.core.run import Run
from supervisor.core.values import InstanceId
from supervisor.core.zombies import (
    RUN_TAG,
    Accepted,
    Act,
    CallFailed,
    CallResult,
    Gone,
    InstanceSeen,
    NotZombie,
    Zombie,
    ZombiePolicy,
    attempted,
    begin,
    classify,
    clear,
    decide,
    mark,
    observe_ended,
)
from supervisor.runtime.metrics import MetricsSink
from supervisor.runtime.ports import Clock, Cloud, RunStore
from supervisor.runtime.retry import GaveUp, call_with_retries

log = structlog.get_logger("supervisor.zombies")

LOOKBACK = timedelta(days=7)
"""Runs that ended longer ago than this are not looked at by id any more (a tagged instance
is still found by its tag)."""
CONCURRENCY = 8
"""Attempts carried out at once in one sweep."""

_Key = tuple[InstanceId, str]
_OPERATION = {Action.TERMINATE: "TerminateInstances", Action.STOP: "StopInstances"}


@dataclass(frozen=True, slots=True)
class SweepResult:
    """What one sweep did: instances looked at, zombies open after it, and how many were
    marked, cleared or confirmed, and acted on."""

    seen: int = 0
    zombies: int = 0
    marked: int = 0
    resolved: int = 0
    acted: int = 0


class ZombieWatch:
    def __init__(
        self,
        store: RunStore,
        cloud: Cloud,
        clock: Clock,
        *,
        policy: ZombiePolicy,
        interval_s: float,
        retry_base_s: float,
        lookback: timedelta = LOOKBACK,
        metrics: MetricsSink | None = None,
        duty: Callable[[], DutyLease | None] | None = None,
    ) -> None:
        """`duty`: the sweep's duty lease if this replica holds it now, else None (with
        replicas, one sweeps; see `runtime.duties`): asked before each sweep and each AWS
        action, and every write goes under it. Without it (one process, tests) the watch
        always sweeps and its writes are not fenced."""
        self._store = store
        self._duty = duty
        self._cloud = cloud
        self._clock = clock
        self.policy = policy
        self.interval_s = interval_s
        self._retry_base_s = retry_base_s
        self._lookback = lookback
        self._metrics = metrics or MetricsSink()
        self._limit = asyncio.Semaphore(CONCURRENCY)
        self.sweeps = 0

    def __repr__(self) -> str:
        return f"<ZombieWatch sweeps={self.sweeps} {self.policy}>"

    async def run_forever(self) -> None:
        """Sweep every `interval_s`, the first one interval after start: nothing here is
        urgent (a zombie waits `wait_s` before anything is done), and the start-up belongs to
        the runs' own sweep."""
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except DutyLost as lost:  # taken over since this sweep began: the holder sweeps
                log.warning("zombie_sweep_stopped", why=str(lost))
            except Exception:
                log.exception("zombie_sweep_failed")

    def _held(self) -> tuple[bool, DutyLease | None]:
        """Whether this replica may sweep and act now, and the duty lease to write under."""
        if self._duty is None:
            return True, None
        duty = self._duty()
        return duty is not None, duty

    async def sweep(self) -> SweepResult:
        """One sweep, if this replica holds the duty (else nothing: `SweepResult()`).
        `DutyLost` if the duty was taken over while it ran: it stops at the refused write."""
        may, duty = self._held()
        if not may:
            return SweepResult()  # another replica holds the duty
        now = self._clock.now()
        self.sweeps += 1
        open_zombies = {(z.instance_id, z.region): z for z in await self._store.zombies()}
        seen = await self._look(open_zombies)
        alive = [s for s in seen.values() if s.state.is_alive]
        runs = await self._store.runs_on_instances(
            {s.instance_id for s in alive},
            {s.tags[RUN_TAG] for s in alive if RUN_TAG in s.tags},
        )
        by_instance: dict[str, list[Run]] = defaultdict(list)
        by_run_id: dict[str, Run] = {}
        for run in runs:
            by_instance[run.instance_id].append(run)
            by_run_id[run.spec.run_id] = run

        marked = resolved = 0
        zombies: list[Zombie] = []
        for key, instance in seen.items():
            existing = open_zombies.get(key)
            if not instance.state.is_alive:
                if existing is not None:
                    ended, line = observe_ended(existing, instance.state, now=now)
                    await self._store.save_zombie(ended, line, duty=duty)
                    if line is not None:
                        self._metrics.instance_acted("zombie", line.action, line.outcome)
                    self._resolved(ended)
                    resolved += 1
                continue
            relevant = list(by_instance.get(instance.instance_id, ()))
            named = by_run_id.get(instance.tags.get(RUN_TAG, ""))
            if named is not None:
                relevant.append(named)
            verdict = classify(instance, relevant)
            if isinstance(verdict, NotZombie):
                if existing is not None:
                    cleared = clear(existing, verdict.why, now=now)
                    await self._store.save_zombie(cleared, duty=duty)
                    self._resolved(cleared)
                    resolved += 1
                continue
            zombie = mark(instance, verdict, existing, now=now)
            if zombie != existing:
                await self._store.save_zombie(zombie, duty=duty)
                if existing is None:
                    marked += 1
                    log.warning(
                        "zombie_marked",
                        instance_id=zombie.instance_id,
                        region=zombie.region,
                        run_id=zombie.run_id,
                        kind=str(zombie.cause.kind),
                        reason=zombie.reason(now),
                    )
            zombies.append(zombie)

        due = [
            (zombie, plan.action)
            for zombie in zombies
            if isinstance(plan := decide(zombie, now=now, policy=self.policy), Act)
        ]
        await asyncio.gather(*(self._act(zombie, action) for zombie, action in due))
        return SweepResult(
            seen=len(seen),
            zombies=len(zombies),
            marked=marked,
            resolved=resolved,
            acted=len(due),
        )

    async def _look(self, open_zombies: dict[_Key, Zombie]) -> dict[_Key, InstanceSeen]:
        """Describe the candidates: tagged instances by filter, per region; then, by id, the
        instances of recently ended runs and the open zombies not seen that way."""
        since = self._clock.now() - self._lookback
        by_id: list[_Key] = [*await self._store.ended_run_instances(since=since), *open_zombies]
        regions = await self._store.run_regions() | {region for _, region in by_id}
        if self._cloud.default_region:
            regions.add(self._cloud.default_region)
        seen: dict[_Key, InstanceSeen] = {}
        unreachable: set[str] = set()
        for region in sorted(regions):
            try:
                tagged = await self._cloud.describe_tagged(RUN_TAG, region)
            except ExternalError as exc:
                self._describe_failed(region, exc, "tagged")
                unreachable.add(region)
                continue
            for instance in tagged:
                seen[(instance.instance_id, region)] = instance
        wanted: dict[str, list[InstanceId]] = defaultdict(list)
        for instance_id, region in dict.fromkeys(by_id):
            if (instance_id, region) not in seen and region not in unreachable:
                wanted[region].append(instance_id)
        for region, ids in sorted(wanted.items()):
            try:
                states = await self._cloud.describe_instances(ids, region)
            except ExternalError as exc:
                self._describe_failed(region, exc, "by-id")
                continue
            for instance_id, state in states.items():
                seen[(instance_id, region)] = InstanceSeen(instance_id, region, state)
        return seen

    @staticmethod
    def _describe_failed(region: str, exc: ExternalError, what: str) -> None:
        log.warning(
            "zombie_describe_failed", region=region, lookup=what, code=exc.code, message=exc.message
        )

    def _resolved(self, zombie: Zombie) -> None:
        log.info(
            "zombie_resolved",
            instance_id=zombie.instance_id,
            region=zombie.region,
            run_id=zombie.run_id,
            state=str(zombie.state),
            note=zombie.note,
        )

    async def _act(self, zombie: Zombie, action: Action) -> None:
        async with self._limit:
            try:
                await self._attempt(zombie, action)
            except DutyLost as lost:  # its intent refused: no call was made
                log.info("zombie_attempt_skipped", instance_id=zombie.instance_id,
                         reason=str(lost))  # fmt: skip
            except Exception:  # one zombie's trouble must not stop the others'
                log.exception(
                    "zombie_attempt_crashed", instance_id=zombie.instance_id, action=str(action)
                )

    async def _attempt(self, zombie: Zombie, action: Action) -> None:
        may, duty = self._held()
        if not may:  # the duty moved (or this replica was frozen) since the sweep
            log.info("zombie_attempt_skipped", instance_id=zombie.instance_id,
                     reason="not holding the sweep's duty lease")  # fmt: skip
            return
        # An attach since the sweep looked would make this instance a run's again.
        owner = await self._store.active_owner(zombie.instance_id, zombie.region)
        if owner is not None:
            cleared = clear(zombie, f"run {owner} owns it now", now=self._clock.now())
            await self._store.save_zombie(cleared, duty=duty)
            self._resolved(cleared)
            return
        operation = _OPERATION[action]
        call = {
            Action.TERMINATE: self._cloud.terminate_instance,
            Action.STOP: self._cloud.stop_instance,
        }[action]
        zombie = begin(zombie, action, now=self._clock.now())
        await self._store.save_zombie(zombie, duty=duty)  # intent before effect, fenced
        log.info(
            "zombie_action_requested",
            instance_id=zombie.instance_id,
            region=zombie.region,
            run_id=zombie.run_id,
            operation=operation,
            attempt=zombie.attempts + 1,
        )

        def on_retry(error: ExternalError, attempt: int, wait_s: float) -> None:
            log.warning(
                "zombie_action_retrying",
                instance_id=zombie.instance_id,
                operation=operation,
                attempt=attempt,
                code=error.code,
                wait_s=round(wait_s, 3),
            )

        result: CallResult
        try:
            state, calls = await call_with_retries(
                lambda: call(zombie.instance_id, zombie.region),
                base_s=self._retry_base_s,
                on_retry=on_retry,
            )
            result = Accepted(state, calls)
        except GaveUp as gave_up:
            error = gave_up.error
            if isinstance(error, NotFoundError):
                result = Gone(error.code, error.message, gave_up.attempts)
            else:
                result = CallFailed(error.code, error.message, gave_up.attempts)
        after, line = attempted(zombie, action, result, now=self._clock.now())
        try:
            await self._store.save_zombie(after, line, duty=duty)
        except DutyLost as lost:  # the call was made: the new holder's sweep looks again
            log.warning("zombie_result_unrecorded", instance_id=zombie.instance_id,
                        operation=operation, why=str(lost))  # fmt: skip
            return
        self._metrics.instance_acted("zombie", action, line.outcome)
        level = "warning" if line.error_code and line.outcome != "not-found" else "info"
        getattr(log, level)(
            "zombie_" + line.outcome.replace("-", "_"),
            instance_id=zombie.instance_id,
            region=zombie.region,
            run_id=zombie.run_id,
            operation=operation,
            calls=line.calls,
            state=str(after.state),
            code=line.error_code,
            message=line.message,
        )
