"""The retry schedule of stop/terminate: only transient errors, after 1x, 2x, 4x the base."""

from __future__ import annotations

import pytest

from supervisor.core.errors import ExternalError, PermanentError, TransientError
from supervisor.runtime.retry import GaveUp, call_with_retries


class Flaky:
    """Fails with the given errors in order, then returns "ok"."""

    def __init__(self, *errors: ExternalError) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def throttled() -> TransientError:
    return TransientError("RequestLimitExceeded", "slow down", operation="StopInstances")


pytestmark = pytest.mark.usefixtures("no_retry_waits")


async def test_two_throttles_then_success_takes_three_attempts_waiting_2_then_4_s() -> None:
    waits: list[float] = []
    call = Flaky(throttled(), throttled())
    result, attempts = await call_with_retries(
        call, base_s=2, on_retry=lambda error, attempt, wait: waits.append(wait)
    )
    assert (result, attempts, call.calls) == ("ok", 3, 3)
    assert waits == [2.0, 4.0]


async def test_gives_up_after_three_retries_waiting_2_4_8_s() -> None:
    waits: list[float] = []
    call = Flaky(*(throttled() for _ in range(10)))
    with pytest.raises(GaveUp) as caught:
        await call_with_retries(call, base_s=2, on_retry=lambda e, a, wait: waits.append(wait))
    assert caught.value.attempts == 4
    assert isinstance(caught.value.error, TransientError)
    assert waits == [2.0, 4.0, 8.0]


async def test_a_permanent_error_is_not_retried() -> None:
    call = Flaky(PermanentError("UnauthorizedOperation", "no", operation="StopInstances"))
    with pytest.raises(GaveUp) as caught:
        await call_with_retries(call, base_s=2)
    assert (caught.value.attempts, call.calls) == (1, 1)
    assert caught.value.error.code == "UnauthorizedOperation"


async def test_the_base_scales_the_whole_schedule() -> None:
    waits: list[float] = []
    call = Flaky(throttled(), throttled(), throttled())
    await call_with_retries(call, base_s=0.5, on_retry=lambda e, a, wait: waits.append(wait))
    assert waits == [0.5, 1.0, 2.0]
