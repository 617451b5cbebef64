"""HTTP layer: one flask-smorest Blueprint per resource. Views parse, call one service, return."""
from __future__ import annotations

import typing as t

from flask import current_app
from flask_smorest import Blueprint as _Blueprint
from webargs.flaskparser import FlaskParser


class _Parser(FlaskParser):
    # The contract says schema validation failures are 400, not webargs' 422.
    DEFAULT_VALIDATION_STATUS = 400


class Blueprint(_Blueprint):
    ARGUMENTS_PARSER = _Parser()


def services() -> t.Any:
    """The service bundle the app factory attached (see app.Services)."""
    return current_app.extensions["rds"]


ERROR_REASONS = {
    400: "Invalid input", 401: "Missing or wrong credentials", 404: "Unknown VM, snapshot or path",
    409: "Wrong state for the operation", 413: "Body or content too large",
    429: "VM or snapshot quota reached, or this worker runs its maximum of long calls "
         "(Retry-After)",
    502: "A helper in the guest failed", 503: "libvirt unreachable or no capacity",
    504: "The guest did not answer in time",
    507: "The host's disk budget has no room (DISK_BUDGET_MB / free space)",
}
ALWAYS = (401, 503)


def document_errors(blp: _Blueprint, *statuses: int) -> t.Callable:
    """Document the error responses of a /v1 route (401 and 503 are always possible)."""
    from app.schemas.vms import ApiErrorSchema

    def decorate(view: t.Callable) -> t.Callable:
        for status in sorted(set(statuses + ALWAYS)):
            view = blp.alt_response(status, schema=ApiErrorSchema,
                                    description=ERROR_REASONS[status])(view)
        return view
    return decorate
