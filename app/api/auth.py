"""Admin session (/auth) and the credential check in front of every /v1 route."""
from __future__ import annotations

import hmac

from flask import current_app, request, session
from flask.views import MethodView

from app.api import Blueprint
from app.errors import Unauthorized
from app.schemas.auth import LoginSchema, SessionSchema
from app.schemas.vms import ApiErrorSchema

blp = Blueprint("auth", __name__, url_prefix="/auth", description="Admin session")


def _equal(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def require_credentials() -> None:
    """before_request hook: /v1/* needs X-API-Key or an admin session.

    :raise 401: ``{"message": "Unauthorized"}``.
    """
    if not request.path.startswith("/v1/") and request.path != "/v1":
        return
    settings = current_app.extensions["rds"].settings
    key = request.headers.get("X-API-Key", "")
    if key and _equal(key, settings.api_key):
        return
    email = session.get("email")
    if email and _equal(email, settings.admin_email):
        return
    raise Unauthorized("Unauthorized")


@blp.route("/login")
class Login(MethodView):
    @blp.arguments(LoginSchema)
    @blp.response(200, SessionSchema)
    @blp.alt_response(401, schema=ApiErrorSchema, description="Wrong credentials")
    def post(self, body):
        """Log in as the admin; sets an httpOnly session cookie"""
        settings = current_app.extensions["rds"].settings
        # Compare both fields every time: no timing hint which one was wrong.
        ok_email = _equal(body["email"], settings.admin_email)
        ok_password = _equal(body["password"], settings.admin_password)
        if not (ok_email and ok_password):
            raise Unauthorized("Invalid email or password")
        session.clear()
        session["email"] = settings.admin_email
        return {"email": settings.admin_email}


@blp.route("/logout")
class Logout(MethodView):
    @blp.response(200)
    def post(self):
        """Log out: clears the session cookie"""
        session.clear()
        return {}


@blp.route("/me")
class Me(MethodView):
    @blp.response(200, SessionSchema)
    @blp.alt_response(401, schema=ApiErrorSchema, description="Not logged in")
    def get(self):
        """Who is logged in"""
        email = session.get("email")
        if not email:
            raise Unauthorized("Unauthorized")
        return {"email": email}
