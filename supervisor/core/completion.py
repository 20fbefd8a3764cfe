"""Completion rules: what one listing of the run prefix says about the training job.

Order of evidence: an explicit completion marker; else a failure marker; else every expected
output present and unchanged (same ETag and size) since the previous check.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime

from supervisor.core.reports import report_keys
from supervisor.core.spec import RunSpec
from supervisor.core.values import ObjectInfo

OutputSnapshot = tuple[tuple[str, str, int], ...]
"""(key, etag, size) of each expected output, sorted by key."""


@dataclass(frozen=True, slots=True)
class ListRequest:
    """One ListObjectsV2 call: `prefix` is the full key prefix; `delimiter` None means recursive."""

    bucket: str
    prefix: str
    delimiter: str | None
    with_uploads: bool = False
    """Also one ListMultipartUploads call: an until-quiet grace waits for uploads under way."""


@dataclass(frozen=True, slots=True)
class Completed:
    evidence: str
    ended_at: datetime | None = None
    """When the job ended, as S3 saw it: the marker's LastModified (or the newest expected
    output's); where the idle instance-seconds after the end are counted from."""


@dataclass(frozen=True, slots=True)
class FailureMarked:
    key: str
    ended_at: datetime | None = None
    """The failure marker's LastModified: when the job ended."""


@dataclass(frozen=True, slots=True)
class NotYet:
    outputs: OutputSnapshot | None
    """The expected outputs, when all are present, to compare with at the next check."""


Verdict = Completed | FailureMarked | NotYet


def watched_keys(spec: RunSpec) -> tuple[str, ...]:
    """Every key a check must see: markers, expected outputs, and the job's reports."""
    return (*spec.markers, spec.failure_marker, *spec.expect, *report_keys(spec.heartbeat_file))


def listing_request(spec: RunSpec) -> ListRequest:
    """The single listing that shows every watched key.

    When all watched keys sit in one folder (the usual case: markers at the top of the run
    prefix), list that folder with Delimiter='/' so checkpoints and logs below it cost nothing.
    Otherwise list the run prefix recursively.
    """
    prefix = spec.prefix
    folders = {key.rpartition("/")[0] for key in watched_keys(spec)}
    if len(folders) == 1:
        (folder,) = folders
        return ListRequest(prefix.bucket, prefix.key(f"{folder}/" if folder else ""), "/")
    return whole_prefix_request(spec)


def whole_prefix_request(spec: RunSpec) -> ListRequest:
    """The recursive listing of the whole run prefix (an until-quiet grace needs every key)."""
    return ListRequest(spec.prefix.bucket, spec.prefix.prefix, None)


def quiet_request(spec: RunSpec) -> ListRequest:
    """An until-quiet grace's look: every key under the run prefix, and the multipart uploads
    begun under it and not yet completed (an object being uploaded is not listed until then)."""
    return replace(whole_prefix_request(spec), with_uploads=True)


def evaluate(
    spec: RunSpec,
    objects: Iterable[ObjectInfo],
    previous: OutputSnapshot | None,
    *,
    since: datetime | None = None,
) -> Verdict:
    """Judge one listing (keys relative to the run prefix) against the spec.

    With `since` (a resumed run), objects last modified before it belong to an earlier
    attempt and are not evidence (S3 keeps whole seconds, hence the truncation).
    """
    cutoff = since.replace(microsecond=0) if since is not None else None
    by_key = {obj.key: obj for obj in objects if cutoff is None or obj.last_modified >= cutoff}
    for marker in spec.markers:
        if marker in by_key:
            return Completed(f"completion marker {marker} found", by_key[marker].last_modified)
    if spec.failure_marker in by_key:
        return FailureMarked(spec.failure_marker, by_key[spec.failure_marker].last_modified)
    if not spec.expect or any(key not in by_key for key in spec.expect):
        return NotYet(None)
    snapshot = tuple(sorted((k, by_key[k].etag, by_key[k].size) for k in spec.expect))
    if snapshot == previous:
        newest = max(by_key[k].last_modified for k in spec.expect)
        return Completed(f"all {len(snapshot)} expected outputs present and unchanged", newest)
    return NotYet(snapshot)
