"""AWS through aioboto3: one shared client per (service, region), every call counted.

Credentials, region and endpoint come from the standard chain (profile, environment,
`AWS_ENDPOINT_URL`), so the same code runs against AWS, moto or LocalStack. botocore's own
retries are off (`total_max_attempts=1`): retry policy lives in one place, the runtime's
`retry` module, and attempts never multiply. Errors leave this module as
`supervisor.core.errors` types.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Literal, Self

import aioboto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    HTTPClientError,
    NoCredentialsError,
    ReadTimeoutError,
)

from supervisor import __version__
from supervisor.adapters.faults import FaultPlan
from supervisor.core.checkpoint import StoredObject
from supervisor.core.completion import ListRequest
from supervisor.core.errors import (
    ExternalError,
    NotFoundError,
    PermanentError,
    TransientError,
)
from supervisor.core.idle import METRIC_SOURCES, Datapoint, IdleMetric
from supervisor.core.spec import LaunchTemplate
from supervisor.core.values import InstanceId, InstanceState, ObjectInfo
from supervisor.core.zombies import InstanceSeen

USER_AGENT = f"ec2-run-supervisor/{__version__}"

DESCRIBE_BATCH = 1000  # DescribeInstances returns at most 1000 instances a page
STATUS_BATCH = 100  # DescribeInstanceStatus takes at most 100 instance ids
METRIC_BATCH = 500  # GetMetricData takes at most 500 metric queries
READ_RANGE_LIMIT = 1 << 20  # bytes per ranged GetObject of a log

_TRANSIENT_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "SlowDown",
        "RequestTimeout",
        "RequestTimeoutException",
        "InternalError",
        "InternalFailure",
        "ServiceUnavailable",
        "Unavailable",
        "PriorRequestNotComplete",
        "EC2ThrottledException",
        "BandwidthLimitExceeded",
    }
)
_NOT_FOUND_CODES = frozenset(
    {"InvalidInstanceID.NotFound", "NoSuchKey", "NoSuchBucket", "404", "NotFound"}
)
_CONNECTION_ERRORS = (
    HTTPClientError,  # aiobotocore's wrapper for unexpected aiohttp failures
    EndpointConnectionError,
    ConnectionClosedError,
    ConnectTimeoutError,
    ReadTimeoutError,
)
_INSTANCE_ID_IN_TEXT = re.compile(r"i-[0-9a-f]{8,17}")


ErrorClass = Literal["transient", "not_found", "permanent"]
_ERROR_TYPES: dict[ErrorClass, type[ExternalError]] = {
    "transient": TransientError,
    "not_found": NotFoundError,
    "permanent": PermanentError,
}


def error_class(code: str, status: int) -> ErrorClass:
    """How an AWS error reply is handled: retried, taken as "already gone", or not retried."""
    if code in _NOT_FOUND_CODES:
        return "not_found"
    if code in _TRANSIENT_CODES or status >= 500:
        return "transient"
    return "permanent"


def translate(exc: BaseException, operation: str) -> ExternalError:
    """Map a botocore/aiohttp exception to transient, not-found or permanent."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", "Unknown"))
        message = str(error.get("Message", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        error_type = _ERROR_TYPES[error_class(code, status)]
        return error_type(code, message, operation=operation)
    if isinstance(exc, (*_CONNECTION_ERRORS, asyncio.TimeoutError, OSError)):
        return TransientError(type(exc).__name__, str(exc), operation=operation)
    if isinstance(exc, NoCredentialsError):
        return PermanentError(
            "NoCredentials",
            "no AWS credentials found: configure a profile, environment variables or an "
            "instance role",
            operation=operation,
        )
    if isinstance(exc, BotoCoreError):
        return PermanentError(type(exc).__name__, str(exc), operation=operation)
    return PermanentError(type(exc).__name__, str(exc), operation=operation)


@contextmanager
def _translated(operation: str) -> Iterator[None]:
    try:
        yield
    except ExternalError:
        raise
    except (TimeoutError, ClientError, BotoCoreError, OSError) as exc:
        raise translate(exc, operation) from exc
    except Exception as exc:  # aiohttp's client errors and the like
        if type(exc).__module__.startswith("aiohttp"):
            raise TransientError(type(exc).__name__, str(exc), operation=operation) from exc
        raise


_CALL = "supervisor_call"
"""Where the before-call hook leaves (service, operation) in botocore's request context, for
the after-call hooks (`after-call-error` is not given the operation model)."""


class CallCounter:
    """AWS calls by (service, operation), counted by a botocore `before-call` hook, and by
    (service, operation, outcome) once each call has ended: `ok`, or the error's class
    (`transient`, `not_found`, `permanent`; see `error_class`). A call cancelled in flight
    has no outcome."""

    def __init__(self) -> None:
        self.calls: Counter[tuple[str, str]] = Counter()
        self.outcomes: Counter[tuple[str, str, str]] = Counter()

    def register(self, events: Any) -> None:
        """Count the calls of one client (its `meta.events`)."""
        events.register("before-call.*.*", self.hook)
        events.register("after-call.*.*", self.after_call)
        events.register("after-call-error.*.*", self.after_call_error)

    def hook(self, *, model: Any = None, context: Any = None, **_: Any) -> None:
        if model is not None:
            key = (model.service_model.service_name, model.name)
            self.calls[key] += 1
            if isinstance(context, dict):
                context[_CALL] = key

    def after_call(
        self, *, http_response: Any = None, parsed: Any = None, context: Any = None, **_: Any
    ) -> None:
        """A reply came back: 2xx is `ok`; an error reply is classed by its code and status."""
        key = context.get(_CALL) if isinstance(context, dict) else None
        if key is None:
            return
        status = int(getattr(http_response, "status_code", 0) or 0)
        outcome: str = "ok"
        if status >= 300:
            error = parsed.get("Error", {}) if isinstance(parsed, dict) else {}
            outcome = error_class(str(error.get("Code", status)), status)
        self.outcomes[(*key, outcome)] += 1

    def after_call_error(
        self, *, exception: BaseException | None = None, context: Any = None, **_: Any
    ) -> None:
        """No reply: a connection error, a timeout, or an injected fault."""
        key = context.get(_CALL) if isinstance(context, dict) else None
        if key is None or exception is None:
            return
        error = translate(exception, key[1])
        outcome = next(c for c, t in _ERROR_TYPES.items() if isinstance(error, t))
        self.outcomes[(*key, outcome)] += 1

    def count(self, operation: str) -> int:
        return sum(n for (_, op), n in self.calls.items() if op == operation)

    def snapshot(self) -> dict[str, int]:
        return {f"{service}:{op}": n for (service, op), n in sorted(self.calls.items())}


class Aws:
    """The AWS port's adapter. Use as `async with Aws(...) as aws:`; clients close on exit."""

    def __init__(
        self,
        *,
        session: aioboto3.Session | None = None,
        faults: FaultPlan | None = None,
        max_pool_connections: int = 50,
    ) -> None:
        self._session = session or aioboto3.Session()
        self._faults = faults
        self._config = Config(
            # Our own User-Agent: CloudTrail and S3 access logs name this tool, and botocore
            # skips rebuilding its default one twice per request (a quarter of the client's
            # CPU per prefix check).
            user_agent=USER_AGENT,
            retries={"total_max_attempts": 1},
            max_pool_connections=max_pool_connections,
            connect_timeout=10,
            read_timeout=60,
        )
        self._stack = AsyncExitStack()
        self._clients: dict[tuple[str, str], Any] = {}
        self._client_lock = asyncio.Lock()
        self.counter = CallCounter()

    @property
    def default_region(self) -> str | None:
        region = self._session.region_name
        return str(region) if region else None

    async def __aenter__(self) -> Self:
        await self._stack.__aenter__()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._stack.__aexit__(et, e, tb)
        self._clients.clear()

    async def client(self, service: str, region: str) -> Any:
        """The shared client for (service, region), created on first use and closed on exit."""
        key = (service, region)
        client = self._clients.get(key)
        if client is not None:
            return client
        async with self._client_lock:
            if key not in self._clients:
                created = await self._stack.enter_async_context(
                    self._session.client(service, region_name=region, config=self._config)
                )
                self.counter.register(created.meta.events)
                if self._faults:
                    created.meta.events.register("before-send.*.*", self._faults.before_send)
                self._clients[key] = created
            return self._clients[key]

    def __repr__(self) -> str:
        return f"<Aws clients={sorted(self._clients)} calls={sum(self.counter.calls.values())}>"

    # -- S3 -----------------------------------------------------------------------------------

    async def list_objects(self, request: ListRequest, region: str) -> tuple[ObjectInfo, ...]:
        """Every object directly under (or, without delimiter, below) the prefix; full keys."""
        s3 = await self.client("s3", region)
        found: list[ObjectInfo] = []
        kwargs: dict[str, Any] = {"Bucket": request.bucket, "Prefix": request.prefix}
        if request.delimiter:
            kwargs["Delimiter"] = request.delimiter
        with _translated("ListObjectsV2"):
            while True:
                page = await s3.list_objects_v2(**kwargs)
                for item in page.get("Contents", ()):
                    modified = item["LastModified"]
                    found.append(
                        ObjectInfo(
                            key=item["Key"],
                            etag=str(item.get("ETag", "")).strip('"'),
                            size=int(item.get("Size", 0)),
                            last_modified=modified.astimezone(UTC)
                            if isinstance(modified, datetime)
                            else datetime.now(UTC),
                        )
                    )
                token = page.get("NextContinuationToken")
                if not page.get("IsTruncated") or not token:
                    break
                kwargs["ContinuationToken"] = token
        return tuple(found)

    async def probe_prefix(self, bucket: str, prefix: str, region: str) -> None:
        """One ListObjectsV2 with MaxKeys=1 on the prefix: returns if the bucket answers (an
        empty prefix is fine), raises `NotFoundError` (NoSuchBucket) or another
        `ExternalError` (AccessDenied, a redirect to the bucket's region...) if it does not."""
        s3 = await self.client("s3", region)
        with _translated("ListObjectsV2"):
            await s3.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1)

    async def list_uploads(self, bucket: str, prefix: str, region: str) -> tuple[str, ...]:
        """Keys of the multipart uploads under way below `prefix`: one ListMultipartUploads
        call (its first page: whether any is under way is what matters, not how many)."""
        s3 = await self.client("s3", region)
        with _translated("ListMultipartUploads"):
            page = await s3.list_multipart_uploads(Bucket=bucket, Prefix=prefix)
        return tuple(str(upload["Key"]) for upload in page.get("Uploads", ()) if "Key" in upload)

    async def read_object(self, bucket: str, key: str, region: str, *, limit: int = 65536) -> str:
        """The first `limit` bytes of an object, decoded as UTF-8 (invalid bytes replaced)."""
        s3 = await self.client("s3", region)
        try:
            with _translated("GetObject"):
                response = await s3.get_object(Bucket=bucket, Key=key, Range=f"bytes=0-{limit - 1}")
                async with response["Body"] as body:
                    data: bytes = await body.read()
        except PermanentError as exc:
            if exc.code == "InvalidRange":  # S3's answer to a ranged GET of an empty object
                return ""
            raise
        return data.decode("utf-8", errors="replace")

    async def read_tail(
        self, bucket: str, key: str, region: str, *, limit: int = 65536
    ) -> tuple[str, int]:
        """The last `limit` bytes of an object (decoded, invalid bytes replaced) and its size.
        When the object is longer, the tail starts at its first whole line. Raises
        `NotFoundError` when there is no such object."""
        s3 = await self.client("s3", region)
        try:
            with _translated("GetObject"):
                response = await s3.get_object(Bucket=bucket, Key=key, Range=f"bytes=-{limit}")
                async with response["Body"] as body:
                    data: bytes = await body.read()
        except PermanentError as exc:
            if exc.code == "InvalidRange":  # an empty object
                return "", 0
            raise
        content_range = str(response.get("ContentRange") or "")
        total = content_range.rpartition("/")[2]
        size = int(total) if total.isdigit() else len(data)
        if size > len(data):
            data = data.partition(b"\n")[2]  # drop the partial first line of the tail
        return data.decode("utf-8", errors="replace"), size

    async def read_range(
        self, bucket: str, key: str, region: str, start: int, *, limit: int = READ_RANGE_LIMIT
    ) -> tuple[bytes, int]:
        """Up to `limit` bytes of an object from byte `start` (with a negative `start`, its
        last `-start` bytes, at most `limit`), and the object's size now: one GetObject.

        From the end or past it there are no bytes, and the size still comes back, so a
        reader following a growing log tells "nothing new" (size == start) from "truncated or
        replaced" (size < start). Raises `NotFoundError` when there is no such object."""
        if start < 0:
            wanted = f"bytes=-{min(-start, limit)}"
        else:
            wanted = f"bytes={start}-{start + limit - 1}"
        s3 = await self.client("s3", region)
        with _translated("GetObject"):
            try:
                response = await s3.get_object(Bucket=bucket, Key=key, Range=wanted)
            except ClientError as exc:
                error = exc.response.get("Error", {})
                if error.get("Code") != "InvalidRange":
                    raise
                # S3 answers a range past the end with 416 and the object's size.
                actual = str(error.get("ActualObjectSize", ""))
                if actual.isdigit():
                    return b"", int(actual)
                stored = await self.head_object(bucket, key, region)
                if stored is None:
                    raise NotFoundError("NoSuchKey", key, operation="GetObject") from None
                return b"", stored.size
            async with response["Body"] as body:
                data: bytes = await body.read()
        total = str(response.get("ContentRange") or "").rpartition("/")[2]
        # No Content-Range: S3 sent the whole object (a suffix range on an empty one).
        return data, int(total) if total.isdigit() else len(data)

    async def head_object(self, bucket: str, key: str, region: str) -> StoredObject | None:
        """Size and SHA-256 checksum of an object as S3 stores it, or None if it is missing."""
        s3 = await self.client("s3", region)
        try:
            with _translated("HeadObject"):
                reply = await s3.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
        except NotFoundError:
            return None
        return StoredObject(
            key=key,
            size=int(reply.get("ContentLength", 0)),
            checksum_sha256=reply.get("ChecksumSHA256"),
        )

    # -- EC2 ----------------------------------------------------------------------------------

    async def describe_instances(
        self, ids: Sequence[InstanceId], region: str
    ) -> dict[InstanceId, InstanceState]:
        """States of the given instances: one DescribeInstanceStatus per 100 ids. Ids AWS
        does not know are `UNKNOWN` (AWS forgets terminated instances after about an hour).

        Not DescribeInstances (1,000 ids a call): its reply describes every instance whole
        (network interfaces, volumes, tags...), and parsing 1,000 of them costs ~0.9 s of
        CPU, ~15% of a core for 10,000 runs swept each minute. The status reply is the state
        and little else: ten times the calls, an eightieth of the CPU (make bench)."""
        states: dict[InstanceId, InstanceState] = {}
        unique = list(dict.fromkeys(ids))
        for start in range(0, len(unique), STATUS_BATCH):
            batch = unique[start : start + STATUS_BATCH]
            async for instance_id, state in self._describe_batch(batch, region):
                states[instance_id] = state
        return states

    async def _describe_batch(
        self, batch: list[InstanceId], region: str
    ) -> AsyncIterator[tuple[InstanceId, InstanceState]]:
        ec2 = await self.client("ec2", region)
        remaining = list(batch)
        while remaining:
            try:
                with _translated("DescribeInstanceStatus"):
                    seen = await self._describe_pages(ec2, remaining)
            except NotFoundError as exc:
                # The whole call fails if one id is unknown; the message names the ids.
                missing = set(_INSTANCE_ID_IN_TEXT.findall(exc.message)) & set(remaining)
                if not missing:
                    raise
                for instance_id in missing:
                    yield InstanceId(instance_id), InstanceState.UNKNOWN
                remaining = [i for i in remaining if i not in missing]
                continue
            for instance_id in remaining:
                yield instance_id, seen.get(instance_id, InstanceState.UNKNOWN)
            return

    @staticmethod
    async def _describe_pages(ec2: Any, ids: list[InstanceId]) -> dict[str, InstanceState]:
        seen: dict[str, InstanceState] = {}
        kwargs: dict[str, Any] = {"InstanceIds": ids, "IncludeAllInstances": True}
        while True:
            page = await ec2.describe_instance_status(**kwargs)
            for status in page.get("InstanceStatuses", ()):
                seen[status["InstanceId"]] = _state(status["InstanceState"]["Name"])
            token = page.get("NextToken")
            if not token:
                return seen
            kwargs["NextToken"] = token

    async def instance_exists(self, instance_id: InstanceId, region: str) -> bool:
        """Whether AWS knows the instance in `region`: one DescribeInstances for its id. A
        terminated instance still exists (for about an hour); an unknown id does not."""
        ec2 = await self.client("ec2", region)
        try:
            with _translated("DescribeInstances"):
                reply = await ec2.describe_instances(InstanceIds=[instance_id])
        except NotFoundError:
            return False
        return any(
            instance.get("InstanceId") == instance_id
            for reservation in reply.get("Reservations", ())
            for instance in reservation.get("Instances", ())
        )

    async def describe_tagged(self, tag_key: str, region: str) -> list[InstanceSeen]:
        """Every pending or running instance in `region` carrying the tag `tag_key`, with its
        tags: one DescribeInstances per 1000 instances (filtered by AWS, paginated)."""
        ec2 = await self.client("ec2", region)
        kwargs: dict[str, Any] = {
            "Filters": [
                {"Name": "tag-key", "Values": [tag_key]},
                {"Name": "instance-state-name", "Values": ["pending", "running"]},
            ],
            "MaxResults": DESCRIBE_BATCH,
        }
        found: list[InstanceSeen] = []
        with _translated("DescribeInstances"):
            while True:
                page = await ec2.describe_instances(**kwargs)
                for reservation in page.get("Reservations", ()):
                    for instance in reservation.get("Instances", ()):
                        found.append(
                            InstanceSeen(
                                instance_id=InstanceId(instance["InstanceId"]),
                                region=region,
                                state=_state(instance["State"]["Name"]),
                                tags={t["Key"]: t["Value"] for t in instance.get("Tags", ())},
                            )
                        )
                token = page.get("NextToken")
                if not token:
                    return found
                kwargs["NextToken"] = token

    async def stop_instance(self, instance_id: InstanceId, region: str) -> InstanceState:
        ec2 = await self.client("ec2", region)
        with _translated("StopInstances"):
            response = await ec2.stop_instances(InstanceIds=[instance_id])
        return _state(response["StoppingInstances"][0]["CurrentState"]["Name"])

    async def terminate_instance(self, instance_id: InstanceId, region: str) -> InstanceState:
        ec2 = await self.client("ec2", region)
        with _translated("TerminateInstances"):
            response = await ec2.terminate_instances(InstanceIds=[instance_id])
        return _state(response["TerminatingInstances"][0]["CurrentState"]["Name"])

    async def start_instance(self, instance_id: InstanceId, region: str) -> InstanceState:
        ec2 = await self.client("ec2", region)
        with _translated("StartInstances"):
            response = await ec2.start_instances(InstanceIds=[instance_id])
        return _state(response["StartingInstances"][0]["CurrentState"]["Name"])

    async def launch_from_template(
        self, template: LaunchTemplate, tags: Mapping[str, str], region: str, *, token: str
    ) -> InstanceId:
        """RunInstances from a launch template, tagged; `token` makes a retry idempotent."""
        ec2 = await self.client("ec2", region)
        spec: dict[str, str] = {"Version": template.version}
        if template.id:
            spec["LaunchTemplateId"] = template.id
        else:
            assert template.name is not None
            spec["LaunchTemplateName"] = template.name
        tag_list = [{"Key": k, "Value": v} for k, v in tags.items()]
        with _translated("RunInstances"):
            response = await ec2.run_instances(
                LaunchTemplate=spec,
                MinCount=1,
                MaxCount=1,
                ClientToken=token,
                TagSpecifications=[{"ResourceType": "instance", "Tags": tag_list}],
            )
        return InstanceId(response["Instances"][0]["InstanceId"])

    async def create_tags(
        self, instance_id: InstanceId, tags: Mapping[str, str], region: str
    ) -> None:
        """Tag one instance (CreateTags). AWS answers `InvalidInstanceID.NotFound` for an
        instance it does not know, and `UnauthorizedOperation` without ec2:CreateTags."""
        ec2 = await self.client("ec2", region)
        tag_list = [{"Key": k, "Value": v} for k, v in tags.items()]
        with _translated("CreateTags"):
            await ec2.create_tags(Resources=[instance_id], Tags=tag_list)

    # -- SQS ----------------------------------------------------------------------------------

    async def receive_messages(
        self, queue_url: str, region: str, *, wait_s: int = 20, max_messages: int = 10
    ) -> list[QueueMessage]:
        """One long poll (up to `wait_s`, up to `max_messages`)."""
        sqs = await self.client("sqs", region)
        with _translated("ReceiveMessage"):
            reply = await sqs.receive_message(
                QueueUrl=queue_url,
                WaitTimeSeconds=wait_s,
                MaxNumberOfMessages=max_messages,
                AttributeNames=["ApproximateReceiveCount"],
            )
        return [
            QueueMessage(
                message_id=m["MessageId"],
                receipt=m["ReceiptHandle"],
                body=m.get("Body", ""),
                receive_count=int(m.get("Attributes", {}).get("ApproximateReceiveCount", 1)),
            )
            for m in reply.get("Messages", ())
        ]

    async def delete_message(self, queue_url: str, receipt: str, region: str) -> None:
        sqs = await self.client("sqs", region)
        with _translated("DeleteMessage"):
            await sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=receipt)

    # -- CloudWatch -----------------------------------------------------------------------------

    async def utilisation(
        self,
        ids: Sequence[InstanceId],
        metric: IdleMetric,
        region: str,
        *,
        start: datetime,
        end: datetime,
    ) -> dict[InstanceId, tuple[Datapoint, ...]]:
        """Each instance's utilisation datapoints (the period's maximum, so one busy minute
        counts) from `start` to `end`: one GetMetricData per 500 instances (one query each),
        never a call per instance. An instance CloudWatch has nothing for gets no
        datapoints. `AWS/EC2` metrics need no agent; `CWAgent` ones are the agent's, published
        with the `InstanceId` dimension alone (deploy/cloudwatch-agent.json aggregates them)."""
        source = METRIC_SOURCES[metric]
        cloudwatch = await self.client("cloudwatch", region)
        unique = list(dict.fromkeys(ids))
        found: dict[InstanceId, list[Datapoint]] = {i: [] for i in unique}
        for first in range(0, len(unique), METRIC_BATCH):
            batch = unique[first : first + METRIC_BATCH]
            queries = [
                {
                    "Id": f"i{n}",  # ids must start with a lower-case letter: the index names it
                    "MetricStat": {
                        "Metric": {
                            "Namespace": source.namespace,
                            "MetricName": source.name,
                            "Dimensions": [{"Name": "InstanceId", "Value": instance_id}],
                        },
                        "Period": source.period_s,
                        "Stat": "Maximum",
                    },
                    "ReturnData": True,
                }
                for n, instance_id in enumerate(batch)
            ]
            kwargs: dict[str, Any] = {
                "MetricDataQueries": queries,
                # On a period boundary, so each datapoint is its period's, as CloudWatch
                # stores them (its advice for GetMetricData).
                "StartTime": _period_start(start, source.period_s),
                "EndTime": end,
                "ScanBy": "TimestampAscending",
            }
            with _translated("GetMetricData"):
                while True:
                    page = await cloudwatch.get_metric_data(**kwargs)
                    for result in page.get("MetricDataResults", ()):
                        instance_id = batch[int(str(result["Id"])[1:])]
                        found[instance_id] += [
                            Datapoint(at.astimezone(UTC), float(value))
                            for at, value in zip(
                                result.get("Timestamps", ()), result.get("Values", ()), strict=True
                            )
                        ]
                    token = page.get("NextToken")
                    if not token:
                        break
                    kwargs["NextToken"] = token
        return {i: tuple(sorted(points, key=lambda p: p.at)) for i, points in found.items()}


@dataclass(frozen=True, slots=True)
class QueueMessage:
    message_id: str
    receipt: str
    body: str
    receive_count: int = 1


def queue_region(queue_url: str) -> str | None:
    """The region in an SQS queue URL (https://sqs.REGION.amazonaws.com/...), if any."""
    match = re.match(r"https?://sqs[.-]([a-z]{2}(?:-gov)?-[a-z]+-\d)\.", queue_url)
    return match.group(1) if match else None


def _period_start(at: datetime, period_s: int) -> datetime:
    seconds = int(at.timestamp())
    return datetime.fromtimestamp(seconds - seconds % period_s, UTC)


def _state(name: str) -> InstanceState:
    try:
        return InstanceState(name)
    except ValueError:
        return InstanceState.UNKNOWN
