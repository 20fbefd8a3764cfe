"""The ports the runtime works through. Adapters satisfy them structurally; tests may fake
them here (and only here) when a real part cannot run."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Protocol

from supervisor.core.completion import ListRequest
from supervisor.core.values import InstanceId, InstanceState, ObjectInfo


class Cloud(Protocol):
    """What the runtime needs of AWS (implemented by `supervisor.adapters.aws.Aws`)."""

    @property
    def default_region(self) -> str | None: ...

    async def list_objects(self, request: ListRequest, region: str) -> tuple[ObjectInfo, ...]: ...

    async def read_object(self, bucket: str, key: str, region: str, *, limit: int = ...) -> str: ...

    async def describe_instances(
        self, ids: Sequence[InstanceId], region: str
    ) -> dict[InstanceId, InstanceState]: ...

    async def stop_instance(self, instance_id: InstanceId, region: str) -> InstanceState: ...

    async def terminate_instance(self, instance_id: InstanceId, region: str) -> InstanceState: ...


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)
