"""Fault injection for tests, the soak and the demo: make chosen AWS operations fail.

A plan is text, so it can reach a real daemon process through `SUPERVISOR_FAULTS`. Rules are
separated by `;`:

    StopInstances=RequestLimitExceeded*2      the next 2 StopInstances calls fail (default 1)
    StopInstances=hang                        StopInstances blocks until the process is killed
    *=Throttling,InternalError@0.05           every call fails with probability 0.05, with a
                                              code drawn from the list
    DescribeInstances=SlowDown@0.02x3         a burst starts with probability 0.02 and fails
                                              that call and the next 2 DescribeInstances calls
    seed=7                                    seeds the random rules (default 0)

Counted rules (`*N`, `hang`) apply in order per operation, before any random rule. Random rules
(`@P`, `@PxN`) name one operation or `*` (every operation); the first that fires fails the
call, and a burst is kept per rule and operation, so a burst on one operation never fails
another. With the same seed and the same sequence of calls, a plan fails the same calls.

The hook runs at botocore's `before-send`, so the call is counted as made but never reaches the
endpoint. Each injected fault is counted (`injected`) and logged as `fault_injected`.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

import structlog
from botocore.exceptions import ClientError

from supervisor.core.errors import InvalidInput

log = structlog.get_logger("supervisor.faults")

_STATUS = {
    "InternalError": 500,
    "ServiceUnavailable": 503,
    "RequestLimitExceeded": 503,
    "Throttling": 400,
    "SlowDown": 503,
}
SYNTAX = (
    "expected Operation=ErrorCode[*N] (fail the next N calls), Operation=hang, "
    "Operation=Code[,Code...]@P[xN] (fail each call with probability P, or start a burst of N "
    "failed calls with probability P; Operation may be * there), or seed=N; rules separated "
    "by ';', e.g. StopInstances=RequestLimitExceeded*2; *=Throttling,InternalError@0.05x3; "
    "seed=7"
)
_OPERATION = re.compile(r"^[A-Za-z0-9]+$")
_CODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.]*$")
_CHANCE = re.compile(r"^(?P<p>[0-9]*\.?[0-9]+)(?:x(?P<burst>[0-9]+))?$")
ANY_OPERATION = "*"


@dataclass
class _Rule:
    code: str
    remaining: int


@dataclass(frozen=True, slots=True)
class _Random:
    """Fail a call of `operation` (or of any, for `*`) with probability `p`, with one of
    `codes`; each fault lasts `burst` calls of the operation it hit."""

    operation: str
    codes: tuple[str, ...]
    p: float
    burst: int = 1

    def matches(self, operation: str) -> bool:
        return self.operation in (ANY_OPERATION, operation)


@dataclass
class _Burst:
    code: str
    left: int


@dataclass
class FaultPlan:
    _rules: dict[str, deque[_Rule]]
    _random: tuple[_Random, ...] = ()
    seed: int = 0
    injected: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(operation, code) -> faults injected so far."""
    _rng: random.Random = field(init=False)
    _bursts: dict[tuple[int, str], _Burst] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    @classmethod
    def parse(cls, text: str) -> FaultPlan:
        """The plan in `text`; `InvalidInput` naming the first bad rule and the syntax."""
        rules: dict[str, deque[_Rule]] = defaultdict(deque)
        chances: list[_Random] = []
        seed = 0
        for part in filter(None, (p.strip() for p in text.split(";"))):
            name, sep, what = (s.strip() for s in part.partition("="))
            if not sep or not what:
                raise _bad(part, "no '=' or nothing after it")
            if name == "seed":
                if not re.fullmatch(r"-?[0-9]+", what):
                    raise _bad(part, "the seed must be an integer")
                seed = int(what)
                continue
            if name != ANY_OPERATION and not _OPERATION.match(name):
                raise _bad(part, "the operation must be a name like StopInstances, or *")
            if "@" in what:
                chances.append(_parse_random(part, name, what))
                continue
            if name == ANY_OPERATION:
                raise _bad(part, "* is allowed in random rules (Code@P) only")
            code, star, count = (s.strip() for s in what.partition("*"))
            if not _CODE.match(code):
                raise _bad(part, f"{code!r} is not an error code")
            times = 1
            if star:
                if not count.isdigit() or int(count) < 1:
                    raise _bad(part, f"the count {count!r} must be a whole number >= 1")
                times = int(count)
            rules[name].append(_Rule(code, times))
        return cls(dict(rules), tuple(chances), seed)

    def __bool__(self) -> bool:
        return bool(self._rules) or bool(self._random)

    @property
    def total_injected(self) -> int:
        return sum(self.injected.values())

    def draw(self, operation: str) -> str | None:
        """The error code the next call of `operation` fails with, or None (no fault).
        Consumes counted rules and random draws exactly as a real call would."""
        queue = self._rules.get(operation)
        if queue:
            rule = queue[0]
            if rule.code == "hang":
                return "hang"
            rule.remaining -= 1
            if rule.remaining <= 0:
                queue.popleft()
            return rule.code
        for index, chance in enumerate(self._random):
            if not chance.matches(operation):
                continue
            key = (index, operation)
            burst = self._bursts.get(key)
            if burst is not None:
                burst.left -= 1
                if burst.left <= 0:
                    del self._bursts[key]
                return burst.code
            if self._rng.random() < chance.p:
                code = self._rng.choice(chance.codes)
                if chance.burst > 1:
                    self._bursts[key] = _Burst(code, chance.burst - 1)
                return code
        return None

    async def before_send(self, *, event_name: str = "", **_: Any) -> None:
        """botocore `before-send` handler (aiobotocore awaits coroutine handlers). The event is
        named `before-send.<service>.<Operation>`; it carries the request, not the model."""
        operation = event_name.rpartition(".")[2]
        code = self.draw(operation)
        if code is None:
            return
        if code == "hang":
            await asyncio.Event().wait()
        self.injected[(operation, code)] += 1
        log.info("fault_injected", operation=operation, code=code)
        response: dict[str, Any] = {
            "Error": {"Code": code, "Message": f"injected fault ({code})"},
            "ResponseMetadata": {"HTTPStatusCode": _STATUS.get(code, 400)},
        }
        raise ClientError(response, operation)  # type: ignore[arg-type]


def _parse_random(part: str, operation: str, what: str) -> _Random:
    codes_text, _, chance_text = (s.strip() for s in what.partition("@"))
    codes = tuple(c.strip() for c in codes_text.split(","))
    bad = [c for c in codes if not _CODE.match(c)]
    if bad:
        raise _bad(part, f"{bad[0]!r} is not an error code")
    if "hang" in codes:
        raise _bad(part, "hang cannot be random")
    found = _CHANCE.match(chance_text)
    if found is None:
        raise _bad(part, f"{chance_text!r} is not a probability P or PxN")
    p = float(found["p"])
    if not 0 < p <= 1:
        raise _bad(part, f"the probability {p:g} must be > 0 and <= 1")
    burst = int(found["burst"] or 1)
    if burst < 1:
        raise _bad(part, "a burst lasts at least 1 call")
    return _Random(operation, codes, p, burst)


def _bad(part: str, why: str) -> InvalidInput:
    return InvalidInput(f"fault rule {part!r} is not valid ({why}): {SYNTAX}")
