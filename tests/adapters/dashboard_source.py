"""The daemon's side of the dashboard for adapter tests: a `DashboardSource` of our own port
with canned answers (a status with AWS calls, no zombies, an empty report, a log line with
markup in it)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

from supervisor.adapters.metrics_http import Exposition
from supervisor.adapters.protocol import (
    DaemonStatus,
    ReplicaView,
    ReportView,
    TrainingLogItem,
    ZombieList,
)

MARKUP = '<img src=x onerror="alert(1)">'
STARTED = datetime(2026, 11, 22, 9, tzinfo=UTC)


class Source:
    """The daemon's side: canned status, no zombies, an empty report, a short log."""

    def __init__(self, *, replicas: tuple[str, ...] = ()) -> None:
        self._replicas = replicas

    async def metrics(self, accept: str) -> Exposition:
        return Exposition(b"supervisor_monitors 0.0\n", "text/plain; version=0.0.4")

    async def status(self) -> DaemonStatus:
        return DaemonStatus(
            pid=1, version="0", started_at=STARTED, state_dir="/tmp/x", socket="/tmp/x/s",
            runs_by_phase={}, monitors=0, aws_calls={"ec2:DescribeInstances": 3},
            replica_id=self._replicas[0] if self._replicas else "", role="replica",
            replicas=[
                ReplicaView(
                    replica_id=name, host="box", pid=n, state="running", started_at=STARTED,
                    heartbeat_at=STARTED, alive=True, runs_owned=0,
                )
                for n, name in enumerate(self._replicas, start=1)
            ],
        )  # fmt: skip

    async def zombies(self) -> ZombieList:
        return ZombieList(auto_terminate=False, wait_s=300, cooldown_s=300, zombies=[])

    async def report(self, since_days: float) -> ReportView:
        return ReportView(
            since=STARTED, until=STARTED, days=[], runs_by_outcome={}, runs=0,
            crash_rate=None, open_zombies=0,
        )  # fmt: skip

    async def training_log(
        self, run_id: str, *, key: str, offset: int | None, last: int, follow: bool
    ) -> AsyncIterator[TrainingLogItem]:
        yield TrainingLogItem(kind="lines", text=f"step 1 {MARKUP}\n", offset=20)
