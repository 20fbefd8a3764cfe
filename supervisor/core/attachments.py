"""Files and links a person attaches to a run (`supervisorctl attach-file`): their kinds, and
which URIs are accepted.

Pure: nothing here reads the object or follows the link. An attachment records where a thing
is kept, so it must be somewhere that outlives this machine: an S3 object or a web link, never
a local path.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

from supervisor.core.errors import InvalidInput
from supervisor.core.values import S3Object

MAX_URI_LENGTH = 2048
_SECRET_PARAMETER = re.compile(
    r"(.*[_-])?(token|secret|password|passwd|pwd|signature|sig|credential|key|apikey"
    r"|api-key|auth|authorization|session|code)",
    re.IGNORECASE,
)
"""Query (or fragment) parameter names that carry a credential: `token`, `access_token`,
`X-Amz-Signature`, `X-Amz-Credential`, `X-Amz-Security-Token`, `sig` (Azure SAS),
`key`, `api_key`, `password`, an OAuth `code`..."""


class AttachmentKind(enum.StrEnum):
    CRASH_LOG = "crash-log"
    ANALYSIS = "analysis"
    CONVERSATION = "conversation"
    OTHER = "other"


def parse_attachment_kind(text: str) -> AttachmentKind:
    try:
        return AttachmentKind(text)
    except ValueError:
        raise InvalidInput(
            f"attachment kind {text!r} is not valid: use one of "
            f"{', '.join(kind.value for kind in AttachmentKind)}"
        ) from None


@dataclass(frozen=True, slots=True)
class AttachmentUri:
    """An accepted URI: an S3 object (`s3` set) or an http(s) link (`s3` None)."""

    uri: str
    s3: S3Object | None


def parse_attachment_uri(text: str) -> AttachmentUri:
    """`s3://BUCKET/KEY` (checked with the S3 rules of `core.values`) or an `https://` or
    `http://` link.

    Plain http is accepted: the supervisor only records the link and never fetches it, and
    dashboards on a private network (TensorBoard, MLflow) are often served without TLS. A link
    with a user name or password in it is refused, since the database and `status` would show
    the credentials to everyone who reads them.
    """
    hint = "give s3://BUCKET/KEY or an https:// (or http://) link"
    if not text:
        raise InvalidInput(f"attachment URI is empty: {hint}")
    if len(text) > MAX_URI_LENGTH:
        raise InvalidInput(
            f"attachment URI {text[:60]!r}... is {len(text)} characters long; "
            f"the limit is {MAX_URI_LENGTH}"
        )
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in text):
        raise InvalidInput(
            f"attachment URI {text!r} contains whitespace or control characters: "
            "percent-encode them (%20 for a space)"
        )
    if text.startswith("s3://"):
        return AttachmentUri(uri=text, s3=S3Object.parse(text))
    scheme = text.partition(":")[0].lower()
    if scheme in ("http", "https"):
        _check_link(text)
        return AttachmentUri(uri=text, s3=None)
    if scheme == "file" or text.startswith(("/", "./", "../", "~")):
        raise InvalidInput(
            f"attachment {text!r} is a local path: an attachment records where a file is kept "
            "for good, and a path on one machine is not. Upload it first "
            "(aws s3 cp FILE s3://BUCKET/KEY) and attach the s3:// URI"
        )
    raise InvalidInput(f"attachment URI {text!r} is not valid: {hint}")


def _check_link(text: str) -> None:
    parts = urlsplit(text)
    try:
        _ = parts.port  # a port that is not a number raises here
    except ValueError:
        port_ok = False
    else:
        port_ok = True
    if not port_ok or not parts.hostname or not text.lower().startswith(("http://", "https://")):
        raise InvalidInput(
            f"link {text!r} is not valid: expected https://HOST/PATH (e.g. "
            "https://wandb.ai/team/project/runs/abc123)"
        )
    if parts.username is not None or parts.password is not None:
        shown = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
        raise InvalidInput(
            f"link {shown!r} (as given, with the part before '@' left out here) has a user "
            "name or password in it: the run database would show them to every reader; "
            "attach the link without them"
        )
    for part in (parts.query, parts.fragment):
        secret = sorted(
            {name for name, _ in parse_qsl(part, keep_blank_values=True) if _is_secret(name)}
        )
        if secret:
            shown = parts._replace(query="", fragment="").geturl()
            raise InvalidInput(
                f"link {shown!r} has what looks like a credential in its parameters "
                f"({', '.join(secret)}): the run database would show it to every reader; "
                "attach the link without them (a presigned URL expires anyway: attach the "
                "s3:// URI instead)"
            )


def _is_secret(name: str) -> bool:
    return _SECRET_PARAMETER.fullmatch(name) is not None
