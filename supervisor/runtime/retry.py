"""Retries of AWS actions. tenacity lives behind this one module.

Only `TransientError` is retried: after `base_s`, then twice that, then four times that
(2, 4, 8 s by default). Permanent errors are raised at once. `set_testing(True)` keeps the
schedule but skips the waits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from supervisor.core.errors import ExternalError, TransientError

T = TypeVar("T")
_no_wait = False


def set_testing(no_wait: bool) -> None:
    """Tests: retry exactly as in production, without sleeping between attempts."""
    global _no_wait
    _no_wait = no_wait


class GaveUp(Exception):
    """The call failed with `error` after `attempts` attempts."""

    def __init__(self, error: ExternalError, attempts: int) -> None:
        super().__init__(str(error))
        self.error = error
        self.attempts = attempts


async def call_with_retries(
    call: Callable[[], Awaitable[T]],
    *,
    base_s: float,
    retries: int = 3,
    on_retry: Callable[[ExternalError, int, float], None] | None = None,
) -> tuple[T, int]:
    """Return (result, attempts made), or raise `GaveUp` with the last error and attempts."""

    def before_sleep(state: RetryCallState) -> None:
        if on_retry is not None and state.outcome is not None and state.next_action is not None:
            error = state.outcome.exception()
            assert isinstance(error, ExternalError)
            on_retry(error, state.attempt_number, state.next_action.sleep)

    async def sleep(seconds: float) -> None:
        if not _no_wait:
            await asyncio.sleep(seconds)

    attempts = 0
    retrying = AsyncRetrying(
        retry=retry_if_exception_type(TransientError),
        stop=stop_after_attempt(retries + 1),
        wait=wait_exponential(multiplier=base_s, exp_base=2, min=base_s, max=base_s * 2**retries),
        before_sleep=before_sleep,
        reraise=True,
        sleep=sleep,
    )
    try:
        async for attempt in retrying:
            with attempt:
                attempts = attempt.retry_state.attempt_number
                result = await call()
    except ExternalError as error:
        raise GaveUp(error, attempts) from error
    return result, attempts
