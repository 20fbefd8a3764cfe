"""parse_message(): the real AWS bodies from the events queue become typed notifications, and
anything else becomes `Unrecognized` with a reason, never an exception."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, get_args

import pytest

from supervisor.core.notifications import (
    Ec2StateChange,
    Notification,
    ObjectCreated,
    RebalanceRecommendation,
    S3TestEvent,
    SpotWarning,
    Unrecognized,
    parse_message,
)
from supervisor.core.values import InstanceId, InstanceState

AWS_EVENTS = Path(__file__).parents[1] / "fixtures" / "aws-events"  # the real AWS shapes
"""The bodies AWS documents, kept beside the project (see the README there)."""
INSTANCE = InstanceId("i-0abcd1234ef567890")
BUCKET = "example-runs-bucket"
KEY = "runs/example-run/COMPLETE"
SENT = datetime(2026, 11, 22, 12, tzinfo=UTC)
ETAG = "d41d8cd98f00b204e9800998ecf8427e"
"""The empty object's ETag, as both real S3 bodies carry it (with its size, 0)."""
KINDS: tuple[type[Any], ...] = get_args(Notification)


def body(name: str) -> str:
    return (AWS_EVENTS / name).read_text()


def edited(name: str, **changes: Any) -> str:
    """The real body of `name`, as JSON, with top-level fields (and `detail.x` paths) changed;
    a value of None removes the field."""
    data = json.loads(body(name))
    for path, value in changes.items():
        *parents, leaf = path.split("__")
        target = data
        for parent in parents:
            target = target[parent]
        if value is None:
            target.pop(leaf, None)
        else:
            target[leaf] = value
    return json.dumps(data)


def s3_record(key: str = KEY, event: str = "ObjectCreated:Put") -> dict[str, Any]:
    record: dict[str, Any] = json.loads(body("s3-notification-put.json"))["Records"][0]
    record["eventName"] = event
    record["s3"]["object"]["key"] = key
    return record


def records(*items: dict[str, Any]) -> str:
    return json.dumps({"Records": list(items)})


# -- the real bodies ---------------------------------------------------------------------------

REAL = {
    "ec2-state-change.json": Ec2StateChange(INSTANCE, InstanceState.TERMINATED, SENT),
    "ec2-spot-interruption-warning.json": SpotWarning(INSTANCE, "terminate", SENT),
    "ec2-rebalance-recommendation.json": RebalanceRecommendation(INSTANCE, SENT),
    "s3-object-created-eventbridge.json": ObjectCreated(BUCKET, KEY, SENT, ETAG, 0),
    "s3-notification-put.json": ObjectCreated(BUCKET, KEY, SENT, ETAG, 0),
    "s3-test-event.json": S3TestEvent(BUCKET),
}


def test_every_real_body_on_disk_has_a_case() -> None:
    assert {p.name for p in AWS_EVENTS.glob("*.json")} == set(REAL)


@pytest.mark.parametrize(("name", "expected"), REAL.items(), ids=list(REAL))
def test_each_real_body_gives_its_typed_notification(name: str, expected: Notification) -> None:
    assert parse_message(body(name)) == (expected,)


@pytest.mark.parametrize("name", [n for n, e in REAL.items() if hasattr(e, "time")])
def test_times_are_aware_utc_datetimes(name: str) -> None:
    (note,) = parse_message(body(name))
    assert not isinstance(note, S3TestEvent | Unrecognized) and note.time is not None
    assert note.time.tzinfo is not None and note.time.utcoffset() == timedelta(0)


@pytest.mark.parametrize("state", [s for s in InstanceState if s is not InstanceState.UNKNOWN])
def test_every_ec2_state_is_read(state: InstanceState) -> None:
    text = edited("ec2-state-change.json", detail__state=str(state))
    assert parse_message(text) == (Ec2StateChange(INSTANCE, state, SENT),)


@pytest.mark.parametrize("action", ["terminate", "stop", "hibernate"])
def test_the_spot_warning_carries_the_instance_action(action: str) -> None:
    text = edited("ec2-spot-interruption-warning.json", **{"detail__instance-action": action})
    assert parse_message(text) == (SpotWarning(INSTANCE, action, SENT),)


def test_a_spot_warning_without_an_instance_action_means_terminate() -> None:
    text = edited("ec2-spot-interruption-warning.json", **{"detail__instance-action": None})
    assert parse_message(text) == (SpotWarning(INSTANCE, "terminate", SENT),)


@pytest.mark.parametrize("time", [None, "", "  "], ids=["missing", "empty", "blank"])
def test_a_spot_warning_without_a_time_leaves_it_to_the_receiver(time: str | None) -> None:
    text = edited("ec2-spot-interruption-warning.json", time=time)
    if time is None:
        assert "time" not in json.loads(text)
    assert parse_message(text) == (SpotWarning(INSTANCE, "terminate", None),)


def test_a_spot_warning_with_a_time_that_is_not_one_is_still_malformed() -> None:
    (note,) = parse_message(edited("ec2-spot-interruption-warning.json", time="yesterday"))
    assert isinstance(note, Unrecognized) and "ValueError" in note.reason


@pytest.mark.parametrize(
    ("instance_action", "expected"),
    [({"action": "stop", "time": "2026-11-22T12:02:00Z"},
      SpotWarning(INSTANCE, "stop", SENT, SENT + timedelta(minutes=2))),
     ({"action": "hibernate", "time": ""}, SpotWarning(INSTANCE, "hibernate", SENT)),
     ({"action": "terminate"}, SpotWarning(INSTANCE, "terminate", SENT)),
     ({}, SpotWarning(INSTANCE, "terminate", SENT))],
    ids=["with-time", "empty-time", "no-time", "empty"],
)  # fmt: skip
def test_an_instance_action_in_the_metadata_shape_gives_its_action_and_time(
    instance_action: dict[str, str], expected: SpotWarning
) -> None:
    text = edited(
        "ec2-spot-interruption-warning.json", **{"detail__instance-action": instance_action}
    )
    assert parse_message(text) == (expected,)


def test_an_envelope_time_with_an_offset_is_kept_as_that_instant() -> None:
    text = edited("ec2-state-change.json", time="2026-11-22T13:00:00+01:00")
    (note,) = parse_message(text)
    assert isinstance(note, Ec2StateChange) and note.time == SENT


# -- through SNS --------------------------------------------------------------------------------


def sns_notification(message: str) -> str:
    """What SQS receives from an SNS topic subscription without raw message delivery."""
    return json.dumps(
        {
            "Type": "Notification",
            "MessageId": "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324",
            "TopicArn": "arn:aws:sns:us-east-1:123456789012:supervisor-events",
            "Subject": None,
            "Message": message,
            "Timestamp": "2026-11-22T12:00:01.000Z",
            "SignatureVersion": "1",
            "Signature": "EXAMPLEpH+DcEwjAPg8O9mY8dReBSwksfg2S7WKQcikcNKWLQjwu6A4Vbe",
            "SigningCertURL": "https://sns.us-east-1.amazonaws.com/SimpleNotificationService.pem",
            "UnsubscribeURL": "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe",
        }
    )


@pytest.mark.parametrize(("name", "expected"), REAL.items(), ids=list(REAL))
def test_a_real_body_wrapped_in_an_sns_notification_gives_the_same_notification(
    name: str, expected: Notification
) -> None:
    assert parse_message(sns_notification(body(name))) == (expected,)


def test_an_sns_wrapped_spot_warning_with_an_empty_time_leaves_it_to_the_receiver() -> None:
    text = sns_notification(edited("ec2-spot-interruption-warning.json", time=""))
    assert parse_message(text) == (SpotWarning(INSTANCE, "terminate", None),)


SNS_MALFORMED = [
    pytest.param(json.dumps({"Type": "Notification", "TopicArn": "arn:x", "Message": 5}),
                 "SNS notification without a Message string", id="message-not-a-string"),
    pytest.param(json.dumps({"Type": "Notification", "TopicArn": "arn:x"}),
                 "SNS notification without a Message string", id="no-message"),
    pytest.param(sns_notification("not json"), "malformed message: JSONDecodeError",
                 id="message-not-json"),
    pytest.param(sns_notification("[1]"), "SNS notification whose Message is not a JSON object",
                 id="message-a-list"),
    pytest.param(sns_notification("{}"), "neither an EventBridge envelope", id="message-empty"),
    pytest.param(sns_notification(sns_notification(body("ec2-state-change.json"))),
                 "neither an EventBridge envelope", id="sns-in-sns"),
    pytest.param(json.dumps({"Type": "SubscriptionConfirmation", "TopicArn": "arn:x",
                             "Message": "You have chosen to subscribe"}),
                 "SNS SubscriptionConfirmation message, not a notification", id="confirmation"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "reason"), SNS_MALFORMED)
def test_an_sns_message_that_carries_no_known_event_is_unrecognized(text: str, reason: str) -> None:
    (note,) = parse_message(text)
    assert isinstance(note, Unrecognized)
    assert reason in note.reason


def test_no_sns_body_made_from_a_real_one_raises() -> None:
    text = sns_notification(body("ec2-spot-interruption-warning.json"))
    bodies = [text[:n] for n in range(0, len(text), 7)]
    bodies += [json.dumps(changed) for changed in _poisoned(json.loads(text))]
    for changed in bodies:
        notes = parse_message(changed)
        assert all(isinstance(note, KINDS) for note in notes), changed


# -- S3 notifications --------------------------------------------------------------------------


def test_an_s3_notification_with_two_records_gives_two_objects_in_order() -> None:
    text = records(s3_record("runs/a/COMPLETE"), s3_record("runs/b/FAILED", "ObjectCreated:Copy"))
    assert parse_message(text) == (
        ObjectCreated(BUCKET, "runs/a/COMPLETE", SENT, ETAG, 0),
        ObjectCreated(BUCKET, "runs/b/FAILED", SENT, ETAG, 0),
    )


@pytest.mark.parametrize(
    ("sent", "key"),
    [("runs/a+b/COMPLETE", "runs/a b/COMPLETE"), ("runs/c%2B%2B/done", "runs/c++/done"),
     ("runs/x%3Dy/done", "runs/x=y/done"), ("runs/plain/done", "runs/plain/done")],
)  # fmt: skip
def test_an_s3_notification_key_is_url_decoded(sent: str, key: str) -> None:
    assert parse_message(records(s3_record(sent))) == (ObjectCreated(BUCKET, key, SENT, ETAG, 0),)


def test_a_removed_object_beside_a_created_one_is_unrecognized_on_its_own() -> None:
    created, removed = s3_record("runs/a/done"), s3_record("runs/a/x", "ObjectRemoved:Delete")
    first, second = parse_message(records(created, removed))
    assert first == ObjectCreated(BUCKET, "runs/a/done", SENT, ETAG, 0)
    assert second == Unrecognized("unhandled S3 record ObjectRemoved:Delete")


def test_an_s3_notification_without_records_gives_nothing() -> None:
    assert parse_message(records()) == ()


# -- anything else -----------------------------------------------------------------------------

MALFORMED = [
    pytest.param("", "malformed message: JSONDecodeError", id="empty"),
    pytest.param("not json", "malformed message: JSONDecodeError", id="not-json"),
    pytest.param(body("ec2-state-change.json")[:-20], "malformed message", id="truncated"),
    pytest.param("[1, 2]", "message body is not a JSON object", id="list"),
    pytest.param('"text"', "message body is not a JSON object", id="string"),
    pytest.param("null", "message body is not a JSON object", id="null"),
    pytest.param("{}", "neither an EventBridge envelope nor an S3 notification", id="empty-object"),
    pytest.param('{"Records": "x"}', "neither an EventBridge envelope", id="records-not-a-list"),
    pytest.param(edited("ec2-state-change.json", detail=None),
                 "EventBridge envelope without a detail object", id="no-detail"),
    pytest.param(edited("ec2-state-change.json", detail="terminated"),
                 "EventBridge envelope without a detail object", id="detail-not-an-object"),
    pytest.param(edited("ec2-state-change.json", **{"detail-type": "EC2 Instance Launch"}),
                 "unhandled EventBridge event aws.ec2/EC2 Instance Launch", id="unknown-type"),
    pytest.param(edited("ec2-state-change.json", source="aws.autoscaling"),
                 "unhandled EventBridge event aws.autoscaling/", id="unknown-source"),
    pytest.param(edited("ec2-state-change.json", detail__state="exploded"),
                 "'exploded' is not a valid InstanceState", id="not-an-ec2-state"),
    pytest.param(edited("ec2-state-change.json", detail__state=None),
                 "'None' is not a valid InstanceState", id="no-state"),
    pytest.param(edited("ec2-state-change.json", **{"detail__instance-id": None}),
                 "no instance-id in detail: None", id="no-instance-id"),
    pytest.param(edited("ec2-spot-interruption-warning.json", **{"detail__instance-id": "vol-1"}),
                 "no instance-id in detail: 'vol-1'", id="not-an-instance-id"),
    pytest.param(edited("ec2-rebalance-recommendation.json", time=None),
                 "time None is not a string", id="no-time"),
    pytest.param(edited("ec2-rebalance-recommendation.json", time="yesterday"),
                 "malformed message: ValueError", id="bad-time"),
    pytest.param(edited("s3-object-created-eventbridge.json", detail__bucket=None),
                 "malformed message: KeyError", id="object-created-without-bucket"),
    pytest.param(records(s3_record(event="ObjectRemoved:Delete")),
                 "unhandled S3 record ObjectRemoved:Delete", id="object-removed"),
    pytest.param(records({**s3_record(), "eventSource": "aws:sqs"}),
                 "unhandled S3 record ObjectCreated:Put", id="not-from-s3"),
    pytest.param(records({"eventSource": "aws:s3"}), "unhandled S3 record (no eventName)",
                 id="record-without-event-name"),
    pytest.param(records({k: v for k, v in s3_record().items() if k != "s3"}),
                 "malformed message: KeyError: 's3'", id="record-without-s3"),
    pytest.param(records({**s3_record(), "eventTime": 5}), "time 5 is not a string",
                 id="record-time-not-a-string"),
    pytest.param(json.dumps({"Records": ["ObjectCreated:Put"]}),
                 "malformed message: AttributeError", id="record-not-an-object"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "reason"), MALFORMED)
def test_a_body_that_is_not_a_known_notification_is_unrecognized_with_the_reason(
    text: str, reason: str
) -> None:
    (note,) = parse_message(text)
    assert isinstance(note, Unrecognized)
    assert reason in note.reason


def test_an_unrecognized_reason_is_kept_short() -> None:
    (note,) = parse_message(edited("ec2-state-change.json", detail__state="x" * 2000))
    assert isinstance(note, Unrecognized) and len(note.reason) <= 300


def _poisoned(data: Any) -> Iterator[Any]:
    """`data` with one value, anywhere in it, replaced by a value of another shape."""
    if isinstance(data, dict):
        items: list[tuple[Any, Any]] = list(data.items())
    elif isinstance(data, list):
        items = list(enumerate(data))
    else:
        return
    for where, value in items:
        for poison in (None, 0, -1.5, True, "", "x", [], {}, [None], {"a": None}):
            changed = copy.deepcopy(data)
            changed[where] = poison
            yield changed
        for inner in _poisoned(value):
            changed = copy.deepcopy(data)
            changed[where] = inner
            yield changed


@pytest.mark.parametrize("name", list(REAL))
def test_no_body_made_from_a_real_one_raises(name: str) -> None:
    text = body(name)
    bodies = [text[:n] for n in range(len(text))]
    bodies += [json.dumps(changed) for changed in _poisoned(json.loads(text))]
    for changed in bodies:
        notes = parse_message(changed)
        assert all(isinstance(note, KINDS) for note in notes), changed


def test_a_deeply_nested_body_is_unrecognized_not_raised() -> None:
    (note,) = parse_message("[" * 100_000 + "]" * 100_000)
    assert isinstance(note, Unrecognized)


# -- the object's ETag and size ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("etag", "size", "expected"),
    [
        pytest.param('"0a1b"', 12, ("0a1b", 12), id="quoted-etag"),
        pytest.param("0a1b-3", 10**10, ("0a1b-3", 10**10), id="multipart-etag"),
        pytest.param(None, 12, (None, None), id="no-etag"),
        pytest.param("0a1b", None, (None, None), id="no-size"),
        pytest.param("", 12, (None, None), id="empty-etag"),
        pytest.param("0a1b", -1, (None, None), id="negative-size"),
        pytest.param("0a1b", "12", (None, None), id="size-not-a-number"),
        pytest.param("0a1b", True, (None, None), id="size-a-bool"),
    ],
)
def test_an_object_notification_carries_its_etag_and_size_only_when_both_are_sound(
    etag: Any, size: Any, expected: tuple[str | None, int | None]
) -> None:
    """Either lets a report be read without a listing; anything doubtful leaves the listing."""
    s3 = s3_record("runs/a/status.json")
    eventbridge = json.loads(body("s3-object-created-eventbridge.json"))
    for obj, field in ((s3["s3"]["object"], "eTag"), (eventbridge["detail"]["object"], "etag")):
        for name, value in ((field, etag), ("size", size)):
            if value is None:
                obj.pop(name)
            else:
                obj[name] = value
    for text in (records(s3), json.dumps(eventbridge)):
        (note,) = parse_message(text)
        assert isinstance(note, ObjectCreated)
        assert (note.etag, note.size) == expected
