"""Beside figure 3: the CPU our AWS client spends on one prefix check (ListObjectsV2), against
moto and against a stub S3 endpoint that keeps connections alive as S3 does.

moto's server (werkzeug) answers every request with `Connection: close`, so against it each
check pays for a new TCP connection that a daemon talking to S3 reuses from its pool. The
second measurement goes through the keep-alive proxy (tests/bench/keepalive_proxy.py) to the
same moto. Servers and proxy are processes of their own; only this process's CPU is counted
(`time.process_time`), over `calls` checks, the least of three rounds.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

from supervisor.adapters.aws import Aws
from supervisor.core.completion import ListRequest
from tests.bench.keepalive_proxy import KeepAliveProxy
from tests.bench.moto_world import REGION, MotoWorld

BUCKET = "bench-client-cost"
PREFIX = "runs/empty/"
ROUNDS = 3


@dataclass(frozen=True, slots=True)
class ClientCost:
    calls: int
    moto_ms: float
    """Client CPU per check against moto: a new connection per call."""
    keep_alive_ms: float
    """Client CPU per check over kept-alive connections (the proxy), as against S3."""


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """`values` in os.environ (the AWS chain reads them), then the environment as it was."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


async def _cpu_per_call_ms(calls: int) -> float:
    request = ListRequest(BUCKET, PREFIX, "/")
    async with Aws() as aws:
        for _ in range(20):  # connection pool, endpoint resolution, models loaded
            await aws.list_objects(request, REGION)
        best = float("inf")
        for _ in range(ROUNDS):
            started = time.process_time()
            for _ in range(calls):
                await aws.list_objects(request, REGION)
            best = min(best, (time.process_time() - started) / calls * 1000)
    return best


def measure(world: MotoWorld, calls: int = 300) -> ClientCost:
    world.bucket(BUCKET)
    with _environment(world.aws_env):
        moto_ms = asyncio.run(_cpu_per_call_ms(calls))
    with (
        KeepAliveProxy(world.url) as proxy,
        _environment({**world.aws_env, "AWS_ENDPOINT_URL": proxy.url}),
    ):
        keep_alive_ms = asyncio.run(_cpu_per_call_ms(calls))
    return ClientCost(calls=calls, moto_ms=moto_ms, keep_alive_ms=keep_alive_ms)
