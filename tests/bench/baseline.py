"""The naive baseline of figures 1 and 2: how a supervisor is commonly written.

Every period (60 s, compressed like the daemon's timings), for each run still watched: one
HeadObject per completion marker name and one DescribeInstances with that run's instance id.
When a marker is there and the instance runs, StopInstances, and the run is no longer watched
(with `wait_s`, the stop comes that long after the marker is seen: figure 7's fixed wait).
The calls of a sweep go out together (asyncio, aioboto3); sweeps start on a fixed-rate
schedule, so a slow sweep does not stretch the period (a late start is counted as an overrun).
Its calls are counted here, by operation, as the daemon's are by its CallCounter.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aioboto3
from botocore.config import Config
from botocore.exceptions import ClientError

from tests.bench.moto_world import REGION


@dataclass(frozen=True, slots=True)
class Watched:
    run_id: str
    instance_id: str
    bucket: str
    prefix: str
    """Key prefix of the run, ending in '/'."""


@dataclass(slots=True)
class BaselineResult:
    calls: Counter[str] = field(default_factory=Counter)
    stop_at: dict[str, float] = field(default_factory=dict)
    """run id -> wall-clock time the StopInstances call was made."""
    accepted_at: dict[str, float] = field(default_factory=dict)
    """run id -> wall-clock time the StopInstances call returned."""
    sweeps: int = 0
    overruns: int = 0
    """Sweeps that started later than their slot because the previous one was still going."""


class NaivePoller:
    def __init__(
        self,
        aws: Mapping[str, str],
        runs: Sequence[Watched],
        *,
        period_s: float,
        markers: Sequence[str],
        wait_s: float = 0.0,
    ) -> None:
        self._aws = aws
        self._wait_s = wait_s
        self._stops: list[asyncio.Task[None]] = []
        self._runs = list(runs)
        self._period_s = period_s
        self._markers = tuple(markers)
        self.result = BaselineResult()

    async def run(self, timeout_s: float) -> BaselineResult:
        """Poll until every run's instance is stopped, or `timeout_s` passes."""
        session = aioboto3.Session(
            aws_access_key_id=self._aws["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self._aws["AWS_SECRET_ACCESS_KEY"],
            region_name=REGION,
        )
        config = Config(retries={"total_max_attempts": 1}, max_pool_connections=50)
        url = self._aws["AWS_ENDPOINT_URL"]
        async with (
            session.client("s3", endpoint_url=url, config=config) as s3,
            session.client("ec2", endpoint_url=url, config=config) as ec2,
        ):
            watching = {w.run_id: w for w in self._runs}
            started = time.monotonic()
            deadline = started + timeout_s
            slot = 0
            while watching and time.monotonic() < deadline:
                await asyncio.gather(
                    *(self._look(s3, ec2, w, watching) for w in list(watching.values()))
                )
                self.result.sweeps += 1
                slot += 1
                wait = started + slot * self._period_s - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                else:
                    self.result.overruns += 1
            await asyncio.gather(*self._stops)
        return self.result

    async def _look(self, s3: Any, ec2: Any, run: Watched, watching: dict[str, Watched]) -> None:
        heads = [self._head(s3, run.bucket, run.prefix + m) for m in self._markers]
        found, state = await asyncio.gather(asyncio.gather(*heads), self._state(ec2, run))
        if any(found) and state == "running" and run.run_id in watching:
            del watching[run.run_id]
            if self._wait_s > 0:  # a task: the wait must not hold up the sweep
                self._stops.append(asyncio.create_task(self._stop(ec2, run, self._wait_s)))
            else:
                await self._stop(ec2, run, 0.0)

    async def _stop(self, ec2: Any, run: Watched, wait_s: float) -> None:
        await asyncio.sleep(wait_s)
        self.result.stop_at[run.run_id] = time.time()
        self.result.calls["StopInstances"] += 1
        await ec2.stop_instances(InstanceIds=[run.instance_id])
        self.result.accepted_at[run.run_id] = time.time()

    async def _head(self, s3: Any, bucket: str, key: str) -> bool:
        self.result.calls["HeadObject"] += 1
        try:
            await s3.head_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    async def _state(self, ec2: Any, run: Watched) -> str:
        self.result.calls["DescribeInstances"] += 1
        reply = await ec2.describe_instances(InstanceIds=[run.instance_id])
        return str(reply["Reservations"][0]["Instances"][0]["State"]["Name"])
