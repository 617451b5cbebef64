"""HTTP layer: one flask-smorest Blueprint per resource. Views parse, call one service, return."""
from __future__ import annotations

import typing as t

import marshmallow as ma
from flask import Request, current_app
from flask_smorest import Blueprint as _Blueprint
from webargs import core
from webargs.flaskparser import FlaskParser, is_json_request

from app.api.jsonbody import InvalidJson, load_document
from app.errors import InvalidRequest


class _Parser(FlaskParser):
    # The contract says schema validation failures are 400, not webargs' 422.
    DEFAULT_VALIDATION_STATUS = 400

    def load_json(self, req: Request, schema: ma.Schema) -> t.Any:
        """The body through :func:`app.api.jsonbody.load_document`; ``missing`` when the body
        is empty or not JSON (the schema then names the missing fields).

        :raise 400: ``{"message": "Invalid JSON: ..."}``.
        """
        data = req.get_data(cache=True) if is_json_request(req) else b""
        if not data:
            if getattr(schema, "body_required", False):
                raise InvalidRequest("a JSON body is required")
            return core.missing
        try:
            return load_document(data)
        except InvalidJson as exc:
            raise InvalidRequest(f"Invalid JSON: {exc}") from None


def required_body(schema: type[ma.Schema]) -> ma.Schema:
    """``schema`` for a body the route cannot do without: no body (or not JSON) is a 400,
    where a schema whose fields all have defaults would take it as ``{}``. (``PUT
    .../network`` without a body used to reset the VM's policy; schemathesis found it.)"""
    instance = schema()
    instance.body_required = True  # read by _Parser.load_json
    return instance


class Blueprint(_Blueprint):
    ARGUMENTS_PARSER = _Parser()

    def arguments(self, schema: type[ma.Schema] | ma.Schema, *args: t.Any,
                  **kwargs: t.Any) -> t.Callable:
        """flask-smorest's, with one schema instance per route: given a class, webargs makes
        a new instance for every request (~0.2 ms of an exec's worker time under load). The
        instances are shared by the request threads; the schemas keep no state between loads
        (nothing is set on ``self`` while loading)."""
        return super().arguments(schema() if isinstance(schema, type) else schema,
                                 *args, **kwargs)


def allow_ips(body: t.Mapping[str, t.Any]) -> tuple[str, ...]:
    """A body's ``allowIps`` (normalised by NetworkPolicySchema: host bits cleared, duplicates
    dropped), once the entries as given are within ``MAX_ALLOW_IPS``: the document's
    ``maxItems`` counts them all, duplicates too (schemathesis sent 70 copies of one address).

    :raise 400: more entries than ``MAX_ALLOW_IPS``.
    """
    limit = services().settings.max_allow_ips
    given = body.get("allowIpsGiven", body["allowIps"])
    if len(given) > limit:
        raise InvalidRequest(f"allowIps has {len(given)} entries; at most {limit} are allowed "
                             f"(MAX_ALLOW_IPS; the first one over is {given[limit]!r})")
    return tuple(body["allowIps"])


def services() -> t.Any:
    """The service bundle the app factory attached (see app.Services)."""
    return current_app.extensions["rds"]


ERROR_REASONS = {
    400: "Invalid input", 401: "Missing or wrong credentials",
    403: "Session cookie without X-Requested-With, or from another origin (CSRF check); "
         "or an API key without the scope the route needs",
    404: "Unknown VM, snapshot or path",
    409: "Wrong state for the operation", 413: "Body or content too large",
    429: "VM or snapshot quota reached, this worker runs its maximum of long calls, or the "
         "VM its maximum of commands at once (Retry-After)",
    502: "A helper in the guest failed", 503: "libvirt unreachable or no capacity",
    504: "The guest did not answer in time",
    507: "The host's disk budget has no room (DISK_BUDGET_MB / free space)",
}
ALWAYS = (401, 503)
# The 403 of the /v1/admin routes.
ADMIN_ONLY = {403: "Not an admin: a key without the admin scope, or a session cookie that "
                   "fails the CSRF check"}


STATE_CHANGING_VIEWS = ("post", "put", "patch", "delete")


def document_errors(blp: _Blueprint, *statuses: int,
                    reasons: t.Mapping[int, str] | None = None) -> t.Callable:
    """Document the error responses of a /v1 route (401 and 503 are always possible, and 403
    on a method that changes state: the session cookie's CSRF check).

    :param reasons: descriptions of this route's own, by status (else ERROR_REASONS').
    """
    from app.schemas.vms import ApiErrorSchema

    def decorate(view: t.Callable) -> t.Callable:
        csrf = (403,) if view.__name__ in STATE_CHANGING_VIEWS else ()
        for status in sorted(set(statuses + ALWAYS + csrf)):
            description = (reasons or {}).get(status, ERROR_REASONS[status])
            view = blp.alt_response(status, schema=ApiErrorSchema,
                                    description=description)(view)
        return view
    return decorate
