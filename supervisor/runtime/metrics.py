"""The daemon's Prometheus metrics (prometheus-client), in a registry of its own per daemon.

What happens is reported here as it happens, through `MetricsSink`: transitions (by the
monitors and the daemon), stop and terminate attempts (by the monitors and the zombie sweep),
checkpoint checks. What is already counted elsewhere is read at scrape time: runs by phase and
outcome from one GROUP BY query made just before rendering (a collector must not block on
SQLite), AWS calls from the adapter's `CallCounter`.

No metric has a run id label: a fleet of ten thousand runs would be ten thousand series.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Literal

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from supervisor.adapters.metrics_http import Exposition
from supervisor.core.checkpoint import Verification
from supervisor.core.events import Action
from supervisor.core.machine import Decision
from supervisor.core.run import Outcome, Phase, Run
from supervisor.runtime.ports import Clock

if TYPE_CHECKING:
    from supervisor.runtime.leases import LeaseKeeper
    from supervisor.runtime.notifier import Notifier

Source = Literal["run", "zombie"]
RunCounts = Mapping[tuple[str, str | None], int]
"""Runs by (phase, outcome); outcome None while the training has not ended."""
CallCounts = Mapping[tuple[str, str, str], int]
"""AWS calls by (service, operation, outcome)."""

COMPLETION_TO_STOP_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200)
"""Seconds; the default grace is 300 s, so most observations fall around it."""
_INSTANCE_ACTIONS = frozenset({Action.STOP, Action.TERMINATE})
_INSTANCE_ENDED = frozenset({Phase.STOPPED, Phase.TERMINATED})


class MetricsSink:
    """What monitors, the daemon and the zombie sweep report. This base records nothing: it
    is the default for parts built without a daemon's `Metrics`."""

    def transitioned(self, before: Run | None, decision: Decision) -> None:
        """A decision was committed (`before` is None for a new run)."""

    def instance_acted(
        self, source: Source, action: Action, outcome: str, *, run_id: str | None = None
    ) -> None:
        """A stop, terminate or start attempt on an instance ended with `outcome` (a run's
        `accepted`, `gone`, `gave-up`, `failed`; a zombie's terminations-log outcome)."""

    def checkpoint_checked(self, verification: Verification, *, early: bool) -> None:
        """A checkpoint was verified in S3, or failed verification."""


@dataclass(slots=True)
class _Completion:
    at: datetime
    stop_seen: bool = False


class Metrics(MetricsSink):
    """Every metric of one daemon. `runs` counts runs by phase and outcome (awaited before
    each rendering); `monitors` is how many runs are watched now; `aws_calls` reads the AWS
    adapter's counts."""

    def __init__(
        self,
        clock: Clock,
        *,
        runs: Callable[[], Awaitable[RunCounts]],
        monitors: Callable[[], int],
        aws_calls: Callable[[], CallCounts] | None = None,
    ) -> None:
        self._clock = clock
        self._count_runs = runs
        self._count_monitors = monitors
        self._count_calls = aws_calls
        self._runs: RunCounts = {}
        self._series_seen: set[tuple[str, str]] = set()
        self._completed: dict[str, _Completion] = {}
        """Runs whose training completed and whose instance is not yet stopped/terminated.
        Kept in memory only: a daemon restarted in between does not observe that run."""
        self.registry = CollectorRegistry()
        self._transitions = Counter(
            "supervisor_transitions",
            "Committed phase transitions, by phase left (none for an attach) and phase entered.",
            ["from", "to"],
            registry=self.registry,
        )
        self._terminations = Counter(
            "supervisor_terminations",
            "Stop and terminate attempts on instances: by a run's monitor (source=run) or the "
            "zombie sweep (source=zombie), by outcome.",
            ["source", "action", "outcome"],
            registry=self.registry,
        )
        self._completion_to_stop = Histogram(
            "supervisor_completion_to_stop_seconds",
            "From the transition that recorded a run's completion to the acceptance of its "
            "stop or terminate call.",
            buckets=COMPLETION_TO_STOP_BUCKETS,
            registry=self.registry,
        )
        self._idle = Counter(
            "supervisor_idle_instance_seconds",
            "Instance-seconds between a run's completion and its instance confirmed stopped "
            "or terminated.",
            registry=self.registry,
        )
        self._checkpoint_bytes = Counter(
            "supervisor_checkpoint_bytes_verified",
            "Bytes of checkpoint files verified in S3 (size and SHA-256).",
            registry=self.registry,
        )
        self._checkpoints = Counter(
            "supervisor_checkpoint_checks",
            "Checkpoint verifications, by kind (final, or early for a rebalance) and result.",
            ["kind", "result"],
            registry=self.registry,
        )
        self._root_task_restarts = Counter(
            "supervisor_root_task_restarts",
            "Restarts of the daemon's root tasks (reconciler, zombies, events) after they "
            "failed; the daemon exits once one keeps failing.",
            ["task"],
            registry=self.registry,
        )
        self.registry.register(self)  # `collect`: what is counted elsewhere

    def __repr__(self) -> str:
        return f"<Metrics completed_not_stopped={len(self._completed)}>"

    # -- reports ------------------------------------------------------------------------------

    def transitioned(self, before: Run | None, decision: Decision) -> None:
        t = decision.transition
        if t is None:
            return
        run = decision.run
        self._transitions.labels(str(t.from_phase or "none"), str(t.to_phase)).inc()
        run_id = run.spec.run_id
        already = before is not None and before.outcome is Outcome.COMPLETED
        if run.outcome is Outcome.COMPLETED and not already:
            self._completed[run_id] = _Completion(t.at)
        if t.to_phase.is_terminal:
            completion = self._completed.pop(run_id, None)
            if completion is not None and t.to_phase in _INSTANCE_ENDED:
                self._idle.inc(max(0.0, (t.at - completion.at).total_seconds()))

    def instance_acted(
        self, source: Source, action: Action, outcome: str, *, run_id: str | None = None
    ) -> None:
        if action not in _INSTANCE_ACTIONS:
            return
        self._terminations.labels(source, str(action), outcome).inc()
        completion = self._completed.get(run_id) if run_id is not None else None
        if completion is not None and outcome == "accepted" and not completion.stop_seen:
            completion.stop_seen = True
            seconds = (self._clock.now() - completion.at).total_seconds()
            self._completion_to_stop.observe(max(0.0, seconds))

    def checkpoint_checked(self, verification: Verification, *, early: bool) -> None:
        kind = "early" if early else "final"
        self._checkpoints.labels(kind, "verified" if verification.ok else "failed").inc()
        if verification.ok:
            self._checkpoint_bytes.inc(verification.bytes)

    def root_task_started(self, task: str) -> None:
        """A root task is running: its restart count is shown from 0."""
        self._root_task_restarts.labels(task)

    def root_task_restarted(self, task: str) -> None:
        self._root_task_restarts.labels(task).inc()

    # -- rendering ----------------------------------------------------------------------------

    async def metrics(self, accept: str) -> Exposition:
        """Count the runs, then render every metric in the format `accept` asks for (the
        Prometheus text format unless it asks for OpenMetrics)."""
        runs = await self._count_runs()
        # No await from here on: the collector reads exactly this snapshot.
        self._runs = runs
        encoder, content_type = choose_encoder(accept)
        return Exposition(encoder(self.registry), content_type)

    def collect(self) -> Iterator[Metric]:
        """The collector of what is counted elsewhere: runs, monitors, AWS calls."""
        runs = GaugeMetricFamily(
            "supervisor_runs",
            "Runs by phase and outcome (none until the training has ended).",
            labels=["phase", "outcome"],
        )
        counts = {(phase, outcome or "none"): n for (phase, outcome), n in self._runs.items()}
        self._series_seen |= counts.keys()
        # A series that was seen stays, at 0, so a phase emptied is a drop to 0, not a gap.
        for key in sorted(self._series_seen):
            runs.add_metric(list(key), counts.get(key, 0))
        yield runs
        yield GaugeMetricFamily(
            "supervisor_monitors", "Runs watched by a live monitor.", value=self._count_monitors()
        )
        calls = CounterMetricFamily(
            "supervisor_aws_calls",
            "AWS API calls by service, operation and outcome: ok, or the error's class "
            "(transient: retried; not_found; permanent).",
            labels=["service", "operation", "outcome"],
        )
        for call, n in sorted((self._count_calls() if self._count_calls else {}).items()):
            calls.add_metric(list(call), n)
        yield calls

    # -- leases (issue 14) ------------------------------------------------------------------

    def watch_leases(self, keeper: LeaseKeeper) -> None:
        """Report the lease keeper's figures: runs owned now, claims, leases lost."""
        self.registry.register(_LeaseFigures(keeper))

    def watch_notifications(self, notifier: Notifier) -> None:
        """Issue 15: report the notification sender's figures (sent, failed, pending)."""
        self.registry.register(_NotificationFigures(notifier))


class _NotificationFigures:
    """Issue 15: the notification sender's figures, read at scrape time. A target is labelled
    by its digest, never its URL (URLs hold secrets); `supervisord status` shows which
    redacted URL each digest is."""

    def __init__(self, notifier: Notifier) -> None:
        self._notifier = notifier

    def collect(self) -> Iterator[Metric]:
        notifier = self._notifier
        sent = CounterMetricFamily(
            "supervisor_notifications_sent",
            "Notifications a receiver accepted, by target (a digest of its URL).",
            labels=["target"],
        )
        failed = CounterMetricFamily(
            "supervisor_notifications_failed",
            "Notifications given up on after their retries, by target.",
            labels=["target"],
        )
        for target in notifier.targets:
            sent.add_metric([target.digest], notifier.sent[target.digest])
            failed.add_metric([target.digest], notifier.failed[target.digest])
        yield sent
        yield failed
        yield GaugeMetricFamily(
            "supervisor_notifications_pending",
            "Outbox rows this replica found waiting to be sent at its last look.",
            value=notifier.pending,
        )


class _LeaseFigures:
    """A collector of the lease keeper's figures, read at scrape time."""

    def __init__(self, keeper: LeaseKeeper) -> None:
        self._keeper = keeper

    def collect(self) -> Iterator[Metric]:
        keeper = self._keeper
        yield GaugeMetricFamily(
            "supervisor_runs_owned",
            "Active runs this replica holds the lease of (and watches).",
            value=len(keeper.book),
        )
        yield CounterMetricFamily(
            "supervisor_lease_claims",
            "Runs claimed by this replica (each claim bumps the run's epoch).",
            value=keeper.counts.claims,
        )
        lost = CounterMetricFamily(
            "supervisor_leases_lost",
            "Leases this replica lost, by why: renewal (another replica holds it), fence (a "
            "write found it gone), expired (by this replica's clock), expiring (too little "
            "left to act on an instance). Each stopped a monitor with no AWS call.",
            labels=["why"],
        )
        for why in sorted({"renewal", "fence", "expired", "expiring"} | keeper.counts.lost.keys()):
            lost.add_metric([why], keeper.counts.lost.get(why, 0))
        yield lost
        yield CounterMetricFamily(
            "supervisor_leases_released",
            "Runs this replica handed back (finished, above its fair share, at shutdown).",
            value=keeper.counts.released,
        )
