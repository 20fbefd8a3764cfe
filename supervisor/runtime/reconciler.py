"""The reconcile sweep: one batched DescribeInstanceStatus per ≤100 watched instances, the states
fed to the monitors. Runs every `interval_s`, and soon after a monitor asks (`kick`), with kicks
that arrive together coalesced into one sweep."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable, Iterable

import structlog

from supervisor.core.errors import ExternalError
from supervisor.core.events import InstanceObserved
from supervisor.core.values import InstanceId
from supervisor.runtime.monitor import Monitor
from supervisor.runtime.ports import Cloud

log = structlog.get_logger("supervisor.reconciler")


class Reconciler:
    def __init__(
        self,
        cloud: Cloud,
        monitors: Callable[[], Iterable[Monitor]],
        *,
        interval_s: float,
        coalesce_s: float = 0.2,
    ) -> None:
        self._cloud = cloud
        self._monitors = monitors
        self.interval_s = interval_s
        self._coalesce_s = min(coalesce_s, interval_s)
        self._kicked = asyncio.Event()
        self.sweeps = 0

    def kick(self) -> None:
        self._kicked.set()

    async def run_forever(self) -> None:
        while True:
            await self.sweep()
            try:
                async with asyncio.timeout(self.interval_s):
                    await self._kicked.wait()
                await asyncio.sleep(self._coalesce_s)  # let a burst of kicks share one sweep
            except TimeoutError:
                pass
            self._kicked.clear()

    async def sweep(self) -> int:
        """Describe every watched instance once; return how many were described."""
        by_region: dict[str, dict[InstanceId, list[Monitor]]] = defaultdict(
            lambda: defaultdict(list)
        )
        for monitor in self._monitors():
            if not monitor.run.phase.is_terminal:
                spec = monitor.run.spec
                by_region[spec.region][monitor.run.instance_id].append(monitor)
        self.sweeps += 1
        described = 0
        for region, watched in by_region.items():
            try:
                states = await self._cloud.describe_instances(list(watched), region)
            except ExternalError as exc:
                log.warning(
                    "sweep_failed",
                    region=region,
                    code=exc.code,
                    message=exc.message,
                    instances=len(watched),
                )
                continue
            described += len(watched)
            for instance_id, monitors in watched.items():
                observed = InstanceObserved(
                    states[instance_id], source="sweep", instance_id=instance_id
                )
                for monitor in monitors:
                    monitor.deliver(observed)
        return described
