"""/admin: the console's page and assets (app/api/console.py, app/web/)."""
from __future__ import annotations

import dataclasses
import re

import pytest

from app import create_app
from app.api.console import WEB_DIR
from app.services.events import EVENT_TYPES
from tests.unit.fakes import ADMIN_EMAIL, ADMIN_PASSWORD, CSRF

ASSETS = sorted(path.name for path in (WEB_DIR / "assets").iterdir())


def test_admin_redirects_to_the_page(client):
    response = client.get("/admin")
    assert response.status_code == 308
    assert response.headers["Location"].endswith("/admin/")


def test_page_is_served_without_a_session_and_holds_no_data(client):
    """The shell loads logged out (its script shows the login form); the data stays behind
    the API's credential check."""
    response = client.get("/admin/")
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    page = response.get_data(as_text=True)
    assert '<form id="login-form"' in page
    assert '<label for="login-email">' in page and '<label for="login-password">' in page
    assert client.get("/v1/vms").status_code == 401
    assert client.get("/auth/me").status_code == 401


def test_page_after_login_is_the_same_page(client, session):
    assert session.login().status_code == 200
    assert client.get("/admin/").get_data() == (WEB_DIR / "index.html").read_bytes()
    assert client.get("/auth/me").get_json() == {"email": "admin@test.example"}


@pytest.mark.parametrize("path", ["/admin/", "/admin/assets/core.js", "/admin/nope",
                                  "/admin/assets/nope.js"])
def test_every_console_answer_has_a_strict_csp(client, path):
    response = client.get(path)
    policy = dict(part.strip().split(" ", 1)
                  for part in response.headers["Content-Security-Policy"].split(";"))
    assert policy["default-src"] == "'none'"
    assert policy["script-src"] == "'self'"  # no inline scripts, no eval, no CDN
    assert policy["style-src"] == "'self'"
    assert policy["connect-src"] == "'self'"
    assert policy["frame-ancestors"] == "'none'"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Frame-Options"] == "DENY"


@pytest.mark.parametrize("name", ASSETS)
def test_assets_are_served_with_their_types(client, name):
    response = client.get(f"/admin/assets/{name}")
    assert response.status_code == 200
    expected = {"js": "text/javascript", "css": "text/css"}[name.rsplit(".", 1)[1]]
    assert response.mimetype == expected
    assert response.headers["Cache-Control"] == "no-cache"


@pytest.mark.parametrize("path", ["/admin/assets/../index.html", "/admin/assets/%2e%2e/"
                                  "index.html", "/admin/assets/nope.js", "/admin/index.html"])
def test_nothing_else_is_served(client, path):
    assert client.get(path).status_code == 404


def test_page_has_no_inline_script_or_style_and_no_remote_url():
    page = (WEB_DIR / "index.html").read_text()
    assert not re.search(r"<script(?![^>]*\bsrc=)", page), "inline <script>"
    assert "<style" not in page and " style=" not in page
    assert " on" not in re.sub(r"<!--.*?-->", "", page, flags=re.S).replace(" one ", "")
    scripts = re.findall(r'<script defer src="([^"]+)"', page)
    assert scripts[0] == "assets/core.js"  # the sections register with core.js
    assert sorted(name.removeprefix("assets/") for name in scripts) == [
        name for name in ASSETS if name.endswith(".js")]
    for path in [WEB_DIR / "index.html", *sorted((WEB_DIR / "assets").iterdir())]:
        assert not re.search(r"https?://", path.read_text()), f"{path.name} names a remote URL"


def test_scripts_never_put_text_into_innerhtml():
    for path in sorted((WEB_DIR / "assets").glob("*.js")):
        source = path.read_text()
        assert "innerHTML" not in source and "outerHTML" not in source, path.name
        assert "insertAdjacentHTML" not in source and "document.write" not in source


def test_console_knows_every_event_type():
    """The feed listens to, and the webhook form offers, the service's event types."""
    source = (WEB_DIR / "assets" / "core.js").read_text()
    listed = re.search(r"const EVENT_TYPES = \[([^\]]*)\]", source)
    assert listed, "core.js has no EVENT_TYPES"
    assert tuple(re.findall(r'"([^"]+)"', listed.group(1))) == EVENT_TYPES


def test_console_cookie_calls_pass_the_csrf_check(client, session):
    """What the console sends on a state-changing call (X-Requested-With, same Origin)."""
    session.login()
    source = (WEB_DIR / "assets" / "core.js").read_text()
    assert 'headers["X-Requested-With"]' in source
    response = client.post("/auth/logout", headers={**CSRF, "Origin": "http://localhost"})
    assert response.status_code == 200


@pytest.mark.parametrize(("port", "origin"), [("8443", "https://sandbox.example.com:8443"),
                                              ("443", "https://sandbox.example.com")])
def test_console_behind_nginx_on_any_port_passes_the_csrf_check(services, port, origin):
    """The shipped nginx site sends Host and X-Forwarded-Host without the port (``$host``)
    and the port in X-Forwarded-Port; the browser's Origin names the port unless it is the
    default, so the service must take the port from the proxy too."""
    settings = dataclasses.replace(services.settings, trusted_proxies=1)
    client = create_app({"TESTING": True}, services=dataclasses.replace(
        services, settings=settings)).test_client()
    forwarded = {"X-Forwarded-For": "203.0.113.5", "X-Forwarded-Proto": "https",
                 "X-Forwarded-Host": "sandbox.example.com", "X-Forwarded-Port": port}
    assert client.post("/auth/login", json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD},
                       headers=forwarded).status_code == 200
    response = client.post("/auth/logout", headers={**forwarded, **CSRF, "Origin": origin})
    assert response.status_code == 200, response.get_json()
