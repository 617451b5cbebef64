"""Credentials in front of /v1: API key or admin session cookie."""
from __future__ import annotations

import pytest

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
