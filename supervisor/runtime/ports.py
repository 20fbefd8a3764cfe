"""The ports the runtime works through. Adapters satisfy them structurally; tests may fake
them here (and only here) when a real part cannot run."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Protocol

from supervisor.core.checkpoint import CommandResult, InstanceCommand, StoredObject
from supervisor.core.completion import ListRequest
from supervisor.core.spec import LaunchTemplate
from supervisor.core.values import InstanceId, InstanceState, ObjectInfo
from supervisor.core.zombies import InstanceSeen


class CallCounts(Protocol):
    """Every AWS call made, by service and operation, and by outcome once it ended."""

    @property
    def outcomes(self) -> Mapping[tuple[str, str, str], int]:
        """Ended calls by (service, operation, outcome): `ok`, or the error's class."""
        ...

    def count(self, operation: str) -> int:
        """Calls made of `operation` (e.g. `ListObjectsV2`), in any service."""
        ...

    def snapshot(self) -> dict[str, int]:
        """Calls made by `service:operation`."""
        ...


class Cloud(Protocol):
    """What the runtime needs of AWS (implemented by `supervisor.adapters.aws.Aws`)."""

    @property
    def default_region(self) -> str | None: ...

    @property
    def counter(self) -> CallCounts:
        """The calls this adapter made (`supervisord status`, `/metrics`, the benchmark)."""
        ...

    async def list_objects(self, request: ListRequest, region: str) -> tuple[ObjectInfo, ...]: ...

    async def read_object(self, bucket: str, key: str, region: str, *, limit: int = ...) -> str: ...

    async def read_tail(
        self, bucket: str, key: str, region: str, *, limit: int = ...
    ) -> tuple[str, int]: ...

    async def read_range(
        self, bucket: str, key: str, region: str, start: int, *, limit: int = ...
    ) -> tuple[bytes, int]: ...

    async def describe_instances(
        self, ids: Sequence[InstanceId], region: str
    ) -> dict[InstanceId, InstanceState]: ...

    async def describe_tagged(self, tag_key: str, region: str) -> list[InstanceSeen]: ...

    async def instance_exists(self, instance_id: InstanceId, region: str) -> bool: ...

    async def probe_prefix(self, bucket: str, prefix: str, region: str) -> None: ...

    async def stop_instance(self, instance_id: InstanceId, region: str) -> InstanceState: ...

    async def terminate_instance(self, instance_id: InstanceId, region: str) -> InstanceState: ...

    async def start_instance(self, instance_id: InstanceId, region: str) -> InstanceState: ...

    async def head_object(self, bucket: str, key: str, region: str) -> StoredObject | None: ...

    async def launch_from_template(
        self, template: LaunchTemplate, tags: Mapping[str, str], region: str, *, token: str
    ) -> InstanceId: ...

    async def create_tags(
        self, instance_id: InstanceId, tags: Mapping[str, str], region: str
    ) -> None: ...


class InstanceShell(Protocol):
    """Runs the instance-side program on an instance (SSM) or on this machine (local)."""

    async def run(
        self,
        instance_id: str,
        region: str,
        command: InstanceCommand,
        *,
        timeout_s: float,
        comment: str,
    ) -> CommandResult: ...


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)
