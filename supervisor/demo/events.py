"""The EventBridge messages the demo puts on its SQS queue, as AWS sends them.

moto never sends EC2 events, and a spot interruption cannot be triggered locally, so the demo
plays AWS: it takes the sample bodies in `aws-events/` (copies of the shapes AWS documents, the
same files as tests/fixtures/aws-events/) and fills in the event id, time, region and instance.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from importlib.resources import files
from typing import Any

SPOT_WARNING = "ec2-spot-interruption-warning"
STATE_CHANGE = "ec2-state-change"


def sample(name: str) -> dict[str, Any]:
    """One of the sample bodies, as it is in `aws-events/NAME.json`."""
    text = (files(__package__) / "aws-events" / f"{name}.json").read_text(encoding="utf-8")
    body: dict[str, Any] = json.loads(text)
    return body


def ec2_event(
    name: str, instance_id: str, *, region: str, at: datetime, **detail: str
) -> dict[str, Any]:
    """A sample EC2 event about `instance_id`, sent at `at` (EventBridge keeps whole seconds)."""
    body = sample(name)
    body["id"] = str(uuid.uuid4())
    body["time"] = at.strftime("%Y-%m-%dT%H:%M:%SZ")
    body["region"] = region
    body["resources"] = [f"arn:aws:ec2:{region}:{body['account']}:instance/{instance_id}"]
    body["detail"] = {**body["detail"], "instance-id": instance_id, **detail}
    return body


def spot_warning(instance_id: str, *, region: str, at: datetime) -> dict[str, Any]:
    """ "EC2 Spot Instance Interruption Warning": AWS takes the instance back in two minutes."""
    return ec2_event(
        SPOT_WARNING, instance_id, region=region, at=at, **{"instance-action": "terminate"}
    )


def state_change(instance_id: str, state: str, *, region: str, at: datetime) -> dict[str, Any]:
    """ "EC2 Instance State-change Notification" for `state` (e.g. terminated)."""
    return ec2_event(STATE_CHANGE, instance_id, region=region, at=at, state=state)
