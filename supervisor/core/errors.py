"""The project's error hierarchy.

Adapters translate library exceptions into these at their edge, so the runtime decides
from the type alone whether to retry (`TransientError`), give up (`PermanentError`), or treat
the target as already gone (`NotFoundError`).
"""

from __future__ import annotations


class SupervisorError(Exception):
    """Base of every error this project raises on purpose."""


class InvalidInput(SupervisorError, ValueError):
    """A user-supplied value is wrong; the message names the value and what to do.

    A ValueError too, so pydantic validators that raise it report every bad field at once.
    """


class InvalidTransition(SupervisorError):
    """An event that the transition table does not allow in the run's current phase."""


class StaleVersion(SupervisorError):
    """The run row changed since it was read; the transition was not applied."""

    def __str__(self) -> str:
        return (
            f"{super().__str__()}: it changed meanwhile; "
            "`supervisorctl status RUN_ID` shows where it is now"
        )


class ExternalError(SupervisorError):
    """A call to an outside service failed.

    `code` is the service's own error code (e.g. `UnauthorizedOperation`) so it can be recorded.
    """

    def __init__(self, code: str, message: str, *, operation: str = "") -> None:
        super().__init__(f"{operation + ': ' if operation else ''}{code}: {message}")
        self.code = code
        self.message = message
        self.operation = operation


class TransientError(ExternalError):
    """Worth retrying: throttling, 5xx, a dropped connection."""


class PermanentError(ExternalError):
    """Retrying will not help: permissions, malformed request, missing bucket."""


class NotFoundError(PermanentError):
    """The target does not exist (for an instance: it is already gone)."""


class UnknownRun(SupervisorError):
    """No run with that id is attached (or, with `message`, none in the run database)."""

    def __init__(self, run_id: str, message: str | None = None) -> None:
        super().__init__(
            message
            or f"no run {run_id!r} is attached: `supervisorctl status` lists the attached runs"
        )
        self.run_id = run_id


class ShuttingDown(SupervisorError):
    """The daemon is shutting down and takes no new work."""


class LeaseLost(SupervisorError):
    """This replica no longer holds the run's lease (another replica claimed it, or it is
    about to expire before an AWS action): nothing was written and nothing is done. Never
    retried: the monitor stops, and the run's owner (a new claim, describe first) carries on.

    `why`: `fence` (another replica owns it now), `expired` (by this replica's clock: it was
    frozen or cut off) or `expiring` (too little left to start an action on an instance)."""

    def __init__(self, message: str, *, why: str = "fence") -> None:
        super().__init__(message)
        self.why = why


class NoAnswer(SupervisorError):
    """The replica that owns a run did not answer a request in time (issue 14: replicas)."""


class DutyLost(SupervisorError):
    """This replica no longer holds a fleet-wide duty's lease (another replica took it over
    since): the duty's write was refused and nothing written. The work stops here; the new
    holder's next sweep looks again (issue 14: replicas)."""
