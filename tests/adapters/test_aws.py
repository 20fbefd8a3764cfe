"""The AWS adapter against a real moto server over HTTP: listings, reads, batched describes,
stop and terminate, error translation, injected faults, and one client per service."""

from __future__ import annotations

import asyncio
import hashlib
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from botocore.exceptions import (
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)

from supervisor.adapters.aws import USER_AGENT, Aws, translate
from supervisor.adapters.faults import FaultPlan
from supervisor.core.completion import ListRequest
from supervisor.core.errors import (
    ExternalError,
    InvalidInput,
    NotFoundError,
    PermanentError,
    TransientError,
)
from supervisor.core.idle import Datapoint, IdleMetric
from supervisor.core.values import InstanceId, InstanceState
from tests.conftest import BUCKET, REGION, Fleet

PREFIX = "runs/r1/"


@pytest.fixture
async def aws(fleet: Fleet) -> AsyncIterator[Aws]:
    async with Aws() as adapter:
        yield adapter


def ids(*values: str) -> list[InstanceId]:
    return [InstanceId(v) for v in values]


def client_error(code: str, status: int) -> ClientError:
    response: Any = {
        "Error": {"Code": code, "Message": f"{code} happened"},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return ClientError(response, "DescribeInstances")


# -- S3: list_objects -------------------------------------------------------------------------


async def test_a_delimited_listing_returns_only_direct_children_with_bare_etags(
    aws: Aws, fleet: Fleet
) -> None:
    fleet.put(PREFIX + "COMPLETE", "done\n")
    fleet.put(PREFIX + "status.json", '{"step": 7}')
    fleet.put(PREFIX + "checkpoints/step7/model.pt", b"weights")
    fleet.put("runs/r10/COMPLETE", "other run")

    listing = await aws.list_objects(ListRequest(BUCKET, PREFIX, "/"), REGION)

    by_key = {o.key: o for o in listing}
    assert set(by_key) == {PREFIX + "COMPLETE", PREFIX + "status.json"}
    complete = by_key[PREFIX + "COMPLETE"]
    assert complete.etag == hashlib.md5(b"done\n").hexdigest()
    assert complete.size == len(b"done\n")
    assert complete.last_modified.tzinfo is not None


async def test_a_recursive_listing_includes_nested_keys(aws: Aws, fleet: Fleet) -> None:
    fleet.put(PREFIX + "COMPLETE")
    fleet.put(PREFIX + "checkpoints/step7/model.pt", b"weights")

    listing = await aws.list_objects(ListRequest(BUCKET, PREFIX, None), REGION)

    assert sorted(o.key for o in listing) == [
        PREFIX + "COMPLETE",
        PREFIX + "checkpoints/step7/model.pt",
    ]


async def test_listing_an_empty_prefix_returns_nothing(aws: Aws) -> None:
    assert await aws.list_objects(ListRequest(BUCKET, "runs/none/", "/"), REGION) == ()


async def test_listing_a_missing_bucket_raises_not_found_no_such_bucket(aws: Aws) -> None:
    with pytest.raises(NotFoundError) as caught:
        await aws.list_objects(ListRequest("no-such-bucket", PREFIX, "/"), REGION)

    assert caught.value.code == "NoSuchBucket"
    assert caught.value.operation == "ListObjectsV2"


async def test_one_listing_of_a_small_prefix_is_one_list_objects_call(
    aws: Aws, fleet: Fleet
) -> None:
    for name in ("COMPLETE", "status.json", "logs/train.log", "checkpoints/a", "checkpoints/b"):
        fleet.put(PREFIX + name)

    await aws.list_objects(ListRequest(BUCKET, PREFIX, "/"), REGION)

    assert aws.counter.count("ListObjectsV2") == 1
    assert aws.counter.snapshot() == {"s3:ListObjectsV2": 1}


async def test_requests_name_this_tool_as_their_user_agent(aws: Aws) -> None:
    """CloudTrail and S3 access logs then show which calls the supervisor made."""
    sent: list[str] = []
    s3 = await aws.client("s3", REGION)
    s3.meta.events.register(
        "before-send.s3.ListObjectsV2",
        lambda request, **_: sent.append(bytes(request.headers["User-Agent"]).decode()),
    )
    await aws.list_objects(ListRequest(BUCKET, "runs/none/", "/"), REGION)
    assert len(sent) == 1
    assert sent[0].startswith(f"{USER_AGENT} "), sent  # botocore appends its own version
    assert USER_AGENT.startswith("ec2-run-supervisor/")


# -- S3: list_uploads -------------------------------------------------------------------------


async def test_uploads_in_progress_under_the_prefix_are_listed_in_one_call(
    aws: Aws, fleet: Fleet
) -> None:
    big = fleet.s3.create_multipart_upload(Bucket=BUCKET, Key=PREFIX + "ckpt/model.pt")
    fleet.s3.create_multipart_upload(Bucket=BUCKET, Key="runs/r10/ckpt/model.pt")
    done = fleet.s3.create_multipart_upload(Bucket=BUCKET, Key=PREFIX + "ckpt/done.pt")
    fleet.s3.abort_multipart_upload(Bucket=BUCKET, Key=PREFIX + "ckpt/done.pt",
                                    UploadId=done["UploadId"])  # fmt: skip

    assert await aws.list_uploads(BUCKET, PREFIX, REGION) == (PREFIX + "ckpt/model.pt",)
    assert aws.counter.snapshot() == {"s3:ListMultipartUploads": 1}

    fleet.s3.abort_multipart_upload(Bucket=BUCKET, Key=PREFIX + "ckpt/model.pt",
                                    UploadId=big["UploadId"])  # fmt: skip
    assert await aws.list_uploads(BUCKET, PREFIX, REGION) == ()


async def test_listing_the_uploads_of_a_missing_bucket_raises_not_found(aws: Aws) -> None:
    with pytest.raises(NotFoundError) as caught:
        await aws.list_uploads("no-such-bucket", PREFIX, REGION)
    assert caught.value.operation == "ListMultipartUploads"


# -- S3: read_object --------------------------------------------------------------------------


async def test_read_object_returns_the_body_as_text(aws: Aws, fleet: Fleet) -> None:
    fleet.put(PREFIX + "FAILED", "exit code 137: OOM\n")

    assert await aws.read_object(BUCKET, PREFIX + "FAILED", REGION) == "exit code 137: OOM\n"


async def test_read_object_stops_at_the_limit(aws: Aws, fleet: Fleet) -> None:
    fleet.put(PREFIX + "crash/error.log", "x" * 100 + "tail")

    assert await aws.read_object(BUCKET, PREFIX + "crash/error.log", REGION, limit=10) == "x" * 10


async def test_read_object_replaces_invalid_utf8(aws: Aws, fleet: Fleet) -> None:
    fleet.put(PREFIX + "FAILED", b"bad \xff byte")

    assert await aws.read_object(BUCKET, PREFIX + "FAILED", REGION) == "bad \ufffd byte"


async def test_read_object_of_an_empty_object_returns_empty_text(aws: Aws, fleet: Fleet) -> None:
    # `touch FAILED && aws s3 cp FAILED ...` is the commonest failure marker; S3 answers a
    # ranged GET of a zero-byte object with 416 InvalidRange.
    fleet.put(PREFIX + "FAILED", b"")

    assert await aws.read_object(BUCKET, PREFIX + "FAILED", REGION) == ""


async def test_read_object_of_a_missing_key_raises_not_found(aws: Aws) -> None:
    with pytest.raises(NotFoundError) as caught:
        await aws.read_object(BUCKET, PREFIX + "nothing", REGION)

    assert caught.value.code == "NoSuchKey"


# -- S3: read_range ---------------------------------------------------------------------------

LOG = PREFIX + "logs/train.log"


async def test_read_range_returns_the_bytes_from_the_offset_and_the_size(
    aws: Aws, fleet: Fleet
) -> None:
    fleet.put(LOG, b"step 1\nstep 2\n")

    assert await aws.read_range(BUCKET, LOG, REGION, 7) == (b"step 2\n", 14)
    assert await aws.read_range(BUCKET, LOG, REGION, 0, limit=4) == (b"step", 14)
    assert aws.counter.count("GetObject") == 2


async def test_read_range_with_a_negative_start_returns_the_last_bytes(
    aws: Aws, fleet: Fleet
) -> None:
    fleet.put(LOG, b"step 1\nstep 2\n")

    assert await aws.read_range(BUCKET, LOG, REGION, -7) == (b"step 2\n", 14)
    assert await aws.read_range(BUCKET, LOG, REGION, -100) == (b"step 1\nstep 2\n", 14)


@pytest.mark.parametrize("start", [14, 20], ids=["at-the-end", "past-the-end"])
async def test_read_range_at_or_past_the_end_returns_no_bytes_and_the_size_in_one_call(
    aws: Aws, fleet: Fleet, start: int
) -> None:
    fleet.put(LOG, b"step 1\nstep 2\n")

    assert await aws.read_range(BUCKET, LOG, REGION, start) == (b"", 14)
    assert aws.counter.count("GetObject") == 1
    assert aws.counter.count("HeadObject") == 0


@pytest.mark.parametrize("start", [0, -10])
async def test_read_range_of_an_empty_object_returns_nothing_and_size_zero(
    aws: Aws, fleet: Fleet, start: int
) -> None:
    fleet.put(LOG, b"")

    assert await aws.read_range(BUCKET, LOG, REGION, start) == (b"", 0)


async def test_read_range_of_a_missing_key_raises_not_found(aws: Aws) -> None:
    with pytest.raises(NotFoundError):
        await aws.read_range(BUCKET, LOG, REGION, 0)


# -- EC2: describe_instances ------------------------------------------------------------------


async def test_describing_more_than_100_instances_takes_one_status_call_per_100(
    aws: Aws, fleet: Fleet
) -> None:
    """DescribeInstanceStatus, not DescribeInstances: its reply is the state and little else
    (parsing 1,000 whole instance descriptions costs ~0.9 s of CPU)."""
    launched = ids(*fleet.launch(201))

    states = await aws.describe_instances(launched, REGION)

    assert aws.counter.snapshot() == {"ec2:DescribeInstanceStatus": 3}
    assert states == dict.fromkeys(launched, InstanceState.RUNNING)


async def test_stopped_and_terminated_instances_have_their_states(aws: Aws, fleet: Fleet) -> None:
    running, stopped, terminated = ids(*fleet.launch(3))
    fleet.stop(stopped)
    fleet.terminate(terminated)

    states = await aws.describe_instances([running, stopped, terminated], REGION)

    assert states == {
        running: InstanceState.RUNNING,
        stopped: InstanceState.STOPPED,
        terminated: InstanceState.TERMINATED,
    }


async def test_unknown_ids_among_known_ones_are_unknown_without_an_error(
    aws: Aws, fleet: Fleet
) -> None:
    running, stopped, terminated = ids(*fleet.launch(3))
    fleet.stop(stopped)
    fleet.terminate(terminated)
    ghosts = ids("i-0123456789abcdef0", "i-0fedcba9876543210")

    states = await aws.describe_instances(
        [ghosts[0], running, stopped, ghosts[1], terminated], REGION
    )

    assert states == {
        running: InstanceState.RUNNING,
        stopped: InstanceState.STOPPED,
        terminated: InstanceState.TERMINATED,
        ghosts[0]: InstanceState.UNKNOWN,
        ghosts[1]: InstanceState.UNKNOWN,
    }
    # A refused call names the unknown ids (AWS names all, moto one), then the rest is described.
    assert 2 <= aws.counter.count("DescribeInstanceStatus") <= 1 + len(ghosts)


async def test_describing_only_unknown_ids_returns_unknown_for_each(aws: Aws) -> None:
    ghost = InstanceId("i-0123456789abcdef0")

    assert await aws.describe_instances([ghost], REGION) == {ghost: InstanceState.UNKNOWN}


async def test_describing_repeated_ids_describes_each_once(aws: Aws, fleet: Fleet) -> None:
    [instance] = ids(*fleet.launch(1))

    states = await aws.describe_instances([instance, instance, instance], REGION)

    assert states == {instance: InstanceState.RUNNING}
    assert aws.counter.count("DescribeInstanceStatus") == 1


async def test_describing_no_ids_makes_no_call(aws: Aws) -> None:
    assert await aws.describe_instances([], REGION) == {}
    assert aws.counter.count("DescribeInstanceStatus") == 0


# -- EC2: stop and terminate ------------------------------------------------------------------


async def test_stop_instance_returns_stopping_and_the_instance_then_is_stopped(
    aws: Aws, fleet: Fleet
) -> None:
    [instance] = ids(*fleet.launch(1))

    assert await aws.stop_instance(instance, REGION) is InstanceState.STOPPING
    assert fleet.state(instance) == "stopped"


async def test_terminate_instance_returns_a_state_on_the_way_out(aws: Aws, fleet: Fleet) -> None:
    [instance] = ids(*fleet.launch(1))

    state = await aws.terminate_instance(instance, REGION)

    assert state in (InstanceState.SHUTTING_DOWN, InstanceState.TERMINATED)
    assert fleet.state(instance) in ("shutting-down", "terminated")


@pytest.mark.parametrize("action", ["stop_instance", "terminate_instance"])
async def test_acting_on_an_unknown_instance_raises_not_found(aws: Aws, action: str) -> None:
    with pytest.raises(NotFoundError) as caught:
        await getattr(aws, action)(InstanceId("i-0123456789abcdef0"), REGION)

    assert caught.value.code == "InvalidInstanceID.NotFound"


# -- EC2: tags --------------------------------------------------------------------------------


def tags_of(fleet: Fleet, instance: str) -> dict[str, str]:
    reply = fleet.ec2.describe_instances(InstanceIds=[instance])
    found = reply["Reservations"][0]["Instances"][0].get("Tags", [])
    return {t["Key"]: t["Value"] for t in found}


async def test_create_tags_puts_the_tag_on_the_instance_in_one_call(aws: Aws, fleet: Fleet) -> None:
    [instance, other] = ids(*fleet.launch(2))

    await aws.create_tags(instance, {"supervisor:run-id": "exp1"}, REGION)

    assert tags_of(fleet, instance) == {"supervisor:run-id": "exp1"}
    assert tags_of(fleet, other) == {}
    assert aws.counter.count("CreateTags") == 1


async def test_create_tags_without_permission_raises_a_permanent_error(fleet: Fleet) -> None:
    [instance] = ids(*fleet.launch(1))

    async with Aws(faults=FaultPlan.parse("CreateTags=UnauthorizedOperation")) as aws:
        with pytest.raises(PermanentError) as caught:
            await aws.create_tags(instance, {"supervisor:run-id": "exp1"}, REGION)

    assert type(caught.value) is PermanentError
    assert (caught.value.code, caught.value.operation) == ("UnauthorizedOperation", "CreateTags")
    assert tags_of(fleet, instance) == {}


# -- translate --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "expected", "code"),
    [
        (client_error("RequestLimitExceeded", 503), TransientError, "RequestLimitExceeded"),
        (client_error("Throttling", 400), TransientError, "Throttling"),
        (client_error("InternalError", 500), TransientError, "InternalError"),
        (client_error("SomethingNew", 502), TransientError, "SomethingNew"),
        (client_error("SomethingNew", 599), TransientError, "SomethingNew"),
        (client_error("UnauthorizedOperation", 403), PermanentError, "UnauthorizedOperation"),
        (client_error("InvalidParameterValue", 400), PermanentError, "InvalidParameterValue"),
        (
            client_error("InvalidInstanceID.NotFound", 400),
            NotFoundError,
            "InvalidInstanceID.NotFound",
        ),
        (client_error("NoSuchBucket", 404), NotFoundError, "NoSuchBucket"),
        (
            EndpointConnectionError(endpoint_url="http://x"),
            TransientError,
            "EndpointConnectionError",
        ),
        (ReadTimeoutError(endpoint_url="http://x"), TransientError, "ReadTimeoutError"),
        (ConnectionResetError("reset by peer"), TransientError, "ConnectionResetError"),
        (TimeoutError(), TransientError, "TimeoutError"),
        (NoCredentialsError(), PermanentError, "NoCredentials"),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, Exception) else None,
)
def test_translate_maps_each_failure_to_its_kind(
    error: Exception, expected: type[ExternalError], code: str
) -> None:
    translated = translate(error, "DescribeInstances")

    assert type(translated) is expected
    assert translated.code == code
    assert translated.operation == "DescribeInstances"


def test_translate_never_calls_a_permission_error_transient() -> None:
    translated = translate(client_error("UnauthorizedOperation", 403), "StopInstances")

    assert not isinstance(translated, TransientError)
    assert "UnauthorizedOperation happened" in str(translated)


async def test_an_unreachable_endpoint_raises_transient_error(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed_port}")

    async with Aws() as aws:
        with pytest.raises(TransientError) as caught:
            await aws.describe_instances(ids("i-0123456789abcdef0"), REGION)

    assert caught.value.code == "EndpointConnectionError"


# -- faults -----------------------------------------------------------------------------------


async def test_a_fault_plan_fails_the_named_operation_as_often_as_it_says(fleet: Fleet) -> None:
    [instance] = ids(*fleet.launch(1))

    async with Aws(faults=FaultPlan.parse("StopInstances=RequestLimitExceeded*2")) as aws:
        for _ in range(2):
            with pytest.raises(TransientError) as caught:
                await aws.stop_instance(instance, REGION)
            assert caught.value.code == "RequestLimitExceeded"
        assert fleet.state(instance) == "running"

        assert await aws.stop_instance(instance, REGION) is InstanceState.STOPPING
        assert aws.counter.count("StopInstances") == 3


async def test_a_fault_plan_leaves_other_operations_alone(fleet: Fleet) -> None:
    [instance] = ids(*fleet.launch(1))

    async with Aws(faults=FaultPlan.parse("StopInstances=InternalError*5")) as aws:
        states = await aws.describe_instances([instance], REGION)

    assert states == {instance: InstanceState.RUNNING}


@pytest.mark.parametrize("text", ["nonsense", "=Throttling", "StopInstances=", "Stop Instances=X"])
def test_fault_plan_parse_rejects_a_malformed_rule(text: str) -> None:
    with pytest.raises(InvalidInput, match="Operation=ErrorCode"):
        FaultPlan.parse(text)


def test_an_empty_fault_plan_is_falsy() -> None:
    assert not FaultPlan.parse(" ; ")
    assert FaultPlan.parse("DescribeInstances=InternalError")


# -- call outcomes ----------------------------------------------------------------------------


async def test_every_ended_call_is_counted_by_its_outcome_class(fleet: Fleet) -> None:
    [instance] = ids(*fleet.launch(1))
    fleet.put(PREFIX + "COMPLETE")
    plan = "StopInstances=RequestLimitExceeded*1; StopInstances=UnauthorizedOperation*1"

    async with Aws(faults=FaultPlan.parse(plan)) as aws:
        for expected in (TransientError, PermanentError):
            with pytest.raises(expected):
                await aws.stop_instance(instance, REGION)
        await aws.stop_instance(instance, REGION)
        await aws.list_objects(ListRequest(BUCKET, PREFIX, "/"), REGION)
        assert await aws.head_object(BUCKET, PREFIX + "missing", REGION) is None
        with pytest.raises(NotFoundError):
            await aws.stop_instance(InstanceId("i-0123456789abcdef0"), REGION)

        assert dict(aws.counter.outcomes) == {
            ("ec2", "StopInstances", "transient"): 1,
            ("ec2", "StopInstances", "permanent"): 1,
            ("ec2", "StopInstances", "ok"): 1,
            ("ec2", "StopInstances", "not_found"): 1,
            ("s3", "ListObjectsV2", "ok"): 1,
            ("s3", "HeadObject", "not_found"): 1,
        }
        assert aws.counter.count("StopInstances") == 4


async def test_a_call_that_never_reached_aws_is_counted_transient(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed_port}")

    async with Aws() as aws:
        with pytest.raises(TransientError):
            await aws.describe_instances(ids("i-0123456789abcdef0"), REGION)

        assert dict(aws.counter.outcomes) == {("ec2", "DescribeInstanceStatus", "transient"): 1}


# -- clients ----------------------------------------------------------------------------------


async def test_many_calls_share_one_client_per_service_and_region(aws: Aws, fleet: Fleet) -> None:
    instances = ids(*fleet.launch(2))
    fleet.put(PREFIX + "status.json", "{}")
    request = ListRequest(BUCKET, PREFIX, "/")

    await asyncio.gather(*(aws.list_objects(request, REGION) for _ in range(10)))
    for _ in range(3):
        await aws.describe_instances(instances, REGION)
        await aws.read_object(BUCKET, PREFIX + "status.json", REGION)
    await aws.stop_instance(instances[0], REGION)

    assert len(aws._clients) == 2
    assert repr(aws) == f"<Aws clients=[('ec2', '{REGION}'), ('s3', '{REGION}')] calls=17>"


async def test_leaving_the_context_closes_every_client(fleet: Fleet) -> None:
    async with Aws() as aws:
        await aws.list_objects(ListRequest(BUCKET, PREFIX, "/"), REGION)
        assert len(aws._clients) == 1

    assert aws._clients == {}
    assert repr(aws) == "<Aws clients=[] calls=1>"


# -- CloudWatch: utilisation --------------------------------------------------------------------

# Not today: moto keeps any timestamp, and nothing here depends on the date.
T0 = datetime(2030, 1, 7, 12, tzinfo=UTC)


def minutes(*offsets: int) -> list[datetime]:
    return [T0 + timedelta(minutes=m) for m in offsets]


async def test_utilisation_returns_each_instances_cpu_datapoints_in_the_window(
    aws: Aws, fleet: Fleet
) -> None:
    busy, idle, silent = fleet.launch(3)
    fleet.utilisation(busy, [(at, 70.0) for at in minutes(0, 5, 10)])
    fleet.utilisation(idle, [(at, 1.5) for at in minutes(0, 5, 10)])
    fleet.utilisation(idle, [(T0 - timedelta(hours=1), 99.0)])  # before the window

    seen = await aws.utilisation(
        ids(busy, idle, silent), IdleMetric.CPU, REGION,
        start=T0 - timedelta(minutes=1), end=T0 + timedelta(minutes=15),
    )  # fmt: skip

    assert seen[InstanceId(busy)] == tuple(Datapoint(at, 70.0) for at in minutes(0, 5, 10))
    assert [p.value for p in seen[InstanceId(idle)]] == [1.5, 1.5, 1.5]
    assert seen[InstanceId(silent)] == ()
    assert aws.counter.count("GetMetricData") == 1


async def test_gpu_utilisation_is_the_cloudwatch_agents_metric(aws: Aws, fleet: Fleet) -> None:
    (instance,) = fleet.launch(1)
    fleet.utilisation(instance, [(T0, 3.0)])  # CPU, which a gpu query must not read
    fleet.utilisation(
        instance, [(T0, 88.0)], namespace="CWAgent", name="nvidia_smi_utilization_gpu"
    )

    seen = await aws.utilisation(
        ids(instance),
        IdleMetric.GPU,
        REGION,
        start=T0 - timedelta(minutes=1),
        end=T0 + timedelta(minutes=1),
    )

    assert [p.value for p in seen[InstanceId(instance)]] == [88.0]


async def test_utilisation_of_1000_instances_takes_two_get_metric_data_calls(
    aws: Aws, fleet: Fleet
) -> None:
    instances = [f"i-{n:017x}" for n in range(1000)]  # CloudWatch needs no instance to exist
    fleet.utilisation(instances[0], [(T0, 1.0)])
    fleet.utilisation(instances[999], [(T0, 2.0)])

    seen = await aws.utilisation(
        ids(*instances),
        IdleMetric.CPU,
        REGION,
        start=T0 - timedelta(minutes=1),
        end=T0 + timedelta(minutes=1),
    )

    assert aws.counter.count("GetMetricData") == 2
    assert len(seen) == 1000
    assert seen[InstanceId(instances[0])] == (Datapoint(T0, 1.0),)
    assert seen[InstanceId(instances[999])] == (Datapoint(T0, 2.0),)
    assert sum(len(points) for points in seen.values()) == 2


async def test_utilisation_of_no_instances_makes_no_call(aws: Aws) -> None:
    seen = await aws.utilisation([], IdleMetric.CPU, REGION, start=T0, end=T0)
    assert seen == {} and aws.counter.count("GetMetricData") == 0
