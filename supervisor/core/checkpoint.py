"""Checkpoint safety: the commands sent to the instance, their results, the manifest the
instance writes to S3, and the rule that decides whether what S3 holds is what the manifest
says. Pure: the runtime fetches, this module judges.

The instance-side program (`supervisor/instance.py`) writes the manifest; its format is the
contract between the two, so it is versioned (`format`).
"""

from __future__ import annotations

import base64
import binascii
import enum
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field

from supervisor.core.errors import InvalidInput

MANIFEST_NAME = "_manifest.json"
DEFAULT_PATTERNS: tuple[str, ...] = (
    "*.pt", "*.pth", "*.ckpt", "*.safetensors", "checkpoint-*/", "checkpoint_*/",
)  # fmt: skip

# An instance path: absolute, plain characters, no parent references, no whitespace.
_PATH = re.compile(r"/[A-Za-z0-9_.\-/]*")
_GLOB = re.compile(r"[A-Za-z0-9_.\-*?\[\]/]+")
_UNSAFE_WORD = re.compile(r"[\x00-\x1f\x7f]")


def parse_instance_path(value: str, *, what: str) -> str:
    """A path on the instance. Rejects shell metacharacters, whitespace, newlines and `..`
    before anything is sent anywhere."""
    if not isinstance(value, str) or not _PATH.fullmatch(value) or ".." in value.split("/"):
        raise InvalidInput(
            f"{what} {value!r} is not valid: give an absolute path of letters, digits, "
            "'_', '.', '-' and '/', without '..', spaces or shell characters"
        )
    return value


def parse_pattern(value: str) -> str:
    """A glob relative to the checkpoint directory (`Path.glob` takes no absolute pattern)."""
    if (
        not isinstance(value, str)
        or not _GLOB.fullmatch(value)
        or value.startswith("/")
        or ".." in value.split("/")
    ):
        raise InvalidInput(
            f"checkpoint pattern {value!r} is not valid: use a glob of letters, digits and "
            "'_ . - * ? [ ]', ending in '/' to match directories (e.g. 'checkpoint-*/')"
        )
    return value


def parse_command(value: str | Sequence[str], *, what: str) -> tuple[str, ...]:
    """A command to run on the instance, as an argument vector (never given to a shell).

    A string is split like a shell would split it (`shlex.split`), but nothing is expanded:
    no variables, globs, pipes or redirections."""
    hint = 'e.g. "python train.py --resume" or ["python", "train.py"]'
    try:
        words = shlex.split(value) if isinstance(value, str) else list(value)
    except ValueError as exc:  # an unclosed quote
        raise InvalidInput(f"{what} {value!r} is not valid: {exc}; {hint}") from None
    if not words or any(not isinstance(w, str) or _UNSAFE_WORD.search(w) for w in words):
        raise InvalidInput(
            f"{what} {value!r} is not valid: give a non-empty command without control "
            'characters, e.g. "python train.py --resume" or ["python", "train.py"]'
        )
    return tuple(words)


class CommandKind(enum.StrEnum):
    CHECKPOINT = "checkpoint"
    RESTORE = "restore"
    START = "start"


@dataclass(frozen=True, slots=True)
class InstanceCommand:
    """One invocation of the instance-side program: a subcommand, named options, and (for
    `start`) the command to start. Values are validated before a command is built."""

    kind: CommandKind
    options: tuple[tuple[str, str], ...] = ()
    command: tuple[str, ...] = ()

    def argv(self) -> list[str]:
        """Arguments for `python3 -m supervisor.instance` (no shell involved)."""
        args = [str(self.kind)]
        for name, value in self.options:
            args += [f"--{name}", value]
        if self.command:
            args += ["--", *self.command]
        return args

    def option(self, name: str) -> str | None:
        return next((v for n, v in self.options if n == name), None)


class CommandStatus(enum.StrEnum):
    SUCCESS = "Success"
    FAILED = "Failed"
    TIMED_OUT = "TimedOut"
    CANCELLED = "Cancelled"
    UNDELIVERED = "Undelivered"  # could not be sent or looked up at all


@dataclass(frozen=True, slots=True)
class CommandResult:
    status: CommandStatus
    exit_code: int | None
    stdout: str = ""
    stderr: str = ""
    result: Mapping[str, object] = field(default_factory=dict)
    """The JSON object the instance program printed last on stdout, if any."""

    @property
    def ok(self) -> bool:
        return self.status is CommandStatus.SUCCESS and bool(self.result.get("ok"))

    def error(self) -> str:
        detail = self.result.get("error") or self.stderr.strip()[-500:] or self.stdout[-200:]
        return f"{self.status} (exit {self.exit_code}): {detail}".strip()


class ManifestFile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    path: str
    key: str
    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    s3_checksum_sha256: str
    """S3's ChecksumSHA256: base64 of the SHA-256 for a single PUT, or the composite
    (SHA-256 of the part digests) followed by `-N` for a multipart upload of N parts."""
    parts: int = Field(1, ge=1)


class ProcessFate(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    pid: int | None = None
    was_running: bool = False
    signalled: bool = False
    exited: bool = True
    waited_s: float = 0.0
    after_timeout: str = "none"  # none | sigkill | left-running


class Manifest(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    format: int = 1
    run_id: str
    created_at: str
    checkpoint: str
    kind: str  # file | dir
    bucket: str
    prefix: str
    files: tuple[ManifestFile, ...]
    total_bytes: int
    process: ProcessFate = ProcessFate()
    timings: dict[str, float] = Field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StoredObject:
    """What S3 says about one uploaded file (HeadObject with checksums enabled)."""

    key: str
    size: int
    checksum_sha256: str | None


@dataclass(frozen=True, slots=True)
class Verification:
    ok: bool
    files: int
    bytes: int
    problems: tuple[str, ...] = ()

    def summary(self) -> str:
        if self.ok:
            return f"{self.files} file(s), {self.bytes} bytes verified in S3 (size and SHA-256)"
        return "; ".join(self.problems[:5]) + (" …" if len(self.problems) > 5 else "")


def _checksum_body(value: str) -> str:
    # Real S3 appends "-N" to a composite checksum; moto does not. Compare the digests.
    return value.split("-", 1)[0]


def expected_single_part_checksum(sha256_hex: str) -> str:
    return base64.b64encode(binascii.unhexlify(sha256_hex)).decode()


def verify(
    manifest: Manifest,
    stored: Mapping[str, StoredObject | None],
    *,
    bucket: str | None = None,
    prefix: str | None = None,
    run_id: str | None = None,
) -> Verification:
    """Pure. Is every file of the manifest in S3, with its size and SHA-256?

    `stored` maps each manifest key to what HeadObject returned, or None if it is missing.
    With `bucket`, `prefix` and `run_id`, a manifest that points anywhere else (another
    bucket, keys outside the checkpoint prefix, another run) is not accepted.
    """
    problems: list[str] = []
    if not manifest.files:
        problems.append("the manifest lists no files")
    if bucket is not None and manifest.bucket != bucket:
        problems.append(f"the manifest names bucket {manifest.bucket!r}, expected {bucket!r}")
    if run_id is not None and manifest.run_id != run_id:
        problems.append(f"the manifest is for run {manifest.run_id!r}, expected {run_id!r}")
    if prefix is not None:
        outside = [f.key for f in manifest.files if not f.key.startswith(prefix)]
        if outside:
            problems.append(f"{len(outside)} file(s) outside {prefix}, e.g. {outside[0]}")
    for f in manifest.files:
        obj = stored.get(f.key)
        if obj is None:
            problems.append(f"{f.key}: missing in S3")
            continue
        if obj.size != f.size:
            problems.append(f"{f.key}: size {obj.size} in S3, {f.size} in the manifest")
        # A single PUT's checksum is the file's SHA-256, so S3 vouches for the hex digest too.
        # For multipart files S3 vouches for each part (the composite); the full-file SHA-256
        # is the instance's claim, checked again on restore. The instance program never
        # uploads a one-part multipart, so parts == 1 means a single PUT.
        if f.parts == 1 and f.s3_checksum_sha256 != expected_single_part_checksum(f.sha256):
            problems.append(f"{f.key}: the manifest's checksum does not match its SHA-256")
        if obj.checksum_sha256 is None:
            problems.append(f"{f.key}: S3 holds no SHA-256 checksum for it")
        elif _checksum_body(obj.checksum_sha256) != _checksum_body(f.s3_checksum_sha256):
            problems.append(f"{f.key}: SHA-256 in S3 differs from the manifest")
    total = sum(f.size for f in manifest.files)
    return Verification(not problems, len(manifest.files), total, tuple(problems))
