"""Admin session (/auth) and the credential check in front of every /v1 route.

The session cookie (Flask's signed session) carries only a random session id; the session
itself, its expiry and its revocation live server-side (app.services.auth). Requests that
change state and are authenticated by that cookie must also pass a CSRF check
(:func:`check_csrf`); requests with an API key are not cookie-borne and need none.
"""
from __future__ import annotations

import hmac

from flask import Flask, Request, request, session
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface
from flask.views import MethodView

from app import actor
from app.api import Blueprint, services
from app.errors import Forbidden, Unauthorized
from app.schemas.auth import EmptySchema, LoginSchema, SessionSchema
from app.schemas.vms import ApiErrorSchema

blp = Blueprint("auth", __name__, url_prefix="/auth", description="Admin session")
SESSION_KEY = "sid"
CSRF_HEADER = "X-Requested-With"
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class CookieSessions(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions, with nothing to do for a request without the cookie
    (every API-key call): Flask opens the session of every request, and its own interface
    builds the cookie's signing serializer (a key derivation) before it looks for one."""

    def open_session(self, app: Flask, request: Request) -> SecureCookieSession | None:
        if not request.cookies.get(self.get_cookie_name(app)):
            return self.session_class()
        return super().open_session(app, request)


def _equal(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def _session_token() -> str | None:
    token = session.get(SESSION_KEY)
    return token if isinstance(token, str) else None


def _session_email() -> str | None:
    token = _session_token()
    return services().auth.session_email(token) if token else None


def require_credentials() -> None:
    """before_request hook: /v1/* (and /metrics unless METRICS_PUBLIC) needs X-API-Key (the
    bootstrap ``API_KEY`` or a managed key) or a live admin session (plus the CSRF check for
    a state-changing request on the cookie), and the scope the route needs
    (:func:`required_scope`).

    :raise 401: ``{"message": "Unauthorized"}``: no, unknown, revoked or expired credential.
    :raise 403: a cookie-authenticated request that fails :func:`check_csrf`, or a key
        without the route's scope.
    """
    protected = request.path.startswith("/v1/") or request.path == "/v1" or (
        request.path == "/metrics" and not services().settings.metrics_are_public)
    if not protected:
        return
    who = _key_caller(request.headers.get("X-API-Key", ""))
    if who is None:
        email = _session_email()
        if email is None:
            raise Unauthorized("Unauthorized")
        check_csrf()
        who = actor.Caller(actor.session(email))
    needed = required_scope(request.method, request.path)
    if not who.admin and needed not in who.scopes:
        raise Forbidden(f"This API key lacks the {needed!r} scope this route needs")
    actor.enter(who)


def _key_caller(key: str) -> actor.Caller | None:
    """Who ``key`` is: the bootstrap key (every scope), a live managed key, or None."""
    if not key:
        return None
    if _equal(key, services().settings.api_key):
        return actor.Caller(actor.api_key())
    managed = services().api_keys.check(key)
    if managed is None:
        return None
    return actor.Caller(actor.managed_key(managed.name), key_id=managed.id,
                        scopes=frozenset(managed.scopes), max_vms=managed.max_vms)


def required_scope(method: str, path: str) -> str:
    """``admin`` for /v1/admin/*, /v1/hosts*, /metrics and changes to images; ``vms`` for the
    rest (VMs, their commands, files and snapshots, and reading images)."""
    if path == "/v1/admin" or path.startswith(("/v1/admin/", "/v1/hosts/")) or \
            path in ("/metrics", "/v1/hosts"):
        return "admin"
    if (path == "/v1/images" or path.startswith("/v1/images/")) and \
            method not in ("GET", "HEAD", "OPTIONS"):
        return "admin"
    return "vms"


def check_csrf() -> None:
    """Refuse a state-changing request that another site may have made the browser send.

    A cross-site form cannot set a custom header, and a cross-origin fetch that does needs a
    CORS preflight this service never grants; browsers also say where a request comes from
    in ``Origin``, which must then be this service itself (scheme and host, as ProxyFix
    sees them behind a proxy).

    :raise 403: ``Origin`` names another site, or ``X-Requested-With`` is missing.
    """
    if request.method not in STATE_CHANGING:
        return
    origin = request.headers.get("Origin")
    own = f"{request.scheme}://{request.host}".lower()
    if origin is not None and origin.rstrip("/").lower() != own:
        raise Forbidden(f"Cross-origin request refused: Origin {origin[:200]!r} is not {own}")
    if not request.headers.get(CSRF_HEADER, "").strip():
        raise Forbidden(f"A request with the session cookie that changes state needs the "
                        f"header {CSRF_HEADER} (any value); API clients send X-API-Key instead")


@blp.route("/login")
class Login(MethodView):
    @blp.doc(operationId="login")
    @blp.arguments(LoginSchema)
    @blp.response(200, SessionSchema)
    @blp.alt_response(401, schema=ApiErrorSchema, description="Wrong credentials")
    @blp.alt_response(429, schema=ApiErrorSchema, headers={"Retry-After": {
        "description": "seconds until the next attempt", "schema": {"type": "integer"}}},
        description="Too many failed logins from this address or for this account")
    def post(self, body):
        """Log in as the admin; sets an httpOnly session cookie

        After LOGIN_MAX_FAILURES (default 5) failures per client address or per account,
        each attempt waits a lockout that doubles per failure (1 s, 2 s, 4 s ...) up to
        LOGIN_MAX_LOCKOUT_S (default 15 minutes): 429 with Retry-After.
        """
        bundle = services()
        opened = bundle.auth.login(body["email"], body["password"], request.remote_addr or "")
        previous = _session_token()
        if previous:  # this browser's earlier session ends with the new one
            bundle.auth.logout(previous)
        session.clear()
        session[SESSION_KEY] = opened.token
        return {"email": opened.email}


@blp.route("/logout")
class Logout(MethodView):
    @blp.doc(operationId="logout")
    @blp.response(200, EmptySchema)
    @blp.alt_response(403, schema=ApiErrorSchema,
                      description="Cross-site request (Origin) or no X-Requested-With header")
    def post(self):
        """Log out: ends the session server-side and clears the cookie

        With a session cookie the request needs the header X-Requested-With (any value) and,
        if it sends Origin, this service's own origin.
        """
        token = _session_token()
        if token:
            check_csrf()
            services().auth.logout(token)
        session.clear()
        return {}


@blp.route("/me")
class Me(MethodView):
    @blp.doc(operationId="getSession")
    @blp.response(200, SessionSchema)
    @blp.alt_response(401, schema=ApiErrorSchema, description="Not logged in")
    def get(self):
        """Who is logged in"""
        email = _session_email()
        if email is None:
            raise Unauthorized("Unauthorized")
        return {"email": email}
