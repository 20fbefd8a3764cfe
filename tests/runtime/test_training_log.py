"""`tail --training` in the daemon: the job's log object in the real moto server, read with
ranged GETs by the in-process daemon's control API and followed while it grows, every
`training_log_poll_s` (compressed by the setting, never patched)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from supervisor.adapters.aws import Aws
from supervisor.adapters.control_views import ControlViews, training_log_item
from supervisor.adapters.faults import FaultPlan
from supervisor.adapters.protocol import TrainingLogItem
from supervisor.core.errors import InvalidInput, UnknownRun
from supervisor.core.feed import LogPiece
from supervisor.core.run import Phase
from supervisor.core.values import S3Object
from supervisor.runtime.training_log import ITEM_BYTES, LogSource, stream_log
from tests.conftest import BUCKET, REGION, Fleet
from tests.runtime.conftest import Harness
from tests.runtime.waiting import wait_for

POLL_S = 0.05
KEY = "logs/train.log"

Piece = TrainingLogItem | LogPiece
"""What the daemon streams (the protocol's item) or `stream_log` yields (the domain's)."""


class Log:
    """The job's side: it re-uploads the whole log as it grows, as `aws s3 cp` would."""

    def __init__(self, fleet: Fleet, run_id: str, key: str = KEY) -> None:
        self.fleet = fleet
        self.key = f"runs/{run_id}/{key}"
        self.uri = f"s3://{BUCKET}/{self.key}"
        self.content = b""

    def append(self, text: str) -> None:
        self.content += text.encode()
        self.fleet.put(self.key, self.content)

    def replace(self, text: str) -> None:
        self.content = b""
        self.append(text)


class Follower:
    """Collects what the control API streams, as the socket route would send it."""

    def __init__(self, items: AsyncIterator[Piece]) -> None:
        self.items: list[Piece] = []
        self.task = asyncio.create_task(self._collect(items))

    async def _collect(self, items: AsyncIterator[Piece]) -> None:
        async for item in items:
            self.items.append(item)

    @property
    def text(self) -> str:
        return "".join(item.text for item in self.items if item.kind == "lines")

    @property
    def notices(self) -> list[str]:
        return [item.text for item in self.items if item.kind != "lines"]

    async def until(self, ending: str) -> None:
        async def printed() -> bool:
            if self.task.done():
                raise AssertionError(f"the stream ended early: {self.items}")
            return self.text.endswith(ending)

        await wait_for(printed, what=f"{ending!r} to be printed; got {self.text!r}")

    async def end(self) -> None:
        await asyncio.wait_for(self.task, 10)


def api(harness: Harness) -> ControlViews:
    assert harness.daemon is not None
    return harness.daemon.views


async def running(harness: Harness, run_id: str) -> None:
    (instance,) = harness.fleet.launch()
    await harness.start(training_log_poll_s=POLL_S)
    await harness.attach(run_id, instance)
    await harness.wait_phase(run_id, Phase.RUNNING)


def follow(harness: Harness, run_id: str, *, last: int = 8192) -> Follower:
    return Follower(api(harness).training_log(run_id, key=KEY, offset=None, last=last, follow=True))


async def read_once(harness: Harness, run_id: str, *, key: str = KEY) -> list[Piece]:
    stream = api(harness).training_log(run_id, key=key, offset=0, last=0, follow=False)
    return [item async for item in stream]


async def reads(harness: Harness, more: int) -> None:
    """Wait until the follower has read the log `more` times since now."""
    start = harness.calls("GetObject")

    async def done() -> bool:
        return harness.calls("GetObject") >= start + more

    await wait_for(done, what=f"{more} more reads")


# -- through the daemon's control API ---------------------------------------------------------


async def test_lines_appended_after_it_started_are_printed_once_each_until_the_run_ends(
    harness: Harness,
) -> None:
    await running(harness, "tl-follow")
    log = Log(harness.fleet, "tl-follow")
    log.append("epoch 1 step 1 loss 2.30\n")
    follower = follow(harness, "tl-follow")
    await follower.until("loss 2.30\n")

    log.append("epoch 1 step 2 loss 2.11\nepoch 1 step 3 loss 1.9")  # the last line half-written
    await follower.until("loss 2.11\n")
    await reads(harness, 2)
    assert follower.text.endswith("loss 2.11\n"), "a partial line went out before its end"
    log.append("5\nepoch 2 step 1 loss 1.70\n")
    await follower.until("loss 1.70\n")
    harness.fleet.put("runs/tl-follow/COMPLETE")
    await follower.end()

    assert follower.text == log.content.decode()
    assert follower.notices == [f"the run ended (stopped): end of {log.uri}"]
    assert [item.offset for item in follower.items if item.kind == "lines"][-1] == len(log.content)


# -- the reader on its own: the real adapter and moto, the run's end and shutdown in the test's
# hands (no daemon to start, so these take a fraction of a second each) ---------------------


class Reader:
    """`stream_log` over the real AWS adapter, for one log under the run prefix `runs/r/`."""

    def __init__(self, aws: Aws, fleet: Fleet) -> None:
        self.log = Log(fleet, "r")
        self.source = LogSource(aws, S3Object(BUCKET, self.log.key), REGION, retry_base_s=0.01)
        self.ended: str | None = None
        self.closing = asyncio.Event()

    def follow(self, *, last: int = 8192) -> Follower:
        return Follower(self._stream(offset=None, last=last, follow=True))

    async def once(self, *, offset: int | None = 0, last: int = 8192) -> list[Piece]:
        return [item async for item in self._stream(offset=offset, last=last, follow=False)]

    def _stream(self, *, offset: int | None, last: int, follow: bool) -> AsyncIterator[Piece]:
        async def run_ended() -> str | None:
            return self.ended

        return stream_log(
            self.source,
            offset=offset,
            last=last,
            follow=follow,
            poll_s=POLL_S,
            run_ended=run_ended,
            closing=self.closing,
        )

    async def reads(self, more: int) -> None:
        """Wait until the log has been read `more` times since now."""
        counter = self.source.cloud.counter
        start = counter.count("GetObject")

        async def done() -> bool:
            return bool(counter.count("GetObject") >= start + more)

        await wait_for(done, what=f"{more} more reads")


@pytest.fixture
async def reader(fleet: Fleet) -> AsyncIterator[Reader]:
    async with Aws() as aws:
        yield Reader(aws, fleet)


async def test_a_log_not_written_yet_is_waited_for_said_once_then_printed_from_its_start(
    reader: Reader,
) -> None:
    follower = reader.follow(last=4)
    await reader.reads(3)

    reader.log.append("loading data\nstep 1 loss 2.30\n")
    await follower.until("loss 2.30\n")
    reader.ended = "detached"
    await follower.end()

    assert follower.text == "loading data\nstep 1 loss 2.30\n"  # all of it, despite last=4
    assert follower.notices == [
        f"no training log at {reader.log.uri} yet: waiting for the job",
        f"the run ended (detached): end of {reader.log.uri}",
    ]


async def test_a_log_that_comes_back_shorter_is_printed_again_from_its_start(
    reader: Reader,
) -> None:
    reader.log.append("attempt 1 step 1\nattempt 1 step 2\n")
    follower = reader.follow()
    await follower.until("attempt 1 step 2\n")

    reader.log.replace("attempt 2 step 1\n")
    await follower.until("attempt 2 step 1\n")
    reader.ended = "stopped"
    await follower.end()

    assert follower.text == "attempt 1 step 1\nattempt 1 step 2\nattempt 2 step 1\n"
    assert follower.notices[0] == (
        f"{reader.log.uri} is now 17 bytes, fewer than the 34 already read: it was truncated "
        "or replaced; reading it again from the start"
    )


async def test_a_follower_ends_with_an_error_when_the_daemon_shuts_down(reader: Reader) -> None:
    reader.log.append("step 1\nstep 2 (half")
    follower = reader.follow()
    await follower.until("step 1\n")

    reader.closing.set()
    await follower.end()

    assert follower.text == "step 1\nstep 2 (half"  # the partial line at the end, too
    assert follower.items[-1].kind == "error"
    assert "supervisord is shutting down" in follower.items[-1].text


async def test_a_read_that_fails_after_its_retries_is_said_once_and_tried_again(
    fleet: Fleet,
) -> None:
    # Each read makes 4 attempts: 8 failures are two failed reads, then the log comes.
    async with Aws(faults=FaultPlan.parse("GetObject=InternalError*8")) as aws:
        reader = Reader(aws, fleet)
        reader.log.append("step 1\n")
        follower = reader.follow()
        await follower.until("step 1\n")
        reader.ended = "stopped"
        await follower.end()

    assert follower.text == "step 1\n"
    assert follower.notices == [
        f"could not read {reader.log.uri} (GetObject: InternalError: injected fault "
        "(InternalError)); trying again",
        f"the run ended (stopped): end of {reader.log.uri}",
    ]


async def test_reading_once_prints_the_whole_log_with_its_partial_last_line(
    reader: Reader,
) -> None:
    reader.log.append("step 1\nstep 2\nstep 3 (half")

    items = await reader.once()

    assert "".join(i.text for i in items) == "step 1\nstep 2\nstep 3 (half"
    assert {i.kind for i in items} == {"lines"}


@pytest.mark.parametrize(
    ("last", "printed"),
    [
        (14, "step 2\nstep 3\n"),  # the byte before is a newline: a whole line
        (20, "step 2\nstep 3\n"),  # inside the first line: from the next one
        (21, "step 1\nstep 2\nstep 3\n"),  # the whole log
        (0, ""),  # only what comes later
    ],
)
async def test_starting_from_the_end_begins_at_a_whole_line(
    reader: Reader, last: int, printed: str
) -> None:
    reader.log.append("step 1\nstep 2\nstep 3\n")

    items = await reader.once(offset=None, last=last)

    assert "".join(i.text for i in items) == printed


async def test_a_big_log_comes_in_bounded_items_with_characters_split_nowhere(
    reader: Reader,
) -> None:
    line = "é" * 40_000 + "\n"  # 80 KB of two-byte characters: more than one item
    reader.log.append(line * 3 + "ü" * 70_000)  # and a 140 KB unfinished line

    items = await reader.once()

    assert "".join(i.text for i in items) == reader.log.content.decode()
    # A piece may carry the end of a character cut off the previous one.
    assert all(len(i.text.encode()) <= ITEM_BYTES + 3 for i in items)
    wire = [i if isinstance(i, TrainingLogItem) else training_log_item(i) for i in items]
    assert max(len(i.model_dump_json()) for i in wire) < 64 * 1024
    assert items[-1].offset == len(reader.log.content)


async def test_reading_a_missing_log_once_is_an_error_naming_it_and_the_way_out(
    reader: Reader,
) -> None:
    items = await reader.once()

    assert [(i.kind, i.text) for i in items] == [
        (
            "error",
            f"no training log at {reader.log.uri}: the job has not written it (yet); check "
            "the key (--key), or wait for it with -f",
        )
    ]


async def test_an_unknown_run_or_a_bad_key_is_refused_before_any_read(harness: Harness) -> None:
    await running(harness, "tl-refused")
    before = harness.calls("GetObject")

    with pytest.raises(UnknownRun):
        await read_once(harness, "ghost")
    with pytest.raises(InvalidInput, match=r"training log key '\.\./secrets' is not valid"):
        await read_once(harness, "tl-refused", key="../secrets")
    assert harness.calls("GetObject") == before
