"""`SUPERVISOR_DATABASE_URL`'s text: which backend it names, and how it is shown.

A libpq URL may carry a password (in its user part or as `?password=`); wherever the URL is
shown (logs, errors, status) it goes through `redact` first. The standard library only: the
settings and the CLI import this.
"""

from __future__ import annotations

import re

SCHEMES = ("postgresql://", "postgres://")
"""What libpq accepts as a URL's scheme."""

HIDDEN = "***"

_QUERY_PASSWORD = re.compile(r"(?i)([?&]password=)[^&#]*")
_KEYWORD_PASSWORD = re.compile(r"(?i)(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)")


def is_postgresql(url: str) -> bool:
    return url.strip().lower().startswith(SCHEMES)


def redact(url: str) -> str:
    """`url` with any password replaced by `***`: `postgresql://user:***@host/db`."""
    scheme, separator, rest = url.partition("://")
    if not separator:  # a `key=value` connection string
        return _KEYWORD_PASSWORD.sub(rf"\g<1>{HIDDEN}", url)
    authority_end = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    authority, tail = rest[:authority_end], rest[authority_end:]
    userinfo, at, hosts = authority.rpartition("@")
    if at and ":" in userinfo:
        authority = f"{userinfo.split(':', 1)[0]}:{HIDDEN}@{hosts}"
    tail = _QUERY_PASSWORD.sub(rf"\g<1>{HIDDEN}", tail)
    return f"{scheme}://{authority}{tail}"


def redact_text(text: str, url: str) -> str:
    """`text` (a driver's message about `url`) with the URL's password, if it appears,
    replaced: libpq's messages do not quote it, but nothing here relies on that."""
    for secret in _passwords(url):
        if secret:
            text = text.replace(secret, HIDDEN)
    return text.replace(url, redact(url))


def _passwords(url: str) -> list[str]:
    from urllib.parse import unquote

    found: list[str] = []
    _, separator, rest = url.partition("://")
    if separator:
        authority = re.split(r"[/?]", rest, maxsplit=1)[0]
        userinfo, at, _ = authority.rpartition("@")
        if at and ":" in userinfo:
            raw = userinfo.split(":", 1)[1]
            found += [raw, unquote(raw)]
        found += [unquote(m.group(0).split("=", 1)[1]) for m in _QUERY_PASSWORD.finditer(rest)]
    else:
        found += [m.group(2).strip("'") for m in _KEYWORD_PASSWORD.finditer(url)]
    return found
