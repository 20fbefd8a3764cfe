"""Which attachments a person may record: kinds, S3 objects and links; never a local path."""

from __future__ import annotations

import re

import pytest

from supervisor.core.attachments import (
    AttachmentKind,
    parse_attachment_kind,
    parse_attachment_uri,
)
from supervisor.core.errors import InvalidInput
from supervisor.core.values import S3Object


@pytest.mark.parametrize("kind", ["crash-log", "analysis", "conversation", "other"])
def test_each_documented_kind_is_accepted(kind: str) -> None:
    assert parse_attachment_kind(kind) == AttachmentKind(kind)


def test_an_unknown_kind_is_refused_with_the_kinds_listed() -> None:
    with pytest.raises(InvalidInput, match=r"'log'.*crash-log, analysis, conversation, other"):
        parse_attachment_kind("log")


def test_an_s3_uri_names_its_bucket_and_key() -> None:
    parsed = parse_attachment_uri("s3://my-runs/exp1/crash/dmesg.txt")

    assert parsed.s3 == S3Object(bucket="my-runs", key="exp1/crash/dmesg.txt")
    assert parsed.uri == "s3://my-runs/exp1/crash/dmesg.txt"


@pytest.mark.parametrize(
    "uri",
    [
        "https://wandb.ai/team/project/runs/abc123",
        "https://claude.ai/share/0f3c?x=1#part",
        "http://tensorboard.internal:6006/#scalars",
    ],
)
def test_an_http_or_https_link_is_recorded_as_given(uri: str) -> None:
    parsed = parse_attachment_uri(uri)

    assert (parsed.uri, parsed.s3) == (uri, None)


@pytest.mark.parametrize(
    ("uri", "says"),
    [
        ("s3://My_Bucket/key", "invalid bucket name 'My_Bucket'"),
        ("s3://my-runs/", "names no object"),
        ("s3://my-runs/exp1/", "names no object"),
        ("s3://my-runs/exp1/../secrets", "invalid key"),
        ("s3://my-runs/a//b", "invalid key"),
        ("https://", "is not valid: expected https://HOST/PATH"),
        ("https://host:port/x", "is not valid: expected https://HOST/PATH"),
        ("https://me:hunter2@wandb.ai/x", "user name or password"),
        ("https://wandb.ai/a run", "whitespace"),
        ("gs://bucket/key", "give s3://BUCKET/KEY or an https://"),
        ("wandb.ai/team/run", "give s3://BUCKET/KEY or an https://"),
        ("", "empty"),
        ("https://x.io/" + "a" * 2100, "the limit is 2048"),
        ("s3://my-runs/" + "é" * 513, "is 1026 bytes long as UTF-8"),
    ],
)
def test_a_bad_uri_is_refused_naming_what_is_wrong(uri: str, says: str) -> None:
    with pytest.raises(InvalidInput, match=re.escape(says)):
        parse_attachment_uri(uri)


@pytest.mark.parametrize("path", ["/var/log/train.log", "./crash.txt", "~/x", "file:///tmp/x"])
def test_a_local_path_is_refused_with_how_to_upload_it(path: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_attachment_uri(path)

    assert "is a local path" in str(caught.value)
    assert "aws s3 cp FILE s3://BUCKET/KEY" in str(caught.value)


@pytest.mark.parametrize(
    ("uri", "names"),
    [
        ("https://x.io/a?token=s3cr3t", "token"),
        ("https://x.io/a?page=2&access_token=s3cr3t", "access_token"),
        (
            "https://b.s3.amazonaws.com/k?X-Amz-Credential=s3cr3t&X-Amz-Signature=s3cr3t",
            "X-Amz-Credential, X-Amz-Signature",
        ),
        ("https://acct.blob.core.windows.net/c/f?sv=2024&sig=s3cr3t", "sig"),
        ("https://x.io/a?signature=s3cr3t", "signature"),
        ("https://x.io/a?key=s3cr3t", "key"),
        ("https://x.io/a?api_key=s3cr3t", "api_key"),
        ("https://x.io/a?password=s3cr3t", "password"),
        ("https://x.io/cb#access_token=s3cr3t&state=1", "access_token"),
    ],
)
def test_a_link_with_a_secret_looking_parameter_is_refused_without_echoing_it(
    uri: str, names: str
) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_attachment_uri(uri)
    message = str(caught.value)
    assert f"looks like a credential in its parameters ({names})" in message
    assert "s3cr3t" not in message


def test_a_link_with_a_password_is_refused_without_echoing_it() -> None:
    with pytest.raises(InvalidInput, match="user name or password") as caught:
        parse_attachment_uri("https://me:hunter2@wandb.ai/x")
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize(
    "uri",
    [
        "https://wandb.ai/team/proj/runs/abc?workspace=user-me&nw=nwuserme",
        "https://x.io/search?q=token&sort=keyboard&monkey=1",
    ],
)
def test_ordinary_parameters_are_kept(uri: str) -> None:
    assert parse_attachment_uri(uri).uri == uri
