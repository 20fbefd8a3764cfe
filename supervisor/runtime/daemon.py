"""The daemon as a supervised task tree: one TaskGroup holding the control server, the root
tasks (the reconciler, the zombie sweep, the event consumer, the idle sweep: restarted when
they fail, see `runtime.root_tasks`) and a guarded monitor task per run; and its two-phase
shutdown. The control API it serves is `runtime.control_api`.

Start-up re-adopts every non-terminal run from SQLite with no AWS call per run; runs whose
intent was open are re-driven through one batched describe.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from datetime import datetime, timedelta
from typing import Any

import structlog

from supervisor.adapters.aws import queue_region
from supervisor.adapters.control import ControlServer
from supervisor.adapters.control_views import ControlViews
from supervisor.adapters.metrics_http import MetricsServer
from supervisor.adapters.web.server import HttpServer
from supervisor.core.duties import LEADER
from supervisor.core.errors import DutyLost, InvalidInput, LeaseLost
from supervisor.core.events import MonitorFailed
from supervisor.core.inbox import HandedEvent
from supervisor.core.leases import Lease
from supervisor.core.machine import Policy, step
from supervisor.core.run import Phase, Run
from supervisor.core.spec import Transport
from supervisor.runtime.control_api import ControlApi
from supervisor.runtime.duties import DutyKeeper
from supervisor.runtime.events import EventConsumer, Queue
from supervisor.runtime.executor import Executor, ExecutorPorts, read_crash_report
from supervisor.runtime.idle import IdleSweep
from supervisor.runtime.inbox import InboxConsumer, hand_over
from supervisor.runtime.leases import DatabaseLost, LeaseBook, LeaseKeeper, default_replica_id
from supervisor.runtime.metrics import Metrics
from supervisor.runtime.monitor import Monitor, MonitorDeps
from supervisor.runtime.notifier import Notifier, NotifyPolicy
from supervisor.runtime.ports import (
    Clock,
    Cloud,
    InstanceShell,
    Notices,
    NotificationSender,
    PollingNotices,
    RunStore,
    SystemClock,
)
from supervisor.runtime.reconciler import Reconciler
from supervisor.runtime.retry import GaveUp
from supervisor.runtime.root_tasks import RestartPolicy, RootLoop, RootTasks, Sleep
from supervisor.runtime.settings import Settings
from supervisor.runtime.zombies import ZombieWatch

log = structlog.get_logger("supervisor.daemon")
CRASH_REPORT_LOOKBACK = timedelta(days=1)
"""How far back a start looks for crashed runs whose crash report was never read."""


class Daemon:
    def __init__(
        self,
        settings: Settings,
        store: RunStore,
        cloud: Cloud,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        shells: Mapping[Transport, InstanceShell] | None = None,
        queue: Queue | None = None,
        restart_policy: RestartPolicy | None = None,
        sleep: Sleep = asyncio.sleep,
        notices: Notices | None = None,
        sole_replica: bool = False,
        notification_sender: NotificationSender | None = None,
    ) -> None:
        """`restart_policy` and `sleep`: how root tasks are restarted (tests pass a sleep that
        returns at once, and a policy of their own). `notices`: wake-ups between replicas
        (PostgreSQL's LISTEN), else a poll. `sole_replica`: nobody else can be alive (SQLite
        behind the state directory's lock), so duty leases are taken over at start."""
        self.settings = settings

        self.store = store
        self.cloud = cloud
        self.clock = clock or SystemClock()
        self.notices: Notices = notices or PollingNotices()
        self.monitors: dict[str, Monitor] = {}
        self.metrics = Metrics(
            self.clock,
            runs=store.runs_by_phase_and_outcome,
            monitors=lambda: len(self.monitors),
            aws_calls=lambda: cloud.counter.outcomes,
        )
        self.reconciler = Reconciler(
            cloud, self._leased_monitors, interval_s=settings.reconcile_interval_s
        )
        self.lease_book = LeaseBook(
            settings.replica_id or default_replica_id(),
            settings.lease_ttl_s,
            self.clock,
            exclusive=store.single_writer,
        )
        """The per-run leases this replica holds (issue 14): every monitor write is fenced by
        them, every AWS call checks them. With SQLite this daemon holds every lease."""
        self.replica_id = self.lease_book.owner
        self.leader = DutyKeeper(
            store, self.clock, name=LEADER, replica_id=self.replica_id,
            ttl_s=settings.lease_ttl_s, take_over_at_start=sole_replica,
            on_acquired=self._on_leader,
        )  # fmt: skip
        self.shells = dict(shells or {})
        self.executor = Executor(
            ExecutorPorts(
                store=store,
                cloud=cloud,
                clock=self.clock,
                shells=self.shells,
                retry_base_s=settings.retry_base_s,
                observe=self.reconciler.kick,
                metrics=self.metrics,
                leases=self.lease_book,
            )
        )
        self._deps = MonitorDeps(
            store=store,
            clock=self.clock,
            policy=Policy(
                poll=settings.poll_policy,
                poll_max_without_eta_s=settings.poll_max_without_eta,
            ),
            rng=rng or random.Random(),
            executor=self.executor,
            metrics=self.metrics,
            leases=self.lease_book,
        )
        self.policy = self._deps.policy
        self.rng = self._deps.rng
        self.root_tasks = RootTasks(
            self.clock,
            policy=restart_policy,
            rng=self.rng,
            sleep=sleep,
            on_restart=self.metrics.root_task_restarted,
            on_give_up=lambda failed: self.request_shutdown(str(failed)),
        )
        self.zombie_watch = ZombieWatch(
            store,
            cloud,
            self.clock,
            policy=settings.zombie_policy,
            interval_s=settings.zombie_interval_s,
            retry_base_s=settings.retry_base_s,
            metrics=self.metrics,
            duty=self.leader.held,
        )
        self.idle_sweep = IdleSweep(
            cloud,
            self.clock,
            self._leased_monitors,
            interval_s=settings.idle_interval_s,
        )
        self.started_at = self.clock.now()
        self._monitor_tasks: dict[str, asyncio.Task[None]] = {}
        self.lease_keeper = LeaseKeeper(
            store,
            self.lease_book,
            self.clock,
            arm=self.spawn,
            disarm=self._disarm,
            idle_runs=lambda: [m.run_id for m in self.monitors.values() if not m.busy],
            on_cut_off=self._database_lost,
            notices=self.notices,
        )
        self.database_lost: DatabaseLost | None = None
        """Set when the lease keeper was cut off from the database for a TTL: the daemon
        ends with it (exit status 1), handing nothing back."""
        self.metrics.watch_leases(self.lease_keeper)
        self.accepting = False
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._tg: asyncio.TaskGroup | None = None
        self.consumer = self._consumer(queue) if settings.events_queue_url else None
        self.api = ControlApi(self)
        self.inbox = InboxConsumer(
            store, self.notices, self.clock, replica_id=self.replica_id,
            local=self.monitors.get, carry_out=self.api.carry_out, poll_s=settings.inbox_poll_s,
            tidies=self.leader.held,
        )  # fmt: skip
        self.views = ControlViews(self.api)
        """The API as the control socket serves it: its answers as the protocol's views."""
        self.server = ControlServer(self.views, settings.socket_path)
        address = settings.metrics_address
        self.metrics_server = MetricsServer(self.metrics, *address) if address is not None else None
        self.notifier = self._notifier(notification_sender)
        """Issue 15: the notification sender (None without SUPERVISOR_NOTIFY_URLS)."""
        # Issue 15: the dashboard, its JSON API and /metrics on SUPERVISOR_HTTP_ADDR.
        settings.check_http()
        http = settings.http_address
        self.http_server = (
            HttpServer(
                self.views,
                settings.database_url or settings.db_path,
                *http,
                token=settings.http_token,
                eta=self.estimated_end,
            )
            if http is not None
            else None
        )

    def __repr__(self) -> str:
        return f"<Daemon monitors={len(self.monitors)} accepting={self.accepting}>"

    def _consumer(self, queue: Queue | None) -> EventConsumer:
        url = self.settings.events_queue_url
        assert url is not None
        region = queue_region(url) or self.cloud.default_region
        if queue is None or region is None:
            raise InvalidInput(
                f"SUPERVISOR_EVENTS_QUEUE_URL={url}: no region in the URL and none in the AWS "
                "configuration; set AWS_DEFAULT_REGION"
            )
        return EventConsumer(
            queue, url, region, lambda: list(self.monitors.values()), self.store, self.clock,
            spot_margin_s=self.settings.spot_margin_s, wait_s=self.settings.events_wait_s,
            hand_over=self._hand_over,
        )  # fmt: skip

    async def _hand_over(self, run_id: str, event: HandedEvent) -> str:
        return await hand_over(
            self.store, self.clock, replica_id=self.replica_id, run_id=run_id, event=event
        )

    async def serve(self, *, on_ready: Callable[[], Awaitable[None]] | None = None) -> None:
        """Run until `request_shutdown()`; then shut down in two phases and return. Raises
        `RootTaskFailed` after the shutdown if a root task kept failing."""
        if self.metrics_server is not None:  # first: a bad address fails before anything runs
            await self.metrics_server.start()
        if self.http_server is not None:
            try:
                await self.http_server.start()
            except InvalidInput:
                if self.metrics_server is not None:
                    await self.metrics_server.close()
                raise
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            # Re-adopt by claiming (no AWS call per run): with SQLite every active run, with
            # replicas a fair share.
            readopted = await self.lease_keeper.start()
            # Before the sweep's first look (at once on SQLite); its holder reads the crash
            # reports missed (`_on_leader`).
            await self.leader.renew()
            for name, loop in self._root_loops():
                self.metrics.root_task_started(name)
                self._start(self.root_tasks.keep_running(name, loop), name)
            await self.server.start()
            self.accepting = True
            log.info(
                "daemon_started",
                pid=os.getpid(),
                readopted=readopted,
                socket=str(self.settings.socket_path),
            )
            if on_ready is not None:
                await on_ready()
            await self._stop.wait()
            await self._shutdown()
        if self.database_lost is None:
            await self._hand_back()
        if self.database_lost is not None:
            raise self.database_lost
        if self.root_tasks.failed is not None:
            raise self.root_tasks.failed

    def _root_loops(self) -> list[tuple[str, RootLoop]]:
        loops: list[tuple[str, RootLoop]] = [
            ("reconciler", self.reconciler.run_forever),
            ("zombies", self.zombie_watch.run_forever),
        ]
        if self.consumer is not None:
            loops.append(("events", self.consumer.run_forever))
        loops.append(("idle", self.idle_sweep.run_forever))
        loops.append(("leases", self.lease_keeper.run_forever))
        loops += [("duties", self.leader.run_forever), ("inbox", self.inbox.run_forever)]
        if self.notifier is not None:
            loops.append(("notify", self.notifier.run_forever))
        return loops

    def _on_leader(self) -> None:
        """This replica came to hold the leader duty (with SQLite: at start): the fleet-wide
        work done once per holder starts."""
        if self._tg is not None:
            self._start(self._attach_missed_crash_reports(), "crash-reports")

    async def _attach_missed_crash_reports(self) -> None:
        """Once per leader (the sole daemon: at start): a replica killed between a crash's
        commit and reading the job's crash report lost that read, and an ended run is never
        looked at again. Read the reports of runs that crashed in the last day and have none
        attached (one GET each). A fleet-wide duty: one replica reads them, each attach
        fenced by the leader lease."""
        since = self.clock.now() - CRASH_REPORT_LOOKBACK
        try:
            missed = await self.store.crashed_without_crash_log(since=since)
            for record in missed:
                duty = self.leader.held()
                if duty is None:
                    log.info("crash_report_pass_stopped", why="not holding the leader duty")
                    return
                spec = record.run.spec
                try:
                    attachment = await read_crash_report(
                        self.cloud, spec, spec.crash_report, now=self.clock.now(),
                        retry_base_s=self.settings.retry_base_s,
                    )  # fmt: skip
                except GaveUp as gave_up:
                    log.warning("crash_report_unread", run_id=spec.run_id, code=gave_up.error.code)
                    continue
                if attachment is not None:
                    await self.store.attach(attachment, duty=duty)
                    log.info("crash_report_attached", run_id=spec.run_id, uri=attachment.uri,
                             bytes=attachment.size, late=True)  # fmt: skip
        except DutyLost as lost:  # the new leader reads them
            log.info("crash_report_pass_stopped", why=str(lost))
        except Exception:  # a best-effort pass: it must not take the daemon down
            log.exception("crash_report_pass_failed")

    @property
    def closing(self) -> asyncio.Event:
        """Set once shutdown is requested: long-lived streams (a followed log) end on it."""
        return self._stop

    def request_shutdown(self, reason: str) -> None:
        log.info("shutdown_requested", reason=reason)
        self._stop.set()

    async def _shutdown(self) -> None:
        # Phase 1: take no new work. The queue receive goes first, while the monitors still
        # take events: a message already taken is then either committed and deleted, or left
        # on the queue for the next daemon (redelivered after its visibility timeout).
        self.accepting = False
        await self._stop_root_task("events")
        await self._stop_root_task("inbox")  # rows not answered stay for the next owner
        # Then the monitors: let in-flight transitions finish, up to the deadline.
        for monitor in self.monitors.values():
            monitor.close()
        in_flight = [m.wait_idle() for m in self.monitors.values() if m.busy]
        if in_flight:
            waiters = [asyncio.ensure_future(w) for w in in_flight]
            _, still_busy = await asyncio.wait(waiters, timeout=self.settings.shutdown_timeout_s)
            for waiter in still_busy:
                waiter.cancel()
        busy = [m.run_id for m in self.monitors.values() if m.busy]
        # Phase 2: cancel the rest. Idle monitors lose nothing: their state is in SQLite.
        await self._stop_root_task("duties")
        try:
            if self.database_lost is None:  # else it cannot be written, and has expired
                await self.leader.release()  # another replica sweeps without waiting the TTL
        except Exception:
            log.exception("duty_release_failed")
        await self.server.close()
        if self.metrics_server is not None:
            await self.metrics_server.close()
        if self.http_server is not None:
            await self.http_server.close()
        for task in list(self._tasks):
            task.cancel()
        log.info("daemon_stopped", monitors=len(self.monitors), cancelled_in_flight=busy)

    async def _stop_root_task(self, name: str) -> None:
        """Cancel one root task (if it runs) and wait until it has ended."""
        stopping = [task for task in self._tasks if task.get_name() == name]
        for task in stopping:
            task.cancel()
        if stopping:
            await asyncio.wait(stopping)
            log.info("root_task_stopped", task=name)

    def _start(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        assert self._tg is not None
        task = self._tg.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def spawn(self, run: Run, lease: Lease | None = None) -> Monitor:
        """Start the run's monitor, under `lease` (its claim) when given."""
        run_id = run.spec.run_id
        if lease is not None:
            self.lease_book.put(run_id, lease)
        monitor = Monitor(run, self._deps)
        self.monitors[run_id] = monitor
        task = self._start(self._guarded(monitor), f"monitor:{run_id}")
        self._monitor_tasks[run_id] = task
        task.add_done_callback(lambda done: self._forget_task(run_id, done))
        return monitor

    async def _guarded(self, monitor: Monitor) -> None:
        """A monitor's crash is contained: its run goes to `failed`, nothing else is touched."""
        try:
            await monitor.run_forever()
            log.info("monitor_finished", run_id=monitor.run_id, phase=monitor.run.phase)
            self._lease_done(monitor)
        except asyncio.CancelledError:
            raise
        except LeaseLost as lost:
            # Another replica owns the run now (or this lease was too near its end to act):
            # nothing was written and no AWS call made; the owner carries on.
            log.warning("monitor_dropped", run_id=monitor.run_id, why=str(lost))
            self._lease_done(monitor, lost=lost.why)
        except Exception as exc:
            log.exception("monitor_crashed", run_id=monitor.run_id)
            await self._fail_run(monitor.run_id, exc)
            self._lease_done(monitor)
        finally:
            if self.monitors.get(monitor.run_id) is monitor:
                del self.monitors[monitor.run_id]

    async def _fail_run(self, run_id: str, exc: Exception) -> None:
        try:
            record = await self.store.get_run(run_id)
            if record is None or record.run.phase.is_terminal:
                return
            decision = step(
                record.run,
                MonitorFailed(type(exc).__name__, str(exc)[:1000]),
                now=self.clock.now(),
                policy=self._deps.policy,
                rng=self._deps.rng,
            )
            lease = self.lease_book.held(run_id)
            if lease is None:  # not ours any more: its owner decides
                return
            await self.store.commit(record.run, decision, now=self.clock.now(), lease=lease)
            self.metrics.transitioned(record.run, decision)
        except Exception:
            log.exception("run_fail_not_recorded", run_id=run_id)

    # -- leases (issue 14) ------------------------------------------------------------------

    def _leased_monitors(self) -> list[Monitor]:
        """The monitors whose lease is live: what the sweeps describe (a replica that wakes
        from SIGSTOP past its leases makes no call for runs it no longer owns)."""
        return [m for m in self.monitors.values() if self.lease_book.live(m.run_id)]

    def _forget_task(self, run_id: str, task: asyncio.Task[None]) -> None:
        if self._monitor_tasks.get(run_id) is task:
            del self._monitor_tasks[run_id]

    def _lease_done(self, monitor: Monitor, *, lost: str | None = None) -> None:
        """The monitor stopped on its own: its run's lease goes back (unless a newer monitor
        of the run took over meanwhile)."""
        if self.monitors.get(monitor.run_id) is monitor:
            self.lease_keeper.stopped(monitor.run_id, lost=lost)

    def _database_lost(self, lost: DatabaseLost) -> None:
        self.database_lost = lost
        self.request_shutdown("database lost")

    def _disarm(self, run_id: str) -> None:
        """Stop a run's monitor at once, its lease lost or handed back: no further write or
        AWS call (one in flight is cancelled; the next owner describes first)."""
        monitor = self.monitors.pop(run_id, None)
        if monitor is not None:
            monitor.close()
        task = self._monitor_tasks.pop(run_id, None)
        if task is not None:
            task.cancel()

    async def _hand_back(self) -> None:
        """After the monitors stopped: every lease goes back, for the other replicas to claim
        at once."""
        try:
            await self.lease_keeper.hand_back()
        except Exception:  # the leases then expire after their TTL instead
            log.exception("leases_not_handed_back")

    # -- notifications (issue 15) -----------------------------------------------------------

    def _notifier(self, sender: NotificationSender | None) -> Notifier | None:
        """The sender of the outbox's rows, if notification URLs are set; from here on the
        store writes a row for each transition or zombie that is one of the events chosen."""
        settings = self.settings
        if not settings.notify_url_list:
            self.store.notify_on_events(frozenset())
            return None
        if sender is None:
            from supervisor.adapters.notify import AppriseSender  # apprise only when used

            sender = AppriseSender(settings.notify_url_list, timeout_s=settings.notify_timeout_s)
        self.store.notify_on_events(settings.notify_events)
        notifier = Notifier(
            self.store, sender, self.clock, replica_id=self.replica_id, leader=self.leader.holds,
            policy=NotifyPolicy(
                retries=settings.notify_retries, retry_base_s=settings.notify_retry_base_s,
                poll_s=settings.notify_poll_s, public_url=settings.public_url,
                owner_gone_after_s=settings.lease_ttl_s,
            ),
        )  # fmt: skip
        self.metrics.watch_notifications(notifier)
        return notifier

    # -- the dashboard (issue 15) -----------------------------------------------------------

    def estimated_end(self, run_id: str) -> datetime | None:
        """When the run's training is estimated to end, as its monitor last committed it (the
        ETA of `supervisorctl status`); None for a run this replica does not watch, for one not
        training (running or stalled), or without an estimate."""
        monitor = self.monitors.get(run_id)
        if monitor is None or monitor.run.phase not in (Phase.RUNNING, Phase.STALLED):
            return None
        return monitor.run.this_attempt.estimated_end
