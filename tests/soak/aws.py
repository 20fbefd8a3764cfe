"""The soak's AWS: a moto server in this process that records every EC2 Stop/Terminate request
that reaches it, and the harness's own hand on the world (instances, objects, queue messages).

The harness's boto3 clients say `soak-harness` in their User-Agent, so a recorded call is known
to be the daemon's (aiobotocore) or the harness's (playing AWS or the job). With replicas, each
replica talks to moto through a port of its own (`RecordingMotoServer.add_port`), so a call is
known to be that replica's: the tap records who called what, and when it arrived. Faults are
injected in the daemon only (SUPERVISOR_FAULTS, botocore hooks), never here.
"""

from __future__ import annotations

import io
import json
import random
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from moto.server import ThreadedMotoServer
from werkzeug.serving import make_server

from supervisor.core.zombies import RUN_TAG
from supervisor.demo.events import spot_warning, state_change

REGION = "us-east-1"
AMI = "ami-12c6146b"
BUCKET = "soak-runs"
HARNESS_AGENT = "soak-harness"
ACTOR_KEY = "soak.actor"
"""The WSGI environ key a replica's own port sets to the replica's id."""
WATCHED = frozenset({"StopInstances", "TerminateInstances", "StartInstances"})
S3_SAMPLE = (
    Path(__file__).resolve().parents[1] / "fixtures" / "aws-events" / "s3-notification-put.json"
)


@dataclass(frozen=True, slots=True)
class Ec2Call:
    """One Stop/Terminate/Start request as moto answered it. `at` is taken once moto has
    produced the response (the instance's state has changed by then), before it is sent."""

    at: float
    actor: str  # "daemon" or "harness"; with replicas, the calling replica's id
    operation: str
    instance_ids: tuple[str, ...]
    status: int
    arrived: float = 0.0
    """When the request reached the tap, before moto saw it (0: not known, use `at`)."""

    @property
    def sent_at(self) -> float:
        return self.arrived or self.at

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


class _Recorder:
    """WSGI middleware in front of moto: records the watched EC2 actions, counts requests,
    and calls `after_call` (in the server's thread) once a watched call was answered."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.calls: list[Ec2Call] = []
        self.requests = 0
        self.after_call: Callable[[Ec2Call], None] | None = None
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        arrived = time.time()
        with self._lock:
            self.requests += 1
        if environ.get("REQUEST_METHOD") != "POST":
            return self.app(environ, start_response)
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(body)
        form = urllib.parse.parse_qs(body.decode("utf-8", errors="replace"))
        operation = form.get("Action", [""])[0]
        if operation not in WATCHED:
            return self.app(environ, start_response)
        status: list[int] = []

        def recording(code: str, headers: Any, exc_info: Any = None) -> Any:
            status.append(int(code.split()[0]))
            return start_response(code, headers, exc_info)

        result = self.app(environ, recording)
        chunks = list(result)  # the response is complete: moto's state has changed
        close = getattr(result, "close", None)
        if close is not None:
            close()
        ids = tuple(v[0] for k, v in sorted(form.items()) if k.startswith("InstanceId."))
        actor = environ.get(ACTOR_KEY) or "daemon"
        if HARNESS_AGENT in environ.get("HTTP_USER_AGENT", ""):
            actor = "harness"
        call = Ec2Call(time.time(), actor, operation, ids, status[0] if status else 0, arrived)
        with self._lock:
            self.calls.append(call)
        hook = self.after_call
        if hook is not None:
            hook(call)
        return chunks


class RecordingMotoServer(ThreadedMotoServer):
    """`ThreadedMotoServer` on 127.0.0.1 with the recorder in front of its app."""

    def __init__(self) -> None:
        super().__init__(ip_address="127.0.0.1", port=0, verbose=False)
        self.recorder: _Recorder | None = None
        self._extra_servers: list[Any] = []

    def _server_entry(self) -> None:
        self.recorder = _Recorder(DomainDispatcherApplication(create_backend_app))
        self._server = make_server(
            self._ip_address, self._port, self.recorder, True, request_handler=MotoRequestHandler
        )
        self._server_ready_event.set()
        self._server.serve_forever()

    @property
    def url(self) -> str:
        host, port = self.get_host_and_port()
        return f"http://{host}:{port}"

    def calls(self) -> list[Ec2Call]:
        assert self.recorder is not None
        return list(self.recorder.calls)

    def add_port(self, actor: Callable[[], str]) -> str:
        """Another port onto the same moto and recorder, whose requests are recorded as made
        by `actor()` (asked as each request arrives: a replica restarted under a new id is
        known by it at once). Returns its URL; it serves until `stop()`."""
        assert self.recorder is not None
        recorder = self.recorder

        def tagged(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
            environ[ACTOR_KEY] = actor()
            return recorder(environ, start_response)

        server = make_server(self._ip_address, 0, tagged, True, request_handler=MotoRequestHandler)
        threading.Thread(target=server.serve_forever, name="moto-port", daemon=True).start()
        self._extra_servers.append(server)
        return f"http://{self._ip_address}:{server.server_port}"

    def stop(self) -> None:
        for server in self._extra_servers:
            server.shutdown()
            server.server_close()
        super().stop()


def aws_env(url: str) -> dict[str, str]:
    """The standard AWS chain pointed at moto (for the daemon, its CLI and its children)."""
    return {
        "AWS_ENDPOINT_URL": url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
    }


class World:
    """The harness as AWS and as the training jobs: launches and ends instances, writes
    objects, and puts EventBridge/S3 messages on the queue, each 1-2 times, shuffled."""

    def __init__(self, url: str, rng: random.Random) -> None:
        config = Config(user_agent_extra=HARNESS_AGENT, retries={"total_max_attempts": 3})
        kwargs: dict[str, Any] = {
            "endpoint_url": url,
            "region_name": REGION,
            "aws_access_key_id": "testing",
            "aws_secret_access_key": "testing",
            "config": config,
        }
        self.ec2: Any = boto3.client("ec2", **kwargs)
        self.s3: Any = boto3.client("s3", **kwargs)
        self.sqs: Any = boto3.client("sqs", **kwargs)
        self.s3.create_bucket(Bucket=BUCKET)
        # A short visibility timeout: a message whose delete failed comes back soon.
        self.queue_url: str = self.sqs.create_queue(
            QueueName="soak-events", Attributes={"VisibilityTimeout": "2"}
        )["QueueUrl"]
        self._rng = rng
        self._outbox: list[str] = []
        self.sent = Counter[str]()

    # -- instances ------------------------------------------------------------------------------

    def launch(self, tags: dict[str, str] | None = None) -> str:
        kwargs: dict[str, Any] = {"ImageId": AMI, "MinCount": 1, "MaxCount": 1}
        if tags:
            kwargs["TagSpecifications"] = [
                {
                    "ResourceType": "instance",
                    "Tags": [{"Key": k, "Value": v} for k, v in tags.items()],
                }
            ]
        return str(self.ec2.run_instances(**kwargs)["Instances"][0]["InstanceId"])

    def launch_zombie(self, run_id: str) -> str:
        return self.launch({RUN_TAG: run_id})

    def end_instance(self, instance_id: str, how: str) -> None:
        """Stop or terminate the instance as AWS (or a person) would, and queue the EC2
        state-change events that follow."""
        if how == "stop":
            self.ec2.stop_instances(InstanceIds=[instance_id])
            states = ("stopping", "stopped")
        else:
            self.ec2.terminate_instances(InstanceIds=[instance_id])
            states = ("shutting-down", "terminated")
        for state in states:
            self._queue(state_change(instance_id, state, region=REGION, at=_now()))

    def states(self, instance_ids: Iterable[str]) -> dict[str, str]:
        """Each instance's state now (moto pages its answer even for given ids)."""
        ids = sorted(set(instance_ids))
        found: dict[str, str] = {}
        pages = self.ec2.get_paginator("describe_instances")
        for start in range(0, len(ids), 500):
            for page in pages.paginate(InstanceIds=ids[start : start + 500]):
                for reservation in page["Reservations"]:
                    for instance in reservation["Instances"]:
                        found[instance["InstanceId"]] = instance["State"]["Name"]
        return found

    # -- the job ----------------------------------------------------------------------------------

    def put(self, key: str, body: str = "", *, notify: bool = True) -> None:
        self.s3.put_object(Bucket=BUCKET, Key=key, Body=body.encode())
        if notify:
            self._queue(_s3_notification(key, len(body.encode())))

    def spot_warning(self, instance_id: str) -> None:
        self._queue(spot_warning(instance_id, region=REGION, at=_now()))

    # -- the queue --------------------------------------------------------------------------------

    def _queue(self, body: dict[str, Any]) -> None:
        self._outbox.append(json.dumps(body))

    def flush(self, *, everything: bool = False) -> int:
        """Send what is waiting: each message once or twice, the batch shuffled; a few are
        held back for the next flush, so order across flushes is not kept either."""
        held: list[str] = []
        batch: list[str] = []
        for body in self._outbox:
            if not everything and self._rng.random() < 0.2:
                held.append(body)
                continue
            copies = 2 if self._rng.random() < 0.35 else 1
            batch += [body] * copies
            self.sent["duplicates"] += copies - 1
        self._outbox = held
        self._rng.shuffle(batch)
        for start in range(0, len(batch), 10):
            entries = [
                {"Id": str(i), "MessageBody": body}
                for i, body in enumerate(batch[start : start + 10])
            ]
            self.sqs.send_message_batch(QueueUrl=self.queue_url, Entries=entries)
        self.sent["messages"] += len(batch)
        return len(batch)


def _now() -> datetime:
    return datetime.now(UTC)


def _s3_notification(key: str, size: int) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(S3_SAMPLE.read_text(encoding="utf-8"))
    record = body["Records"][0]
    record["eventTime"] = _now().strftime("%Y-%m-%dT%H:%M:%S.000Z")
    record["s3"]["bucket"]["name"] = BUCKET
    record["s3"]["bucket"]["arn"] = f"arn:aws:s3:::{BUCKET}"
    record["s3"]["object"]["key"] = urllib.parse.quote_plus(key, safe="/")
    record["s3"]["object"]["size"] = size
    return body
