"""The idle sweep: every `interval_s`, the utilisation of every watched instance with idle
detection (`--idle-below`), read from CloudWatch in batches (one GetMetricData per 500
instances, per region and metric, never a call per run), delivered to each run's monitor as
`UtilisationObserved`. The core judges the datapoints (`core.idle.judge`) and decides what idle
does (`core.machine`): nothing here decides."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable, Iterable

import structlog

from supervisor.core.errors import ExternalError
from supervisor.core.events import UtilisationObserved
from supervisor.core.idle import IdleMetric, fetch_window
from supervisor.core.run import Phase
from supervisor.core.values import InstanceId
from supervisor.runtime.monitor import Monitor
from supervisor.runtime.ports import Clock, Cloud

log = structlog.get_logger("supervisor.idle")

JUDGED_PHASES = frozenset({Phase.RUNNING, Phase.STALLED})
"""The phases whose table rows take `UtilisationObserved`: a run doing anything else (its
checkpoint, grace, a stop) is not asked about."""


class IdleSweep:
    def __init__(
        self,
        cloud: Cloud,
        clock: Clock,
        monitors: Callable[[], Iterable[Monitor]],
        *,
        interval_s: float,
    ) -> None:
        self._cloud = cloud
        self._clock = clock
        self._monitors = monitors
        self.interval_s = interval_s
        self.sweeps = 0

    def __repr__(self) -> str:
        return f"<IdleSweep interval={self.interval_s:g}s sweeps={self.sweeps}>"

    async def run_forever(self) -> None:
        """Sweep every `interval_s`, the first one interval after start: no run can have been
        idle for long at start-up that a restart's burst of calls would catch sooner.
        A sweep that fails is logged (a root task that raises is restarted and counted)."""
        while True:
            await asyncio.sleep(self.interval_s)
            await self.sweep()

    async def sweep(self) -> int:
        """Read the utilisation of every run with idle detection in a judged phase; deliver it.
        Returns how many instances were read."""
        groups: dict[tuple[str, IdleMetric], dict[InstanceId, list[Monitor]]] = defaultdict(
            lambda: defaultdict(list)
        )
        for monitor in self._monitors():
            run = monitor.run
            if run.phase in JUDGED_PHASES and run.spec.idle_detection:
                key = (run.spec.region, run.spec.idle_metric)
                groups[key][run.instance_id].append(monitor)
        self.sweeps += 1
        read = 0
        now = self._clock.now()
        for (region, metric), watched in groups.items():
            # One window for the group: the longest any of its runs needs.
            longest = max(
                m.run.spec.idle_for_s or 0.0 for monitors in watched.values() for m in monitors
            )
            try:
                points = await self._cloud.utilisation(
                    list(watched), metric, region, start=now - fetch_window(longest, metric),
                    end=now,
                )  # fmt: skip
            except ExternalError as exc:
                log.warning(
                    "idle_sweep_failed",
                    region=region,
                    metric=str(metric),
                    code=exc.code,
                    message=exc.message,
                    instances=len(watched),
                )
                continue
            read += len(watched)
            for instance_id, monitors in watched.items():
                observed = UtilisationObserved(
                    metric, points.get(instance_id, ()), instance_id=instance_id
                )
                for monitor in monitors:
                    monitor.deliver(observed)
        return read
