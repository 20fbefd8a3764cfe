"""PostgreSQL URLs as the CLI and the query path see them: which text is one, and how to show
one without its password.

Standard library only (no psycopg): `supervisorctl` imports this on every query verb, and the
driver only when a URL is actually used.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

POSTGRES_SCHEMES = ("postgresql", "postgres")
"""The URL schemes libpq accepts."""
HIDDEN = "***"


def is_postgres_url(text: str) -> bool:
    """The text is a libpq URL (`postgresql://...` or `postgres://...`), not a file path."""
    scheme, sep, _ = text.partition("://")
    return bool(sep) and scheme.lower() in POSTGRES_SCHEMES


def redact(url: str) -> str:
    """The URL with its password (in the authority or as `?password=`) shown as `***`:
    `postgresql://user:***@host/db`. Text that does not parse is shown as its scheme alone."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, _, hosts = netloc.rpartition("@")
            user, colon, _ = userinfo.partition(":")
            netloc = f"{user}:{HIDDEN}@{hosts}" if colon else f"{user}@{hosts}"
        query = parts.query
        if query:
            pairs = parse_qsl(query, keep_blank_values=True)
            query = urlencode(
                [(k, HIDDEN if k.lower() == "password" else v) for k, v in pairs], safe="*"
            )
        return urlunsplit((parts.scheme, netloc, parts.path, query, ""))
    except ValueError:
        return f"{url.partition('://')[0]}://{HIDDEN}"
