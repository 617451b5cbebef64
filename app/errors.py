"""The AppError tree (each carries its HTTP status) and the one JSON error handler."""
from __future__ import annotations

import logging
import typing as t

log = logging.getLogger(__name__)


class AppError(Exception):
    """An error a client can be told about: ``{"message": ...}`` with ``http_status``."""

    http_status = 500

    def __init__(self, message: str, headers: t.Mapping[str, str] | None = None,
                 **extra: t.Any) -> None:
        """:param headers: response headers to send with the error (e.g. ``Retry-After``).
        :param extra: more fields of the JSON body."""
        super().__init__(message)
        self.message = message
        self.headers = dict(headers or {})
        self.extra = extra


class InvalidRequest(AppError):
    http_status = 400


class Unauthorized(AppError):
    http_status = 401


class Forbidden(AppError):
    """Credentials are fine but the request is refused (e.g. a cross-site request)."""

    http_status = 403


class VmNotFound(AppError):
    http_status = 404


class SnapshotNotFound(AppError):
    http_status = 404


class VmStateConflict(AppError):
    http_status = 409


class VmBusy(VmStateConflict):
    """Another operation (stop, start, delete, network change) holds the VM's lock."""


class PayloadTooLarge(AppError):
    http_status = 413


class QuotaExceeded(AppError):
    http_status = 429


class TooBusy(AppError):
    """Every slot for long calls on this worker is taken: retry shortly."""

    http_status = 429


class InsufficientStorage(AppError):
    """The host's disk budget has no room for a new disk or snapshot."""

    http_status = 507


class RateLimited(AppError):
    """Too many attempts; try again after ``retry_after_s`` seconds (the Retry-After header)."""

    http_status = 429

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)},
                         retryAfterS=retry_after_s)
        self.retry_after_s = retry_after_s


class HypervisorError(AppError):
    """libvirt failed or is unreachable."""

    http_status = 503


class CapacityExhausted(AppError):
    http_status = 503


class GuestCommandFailed(AppError):
    """A helper in the guest failed (e.g. packing a download): the guest answered, wrongly."""

    http_status = 502


class StoreUnavailable(AppError):
    """The service's own state database (app.store) cannot be read or written."""

    http_status = 503


class GuestUnreachable(AppError):
    """The guest did not answer over SSH in time."""

    http_status = 504


class CommandTimeout(AppError):
    http_status = 504


def register_error_handlers(app: t.Any) -> None:
    """Every error leaves as ``{"message": ...}``; 422 from schema validation becomes 400."""
    from flask import jsonify, g
    from werkzeug.exceptions import HTTPException

    def _reply(status: int, body: dict[str, t.Any]):
        response = jsonify(body)
        response.status_code = status
        return response

    @app.errorhandler(AppError)
    def handle_app_error(error: AppError):
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
        return _reply(status, body)

    @app.errorhandler(Exception)
    def handle_unexpected(error: Exception):
        request_id = getattr(g, "request_id", None)
        log.exception("unhandled error request_id=%s", request_id)
        return _reply(500, {"message": "Internal server error", "requestId": request_id})


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
