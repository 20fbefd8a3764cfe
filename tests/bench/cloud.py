"""A counting fake of our own `Cloud` port (supervisor/runtime/ports.py): the restart figure
expects no AWS call per run, so each call is counted by operation and answered plainly."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import datetime

from supervisor.adapters.aws import STATUS_BATCH
from supervisor.core.checkpoint import StoredObject
from supervisor.core.completion import ListRequest
from supervisor.core.idle import Datapoint, IdleMetric
from supervisor.core.spec import LaunchTemplate
from supervisor.core.values import InstanceId, InstanceState, ObjectInfo
from supervisor.core.zombies import InstanceSeen


class CountedCalls:
    """The port's call counts, read from the fake's own tally (every call counted `ok`)."""

    def __init__(self, calls: Counter[str]) -> None:
        self._calls = calls

    @property
    def outcomes(self) -> Mapping[tuple[str, str, str], int]:
        return {("fake", operation, "ok"): n for operation, n in self._calls.items()}

    def count(self, operation: str) -> int:
        return self._calls[operation]

    def snapshot(self) -> dict[str, int]:
        return {f"fake:{operation}": n for operation, n in sorted(self._calls.items())}


class CountingCloud:
    """Every instance is running, every prefix is empty; anything that acts is refused."""

    def __init__(self, region: str) -> None:
        self._region = region
        self.calls: Counter[str] = Counter()
        self.described_ids = 0

    @property
    def default_region(self) -> str | None:
        return self._region

    @property
    def counter(self) -> CountedCalls:
        return CountedCalls(self.calls)

    def _refuse(self, operation: str) -> RuntimeError:
        self.calls[operation] += 1
        return RuntimeError(f"the restart bench expects no {operation} call")

    async def list_objects(self, request: ListRequest, region: str) -> tuple[ObjectInfo, ...]:
        self.calls["ListObjectsV2"] += 1
        return ()

    async def list_uploads(self, bucket: str, prefix: str, region: str) -> tuple[str, ...]:
        self.calls["ListMultipartUploads"] += 1
        return ()

    async def read_object(self, bucket: str, key: str, region: str, *, limit: int = 0) -> str:
        raise self._refuse("GetObject")

    async def read_tail(
        self, bucket: str, key: str, region: str, *, limit: int = 0
    ) -> tuple[str, int]:
        raise self._refuse("GetObject")

    async def read_range(
        self, bucket: str, key: str, region: str, start: int, *, limit: int = 0
    ) -> tuple[bytes, int]:
        raise self._refuse("GetObject")

    async def describe_instances(
        self, ids: Sequence[InstanceId], region: str
    ) -> dict[InstanceId, InstanceState]:
        # As the real adapter: one DescribeInstanceStatus per 100 distinct ids.
        self.calls["DescribeInstanceStatus"] += -(-len(set(ids)) // STATUS_BATCH)
        self.described_ids += len(ids)
        return dict.fromkeys(ids, InstanceState.RUNNING)

    async def describe_tagged(self, tag_key: str, region: str) -> list[InstanceSeen]:
        self.calls["DescribeInstances(tagged)"] += 1
        return []

    async def instance_exists(self, instance_id: InstanceId, region: str) -> bool:
        self.calls["DescribeInstances"] += 1
        return True

    async def probe_prefix(self, bucket: str, prefix: str, region: str) -> None:
        self.calls["ListObjectsV2"] += 1

    async def stop_instance(self, instance_id: InstanceId, region: str) -> InstanceState:
        raise self._refuse("StopInstances")

    async def terminate_instance(self, instance_id: InstanceId, region: str) -> InstanceState:
        raise self._refuse("TerminateInstances")

    async def start_instance(self, instance_id: InstanceId, region: str) -> InstanceState:
        raise self._refuse("StartInstances")

    async def head_object(self, bucket: str, key: str, region: str) -> StoredObject | None:
        raise self._refuse("HeadObject")

    async def launch_from_template(
        self, template: LaunchTemplate, tags: Mapping[str, str], region: str, *, token: str
    ) -> InstanceId:
        raise self._refuse("RunInstances")

    async def create_tags(
        self, instance_id: InstanceId, tags: Mapping[str, str], region: str
    ) -> None:
        raise self._refuse("CreateTags")

    async def utilisation(
        self,
        ids: Sequence[InstanceId],
        metric: IdleMetric,
        region: str,
        *,
        start: datetime,
        end: datetime,
    ) -> dict[InstanceId, tuple[Datapoint, ...]]:
        raise self._refuse("GetMetricData")
