"""Typed values shared by every layer: ids, S3 locations, listing entries, instance states.

Parsing functions here are the single place where user input becomes a typed value; each raises
`InvalidInput` with a message that names the value and says what is expected.
"""

from __future__ import annotations

import enum
import math
import re
from dataclasses import dataclass
from datetime import datetime
from typing import NewType

from supervisor.core.errors import InvalidInput

RunId = NewType("RunId", str)
InstanceId = NewType("InstanceId", str)

_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
_INSTANCE_ID = re.compile(r"^i-(?:[0-9a-f]{8}|[0-9a-f]{17})$")
_REGION = re.compile(r"^[a-z]{2}(?:-gov)?-[a-z]+-\d$")
# S3 bucket naming rules (the common subset): 3-63 chars, lowercase, digits, dots, hyphens.
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
# Keys under a run prefix: letters and digits of any script (S3 keys are UTF-8), '_', '.', '-'
# and '/'; no shell metacharacters, no whitespace or control characters, no parent references.
_REL_KEY = re.compile(r"^[\w.\-/]+\Z")
MAX_KEY_BYTES = 1024
"""S3's limit on a key, counted in bytes of its UTF-8 encoding."""
MAX_JSON_DEPTH = 64
MAX_JSON_NODES = 100_000
"""Bounds on a JSON value a user gives (a run's config): nesting, and values counted with
every YAML alias expanded, so a small file cannot expand into gigabytes."""
_INT64 = 2**63


def parse_run_id(value: str) -> RunId:
    if not _RUN_ID.fullmatch(value):
        raise InvalidInput(
            f"run id {value!r} is not valid: use 1-128 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return RunId(value)


def parse_instance_id(value: str) -> InstanceId:
    if not _INSTANCE_ID.fullmatch(value):
        raise InvalidInput(
            f"instance id {value!r} is not valid: expected 'i-' followed by 8 or 17 "
            "lowercase hex digits, e.g. i-0abcd1234ef567890"
        )
    return InstanceId(value)


def parse_region(value: str) -> str:
    if not _REGION.fullmatch(value):
        raise InvalidInput(f"region {value!r} is not valid: expected a name like us-east-1")
    return value


def parse_relative_key(value: str, *, what: str) -> str:
    """A key relative to the run prefix (a marker, an expected output)."""
    parts = value.split("/")
    if (
        not value
        or not _REL_KEY.fullmatch(value)
        or value.startswith("/")
        or ".." in parts
        or "" in parts[:-1]
    ):
        raise InvalidInput(
            f"{what} {value!r} is not valid: give a key relative to the run prefix using "
            "letters, digits, '_', '.', '-' and '/', without '..' or a leading '/'"
        )
    check_key_length(value, what=what)
    return value


def check_key_length(key: str, *, what: str) -> None:
    """Refuse a key longer than S3 allows (1,024 bytes as UTF-8), naming its start."""
    size = len(key.encode("utf-8"))
    if size > MAX_KEY_BYTES:
        raise InvalidInput(
            f"{what} {key[:40]!r}... is {size} bytes long as UTF-8; S3 keys are at most "
            f"{MAX_KEY_BYTES} bytes: use a shorter one"
        )


def _split_s3_url(url: str, what: str, hint: str) -> tuple[str, str]:
    """(bucket, the rest) of `s3://bucket/rest`, the bucket name checked."""
    if not url.startswith("s3://"):
        raise InvalidInput(f"{what} {url!r} is not valid: {hint}")
    bucket, _, rest = url[len("s3://") :].partition("/")
    if not _BUCKET.fullmatch(bucket) or ".." in bucket:
        raise InvalidInput(f"{what} {url!r} has an invalid bucket name {bucket!r}: {hint}")
    return bucket, rest


class Direction(enum.StrEnum):
    """Which way an objective's metric is better: lower (min) or higher (max)."""

    MIN = "min"
    MAX = "max"


@dataclass(frozen=True, slots=True)
class S3Prefix:
    """`s3://bucket/prefix/`: the run's mailbox. `prefix` is empty or ends with '/'."""

    bucket: str
    prefix: str

    @classmethod
    def parse(cls, url: str) -> S3Prefix:
        hint = "expected s3://BUCKET/PREFIX/ (e.g. s3://my-runs/exp1/run42/)"
        bucket, prefix = _split_s3_url(url, "S3 prefix", hint)
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        if prefix and (
            not _REL_KEY.fullmatch(prefix) or prefix.startswith("/") or ".." in prefix.split("/")
        ):
            raise InvalidInput(f"S3 prefix {url!r} has an invalid key prefix {prefix!r}: {hint}")
        check_key_length(prefix, what="S3 prefix")
        return cls(bucket=bucket, prefix=prefix)

    def key(self, relative: str) -> str:
        return self.prefix + relative

    def relative(self, key: str) -> str:
        return key[len(self.prefix) :] if key.startswith(self.prefix) else key

    def overlaps(self, other: S3Prefix) -> bool:
        """True when one prefix holds the other's keys: the same prefix, or one inside the
        other (s3://b/a/ and s3://b/a/b/). Prefixes end with '/', so a/ and ab/ do not."""
        return self.bucket == other.bucket and (
            self.prefix.startswith(other.prefix) or other.prefix.startswith(self.prefix)
        )

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


@dataclass(frozen=True, slots=True)
class S3Object:
    """`s3://bucket/key`: one object (a file attached to a run, a training log)."""

    bucket: str
    key: str

    @classmethod
    def parse(cls, url: str) -> S3Object:
        hint = "expected s3://BUCKET/KEY (e.g. s3://my-runs/exp1/run42/crash/error.log)"
        bucket, key = _split_s3_url(url, "S3 URI", hint)
        if not key or key.endswith("/"):
            raise InvalidInput(
                f"S3 URI {url!r} names no object (its key is empty or ends with '/'): {hint}"
            )
        parts = key.split("/")
        if not _REL_KEY.fullmatch(key) or "" in parts or ".." in parts:
            raise InvalidInput(
                f"S3 URI {url!r} has an invalid key {key!r}: use letters, digits, '_', '.', "
                "'-' and '/', without '..' or empty path segments"
            )
        check_key_length(key, what="S3 key")
        return cls(bucket=bucket, key=key)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def check_json_value(value: object, *, what: str, convertible: tuple[type, ...] = ()) -> None:
    """Refuse what JSON (and SQLite's JSON functions) cannot hold faithfully: NaN, infinity,
    integers beyond 64 bits, keys that are not text, types that are not JSON, nesting deeper
    than MAX_JSON_DEPTH, and more than MAX_JSON_NODES values with shared parts counted each
    time they appear (a YAML alias bomb, or a structure that contains itself). Values of the
    `convertible` types are let through, for a caller that turns them into text."""
    count = 0
    stack: list[tuple[object, str, int]] = [(value, "", 0)]
    while stack:
        item, path, depth = stack.pop()
        where = f"{what}: {path}" if path else what
        count += 1
        if count > MAX_JSON_NODES:
            raise InvalidInput(
                f"{what} has more than {MAX_JSON_NODES} values (counting each repeated part, "
                "such as a YAML alias, every time it appears): store a smaller one"
            )
        if depth > MAX_JSON_DEPTH:
            raise InvalidInput(
                f"{what} is nested more than {MAX_JSON_DEPTH} levels deep (at {path}), or "
                "contains itself"
            )
        if item is None or isinstance(item, (bool, str, *convertible)):
            continue
        if isinstance(item, float):
            if not math.isfinite(item):
                raise InvalidInput(
                    f"{where} is {item!r}: NaN and infinity are not numbers JSON can store; "
                    "give a finite number (or null)"
                )
        elif isinstance(item, int):
            if not -_INT64 <= item < _INT64:
                raise InvalidInput(
                    f"{where} is an integer of {item.bit_length()} bits, beyond the 64 that "
                    "JSON readers keep: store it as text"
                )
        elif isinstance(item, dict):
            for key, child in item.items():
                if not isinstance(key, str):
                    raise InvalidInput(f"{where} has a key {key!r} that is not text")
                stack.append((child, f"{path}.{key}" if path else key, depth + 1))
        elif isinstance(item, list | tuple):
            stack.extend((child, f"{path}[{i}]", depth + 1) for i, child in enumerate(item))
        else:
            raise InvalidInput(f"{where} is a {type(item).__name__}, not a JSON value")


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """One entry of a prefix listing. `key` is relative to the listed run prefix."""

    key: str
    etag: str
    size: int
    last_modified: datetime


class InstanceState(enum.StrEnum):
    """EC2's instance states, plus `unknown` for an id AWS no longer (or never) knew."""

    PENDING = "pending"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    SHUTTING_DOWN = "shutting-down"
    TERMINATED = "terminated"
    UNKNOWN = "unknown"

    @property
    def is_alive(self) -> bool:
        return self in (InstanceState.PENDING, InstanceState.RUNNING)

    @property
    def is_gone(self) -> bool:
        """Terminated or about to be, or unknown to AWS: it will never run again."""
        return self in (
            InstanceState.SHUTTING_DOWN,
            InstanceState.TERMINATED,
            InstanceState.UNKNOWN,
        )
