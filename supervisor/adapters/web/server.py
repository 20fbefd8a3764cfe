"""The HTTP listener of `SUPERVISOR_HTTP_ADDR`: the dashboard, `/api/v1/` and `/metrics` on
one aiohttp application, behind two middlewares.

- Authentication, when a token is set (required beyond loopback, see `Settings.check_http`):
  `Authorization: Bearer TOKEN`, or the session cookie the login form sets. The cookie holds
  an HMAC of the token, not the token, so it reveals nothing and every replica (same token)
  accepts it; compared in constant time. Pages redirect to the login form, the API and
  `/metrics` answer 401.
- Security headers on every answer: a Content-Security-Policy that allows nothing but this
  origin (no inline script, no CDN: every asset is in the package), no framing, no referrer.

The token is never logged, shown, or put in a page.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable
from datetime import datetime
from importlib.resources import files
from pathlib import Path
from typing import Protocol

import structlog
from aiohttp import hdrs, web
from aiohttp.typedefs import Middleware

from supervisor.adapters.metrics_http import MetricsSource, listen, metrics_handler
from supervisor.adapters.query import DatabaseUnavailable
from supervisor.adapters.web.api import JsonApi
from supervisor.adapters.web.pages import FleetSource, Pages, render
from supervisor.adapters.web.reader import RunReader
from supervisor.core.errors import InvalidInput, UnknownRun

log = structlog.get_logger("supervisor.http")

SESSION_COOKIE = "supervisor_session"
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
_SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
_OPEN_PATHS = ("/login", "/static/")
"""What needs no token: the login form and the assets it loads."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class DashboardSource(MetricsSource, FleetSource, Protocol):
    """What the daemon offers beyond the run database (`adapters.control_views.ControlViews`
    is one): its metrics, status, zombies, report and training logs."""


def session_value(token: str) -> str:
    """The session cookie's value for `token`: an HMAC, so the cookie is not the token."""
    return hmac.new(token.encode(), b"supervisor-dashboard-session", hashlib.sha256).hexdigest()


def static_dir() -> Path:
    return Path(str(files("supervisor.adapters.web") / "static"))


class HttpServer:
    """The dashboard, the JSON API and `/metrics` on HOST:PORT. Port 0 takes a free port
    (see `url`). With `token`, every request but the login form's needs it."""

    def __init__(
        self,
        source: DashboardSource,
        database: Path | str,
        host: str,
        port: int,
        *,
        token: str | None = None,
        eta: Callable[[str], datetime | None] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self._token = token
        self.app = build_app(source, database, token=token, eta=eta)
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        self.url: str | None = None
        """http://HOST:PORT/ as bound, once started."""

    def __repr__(self) -> str:
        auth = "token" if self._token else "open"
        return f"<HttpServer {self.url or f'{self.host}:{self.port} (not started)'} {auth}>"

    async def start(self) -> None:
        """Listen, or raise `InvalidInput` saying why the address cannot be used."""
        bound = await listen(
            self._runner,
            self.host,
            self.port,
            serving="the dashboard",
            setting="SUPERVISOR_HTTP_ADDR",
        )
        self.url = f"{bound}/"
        log.info("dashboard_listening", url=self.url, token_required=self._token is not None)

    async def close(self) -> None:
        await self._runner.cleanup()


def build_app(
    source: DashboardSource,
    database: Path | str,
    *,
    token: str | None = None,
    eta: Callable[[str], datetime | None] | None = None,
) -> web.Application:
    """The application (also what tests serve with aiohttp's test server)."""
    reader = RunReader(database)
    app = web.Application(middlewares=[_security_headers, _errors, _authenticate(token)])
    pages = Pages(reader, source, eta=eta)
    app.add_routes(JsonApi(reader).routes())
    app.add_routes(pages.routes())
    app.add_routes(
        [
            web.get("/metrics", metrics_handler(source)),
            web.get("/login", _login_form),
            web.post("/login", _login(token)),
            web.static("/static", static_dir(), append_version=False),
        ]
    )
    return app


@web.middleware
async def _security_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        exc.headers.update(_SECURITY_HEADERS)
        raise
    if not response.prepared:
        response.headers.update(_SECURITY_HEADERS)
    return response


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The query path's errors as HTTP answers: JSON under /api/, a plain page elsewhere."""
    try:
        return await handler(request)
    except InvalidInput as exc:
        status, message = 400, str(exc)
    except UnknownRun as exc:
        status, message = 404, str(exc)
    except DatabaseUnavailable as exc:
        status, message = 503, str(exc)
    if request.path.startswith("/api/"):
        return web.json_response({"error": message}, status=status)
    return web.Response(text=message + "\n", status=status, content_type="text/plain")


def _authenticate(token: str | None) -> Middleware:
    session = session_value(token) if token else None

    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        if token is None or request.path.startswith(_OPEN_PATHS):
            return await handler(request)
        assert session is not None
        given = request.headers.get(hdrs.AUTHORIZATION, "")
        scheme, _, credential = given.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(
            credential.strip().encode(), token.encode()
        ):
            return await handler(request)
        cookie = request.cookies.get(SESSION_COOKIE, "")
        if cookie and hmac.compare_digest(cookie.encode(), session.encode()):
            return await handler(request)
        if request.path.startswith("/api/") or request.path == "/metrics":
            return web.json_response(
                {"error": "this dashboard needs its token: Authorization: Bearer TOKEN"},
                status=401,
                headers={hdrs.WWW_AUTHENTICATE: 'Bearer realm="supervisord"'},
            )
        raise web.HTTPSeeOther(f"/login?next={_quote(request.path_qs)}")

    return authenticate


def _quote(path: str) -> str:
    from urllib.parse import quote

    return quote(path, safe="")


def _next_path(value: str) -> str:
    """Where to go after the login: a path on this site only (never `//host`, no scheme)."""
    if value.startswith("/") and not value.startswith("//") and "\\" not in value:
        return value
    return "/"


async def _login_form(request: web.Request) -> web.Response:
    return render("login.html", next=_next_path(request.query.get("next", "/")), failed=False)


def _login(token: str | None) -> Handler:
    async def login(request: web.Request) -> web.StreamResponse:
        form = await request.post()
        given, next_path = str(form.get("token", "")), _next_path(str(form.get("next", "/")))
        if token is None:
            raise web.HTTPSeeOther(next_path)
        if not hmac.compare_digest(given.encode(), token.encode()):
            log.warning("login_refused", remote=request.remote)
            response = render("login.html", next=next_path, failed=True)
            response.set_status(403)
            return response
        accepted = web.HTTPSeeOther(next_path)
        accepted.set_cookie(
            SESSION_COOKIE, session_value(token), httponly=True, samesite="Strict", path="/"
        )
        log.info("login_accepted", remote=request.remote)
        raise accepted

    return login
