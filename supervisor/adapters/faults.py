"""Fault injection for tests, the soak and the demo: make chosen AWS operations fail.

A plan is text, so it can reach a real daemon process through `SUPERVISOR_FAULTS`:

    StopInstances=RequestLimitExceeded*2; DescribeInstances=InternalError*1; StopInstances=hang

Each rule raises the named error code the given number of times (`*N`, default once), in
order per operation; `hang` blocks the call until the process is killed. The hook runs at
botocore's `before-send`, so the call is counted as made but never reaches the endpoint.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict, deque
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from supervisor.core.errors import InvalidInput

_STATUS = {
    "InternalError": 500,
    "ServiceUnavailable": 503,
    "RequestLimitExceeded": 503,
    "Throttling": 400,
    "SlowDown": 503,
}


@dataclass
class _Rule:
    code: str
    remaining: int


class FaultPlan:
    def __init__(self, rules: dict[str, deque[_Rule]]) -> None:
        self._rules = rules

    @classmethod
    def parse(cls, text: str) -> FaultPlan:
        rules: dict[str, deque[_Rule]] = defaultdict(deque)
        for part in filter(None, (p.strip() for p in text.split(";"))):
            operation, sep, what = part.partition("=")
            code, _, count = what.strip().partition("*")
            if not sep or not operation.strip().isalnum() or not code.strip():
                raise InvalidInput(
                    f"fault rule {part!r} is not valid: expected Operation=ErrorCode[*N], "
                    "e.g. StopInstances=RequestLimitExceeded*2"
                )
            times = int(count) if count.strip().isdigit() else 1
            rules[operation.strip()].append(_Rule(code.strip(), times))
        return cls(dict(rules))

    def __bool__(self) -> bool:
        return bool(self._rules)

    async def before_send(self, *, event_name: str = "", **_: Any) -> None:
        """botocore `before-send` handler (aiobotocore awaits coroutine handlers). The event is
        named `before-send.<service>.<Operation>`; it carries the request, not the model."""
        operation = event_name.rpartition(".")[2]
        queue = self._rules.get(operation)
        if not queue:
            return
        rule = queue[0]
        if rule.code == "hang":
            await asyncio.Event().wait()
        rule.remaining -= 1
        if rule.remaining <= 0:
            queue.popleft()
        response: dict[str, Any] = {
            "Error": {"Code": rule.code, "Message": f"injected fault ({rule.code})"},
            "ResponseMetadata": {"HTTPStatusCode": _STATUS.get(rule.code, 400)},
        }
        raise ClientError(response, operation)  # type: ignore[arg-type]
