"""The instance-side program: runs ON the training instance and does what the supervisor
cannot do from outside it.

- `checkpoint`: end training gracefully (SIGTERM the process named by a pid file, wait, then
  SIGKILL or leave it), find the newest checkpoint, hash it, upload it to S3 with SHA-256
  checksums that S3 itself verifies, and write `_manifest.json` last. With `--mode early`
  (a spot rebalance recommendation) training is left running and only the upload is done.
- `restore`: download a checkpoint by its manifest, verify every file, then move it in place.
- `start`: start the training command detached from this program, recording its pid.

One self-contained file, standard library and boto3 only (imported by the S3 commands alone),
so it can be copied onto an instance and run as `python3 instance.py ...`, or run as
`python3 -m supervisor.instance ...`. It must not import anything from `supervisor`:
`supervisor/core/checkpoint.py` holds the other side of the contract (`Manifest`,
`ProcessFate`, `verify`) and tests keep the two in step.

Python 3.8 or later: this file runs on the instance's own Python (Amazon Linux 2023 ships
3.9), so it avoids newer features (`datetime.UTC`, dataclass slots, `match`).

Output: logs are JSON lines on stderr; the last line of stdout is one JSON object with "ok".
Exit 0 on success, 1 on failure ("error" says why, in one line), 2 on a usage error.
`--argv-json '["checkpoint", "--run-id", ...]'` as the only argument means "these are the
arguments": the SSM document passes them through an environment variable so that no shell
ever sees a user's value.

    python3 instance.py checkpoint --run-id r1 --checkpoint-dir /data/ckpt \\
        --s3-url s3://my-runs/exp1/r1/checkpoint/ --pid-file /run/train.pid
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import functools
import hashlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn, TypeVar

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef

MANIFEST_NAME = "_manifest.json"
MANIFEST_FORMAT = 1
# Copied from supervisor.core.checkpoint.DEFAULT_PATTERNS (a test keeps them equal).
DEFAULT_PATTERNS: tuple[str, ...] = (
    "*.pt", "*.pth", "*.ckpt", "*.safetensors", "checkpoint-*/", "checkpoint_*/",
)  # fmt: skip

# The same rules as supervisor.core (values.py, checkpoint.py): a value that passed there
# passes here, and a value that reaches this program by another route is checked again.
_PATH = re.compile(r"/[A-Za-z0-9_.\-/]*")
_GLOB = re.compile(r"[A-Za-z0-9_.\-*?\[\]/]+")
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")
_REGION = re.compile(r"[a-z]{2}(?:-gov)?-[a-z]+-\d")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]")
_REL_KEY = re.compile(r"[A-Za-z0-9_.\-/]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

MIB = 1024 * 1024
MAX_PARTS = 10_000  # S3's limit per multipart upload
KILL_WAIT_S = 10.0  # after SIGKILL the kernel needs only a moment; this is a ceiling
POLL_S = 0.05
# A process that started this long after its pid file was written is not the one the file
# names: its pid was reused. Generous, because the wall clock may have been stepped meanwhile.
PID_REUSE_SLACK_S = 60.0
HASH_CHUNK = 8 * MIB
# SSM's GetCommandInvocation returns only the first 24,000 characters of stdout.
RESULT_LIMIT = 20_000

T = TypeVar("T")
UTC = timezone.utc  # noqa: UP017 - datetime.UTC is 3.11+; instances may run 3.8


class UsageError(Exception):
    """The arguments are wrong; nothing was done. Exit 2."""


class Failure(Exception):
    """The command could not do its job. Exit 1; `details` join the printed result."""

    def __init__(self, message: str, **details: object) -> None:
        super().__init__(message)
        self.details: dict[str, object] = details


_LOG_LOCK = threading.Lock()


def log(event: str, **fields: object) -> None:
    """One JSON line on stderr; stdout is reserved for the result."""
    record: dict[str, object] = {
        "ts": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "event": event,
    }
    record.update(fields)
    line = json.dumps(record, default=str)
    with _LOG_LOCK:  # upload threads log too; keep their lines whole
        print(line, file=sys.stderr, flush=True)


# -- validated inputs --------------------------------------------------------------------


def instance_path(value: str) -> str:
    if not _PATH.fullmatch(value) or ".." in value.split("/"):
        raise argparse.ArgumentTypeError(
            f"{value!r} is not valid: give an absolute path of letters, digits, '_', '.', '-' "
            "and '/', without '..', spaces or shell characters"
        )
    return value


def checkpoint_pattern(value: str) -> str:
    if not _GLOB.fullmatch(value) or value.startswith("/") or ".." in value.split("/"):
        raise argparse.ArgumentTypeError(
            f"{value!r} is not valid: use a relative glob of letters, digits and "
            "'_ . - * ? [ ]', ending in '/' to match directories (e.g. 'checkpoint-*/')"
        )
    return value


def run_id(value: str) -> str:
    if not _RUN_ID.fullmatch(value):
        raise argparse.ArgumentTypeError(
            f"{value!r} is not valid: use 1-128 letters, digits, '_', '.' or '-'"
        )
    return value


def region(value: str) -> str:
    if not _REGION.fullmatch(value):
        raise argparse.ArgumentTypeError(f"{value!r} is not valid: expected e.g. us-east-1")
    return value


def int_in(low: int, high: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            number = low - 1
        if not low <= number <= high:
            raise argparse.ArgumentTypeError(f"{value!r} is not a whole number {low}..{high}")
        return number

    return parse


def seconds(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not 0 <= number <= 3600:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds 0..3600")
    return number


@dataclass(frozen=True)
class S3Location:
    """`s3://bucket/prefix/`; `prefix` is empty or ends with '/'."""

    bucket: str
    prefix: str

    @classmethod
    def parse(cls, url: str) -> S3Location:
        hint = "expected s3://BUCKET/PREFIX/ (e.g. s3://my-runs/exp1/run42/checkpoint/)"
        if not url.startswith("s3://"):
            raise argparse.ArgumentTypeError(f"{url!r} is not valid: {hint}")
        bucket, _, prefix = url[len("s3://") :].partition("/")
        if not _BUCKET.fullmatch(bucket) or ".." in bucket:
            raise argparse.ArgumentTypeError(f"{url!r} has an invalid bucket {bucket!r}: {hint}")
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        if prefix and (
            not _REL_KEY.fullmatch(prefix) or prefix.startswith("/") or ".." in prefix.split("/")
        ):
            raise argparse.ArgumentTypeError(f"{url!r} has an invalid prefix {prefix!r}: {hint}")
        return cls(bucket, prefix)

    def key(self, relative: str) -> str:
        return self.prefix + relative

    def url(self, relative: str = "") -> str:
        return f"s3://{self.bucket}/{self.key(relative)}"


def safe_relative_path(value: object, *, what: str) -> str:
    """A path read from a manifest, about to be joined to a local directory."""
    parts = value.split("/") if isinstance(value, str) else []
    if (
        not isinstance(value, str)
        or not value
        or _CONTROL.search(value)
        or "\\" in value
        or any(part in ("", ".", "..") for part in parts)
    ):
        raise Failure(f"the manifest's {what} {value!r} is not a safe relative path")
    return value


# -- step 1: end training ----------------------------------------------------------------


@dataclass(frozen=True)
class ProcessFate:
    """What happened to the training process (mirrors supervisor.core.checkpoint.ProcessFate)."""

    pid: int | None = None
    was_running: bool = False
    signalled: bool = False
    exited: bool = True
    waited_s: float = 0.0
    after_timeout: str = "none"  # none | sigkill | left-running

    def to_json(self) -> dict[str, object]:
        return {
            "pid": self.pid,
            "was_running": self.was_running,
            "signalled": self.signalled,
            "exited": self.exited,
            "waited_s": round(self.waited_s, 3),
            "after_timeout": self.after_timeout,
        }


@dataclass(frozen=True)
class PidRecord:
    pid: int
    written: float  # the pid file's mtime


def read_pid_file(pid_file: Path) -> PidRecord | None:
    try:
        with pid_file.open() as stream:
            text = stream.read(64).strip()
            written = os.fstat(stream.fileno()).st_mtime
    except FileNotFoundError:
        return None
    try:
        pid = int(text)
    except ValueError:
        raise Failure(
            f"pid file {pid_file} does not hold a process id ({text[:40]!r}): "
            "write the training process's pid there, or give another --pid-file"
        ) from None
    # 0 and negative pids address process groups, 1 is init: never signal those.
    if pid <= 1 or pid == os.getpid():
        raise Failure(f"pid file {pid_file} names pid {pid}, which is not a training process")
    return PidRecord(pid, written)


def is_reused(record: PidRecord) -> bool:
    """Did the pid's current process start well after the pid file was written?"""
    start = started_at(record.pid)
    if start is not None and start > record.written + PID_REUSE_SLACK_S:
        log("pid_reused", pid=record.pid, started=start, written=record.written)
        return True
    return False


def proc_stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat from the state on (the name may hold spaces and parens)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rpartition(")")[2].split()


def is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, owned by another user
    fields = proc_stat_fields(pid)
    # A zombie has exited; only its parent's wait() is missing.
    return not (fields and fields[0] in ("Z", "X"))


def started_at(pid: int) -> float | None:
    """Wall-clock start time of a process, from /proc (Linux); None where unknown."""
    fields = proc_stat_fields(pid)
    try:
        boot = next(
            float(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime ")
        )
        ticks = os.sysconf("SC_CLK_TCK")
        return boot + int(fields[19]) / ticks if fields else None
    except (OSError, StopIteration, ValueError, IndexError):
        return None


def wait_gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while is_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_S)
    return True


def training_fate(pid_file: Path | None) -> ProcessFate:
    """For an early checkpoint: whether training runs, without signalling it."""
    record = read_pid_file(pid_file) if pid_file is not None else None
    if record is None or is_reused(record) or not is_alive(record.pid):
        return ProcessFate(pid=record.pid if record else None)
    return ProcessFate(pid=record.pid, was_running=True, exited=False)


def end_training(pid_file: Path | None, timeout_s: float, on_timeout: str) -> ProcessFate:
    """SIGTERM the training process, wait up to `timeout_s`, then SIGKILL it or leave it."""
    record = read_pid_file(pid_file) if pid_file is not None else None
    if record is None:
        log("no_process_to_stop", pid_file=str(pid_file) if pid_file else None)
        return ProcessFate()
    pid = record.pid
    if not is_alive(pid) or is_reused(record):
        log("process_not_running", pid=pid)
        return ProcessFate(pid=pid)
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return ProcessFate(pid=pid)
    except PermissionError:
        raise Failure(
            f"not allowed to signal training process {pid}: run as its user or as root",
            process=ProcessFate(pid, True, False, False).to_json(),
        ) from None
    log("sigterm_sent", pid=pid, timeout_s=timeout_s)
    began = time.monotonic()
    if wait_gone(pid, timeout_s):
        waited = time.monotonic() - began
        log("process_exited", pid=pid, waited_s=round(waited, 3))
        return ProcessFate(pid, True, True, True, waited)
    if on_timeout == "leave":
        log("process_left_running", pid=pid, waited_s=timeout_s)
        return ProcessFate(pid, True, True, False, time.monotonic() - began, "left-running")
    log("sigkill_sent", pid=pid)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    exited = wait_gone(pid, KILL_WAIT_S)
    return ProcessFate(pid, True, True, exited, time.monotonic() - began, "sigkill")


# -- step 2: find, hash, upload ----------------------------------------------------------


@dataclass(frozen=True)
class LocalFile:
    path: str  # relative to the checkpoint directory, '/'-separated; also the key suffix
    source: Path


@dataclass(frozen=True)
class Checkpoint:
    name: str
    kind: str  # file | dir
    files: tuple[LocalFile, ...]


@dataclass(frozen=True)
class HashedFile:
    local: LocalFile
    size: int
    sha256: str


@dataclass(frozen=True)
class UploadedFile:
    path: str
    key: str
    size: int
    sha256: str
    s3_checksum_sha256: str
    parts: int

    def to_json(self) -> dict[str, object]:
        return {
            "path": self.path,
            "key": self.key,
            "size": self.size,
            "sha256": self.sha256,
            "s3_checksum_sha256": self.s3_checksum_sha256,
            "parts": self.parts,
        }


def regular_files(root: Path) -> list[Path]:
    """Every regular file under `root`; symlinks are neither followed nor uploaded."""
    found: list[Path] = []
    for directory, _dirs, names in os.walk(root):
        for name in names:
            path = Path(directory, name)
            if path.is_symlink():
                log("symlink_skipped", path=str(path))
            elif path.is_file():
                found.append(path)
    return found


def find_newest(directory: Path, patterns: Sequence[str]) -> Checkpoint | None:
    """The newest match of any pattern: greatest mtime, a directory by its newest file."""
    best: tuple[int, str, Checkpoint] | None = None
    for pattern in patterns:
        want_dir = pattern.endswith("/")
        for match in directory.glob(pattern.rstrip("/")):
            name = match.relative_to(directory).as_posix()
            if want_dir and match.is_dir() and not match.is_symlink():
                files = regular_files(match)
                if not files:
                    continue
                mtime = max(f.stat().st_mtime_ns for f in files)
                local = tuple(
                    LocalFile(f.relative_to(directory).as_posix(), f)
                    for f in sorted(files, key=lambda f: f.relative_to(match).as_posix())
                )
                candidate = Checkpoint(name, "dir", local)
            elif not want_dir and match.is_file():
                mtime = match.stat().st_mtime_ns
                candidate = Checkpoint(name, "file", (LocalFile(name, match),))
            else:
                continue
            if best is None or (mtime, name) > best[:2]:
                best = (mtime, name, candidate)
    return best[2] if best else None


def chunks(path: Path, size: int) -> Iterator[bytes]:
    with path.open("rb") as stream:
        while chunk := stream.read(size):
            yield chunk


def hash_file(local: LocalFile) -> HashedFile:
    digest = hashlib.sha256()
    size = 0
    for chunk in chunks(local.source, HASH_CHUNK):
        digest.update(chunk)
        size += len(chunk)
    return HashedFile(local, size, digest.hexdigest())


def b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


def _attempt_failed(what: str, attempt: int, attempts: int, error: str) -> None:
    log("attempt_failed", what=what, attempt=attempt, of=attempts, error=error)


def _gave_up(message: str) -> Failure:
    return Failure(message)


# >>> shared S3 helpers: the same text in supervisor/instance.py and supervisor/report.py >>>
# Both files run alone on an instance (the standard library and boto3), so neither imports
# the other; tests/instance/test_shared_code.py fails when the two copies differ. Each file
# defines `_attempt_failed` (how to log a failed attempt) and `_gave_up` (its error type).

ONE_LINE_LIMIT = 2_000
# S3 is strongly consistent: a bucket or key that is missing stays missing however often we
# ask, and every retry delays the stop of an instance that is costing money.
DEFINITIVE_CODES = frozenset({"NoSuchBucket", "NoSuchKey"})


def one_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= ONE_LINE_LIMIT else line[: ONE_LINE_LIMIT - 1] + "…"


def _aws_errors() -> tuple[type[Exception], ...]:
    """botocore's error types, imported when first needed (see `_s3_client`)."""
    from botocore.exceptions import BotoCoreError, ClientError

    return (BotoCoreError, ClientError)


def _error_code(exc: BaseException) -> str | None:
    """The AWS error code of a botocore ClientError (read without importing botocore)."""
    response = getattr(exc, "response", None)
    error = response.get("Error") if isinstance(response, dict) else None
    return str(error.get("Code")) if isinstance(error, dict) else None


def _describe(exc: BaseException) -> str:
    code = _error_code(exc)
    if code is not None:
        response = getattr(exc, "response", {})
        return one_line(f"{code}: {response['Error'].get('Message') or exc}")
    return one_line(f"{type(exc).__name__}: {exc}")


def _with_retries(what: str, attempts: int, action: Callable[[], T]) -> T:
    """Retry `action` on any AWS or network error, 0.5 s, 1 s, 2 s... apart (boto3 retries
    each attempt itself too); a definitive error (`DEFINITIVE_CODES`) is not retried."""
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except _aws_errors() as exc:
            _attempt_failed(what, attempt, attempts, _describe(exc))
            if _error_code(exc) in DEFINITIVE_CODES:
                raise _gave_up(f"{what} failed: {_describe(exc)}") from exc
            if attempt == attempts:
                raise _gave_up(
                    f"{what} failed after {attempts} attempt(s): {_describe(exc)}"
                ) from exc
            time.sleep(0.5 * 2 ** (attempt - 1))
    raise AssertionError("unreachable")


def _s3_client(region_name: str | None, *, read_timeout_s: int) -> S3Client:
    # Imported here, not at the top: boto3 takes most of a second to import, which a usage
    # error or a bad metric need not pay, and the rest works where boto3 is not installed.
    try:
        import boto3
        from botocore.config import Config
    except ImportError as exc:
        raise _gave_up(f"boto3 is not installed for {sys.executable}: pip install boto3") from exc
    config = Config(
        region_name=region_name,
        connect_timeout=10,
        read_timeout=read_timeout_s,
        retries={"mode": "standard", "max_attempts": 3},
    )
    return boto3.client("s3", config=config)


# <<< shared S3 helpers <<<


@dataclass
class Uploader:
    """Uploads files so that S3 checks every byte against our SHA-256 before storing it."""

    s3: S3Client
    bucket: str
    attempts: int
    multipart_threshold: int
    part_size: int
    concurrency: int = 1

    def upload_all(self, files: Sequence[tuple[HashedFile, str]]) -> list[UploadedFile]:
        """Upload files side by side (a sharded checkpoint has many; the instance is billing
        while we upload), returning them in the given order. The first failure is raised."""
        if self.concurrency == 1 or len(files) == 1:
            return [self.upload(f, key) for f, key in files]
        with ThreadPoolExecutor(min(self.concurrency, len(files))) as pool:
            futures = [pool.submit(self.upload, f, key) for f, key in files]
            try:
                return [future.result() for future in futures]
            except BaseException:
                for future in futures:
                    future.cancel()
                raise

    def upload(self, hashed: HashedFile, key: str) -> UploadedFile:
        part_size = max(self.part_size, math.ceil(hashed.size / MAX_PARTS / MIB) * MIB)
        # One part is never a multipart upload: its composite checksum would differ from
        # the single-object checksum the manifest's readers expect for `parts == 1`.
        multipart = hashed.size > self.multipart_threshold and hashed.size > part_size
        what = f"upload of {hashed.local.source} to s3://{self.bucket}/{key}"
        if multipart:
            result = _with_retries(
                what, self.attempts, lambda: self._multipart(hashed, key, part_size)
            )
        else:
            result = _with_retries(what, self.attempts, lambda: self._single(hashed, key))
        log("file_uploaded", key=key, size=hashed.size, parts=result.parts)
        return result

    def _single(self, hashed: HashedFile, key: str) -> UploadedFile:
        body = hashed.local.source.read_bytes()
        if len(body) != hashed.size or hashlib.sha256(body).hexdigest() != hashed.sha256:
            raise changed_since_hashed(hashed)
        checksum = b64(bytes.fromhex(hashed.sha256))
        self.s3.put_object(
            Bucket=self.bucket,
            Key=key,
            Body=body,
            ChecksumAlgorithm="SHA256",
            ChecksumSHA256=checksum,
        )
        return UploadedFile(hashed.local.path, key, hashed.size, hashed.sha256, checksum, 1)

    def _multipart(self, hashed: HashedFile, key: str, part_size: int) -> UploadedFile:
        upload_id = self.s3.create_multipart_upload(
            Bucket=self.bucket, Key=key, ChecksumAlgorithm="SHA256"
        )["UploadId"]
        try:
            whole = hashlib.sha256()
            digests: list[bytes] = []
            parts: list[CompletedPartTypeDef] = []
            for number, body in enumerate(chunks(hashed.local.source, part_size), start=1):
                whole.update(body)
                digest = hashlib.sha256(body).digest()
                reply = self.s3.upload_part(
                    Bucket=self.bucket,
                    Key=key,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=body,
                    ChecksumAlgorithm="SHA256",
                    ChecksumSHA256=b64(digest),
                )
                digests.append(digest)
                parts.append(
                    {"PartNumber": number, "ETag": reply["ETag"], "ChecksumSHA256": b64(digest)}
                )
            if whole.hexdigest() != hashed.sha256:
                raise changed_since_hashed(hashed)
            self.s3.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        except BaseException:
            try:
                self.s3.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            except _aws_errors() as exc:
                log("abort_failed", key=key, upload_id=upload_id, error=_describe(exc))
            raise
        composite = b64(hashlib.sha256(b"".join(digests)).digest()) + f"-{len(digests)}"
        return UploadedFile(
            hashed.local.path, key, hashed.size, hashed.sha256, composite, len(digests)
        )


class CheckpointChanged(Exception):
    """A file of the checkpoint changed or vanished under us: training is still writing."""


def changed_since_hashed(hashed: HashedFile) -> CheckpointChanged:
    return CheckpointChanged(f"{hashed.local.source} changed while it was being uploaded")


SNAPSHOT_ATTEMPTS = 3


def snapshot(
    directory: Path, patterns: Sequence[str], uploader: Uploader, location: S3Location
) -> tuple[Checkpoint, list[UploadedFile], float, float]:
    """Find, hash and upload the newest checkpoint; returns it, its files and the seconds
    spent hashing and uploading.

    A training process that is still running (`--on-timeout leave`, or no pid file) may
    delete or rewrite the checkpoint under us while it rotates old ones out; then the newest
    one is taken again, a few times, before giving up."""
    hash_s = upload_s = 0.0
    for attempt in range(1, SNAPSHOT_ATTEMPTS + 1):
        try:
            checkpoint = find_newest(directory, patterns)
            if checkpoint is None:
                raise Failure(
                    f"no checkpoint matching {' '.join(patterns)} in {directory}: "
                    "check the run's --checkpoint-dir and --checkpoint-pattern"
                )
            log("checkpoint_found", checkpoint=checkpoint.name, kind=checkpoint.kind)
            began = time.monotonic()
            hashed = [hash_file(f) for f in checkpoint.files]
            hashed_at = time.monotonic()
            hash_s += hashed_at - began
            try:
                uploaded = uploader.upload_all([(h, location.key(h.local.path)) for h in hashed])
            finally:
                upload_s += time.monotonic() - hashed_at
            return checkpoint, uploaded, hash_s, upload_s
        except (FileNotFoundError, CheckpointChanged) as exc:
            log("checkpoint_changed", attempt=attempt, of=SNAPSHOT_ATTEMPTS, error=_describe(exc))
            if attempt == SNAPSHOT_ATTEMPTS:
                raise Failure(
                    f"the newest checkpoint in {directory} kept changing while it was uploaded "
                    f"({_describe(exc)}): the training process is still writing; stop it "
                    "(--on-timeout kill) and try again"
                ) from exc
    raise AssertionError("unreachable")


def cmd_checkpoint(args: argparse.Namespace) -> dict[str, object]:
    began = time.monotonic()
    location: S3Location = args.s3_url
    directory = Path(args.checkpoint_dir)
    pid_file = Path(args.pid_file) if args.pid_file else None
    if args.mode == "early":  # a rebalance recommendation: upload, and let training go on
        process = training_fate(pid_file)
    else:
        process = end_training(pid_file, args.sigterm_timeout_s, args.on_timeout)
    stopped = time.monotonic()
    try:
        if not directory.is_dir():
            raise Failure(
                f"checkpoint directory {directory} does not exist or is not a directory: "
                "check --checkpoint-dir"
            )
        patterns: list[str] = args.pattern or list(DEFAULT_PATTERNS)
        uploader = Uploader(
            _s3_client(args.region, read_timeout_s=120),
            location.bucket,
            args.upload_attempts,
            args.multipart_threshold_mb * MIB,
            args.part_size_mb * MIB,
            args.upload_concurrency,
        )
        checkpoint, uploaded, hash_s, upload_s = snapshot(directory, patterns, uploader, location)
        finished = time.monotonic()
        manifest: dict[str, object] = {
            "format": MANIFEST_FORMAT,
            "run_id": args.run_id,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "checkpoint": checkpoint.name,
            "kind": checkpoint.kind,
            "bucket": location.bucket,
            "prefix": location.prefix,
            "files": [u.to_json() for u in uploaded],
            "total_bytes": sum(u.size for u in uploaded),
            "process": process.to_json(),
            "timings": {
                "stop_s": round(stopped - began, 3),
                "hash_s": round(hash_s, 3),
                "upload_s": round(upload_s, 3),
                "total_s": round(finished - began, 3),
            },
        }
        body = json.dumps(manifest, indent=2).encode()
        manifest_key = location.key(MANIFEST_NAME)

        def put_manifest() -> None:
            uploader.s3.put_object(
                Bucket=location.bucket,
                Key=manifest_key,
                Body=body,
                ContentType="application/json",
                ChecksumAlgorithm="SHA256",
                ChecksumSHA256=b64(hashlib.sha256(body).digest()),
            )

        _with_retries(
            f"upload of {location.url(MANIFEST_NAME)}", args.upload_attempts, put_manifest
        )
        log("checkpoint_uploaded", manifest=location.url(MANIFEST_NAME), files=len(uploaded))
    except Failure as exc:
        exc.details.setdefault("process", process.to_json())
        raise
    except Exception as exc:
        raise Failure(_describe(exc), process=process.to_json()) from exc
    return {
        "ok": True,
        "manifest_key": manifest_key,
        "bucket": location.bucket,
        "manifest": manifest,
        "process": process.to_json(),
    }


# -- restore -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ManifestEntry:
    path: str
    key: str
    size: int
    sha256: str


def parse_manifest(body: bytes, where: str) -> tuple[str, list[ManifestEntry]]:
    try:
        data = json.loads(body)
        if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"format {data.get('format') if isinstance(data, dict) else None}")
        entries = [
            ManifestEntry(
                safe_relative_path(f["path"], what="file path"),
                str(f["key"]),
                int(f["size"]),
                str(f["sha256"]),
            )
            for f in data["files"]
        ]
        name = safe_relative_path(data["checkpoint"], what="checkpoint name")
    except (ValueError, KeyError, TypeError) as exc:
        raise Failure(
            f"{where} is not a manifest this program reads: {one_line(str(exc))}"
        ) from exc
    if not entries:
        raise Failure(f"{where} lists no files")
    return name, entries


def download(s3: S3Client, bucket: str, entry: ManifestEntry, temp: Path) -> tuple[int, str]:
    reply = s3.get_object(Bucket=bucket, Key=entry.key)
    digest = hashlib.sha256()
    size = 0
    with temp.open("wb") as out:
        for chunk in reply["Body"].iter_chunks(MIB):
            out.write(chunk)
            digest.update(chunk)
            size += len(chunk)
        out.flush()
        os.fsync(out.fileno())
    return size, digest.hexdigest()


def cmd_restore(args: argparse.Namespace) -> dict[str, object]:
    location: S3Location = args.s3_url
    directory = Path(args.checkpoint_dir)
    s3 = _s3_client(args.region, read_timeout_s=120)
    where = location.url(MANIFEST_NAME)
    body = _with_retries(
        f"download of {where}",
        3,
        lambda: s3.get_object(Bucket=location.bucket, Key=location.key(MANIFEST_NAME))[
            "Body"
        ].read(),
    )
    name, entries = parse_manifest(body, where)
    outside = [e.key for e in entries if not e.key.startswith(location.prefix)]
    if outside:
        raise Failure(f"{where} lists {len(outside)} key(s) outside the prefix: {outside[0]}")
    directory.mkdir(parents=True, exist_ok=True)
    # Everything is downloaded and verified before anything is moved into place, so a bad
    # file leaves the directory as it was.
    staged: list[tuple[Path, Path]] = []
    try:
        for entry in entries:
            target = directory / entry.path
            target.parent.mkdir(parents=True, exist_ok=True)
            temp = target.with_name(f".{target.name}.restore-{uuid.uuid4().hex[:8]}")
            staged.append((temp, target))
            size, sha256 = _with_retries(
                f"download of s3://{location.bucket}/{entry.key}",
                3,
                functools.partial(download, s3, location.bucket, entry, temp),
            )
            if size != entry.size or sha256 != entry.sha256:
                raise Failure(
                    f"{entry.path} (s3://{location.bucket}/{entry.key}) does not match the "
                    f"manifest: {size} bytes, sha256 {sha256} downloaded, {entry.size} bytes, "
                    f"sha256 {entry.sha256} expected; the object was changed after upload"
                )
        for temp, target in staged:
            os.replace(temp, target)
    finally:
        for temp, _ in staged:
            temp.unlink(missing_ok=True)
    total = sum(e.size for e in entries)
    log("checkpoint_restored", checkpoint=name, files=len(entries), bytes=total)
    return {"ok": True, "checkpoint": name, "files": len(entries), "bytes": total}


# -- start -------------------------------------------------------------------------------


def write_atomically(path: Path, text: str) -> None:
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    try:
        with temp.open("w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def cmd_start(args: argparse.Namespace, command: list[str]) -> dict[str, object]:
    pid_file = Path(args.pid_file)
    # A retried `start` (an SSM command resent after a timeout) must not start a second
    # training writing into the same checkpoint directory.
    record = read_pid_file(pid_file)
    if record is not None and is_alive(record.pid) and not is_reused(record):
        log("process_already_running", pid=record.pid, pid_file=str(pid_file))
        return {"ok": True, "pid": record.pid, "already_running": True}
    if args.cwd is not None and not Path(args.cwd).is_dir():
        raise Failure(f"working directory {args.cwd} does not exist: check --cwd")
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    log_file = Path(args.log_file) if args.log_file else None
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
    try:
        with log_file.open("ab") if log_file is not None else open(os.devnull, "wb") as output:
            # A new session: the training outlives this program and the SSM command.
            process = subprocess.Popen(
                command,
                cwd=args.cwd,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
    except OSError as exc:
        raise Failure(f"could not start {command[0]!r}: {one_line(str(exc))}") from exc
    try:
        write_atomically(pid_file, f"{process.pid}\n")
    except OSError as exc:
        # A training process nobody can find again would run (and bill) forever.
        process.kill()
        raise Failure(f"could not write pid file {pid_file}: {one_line(str(exc))}") from exc
    log("process_started", pid=process.pid, command=command, pid_file=str(pid_file))
    return {"ok": True, "pid": process.pid}


# -- command line ------------------------------------------------------------------------


class HelpShown(Exception):
    """--help printed the usage; the result line still follows it."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if status:
            raise UsageError(one_line(message or f"{self.prog}: exit {status}"))
        raise HelpShown


def build_parser() -> Parser:
    parser = Parser(
        prog="instance.py",
        description=__doc__,
        allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="subcommand", required=True)

    checkpoint = commands.add_parser(
        "checkpoint", help="stop training, upload the newest checkpoint", allow_abbrev=False
    )
    checkpoint.add_argument("--run-id", required=True, type=run_id)
    checkpoint.add_argument("--checkpoint-dir", required=True, type=instance_path)
    checkpoint.add_argument("--s3-url", required=True, type=S3Location.parse)
    checkpoint.add_argument("--pattern", action="append", type=checkpoint_pattern)
    checkpoint.add_argument("--pid-file", type=instance_path)
    checkpoint.add_argument("--sigterm-timeout-s", type=seconds, default=120.0)
    checkpoint.add_argument("--on-timeout", choices=("kill", "leave"), default="kill")
    checkpoint.add_argument(
        "--mode",
        choices=("final", "early"),
        default="final",
        help="final: end training first (default); early: upload the newest checkpoint and "
        "leave training running (a spot rebalance recommendation)",
    )
    checkpoint.add_argument("--region", type=region)
    checkpoint.add_argument("--upload-attempts", type=int_in(1, 10), default=3)
    checkpoint.add_argument("--multipart-threshold-mb", type=int_in(1, 5 * 1024), default=64)
    checkpoint.add_argument("--part-size-mb", type=int_in(5, 5 * 1024), default=16)
    checkpoint.add_argument("--upload-concurrency", type=int_in(1, 32), default=4)

    restore = commands.add_parser(
        "restore", help="download and verify a checkpoint", allow_abbrev=False
    )
    restore.add_argument("--s3-url", required=True, type=S3Location.parse)
    restore.add_argument("--checkpoint-dir", required=True, type=instance_path)
    restore.add_argument("--region", type=region)

    start = commands.add_parser(
        "start", help="start a command detached: start ... -- CMD ARGS", allow_abbrev=False
    )
    start.add_argument("--pid-file", required=True, type=instance_path)
    start.add_argument("--cwd", type=instance_path)
    start.add_argument("--log-file", type=instance_path)
    return parser


def expand_argv_json(argv: list[str]) -> list[str]:
    if not any(a == "--argv-json" or a.startswith("--argv-json=") for a in argv):
        return argv
    if len(argv) == 2 and argv[0] == "--argv-json":
        text = argv[1]
    elif len(argv) == 1 and argv[0].startswith("--argv-json="):
        text = argv[0].partition("=")[2]
    else:
        raise UsageError("--argv-json must be the only argument, followed by a JSON array")
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"--argv-json {text[:80]!r} is not JSON: {exc}") from None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise UsageError(f"--argv-json {text[:80]!r} is not a JSON array of strings")
    return value


def split_command(argv: list[str]) -> tuple[list[str], list[str]]:
    """`start [options] -- CMD ARGS...`: the command is everything after the first `--`,
    split off before argparse sees it so none of it is read as an option."""
    if not argv or argv[0] != "start" or ("--" not in argv and {"-h", "--help"} & set(argv)):
        return argv, []
    if "--" not in argv:
        raise UsageError("start needs the command after '--', e.g. start --pid-file P -- CMD")
    cut = argv.index("--")
    command = argv[cut + 1 :]
    if not command or any(_CONTROL.search(word) for word in command):
        raise UsageError(
            f"start: command {command!r} is not valid: give a non-empty command "
            "without control characters after '--'"
        )
    return argv[:cut], command


def run(argv: list[str]) -> tuple[int, dict[str, object]]:
    try:
        options, command = split_command(expand_argv_json(argv))
        args = build_parser().parse_args(options)
        if args.subcommand == "checkpoint":
            return 0, cmd_checkpoint(args)
        if args.subcommand == "restore":
            return 0, cmd_restore(args)
        return 0, cmd_start(args, command)
    except HelpShown:
        return 0, {"ok": True, "help": True}
    except UsageError as exc:
        return 2, {"ok": False, "error": one_line(str(exc))}
    except Failure as exc:
        return 1, {"ok": False, "error": one_line(str(exc)), **exc.details}
    except Exception as exc:
        log("command_crashed", error=_describe(exc), traceback=traceback.format_exc())
        return 1, {"ok": False, "error": _describe(exc)}


def result_line(result: dict[str, object]) -> str:
    """The result as one JSON line that fits what SSM returns of stdout. A long file list is
    left out of the printed manifest: the manifest itself is in S3 at `manifest_key`."""
    line = json.dumps(result)
    manifest = result.get("manifest")
    if len(line) > RESULT_LIMIT and isinstance(manifest, dict):
        files = manifest.get("files")
        shortened = {k: v for k, v in manifest.items() if k != "files"}
        shortened["files_omitted"] = len(files) if isinstance(files, list) else 0
        line = json.dumps({**result, "manifest": shortened})
    return line


def main(argv: Sequence[str] | None = None) -> int:
    code, result = run(list(sys.argv[1:] if argv is None else argv))
    if not result.get("ok"):
        log("command_failed", exit_code=code, error=result.get("error"))
    sys.stdout.flush()
    print(result_line(result), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
