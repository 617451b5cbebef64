"""The exceptions of the SDK: one class per kind of failure, each carrying the server's message.

The server answers every error as ``{"message": "..."}`` with a status that says what went
wrong (400 invalid, 401, 404 unknown VM, 409 wrong state, 413, 429, 503, 504; see the API
contract). :func:`error_for_response` turns such an answer into the matching class, so callers
catch ``NotFound`` or ``QuotaExceeded`` instead of comparing numbers.
"""
from __future__ import annotations

import typing as t

if t.TYPE_CHECKING:
    from rds_client.models import CommandResult


class RdsError(Exception):
    """Base of every error the SDK raises.

    :param message: the server's ``message`` (or the client's own description).
    :param status: the HTTP status, or ``None`` when no answer came (transport, client timeout).
    :param body: the decoded JSON error body, when there was one.
    :param request_id: the server's ``X-Request-Id``, to find the request in its log.
    """

    def __init__(self, message: str, *, status: int | None = None,
                 body: dict[str, t.Any] | None = None, request_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.body = body or {}
        self.request_id = request_id

    def __str__(self) -> str:
        prefix = f"{self.status} " if self.status is not None else ""
        return f"{prefix}{self.message}"


class BadRequest(RdsError):
    """400: the server refused the input (``body["errors"]`` has per-field details)."""


class Unauthorized(RdsError):
    """401: no API key, or the wrong one."""


class Forbidden(RdsError):
    """403: a session-cookie request without the CSRF header (API-key calls never see it)."""


class NotFound(RdsError):
    """404: unknown VM or snapshot, or a missing path on download."""


class Conflict(RdsError):
    """409: the VM is in the wrong state for the operation (e.g. exec on a STOPPED VM)."""


class PayloadTooLarge(RdsError):
    """413: an upload or download over the server's size limits."""


class QuotaExceeded(RdsError):
    """429: over ``MAX_VMS``/``MAX_SNAPSHOTS``, or the server's long-call slots are full.

    :attr retry_after: seconds from the ``Retry-After`` header, when the server sent one.
    """

    def __init__(self, message: str, *, retry_after: float | None = None,
                 **kwargs: t.Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class ServerError(RdsError):
    """Any other 5xx (500, 502 a failed pack, 507 out of disk budget), and an ``error`` line
    that ends a stream after its 200."""


class Unavailable(ServerError):
    """503: the host cannot serve right now (libvirt down, no capacity)."""


class Timeout(RdsError):
    """504 (the guest did not answer in time), or no answer within the client's own timeout
    (then ``status`` is ``None``)."""


class TransportError(RdsError):
    """No usable answer: connection refused or reset, a broken stream or archive."""


class UnsafeArchive(RdsError):
    """A downloaded archive held an entry that would land outside the target directory (an
    absolute path, ``..``, a link out of it) or a device/fifo; extraction stopped there."""


class CommandFailed(RdsError):
    """Raised by ``exec(..., check=True)`` and friends when the command exited non-zero or
    timed out.

    :attr result: the command's :class:`~rds_client.models.CommandResult`.
    """

    def __init__(self, result: CommandResult) -> None:
        what = "timed out" if result.timed_out else f"exited with {result.exit_code}"
        tail = result.stderr.strip().splitlines()[-1:] if result.stderr else []
        super().__init__(f"command {what}" + (f": {tail[0]}" if tail else ""))
        self.result = result


_BY_STATUS: dict[int, type[RdsError]] = {
    400: BadRequest, 401: Unauthorized, 403: Forbidden, 404: NotFound, 409: Conflict,
    413: PayloadTooLarge, 429: QuotaExceeded, 503: Unavailable, 504: Timeout,
}


def error_for_status(status: int, message: str, *, body: dict[str, t.Any] | None = None,
                     request_id: str | None = None,
                     retry_after: float | None = None) -> RdsError:
    """The exception for an error answer with ``status``."""
    cls = _BY_STATUS.get(status) or (ServerError if status >= 500 else RdsError)
    if cls is QuotaExceeded:
        return QuotaExceeded(message, status=status, body=body, request_id=request_id,
                             retry_after=retry_after)
    return cls(message, status=status, body=body, request_id=request_id)
