"""Shared fixtures: one real moto server over HTTP per session, reset before each test that
uses it, and a `Fleet` helper that arranges instances and objects with plain boto3."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

from supervisor.runtime import retry
from tests.pg_server import PostgresServer

REGION = "us-east-1"
BUCKET = "runs-bucket"
AMI = "ami-12c6146b"


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@dataclass
class Fleet:
    """Arrange the world in moto: instances, a bucket, objects under run prefixes."""

    url: str
    env: dict[str, str]

    def __post_init__(self) -> None:
        kwargs: dict[str, Any] = {"endpoint_url": self.url, "region_name": REGION}
        self.ec2: Any = boto3.client("ec2", **kwargs)
        self.s3: Any = boto3.client("s3", **kwargs)

    def launch(self, count: int = 1) -> list[str]:
        ids: list[str] = []
        while len(ids) < count:  # moto caps MaxCount per call like AWS does not; stay modest
            batch = min(count - len(ids), 500)
            reply = self.ec2.run_instances(ImageId=AMI, MinCount=batch, MaxCount=batch)
            ids += [i["InstanceId"] for i in reply["Instances"]]
        return ids

    def state(self, instance_id: str) -> str:
        reply = self.ec2.describe_instances(InstanceIds=[instance_id])
        return str(reply["Reservations"][0]["Instances"][0]["State"]["Name"])

    def terminate(self, instance_id: str) -> None:
        self.ec2.terminate_instances(InstanceIds=[instance_id])

    def stop(self, instance_id: str) -> None:
        self.ec2.stop_instances(InstanceIds=[instance_id])

    def bucket(self, name: str = BUCKET) -> str:
        self.s3.create_bucket(Bucket=name)
        return name

    def put(self, key: str, body: bytes | str = b"", bucket: str = BUCKET) -> None:
        data = body.encode() if isinstance(body, str) else body
        self.s3.put_object(Bucket=bucket, Key=key, Body=data)

    def prefix(self, run: str, bucket: str = BUCKET) -> str:
        return f"s3://{bucket}/runs/{run}/"

    def utilisation(
        self,
        instance_id: str,
        points: list[tuple[datetime, float]],
        *,
        namespace: str = "AWS/EC2",
        name: str = "CPUUtilization",
    ) -> None:
        """Play an instance's utilisation into CloudWatch, as EC2 (or the agent) would."""
        cloudwatch: Any = boto3.client("cloudwatch", endpoint_url=self.url, region_name=REGION)
        data = [
            {
                "MetricName": name,
                "Dimensions": [{"Name": "InstanceId", "Value": instance_id}],
                "Timestamp": at,
                "Value": value,
                "Unit": "Percent",
            }
            for at, value in points
        ]
        for first in range(0, len(data), 1000):  # PutMetricData takes 1,000 values a call
            cloudwatch.put_metric_data(Namespace=namespace, MetricData=data[first : first + 1000])


@pytest.fixture
def aws_env(moto_url: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Point the standard AWS chain at the moto server (reset to empty) for this test."""
    request = urllib.request.Request(f"{moto_url}/moto-api/reset", method="POST")
    with urllib.request.urlopen(request) as reply:
        json.loads(reply.read() or b"{}")
    env = {
        "AWS_ENDPOINT_URL": moto_url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return env


@pytest.fixture
def fleet(aws_env: dict[str, str], moto_url: str) -> Fleet:
    fleet = Fleet(moto_url, aws_env)
    fleet.bucket()
    return fleet


@pytest.fixture
def no_retry_waits() -> Iterator[None]:
    """Retry schedules as in production, without the sleeps between attempts."""
    retry.set_testing(True)
    yield
    retry.set_testing(False)


# -- PostgreSQL -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One throwaway PostgreSQL server per test process (see tests/pg_server.py)."""
    server = PostgresServer.start()
    yield server
    server.stop()


@pytest.fixture
def pg_url(postgres_server: PostgresServer) -> str:
    """The URL of a fresh, empty PostgreSQL database (with the superuser's password)."""
    return postgres_server.url(postgres_server.create_database())
