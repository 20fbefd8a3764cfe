"""Notifications through Apprise (issue 15): one library for Slack, Teams, Discord, PagerDuty,
e-mail and plain JSON webhooks, each configured by a URL (`SUPERVISOR_NOTIFY_URLS`).

URLs hold secrets (webhook tokens, routing keys, passwords): outside this module a URL is a
`Target`, its digest and its redacted form (Apprise's own privacy rendering); nothing here
logs a URL, and Apprise's own log records (which may name them) are kept out of ours.

A failed send is a `TransientError` (Apprise says only that it failed, with a log line of why):
the sender retries it and finally records it as failed. Each send is bounded in time: Apprise's
own deadline, and ours around it (Apprise sends from a worker thread, which a timeout leaves
behind but no longer waits for).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass, field

import apprise

from supervisor.adapters.faults import FaultPlan
from supervisor.core.errors import InvalidInput, TransientError
from supervisor.core.outbox import Message, Target

IDEMPOTENCY_HEADER = "Idempotency-Key"
FAULT_OPERATION = "Notify"
"""The operation name the fault plan (`SUPERVISOR_FAULTS`, testing only) knows a send by:
`Notify=hang` holds every send, `Notify=InternalError*2` fails the next two."""

# Apprise logs through the standard library, with URLs in some records: none reach our log.
logging.getLogger("apprise").propagate = False
logging.getLogger("apprise").addHandler(logging.NullHandler())


def _digest(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class _Configured:
    target: Target
    url: str = field(repr=False)


def load_targets(urls: tuple[str, ...]) -> tuple[_Configured, ...]:
    """Each URL as Apprise loads it; `InvalidInput` naming the URL's place and scheme (never
    the URL) for one Apprise does not know."""
    configured = []
    for number, url in enumerate(urls, 1):
        plugin = apprise.Apprise.instantiate(url)
        if plugin is None:
            scheme = url.partition("://")[0] if "://" in url else "(none)"
            raise InvalidInput(
                f"SUPERVISOR_NOTIFY_URLS: URL {number} of {len(urls)} (scheme {scheme[:20]!r}) "
                "is not an Apprise URL it can use: check it against "
                "https://github.com/caronc/apprise/wiki (e.g. slack://, msteams://, "
                "pagerduty://, json://HOST/PATH)"
            )
        shown = str(plugin.url(privacy=True))  # type: ignore[no-untyped-call]
        configured.append(_Configured(Target(_digest(url), shown), url))
    return tuple(configured)


class AppriseSender:
    """Sends one message to one target at a time (implements
    `supervisor.runtime.ports.NotificationSender`)."""

    def __init__(
        self, urls: tuple[str, ...], *, timeout_s: float, faults: FaultPlan | None = None
    ) -> None:
        self._configured = {c.target.digest: c for c in load_targets(urls)}
        self._timeout_s = timeout_s
        self._faults = faults

    def __repr__(self) -> str:
        return f"<AppriseSender targets={len(self._configured)} timeout_s={self._timeout_s}>"

    @property
    def targets(self) -> tuple[Target, ...]:
        return tuple(c.target for c in self._configured.values())

    async def send(self, target: Target, message: Message) -> None:
        """Deliver `message` to `target`, or raise `TransientError` saying why not."""
        if self._faults is not None:
            code = self._faults.draw(FAULT_OPERATION)
            if code == "hang":
                await asyncio.Event().wait()
            if code is not None:
                raise TransientError(code, "injected fault", operation=FAULT_OPERATION)
        url = self._configured[target.digest].url
        plugin = apprise.Apprise.instantiate(url)
        if plugin is None:  # loaded once already: only a changed Apprise would get here
            raise TransientError("BadUrl", f"{target.shown} no longer loads")
        headers = getattr(plugin, "headers", None)
        if isinstance(headers, dict):  # json://, xml://, form://: the key as a header too
            headers[IDEMPOTENCY_HEADER] = message.key
        extras = getattr(plugin, "payload_extras", None)
        if isinstance(extras, dict) and plugin.service_name == "JSON":
            extras["idempotency_key"] = message.key
        sender = apprise.Apprise()
        sender.add(plugin)
        kind = apprise.NotifyType.FAILURE if message.failure else apprise.NotifyType.INFO
        try:
            result = await asyncio.wait_for(
                sender.async_notify(
                    body=message.body,
                    title=message.title,
                    notify_type=kind,
                    body_format=apprise.NotifyFormat.TEXT,
                    timeout=self._timeout_s,
                ),
                self._timeout_s + 5,
            )
        except TimeoutError:
            raise TransientError("Timeout", f"no answer within {self._timeout_s:g}s") from None
        if not result:
            raise TransientError("SendFailed", _why(result, url))


def _why(result: apprise.AppriseResult, url: str) -> str:
    """The last warning Apprise recorded for the failed send, without the URL."""
    lines = [e.message for e in result.logs() if e.level in ("WARNING", "ERROR", "CRITICAL")]
    text = lines[-1] if lines else f"the service did not accept it ({result.status.name})"
    return text.replace(url, "<url>")[:300]
