"""`supervisorctl tail --training`: the job's log object under its run prefix, read with
ranged GETs from the last offset and followed while it grows.

Only whole lines go out: a partial last line waits for the read that completes it, or for the
end. S3 has no append, so the job re-uploads the whole log as it grows; an object that comes
back shorter than what was already read was truncated or replaced and is read again from the
start. (A replacement at least as long as what was read cannot be told from growth.)
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from supervisor.core.errors import ExternalError, NotFoundError
from supervisor.core.feed import LogPiece
from supervisor.core.values import S3Object
from supervisor.runtime.ports import Cloud
from supervisor.runtime.retry import GaveUp, call_with_retries

ITEM_BYTES = 16 * 1024
"""Log text per item: one JSON line stays far below the client's 128 KiB line limit."""
PARTIAL_LIMIT = 64 * 1024
"""A partial line longer than this goes out before its end (a log without newlines)."""


@dataclass(frozen=True, slots=True)
class LogSource:
    """Where the training log is, and the port that reads it."""

    cloud: Cloud
    location: S3Object
    region: str
    retry_base_s: float

    async def read(self, start: int) -> tuple[bytes, int]:
        """`Cloud.read_range` with the usual retries; raises the last `ExternalError`."""
        location = self.location
        try:
            result, _ = await call_with_retries(
                lambda: self.cloud.read_range(location.bucket, location.key, self.region, start),
                base_s=self.retry_base_s,
            )
        except GaveUp as gave_up:
            raise gave_up.error from None
        return result


class _Lines:
    """The bytes read so far, handed out as text in whole lines.

    `sent` is the log offset after the last byte handed out; `read_to` also counts the partial
    line held back, so it is where the next read starts."""

    def __init__(self, start: int) -> None:
        self.sent = start
        self._pending = b""
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    @property
    def read_to(self) -> int:
        return self.sent + len(self._pending)

    def feed(self, data: bytes, *, final: bool = False) -> list[LogPiece]:
        buffer = self._pending + data
        cut = len(buffer) if final else buffer.rfind(b"\n") + 1
        if len(buffer) - cut > PARTIAL_LIMIT:
            cut = len(buffer)
        ready, self._pending = buffer[:cut], buffer[cut:]
        items = []
        for start in range(0, len(ready), ITEM_BYTES):
            piece = ready[start : start + ITEM_BYTES]
            self.sent += len(piece)
            # The decoder keeps a character cut in two by ITEM_BYTES for the next piece.
            text = self._decoder.decode(piece)
            if text:
                items.append(LogPiece("lines", text, offset=self.sent))
        if final:
            rest = self._decoder.decode(b"", final=True)
            if rest:
                items.append(LogPiece("lines", rest, offset=self.sent))
        return items


async def stream_log(
    source: LogSource,
    *,
    offset: int | None,
    last: int,
    follow: bool,
    poll_s: float,
    run_ended: Callable[[], Awaitable[str | None]],
    closing: asyncio.Event,
) -> AsyncIterator[LogPiece]:
    """The log from byte `offset`, or with `offset` None from its last `last` bytes (from the
    first whole line in them).

    Without `follow`: what is there now, then the end. With it: read again every `poll_s`
    seconds, one ranged GET from the last offset each, until the run has ended (`run_ended`
    gives its terminal phase) and a read after that brings nothing new, or until `closing` is
    set. A log that is not there yet is waited for (said once), then read from its start."""
    uri = str(source.location)
    lines = _Lines(offset) if offset is not None else None
    said: str | None = None  # the trouble already reported, so a long wait says it once

    def notice(text: str, *, error: bool = False) -> LogPiece:
        sent = lines.sent if lines is not None else 0
        return LogPiece("error" if error else "notice", text, sent)

    while True:
        ended = await run_ended() if follow else None
        try:
            if lines is None:
                # One byte more than asked: the byte before the tail tells whether the tail
                # starts a line, or starts inside one and goes out from the next.
                data, size = await source.read(-(last + 1))
                begin = size - len(data)
                if last == 0:
                    data, begin = b"", size
                elif begin > 0 or len(data) > last:
                    newline = data.find(b"\n")
                    if newline >= 0:
                        data, begin = data[newline + 1 :], begin + newline + 1
                lines = _Lines(begin)
            else:
                data, size = await source.read(lines.read_to)
                if size < lines.read_to:
                    read_to, lines = lines.read_to, _Lines(0)
                    yield notice(
                        f"{uri} is now {size} bytes, fewer than the {read_to} already read: it "
                        "was truncated or replaced; reading it again from the start",
                    )
                    continue
        except NotFoundError:
            if not follow:
                yield notice(
                    f"no training log at {uri}: the job has not written it (yet); check the "
                    "key (--key), or wait for it with -f",
                    error=True,
                )
                return
            if ended is not None:
                yield notice(f"the run ended ({ended}) with no training log at {uri}")
                return
            lines = _Lines(0)  # whatever appears is all new
            if said != "missing":
                said = "missing"
                yield notice(f"no training log at {uri} yet: waiting for the job")
            if await _pause(closing, poll_s):
                yield notice(_SHUTTING_DOWN, error=True)
                return
            continue
        except ExternalError as exc:
            if not follow:
                yield notice(f"could not read {uri}: {exc}", error=True)
                return
            if said != "trouble":
                said = "trouble"
                yield notice(f"could not read {uri} ({exc}); trying again")
            if await _pause(closing, poll_s):
                yield notice(_SHUTTING_DOWN, error=True)
                return
            continue
        said = None
        for item in lines.feed(data):
            yield item
        if lines.read_to < size:
            continue  # more than one read's worth is there: go on at once
        if not follow:
            for item in lines.feed(b"", final=True):
                yield item
            return
        if ended is not None:
            if data:
                continue  # one more read: the end is a read that brings nothing new
            for item in lines.feed(b"", final=True):
                yield item
            yield notice(f"the run ended ({ended}): end of {uri}")
            return
        if await _pause(closing, poll_s):
            for item in lines.feed(b"", final=True):
                yield item
            yield notice(_SHUTTING_DOWN, error=True)
            return


_SHUTTING_DOWN = "supervisord is shutting down: follow the log again once it is back"


async def _pause(closing: asyncio.Event, seconds: float) -> bool:
    """Wait `seconds`, or less when `closing` is set; whether it is."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(closing.wait(), seconds)
    return closing.is_set()
