"""One moto server on 127.0.0.1 for figures 1-3, and the AWS world the fleet lives in:
instances, buckets, and an SQS queue that the bucket notifies of objects created (moto
delivers S3 notifications to SQS itself, as AWS does). Everything is arranged with plain
boto3 from the harness; the calls made here are the harness's, never counted as the daemon's.

moto runs as a process of its own (`python -m moto.server`, the same threaded server as
`ThreadedMotoServer`), not in this one: the naive poller runs here, and sharing one
interpreter lock with moto halved what either could do on this 2-core machine.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from typing import Any

import boto3

from tests.bench.local_server import LocalServer

REGION = "us-east-1"
AMI = "ami-12c6146b"
LAUNCH_BATCH = 500
"""Instances per RunInstances call when arranging the fleet."""
RUNS_PREFIX = "runs/"


class MotoWorld:
    """A started moto server and boto3 clients to arrange it. Use as a context manager."""

    def __init__(self, start_timeout_s: float = 60.0) -> None:
        self._server = LocalServer(
            lambda port: [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            name="moto",
            start_timeout_s=start_timeout_s,
        )
        self.url = self._server.url
        kwargs: dict[str, Any] = {
            "endpoint_url": self.url,
            "region_name": REGION,
            "aws_access_key_id": "testing",
            "aws_secret_access_key": "testing",
        }
        self.ec2: Any = boto3.client("ec2", **kwargs)
        self.s3: Any = boto3.client("s3", **kwargs)
        self.sqs: Any = boto3.client("sqs", **kwargs)

    def __enter__(self) -> MotoWorld:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._server.close()

    @property
    def aws_env(self) -> dict[str, str]:
        """The standard AWS chain pointed at this server (as tests/conftest.py's `aws_env`)."""
        return {
            "AWS_ENDPOINT_URL": self.url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": REGION,
            "AWS_CONFIG_FILE": "/dev/null",
            "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
        }

    def reset(self) -> None:
        """Forget every resource (moto's own reset API)."""
        request = urllib.request.Request(f"{self.url}/moto-api/reset", method="POST")
        with urllib.request.urlopen(request) as reply:
            reply.read()

    def launch(self, count: int) -> list[str]:
        """`count` running instances, launched in batches; their ids."""
        ids: list[str] = []
        while len(ids) < count:
            batch = min(count - len(ids), LAUNCH_BATCH)
            reply = self.ec2.run_instances(ImageId=AMI, MinCount=batch, MaxCount=batch)
            ids += [i["InstanceId"] for i in reply["Instances"]]
        return ids

    def bucket(self, name: str, *, notify_queue_url: str | None = None) -> str:
        """A bucket; with `notify_queue_url`, S3 sends that queue an event for every object
        created under `runs/`, as deploy/cloudformation.yaml configures it. moto sends a
        test event when the configuration is set: the queue is purged of it."""
        self.s3.create_bucket(Bucket=name)
        if notify_queue_url is not None:
            arn = self.sqs.get_queue_attributes(
                QueueUrl=notify_queue_url, AttributeNames=["QueueArn"]
            )["Attributes"]["QueueArn"]
            rules = [{"Name": "prefix", "Value": RUNS_PREFIX}]
            self.s3.put_bucket_notification_configuration(
                Bucket=name,
                NotificationConfiguration={
                    "QueueConfigurations": [
                        {
                            "QueueArn": arn,
                            "Events": ["s3:ObjectCreated:*"],
                            "Filter": {"Key": {"FilterRules": rules}},
                        }
                    ]
                },
            )
            self.sqs.purge_queue(QueueUrl=notify_queue_url)
        return name

    def queue(self, name: str) -> str:
        url: str = self.sqs.create_queue(QueueName=name)["QueueUrl"]
        return url

    def send(self, queue_url: str, body: dict[str, Any]) -> None:
        self.sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps(body))
