"""/admin: the admin console, a static page over the JSON API (the files are in app/web/).

The page holds no data and needs no session to load: it asks ``GET /auth/me`` and shows the
login form on 401, then talks to /auth and /v1 with the session cookie like any other client
(sending ``X-Requested-With`` on state-changing calls, see app.api.auth.check_csrf). So this
module only serves files, each with a strict Content-Security-Policy: scripts, styles and
requests to this origin only, no inline script or style, no framing. No Node build step: the
files in app/web/ are what the browser runs.
"""
from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, send_from_directory

from app.errors import NotFound

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
# One directive per line of defence: nothing loads unless it is named here.
CSP = "; ".join((
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data:",
    "connect-src 'self'",  # the API and the event stream (EventSource)
    "form-action 'self'",
    "base-uri 'none'",
    "frame-ancestors 'none'",
))
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidate (ETag): an upgrade shows at the next load
}

blp = Blueprint("console", __name__, url_prefix="/admin")


@blp.get("/")
def page() -> Response:
    """The console's page; ``/admin`` redirects here (308), so its assets resolve relatively."""
    return send_from_directory(WEB_DIR, "index.html")


@blp.get("/assets/<path:name>")
def asset(name: str) -> Response:
    """A script, style sheet or image of the console; 404 for anything else.

    :raise 404: no such file under app/web/assets/.
    """
    return send_from_directory(WEB_DIR / "assets", name)


@blp.get("/<path:_rest>")
def unknown(_rest: str) -> Response:
    """Anything else under /admin/ (a 404 with the console's headers, not the app's).

    :raise 404: always.
    """
    raise NotFound("No such page of the admin console")


@blp.after_request
def secure(response: Response) -> Response:
    """Every console answer (404s included) carries the CSP and the other browser guards."""
    for name, value in HEADERS.items():
        response.headers.setdefault(name, value)
    return response
