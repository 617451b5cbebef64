"""Credentials in front of /v1: API key or admin session cookie."""
from __future__ import annotations

import dataclasses
import json

import pytest

from app import create_app
from tests.unit.fakes import (ADMIN_EMAIL, ADMIN_PASSWORD, CSRF, AuthActions, auth_service,
                              unit_settings)

UNAUTHORIZED = {"message": "Unauthorized"}


@pytest.mark.parametrize("key", [None, "", "wrong", "dev-key", "unit-test-key-", "UNIT-TEST-KEY"])
def test_v1_needs_the_api_key(client, key):
    response = client.get("/v1/vms", headers={} if key is None else {"X-API-Key": key})
    assert response.status_code == 401
    assert response.get_json() == UNAUTHORIZED


@pytest.mark.parametrize(("method", "path"), [
    ("post", "/v1/vms"), ("get", "/v1/vms/x"), ("delete", "/v1/vms/x"),
    ("post", "/v1/vms/x/stop"), ("post", "/v1/vms/x/start"), ("get", "/v1/no-such-route")])
def test_every_v1_route_is_guarded(client, method, path):
    response = getattr(client, method)(path, json={"cpu": 1, "memMb": 256})
    assert response.status_code == 401
    assert response.get_json() == UNAUTHORIZED


def test_api_key_is_accepted(client, auth):
    response = client.get("/v1/vms", headers=auth)
    assert response.status_code == 200
    assert response.get_json() == []


def test_admin_session_flow(client, session, services):
    email = services.settings.admin_email
    assert client.get("/auth/me").status_code == 401

    response = session.login()
    assert response.status_code == 200
    assert response.get_json() == {"email": email}
    cookie = next(c for c in response.headers.getlist("Set-Cookie")
                  if c.startswith("rds_session="))
    assert "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie

    assert client.get("/auth/me").get_json() == {"email": email}
    assert client.get("/v1/vms").status_code == 200  # the cookie alone is enough

    assert session.logout().status_code == 200
    assert client.get("/auth/me").status_code == 401
    assert client.get("/v1/vms").get_json() == UNAUTHORIZED


@pytest.mark.parametrize(("email", "password"), [
    ("admin@test.example", "wrong"), ("someone@else", "unit-test-password"), ("", "")])
def test_wrong_credentials_are_refused(client, session, email, password):
    response = session.login(email, password)
    assert response.status_code == 401
    assert response.get_json() == {"message": "Invalid email or password"}
    assert client.get("/auth/me").status_code == 401
    assert client.get("/v1/vms").status_code == 401


def test_login_body_is_validated(client):
    response = client.post("/auth/login", json={"email": "admin@test.example"})
    assert response.status_code == 400
    assert "password" in response.get_json()["message"]


# Rate limits ##############################################################################

def test_login_is_rate_limited_with_retry_after(client, session):
    for _ in range(5):
        assert session.login(password="wrong").status_code == 401
    for password in ("wrong", ADMIN_PASSWORD):
        response = session.login(password=password)
        assert response.status_code == 429
        assert response.headers["Retry-After"] == "1"
        assert "Too many failed logins" in response.get_json()["message"]
    assert client.get("/auth/me").status_code == 401


def test_login_lockout_doubles_and_ends(client, session, clock):
    for _ in range(5):
        session.login(password="wrong")
    clock.advance(1)
    assert session.login(password="wrong").status_code == 401
    assert session.login().headers["Retry-After"] == "2"
    clock.advance(2)
    assert session.login().status_code == 200


def test_rate_limit_uses_the_client_address(client, session):
    for index in range(5):
        session.login(email=f"guess{index}@example.com", password="wrong")
    assert session.login().status_code == 429
    other = client.post("/auth/login", json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD},
                        environ_base={"REMOTE_ADDR": "198.51.100.7"})
    assert other.status_code == 200


def test_rate_limit_holds_across_workers(services, tmp_path, clock):
    """Two apps on one STORAGE_ROOT, as two gunicorn workers."""
    worker_a = create_app({"TESTING": True}, services=services).test_client()
    second = dataclasses.replace(services, auth=auth_service(services.settings, clock))
    worker_b = create_app({"TESTING": True}, services=second).test_client()
    for client in (worker_a, worker_b, worker_a, worker_b, worker_a):
        assert AuthActions(client).login(password="wrong").status_code == 401
    assert AuthActions(worker_b).login().status_code == 429


# Server-side sessions ######################################################################

def session_cookie(client) -> str:
    cookie = client.get_cookie("rds_session")
    assert cookie is not None
    return cookie.value


def test_the_cookie_carries_only_a_random_session_id(app, client, session):
    session.login()
    payload = app.session_interface.get_signing_serializer(app).loads(session_cookie(client))
    assert set(payload) == {"sid"}
    assert ADMIN_EMAIL not in json.dumps(payload)


def test_replayed_cookie_after_logout_is_401(client, session):
    session.login()
    stolen = session_cookie(client)
    assert session.logout().status_code == 200
    client.set_cookie("rds_session", stolen)
    assert client.get("/auth/me").get_json() == UNAUTHORIZED
    assert client.get("/v1/vms").status_code == 401


def test_a_new_admin_password_ends_older_sessions(services, tmp_path, clock):
    old = create_app({"TESTING": True}, services=services).test_client()
    assert AuthActions(old).login().status_code == 200
    cookie = session_cookie(old)
    settings = unit_settings(tmp_path, ADMIN_PASSWORD="a-brand-new-password")
    restarted = create_app({"TESTING": True}, services=dataclasses.replace(
        services, settings=settings, auth=auth_service(settings, clock))).test_client()
    restarted.set_cookie("rds_session", cookie)
    assert restarted.get("/auth/me").status_code == 401
    assert restarted.get("/v1/vms").status_code == 401
    assert AuthActions(restarted).login(password="a-brand-new-password").status_code == 200


def test_logging_in_again_ends_the_browsers_earlier_session(client, session):
    session.login()
    earlier = session_cookie(client)
    session.login()
    assert client.get("/auth/me").status_code == 200
    client.set_cookie("rds_session", earlier)
    assert client.get("/auth/me").status_code == 401


def test_an_idle_session_expires(client, session, clock, services):
    session.login()
    clock.advance(services.settings.session_idle_timeout_s + 1)
    assert client.get("/auth/me").status_code == 401
    assert client.get("/v1/vms").status_code == 401


def test_a_forged_email_only_cookie_is_refused(app, client):
    """The old cookie format ({"email": ...}), signable by anyone who knows the secret."""
    forged = app.session_interface.get_signing_serializer(app).dumps({"email": ADMIN_EMAIL})
    client.set_cookie("rds_session", forged)
    assert client.get("/auth/me").status_code == 401
    assert client.get("/v1/vms").status_code == 401


# CSRF #####################################################################################

STATE_CHANGES = [("post", "/v1/vms", {"cpu": 1, "memMb": 256}), ("post", "/v1/vms/x/stop", None),
                 ("delete", "/v1/vms/x", None), ("put", "/v1/vms/x/network", {}),
                 ("patch", "/v1/vms/x", None)]


@pytest.mark.parametrize(("method", "path", "body"), STATE_CHANGES)
def test_cookie_state_change_without_csrf_header_is_403(client, session, method, path, body):
    session.login()
    response = getattr(client, method)(path, json=body)
    assert response.status_code == 403
    assert "X-Requested-With" in response.get_json()["message"]


@pytest.mark.parametrize("origin", ["https://evil.example", "http://localhost.evil.example",
                                    "null", "http://localhost:8080", "https://localhost"])
@pytest.mark.parametrize(("method", "path", "body"), STATE_CHANGES[:3])
def test_cookie_state_change_from_another_origin_is_403(client, session, method, path, body,
                                                        origin):
    session.login()
    response = getattr(client, method)(path, json=body, headers={**CSRF, "Origin": origin})
    assert response.status_code == 403
    assert "Origin" in response.get_json()["message"]


@pytest.mark.parametrize("origin", [None, "http://localhost", "HTTP://LOCALHOST/"])
def test_cookie_state_change_with_the_header_from_our_origin_passes(client, session, origin):
    session.login()
    headers = {**CSRF, **({"Origin": origin} if origin else {})}
    created = client.post("/v1/vms", json={"cpu": 1, "memMb": 256}, headers=headers)
    assert created.status_code == 201
    vm_id = created.get_json()["id"]
    assert client.delete(f"/v1/vms/{vm_id}", headers=headers).status_code == 204


def test_cookie_reads_need_no_csrf_header(client, session):
    session.login()
    assert client.get("/v1/vms", headers={"Origin": "https://evil.example"}).status_code == 200


def test_api_key_requests_need_no_csrf_header(client, auth):
    response = client.post("/v1/vms", json={"cpu": 1, "memMb": 256},
                           headers={**auth, "Origin": "https://evil.example"})
    assert response.status_code == 201


def test_logout_with_the_cookie_needs_the_csrf_header(client, session):
    session.login()
    response = client.post("/auth/logout")
    assert response.status_code == 403
    assert client.get("/auth/me").status_code == 200  # still logged in
    response = client.post("/auth/logout", headers={**CSRF, "Origin": "https://evil.example"})
    assert response.status_code == 403
    assert session.logout().status_code == 200
    assert client.get("/auth/me").status_code == 401


def test_logout_without_a_session_is_200(client):
    assert client.post("/auth/logout").status_code == 200


def test_csrf_origin_follows_the_proxy(services):
    """Behind nginx (TRUSTED_PROXIES=1) the public scheme and host are what Origin names."""
    settings = dataclasses.replace(services.settings, trusted_proxies=1)
    client = create_app({"TESTING": True}, services=dataclasses.replace(
        services, settings=settings)).test_client()
    forwarded = {"X-Forwarded-For": "203.0.113.5", "X-Forwarded-Proto": "https",
                 "X-Forwarded-Host": "sandbox.example.com"}
    assert client.post("/auth/login", json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD},
                       headers=forwarded).status_code == 200
    response = client.post("/v1/vms", json={"cpu": 1, "memMb": 256}, headers={
        **forwarded, **CSRF, "Origin": "https://sandbox.example.com"})
    assert response.status_code == 201
    response = client.post("/v1/vms", json={"cpu": 1, "memMb": 256}, headers={
        **forwarded, **CSRF, "Origin": "http://localhost"})
    assert response.status_code == 403
