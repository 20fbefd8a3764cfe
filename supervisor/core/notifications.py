"""Messages from the events queue, parsed: EventBridge envelopes for EC2 (state change, spot
interruption warning, rebalance recommendation) and S3 (Object Created), S3's own event
notifications (including `s3:TestEvent`), and any of these delivered through an SNS topic
(wrapped in an SNS notification, or raw). Pure: a message body in, typed notifications out.

Anything else is `Unrecognized` with the reason, never an exception: a bad message must not
stop the consumer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import unquote_plus

from supervisor.core.values import InstanceId, InstanceState


@dataclass(frozen=True, slots=True)
class Ec2StateChange:
    instance_id: InstanceId
    state: InstanceState
    time: datetime


@dataclass(frozen=True, slots=True)
class SpotWarning:
    instance_id: InstanceId
    action: str  # terminate | stop | hibernate
    time: datetime | None
    """When EC2 sent the warning; None if the event has no time (empty or missing): the
    consumer then takes the time it received it, as aws-node-termination-handler does."""
    action_at: datetime | None = None
    """When the instance will be taken, if the event says so (the instance metadata's
    `{"action": ..., "time": ...}` shape of `instance-action`)."""


@dataclass(frozen=True, slots=True)
class RebalanceRecommendation:
    instance_id: InstanceId
    time: datetime


@dataclass(frozen=True, slots=True)
class ObjectCreated:
    bucket: str
    key: str
    time: datetime
    etag: str | None = None
    """The object's ETag (without quotes) and size, when the notification carries them."""
    size: int | None = None


@dataclass(frozen=True, slots=True)
class S3TestEvent:
    bucket: str


@dataclass(frozen=True, slots=True)
class Unrecognized:
    reason: str


Notification = (
    Ec2StateChange
    | SpotWarning
    | RebalanceRecommendation
    | ObjectCreated
    | S3TestEvent
    | Unrecognized
)


def _time(value: object) -> datetime:
    if not isinstance(value, str):
        raise ValueError(f"time {value!r} is not a string")
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError(f"time {value!r} has no time zone")
    return moment


def _optional_time(value: object) -> datetime | None:
    """A time that may be absent: missing, null or blank is None; anything else must parse."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return _time(value)


def _spot_warning(body: dict[str, Any], detail: dict[str, Any]) -> SpotWarning:
    sent = _optional_time(body.get("time"))
    action = detail.get("instance-action", "terminate")
    if isinstance(action, dict):  # {"action": "stop", "time": "..."}, as the metadata says it
        return SpotWarning(
            _instance(detail),
            str(action.get("action") or "terminate"),
            sent,
            _optional_time(action.get("time")),
        )
    return SpotWarning(_instance(detail), str(action), sent)


def _instance(detail: dict[str, Any]) -> InstanceId:
    value = detail.get("instance-id")
    if not isinstance(value, str) or not value.startswith("i-"):
        raise ValueError(f"no instance-id in detail: {value!r}")
    return InstanceId(value)


def _eventbridge(body: dict[str, Any]) -> tuple[Notification, ...]:
    kind, source = body.get("detail-type"), body.get("source")
    detail = body.get("detail")
    if not isinstance(detail, dict):
        raise ValueError("EventBridge envelope without a detail object")
    if source == "aws.ec2" and kind == "EC2 Spot Instance Interruption Warning":
        return (_spot_warning(body, detail),)
    time = _time(body.get("time"))
    if source == "aws.ec2" and kind == "EC2 Instance State-change Notification":
        state = InstanceState(str(detail.get("state")))
        if state is InstanceState.UNKNOWN:  # the supervisor's own word, never EC2's
            raise ValueError("'unknown' is not an EC2 instance state")
        return (Ec2StateChange(_instance(detail), state, time),)
    if source == "aws.ec2" and kind == "EC2 Instance Rebalance Recommendation":
        return (RebalanceRecommendation(_instance(detail), time),)
    if source == "aws.s3" and kind == "Object Created":
        bucket, obj = detail.get("bucket", {}), detail.get("object", {})
        etag, size = _etag_and_size(obj, "etag")
        return (ObjectCreated(str(bucket["name"]), str(obj["key"]), time, etag, size),)
    return (Unrecognized(f"unhandled EventBridge event {source}/{kind}"),)


def _s3_records(records: list[Any]) -> tuple[Notification, ...]:
    found: list[Notification] = []
    for record in records:
        name = str(record.get("eventName", ""))
        if record.get("eventSource") != "aws:s3" or not name.startswith("ObjectCreated:"):
            found.append(Unrecognized(f"unhandled S3 record {name or '(no eventName)'}"))
            continue
        s3 = record["s3"]
        etag, size = _etag_and_size(s3["object"], "eTag")
        # S3 URL-encodes keys in notifications (a space arrives as '+').
        found.append(
            ObjectCreated(
                str(s3["bucket"]["name"]),
                unquote_plus(str(s3["object"]["key"])),
                _time(record.get("eventTime")),
                etag,
                size,
            )
        )
    return tuple(found)


def _etag_and_size(obj: dict[str, Any], etag_field: str) -> tuple[str | None, int | None]:
    """The object's ETag and size if the notification has both, well formed; else (None,
    None): the object is then looked at by a listing, as if they were never sent."""
    etag, size = obj.get(etag_field), obj.get("size")
    if not isinstance(etag, str) or not etag.strip('"') or type(size) is not int or size < 0:
        return None, None
    return etag.strip('"'), size


def _notifications(data: dict[str, Any]) -> tuple[Notification, ...]:
    if data.get("Event") == "s3:TestEvent":
        return (S3TestEvent(str(data.get("Bucket", ""))),)
    if "Records" in data and isinstance(data["Records"], list):
        return _s3_records(data["Records"])
    if "detail-type" in data:
        return _eventbridge(data)
    return (Unrecognized("neither an EventBridge envelope nor an S3 notification"),)


def _sns_message(data: dict[str, Any]) -> tuple[Notification, ...]:
    """An SNS notification (EventBridge or S3 -> SNS -> SQS without raw delivery): its
    `Message` is the event, as a JSON string. One level only: SNS never wraps SNS."""
    message = data.get("Message")
    if not isinstance(message, str):
        raise ValueError("SNS notification without a Message string")
    inner = json.loads(message)
    if not isinstance(inner, dict):
        return (Unrecognized("SNS notification whose Message is not a JSON object"),)
    return _notifications(inner)


def parse_message(body: str) -> tuple[Notification, ...]:
    """Pure. Every notification in one SQS message body (S3 may batch several records)."""
    try:
        data = json.loads(body)
        if not isinstance(data, dict):
            return (Unrecognized("message body is not a JSON object"),)
        if "TopicArn" in data and "Type" in data:  # an SNS envelope
            if data["Type"] != "Notification":  # e.g. a SubscriptionConfirmation
                return (Unrecognized(f"SNS {str(data['Type'])[:50]} message, not a notification"),)
            return _sns_message(data)
        return _notifications(data)
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        return (Unrecognized(f"malformed message: {type(exc).__name__}: {exc}"[:300]),)
