"""The Apprise sender (issue 15) against a real local HTTP receiver: the message with its
idempotency key as a header and in the body, a refusal as a `TransientError` saying why
without the URL, URLs redacted, an unknown scheme refused without showing the URL, the fault
plan's hold and failures."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor.adapters.faults import FaultPlan
from supervisor.adapters.notify import AppriseSender, load_targets
from supervisor.core.errors import InvalidInput, TransientError
from supervisor.core.outbox import Message, split_urls
from tests.notify_receiver import Receiver, running_receiver

MESSAGE = Message(title="run-1: crashed", body="run run-1\nidempotency key: run-1:3",
                  key="run-1:3", failure=True)  # fmt: skip


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver() as running:
        yield running


async def test_a_message_reaches_a_json_receiver_with_its_key_as_a_header_and_in_the_body(
    receiver: Receiver,
) -> None:
    sender = AppriseSender((receiver.url("hook"),), timeout_s=5)

    await sender.send(sender.targets[0], MESSAGE)

    [got] = receiver.got()
    assert got.headers["Idempotency-Key"] == "run-1:3"
    assert got.body["idempotency_key"] == "run-1:3"
    assert (got.body["title"], got.body["message"]) == (MESSAGE.title, MESSAGE.body)
    assert got.body["type"] == "failure"


async def test_a_refusal_is_transient_and_says_why_without_the_url(receiver: Receiver) -> None:
    url = receiver.url("fail") + "?token=hunter2"
    sender = AppriseSender((url,), timeout_s=5)

    with pytest.raises(TransientError) as raised:
        await sender.send(sender.targets[0], MESSAGE)

    assert raised.value.code == "SendFailed"
    assert "error=500" in raised.value.message
    assert "hunter2" not in str(raised.value)


def test_urls_are_shown_redacted_and_known_by_a_digest() -> None:
    secret = "TIiajkdnlazkcOXrIdevi7FQ"
    [configured] = load_targets((f"slack://T1JJ3T3L2/A1BRTD4JD/{secret}",))

    assert secret not in configured.target.shown
    assert configured.target.shown.startswith("slack://")
    assert secret not in repr(configured)
    assert len(configured.target.digest) == 16


def test_an_unknown_scheme_is_refused_naming_its_place_and_scheme_only() -> None:
    with pytest.raises(InvalidInput) as raised:
        load_targets(("json://127.0.0.1/ok", "nosuch://user:hunter2@host"))
    text = str(raised.value)
    assert "URL 2 of 2 (scheme 'nosuch')" in text and "SUPERVISOR_NOTIFY_URLS" in text
    assert "hunter2" not in text


def test_urls_are_split_on_spaces_commas_and_newlines() -> None:
    assert split_urls(" json://a/x,json://b/y\n slack://c ") == (
        "json://a/x",
        "json://b/y",
        "slack://c",
    )


async def test_the_fault_plan_fails_or_holds_sends(receiver: Receiver) -> None:
    sender = AppriseSender(
        (receiver.url("hook"),), timeout_s=5, faults=FaultPlan.parse("Notify=InternalError*1")
    )
    with pytest.raises(TransientError, match="InternalError"):
        await sender.send(sender.targets[0], MESSAGE)
    await sender.send(sender.targets[0], MESSAGE)
    assert len(receiver.got()) == 1

    held = AppriseSender(
        (receiver.url("hook"),), timeout_s=5, faults=FaultPlan.parse("Notify=hang")
    )
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(held.send(held.targets[0], MESSAGE), 0.2)
    assert len(receiver.got()) == 1


def test_the_readme_example_urls_are_ones_apprise_takes() -> None:
    """The README's example of SUPERVISOR_NOTIFY_URLS (Slack, Teams, PagerDuty, a webhook)."""
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    start = text.index('export SUPERVISOR_NOTIFY_URLS="') + len('export SUPERVISOR_NOTIFY_URLS="')
    urls = split_urls(text[start : text.index('"', start)])

    loaded = load_targets(urls)

    assert [u.partition("://")[0] for u in urls] == ["slack", "workflows", "pagerduty", "jsons"]
    assert len({c.target.digest for c in loaded}) == 4
