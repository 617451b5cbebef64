"""The AppError tree (each carries its HTTP status) and the one JSON error handler."""
from __future__ import annotations

import errno
import logging
import typing as t

log = logging.getLogger(__name__)


class AppError(Exception):
    """An error a client can be told about: ``{"message": ...}``, with the HTTP status that
    :data:`HTTP_STATUS` gives its kind."""

    def __init__(self, message: str, headers: t.Mapping[str, str] | None = None,
                 **extra: t.Any) -> None:
        """:param headers: response headers to send with the error (e.g. ``Retry-After``).
        :param extra: more fields of the JSON body."""
        super().__init__(message)
        self.message = message
        self.headers = dict(headers or {})
        self.extra = extra

    @property
    def http_status(self) -> int:
        return status_of(self)


# The caller's request #####################################################################

class InvalidRequest(AppError):
    """The request is malformed or breaks a rule."""


class PayloadTooLarge(AppError):
    """A body, an archive's content or a download is over its limit."""


class Unauthorized(AppError):
    """Missing or wrong credentials."""


class Forbidden(AppError):
    """Credentials are fine but the request is refused (e.g. a cross-site request)."""


class NotFound(AppError):
    """Something the request names does not exist."""


class VmNotFound(NotFound):
    pass


class SnapshotNotFound(NotFound):
    pass


class ImageNotFound(NotFound):
    pass


class ApiKeyNotFound(NotFound):
    pass


class PathNotFound(NotFound):
    """A path inside a guest."""


class FilterNotFound(NotFound):
    """A libvirt nwfilter (never reaches a caller: removing a missing one is fine)."""


class WebhookNotFound(NotFound):
    """A webhook, or a delivery of it."""


class HostNotFound(NotFound):
    pass


class Conflict(AppError):
    """The thing exists but is in the wrong state for the operation."""


class VmStateConflict(Conflict):
    pass


class VmBusy(Conflict):
    """Another operation (stop, start, delete, network change) holds the VM's lock."""


class SnapshotInUse(Conflict):
    """A VM created from the snapshot still exists."""


class ApiKeyNameTaken(Conflict):
    """Another live (not revoked) API key has the name."""


class ImageInUse(Conflict):
    """A VM, a disk snapshot or a build uses the image, or it is built in or the default."""


class ImageStateConflict(Conflict):
    """The image is not in the state the operation needs (e.g. files after the build began)."""


class DeliveryInFlight(Conflict):
    """A webhook delivery is being sent right now (redeliver it once that ends)."""


# Limits ###################################################################################

class QuotaExceeded(AppError):
    """A count limit: MAX_VMS, MAX_SNAPSHOTS."""


class KeyQuotaExceeded(QuotaExceeded):
    """An API key's own ``maxVms`` (evicting a warm-pool VM would not help)."""


class TooBusy(AppError):
    """Every slot for long calls on this worker is taken: retry shortly."""


class GuestBusy(TooBusy):
    """The guest refused another SSH channel: it runs as many commands at once as its sshd
    allows (``MaxSessions``). Retry once one has ended."""

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"Retry-After": "1"})


class RateLimited(AppError):
    """Too many attempts; try again after ``retry_after_s`` seconds (the Retry-After header)."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)},
                         retryAfterS=retry_after_s)
        self.retry_after_s = retry_after_s


class InsufficientStorage(AppError):
    """The host's disk budget has no room for a new disk or snapshot."""


# The host and the guests ##################################################################

class HypervisorError(AppError):
    """libvirt failed or is unreachable."""


class HostBusy(AppError):
    """A host-wide lock stayed taken (other creates, snapshots): retry."""


class CapacityExhausted(AppError):
    """The host has no room of a kind that retrying will not make (e.g. no guest address)."""


class ImageNotReady(AppError):
    """A template's guest image (or a snapshot's) has not been built on this host."""


class StoreUnavailable(AppError):
    """The service's own state database (app.store) cannot be read or written."""


class GuestCommandFailed(AppError):
    """A helper in the guest failed (e.g. packing a download): the guest answered, wrongly."""


class GuestUnreachable(AppError):
    """The guest did not answer over SSH in time."""


class CommandTimeout(AppError):
    """A guest command gave no output or no end before its deadline."""


# The one place where a kind of error becomes an HTTP status (the most specific class wins).
HTTP_STATUS: dict[type[AppError], int] = {
    InvalidRequest: 400,
    Unauthorized: 401,
    Forbidden: 403,
    NotFound: 404,
    Conflict: 409,
    PayloadTooLarge: 413,
    QuotaExceeded: 429,
    TooBusy: 429,
    RateLimited: 429,
    GuestCommandFailed: 502,
    HypervisorError: 503,
    HostBusy: 503,
    CapacityExhausted: 503,
    ImageNotReady: 503,
    StoreUnavailable: 503,
    GuestUnreachable: 504,
    CommandTimeout: 504,
    InsufficientStorage: 507,
}


def status_of(error: AppError) -> int:
    """The HTTP status of an error: its class's, or the nearest base class's; 500 if none."""
    for cls in type(error).__mro__:
        if cls in HTTP_STATUS:
            return HTTP_STATUS[cls]
    return 500


def register_error_handlers(app: t.Any) -> None:
    """Every error leaves as ``{"message": ...}``; 422 from schema validation becomes 400."""
    from flask import jsonify, g
    from werkzeug.exceptions import HTTPException, MethodNotAllowed

    def _reply(status: int, body: dict[str, t.Any]):
        response = jsonify(body)
        response.status_code = status
        return response

    @app.errorhandler(AppError)
    def handle_app_error(error: AppError):
        if isinstance(error, GuestUnreachable):
            from app import metrics
            metrics.SSH_ERRORS.labels(type(error).__name__).inc()
        if error.http_status >= 500:
            log.warning("request failed status=%s message=%s", error.http_status, error.message)
        response = _reply(error.http_status, {"message": error.message, **error.extra})
        response.headers.update(error.headers)
        return response

    @app.errorhandler(HTTPException)
    def handle_http_exception(error: HTTPException):
        status = error.code or 500
        body: dict[str, t.Any] = {"message": error.description or error.name}
        data = getattr(error, "data", None) or {}
        messages = data.get("messages") if isinstance(data, dict) else None
        if status == 422:
            status = 400
        if status == 400 and messages:
            # Our parser raises 400 (not 422); either way say which field is wrong.
            body["message"] = "Invalid request: " + _summarise(messages)
        if messages:
            body["errors"] = _string_keys(messages)
        if isinstance(data, dict) and data.get("message"):
            body["message"] = data["message"]
        response = _reply(status, body)
        if isinstance(error, MethodNotAllowed) and error.valid_methods:
            # RFC 9110 section 15.5.6: a 405 must list the methods the resource supports.
            response.headers["Allow"] = ", ".join(error.valid_methods)
        return response

    @app.errorhandler(Exception)
    def handle_unexpected(error: Exception):
        full = storage_full(error)
        if full is not None:
            return handle_app_error(full)
        request_id = getattr(g, "request_id", None)
        log.exception("unhandled error request_id=%s", request_id)
        return _reply(500, {"message": "Internal server error", "requestId": request_id})


def storage_full(error: BaseException) -> InsufficientStorage | None:
    """A write that found the host's filesystem full (ENOSPC, EDQUOT), as the 507 it is; None
    for any other error. Whatever was being built has been undone by then (its Cleanup ran
    while the error passed), so the caller can retry once room is made."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return disk_full(error.strerror or "No space left on device")
    return None


# What qemu-img, cp and friends print when a write found the filesystem full.
DISK_FULL_MESSAGES = ("No space left on device", "Disk quota exceeded")


def disk_full(reason: str) -> InsufficientStorage:
    """The 507 of a write that found the storage filesystem full (``reason``: the OS's
    words), whatever wrote it."""
    return InsufficientStorage(
        f"the host's storage is full ({reason}); nothing was kept of this request: delete "
        f"VMs, snapshots or images, or ask the operator for room")


def _string_keys(node: t.Any) -> t.Any:
    """marshmallow's errors with every key a string: a list field's errors are keyed by index
    and may sit beside ``"_schema"``, which JSON (sorted keys) cannot mix."""
    if isinstance(node, dict):
        return {str(key): _string_keys(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_string_keys(item) for item in node]
    return node


def _summarise(messages: t.Any) -> str:
    """One readable line out of marshmallow's nested error dict."""
    parts: list[str] = []

    def walk(prefix: str, node: t.Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("json", "query", "headers", "view_args") and not prefix:
                    walk("", value)
                else:
                    walk(f"{prefix}.{key}" if prefix else str(key), value)
        elif isinstance(node, list) and all(isinstance(item, str) for item in node):
            parts.append(f"{prefix}: {' '.join(node)}" if prefix else " ".join(node))
        elif isinstance(node, list):
            for index, item in enumerate(node):
                walk(f"{prefix}[{index}]", item)
        else:
            parts.append(f"{prefix}: {node}")

    walk("", messages or {})
    return "; ".join(parts) if parts else "validation failed"
