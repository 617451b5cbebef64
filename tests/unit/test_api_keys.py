"""Managed API keys on the real services over fakes: the /v1/admin/api-keys routes, what is
stored (a hash, never the secret), scopes (401 vs 403), ownership of VMs and snapshots (another
key's VM is 404 on every route), the per-key quota, lastUsedAt, expiry and revocation."""
from __future__ import annotations

import datetime as dt
import hashlib
import sqlite3

import pytest

from app import actor
from app.models import VmSpec
from tests.unit.fakes import CSRF

VALID = {"cpu": 1, "memMb": 256}
ROUTE = "/v1/admin/api-keys"


def iso(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.timezone.utc).isoformat()


@pytest.fixture
def make_key(client, auth):
    """Create a key as the bootstrap admin; returns the create answer (with ``key``)."""

    def make(name: str, **body) -> dict:
        response = client.post(ROUTE, json={"name": name, **body}, headers=auth)
        assert response.status_code == 201, response.text
        return response.get_json()

    return make


def header(created: dict) -> dict[str, str]:
    return {"X-API-Key": created["key"]}


# The routes ###############################################################################

def test_create_answers_the_secret_once_and_stores_only_its_hash(client, auth, make_key,
                                                                 services, clock):
    created = make_key("ci runner", maxVms=2)
    prefix, key = created["prefix"], created["key"]
    assert key.startswith(f"rds_{prefix}_") and len(prefix) == 8 and len(key) > 50
    assert created["scopes"] == ["vms"] and created["maxVms"] == 2
    assert created["createdBy"] == "api-key" and created["lastUsedAt"] is None
    assert created["revokedAt"] is None and created["expiresAt"] is None
    assert created["createdAt"] == iso(clock.now).replace("+00:00", ".000Z")
    listed = client.get(ROUTE, headers=auth).get_json()
    assert listed == [{name: value for name, value in created.items() if name != "key"}]
    assert client.get(f"{ROUTE}/{created['id']}", headers=auth).get_json() == listed[0]
    raw = services.settings.state_db_path.read_bytes()
    assert key.encode() not in raw and key.split("_", 2)[2].encode() not in raw
    with sqlite3.connect(services.settings.state_db_path) as conn:
        stored, = conn.execute("SELECT key_hash FROM api_keys").fetchone()
    assert stored == hashlib.sha256(key.encode()).hexdigest()


def test_scopes_are_kept_in_a_fixed_order(make_key):
    assert make_key("both", scopes=["admin", "vms"])["scopes"] == ["vms", "admin"]
    assert make_key("admin only", scopes=["admin"])["scopes"] == ["admin"]


def test_revoke_is_immediate_idempotent_and_recorded_once(client, auth, make_key, services):
    created = make_key("ci")
    assert client.get("/v1/vms", headers=header(created)).status_code == 200
    first = client.post(f"{ROUTE}/{created['id']}/revoke", headers=auth)
    assert first.status_code == 200 and first.get_json()["revokedAt"] is not None
    again = client.post(f"{ROUTE}/{created['id']}/revoke", headers=auth)
    assert again.get_json()["revokedAt"] == first.get_json()["revokedAt"]
    response = client.get("/v1/vms", headers=header(created))
    assert response.status_code == 401 and response.get_json() == {"message": "Unauthorized"}
    types = [event.type for event in services.events.recent(10)]
    assert types == ["apikey.revoked", "apikey.created"]
    event = services.events.recent(1)[0]
    assert event.entity_id == created["id"] and event.actor == "api-key"
    assert event.payload == {"name": "ci", "prefix": created["prefix"], "scopes": ["vms"]}


def test_a_revoked_name_can_be_used_again_but_not_a_live_one(client, auth, make_key):
    created = make_key("ci")
    response = client.post(ROUTE, json={"name": "ci"}, headers=auth)
    assert response.status_code == 409 and "ci" in response.get_json()["message"]
    client.post(f"{ROUTE}/{created['id']}/revoke", headers=auth)
    assert make_key("ci")["id"] != created["id"]


@pytest.mark.parametrize("key_id", ["nope", "00000000-0000-4000-8000-000000000000",
                                    "%00", "%ED%A0%80", "x" * 5000])
def test_unknown_or_malformed_key_ids_are_404(client, auth, key_id):
    assert client.get(f"{ROUTE}/{key_id}", headers=auth).status_code == 404
    assert client.post(f"{ROUTE}/{key_id}/revoke", headers=auth).status_code == 404


def test_an_admin_session_manages_keys(client, session, services):
    assert session.login().status_code == 200
    response = client.post(ROUTE, json={"name": "from the console"}, headers=CSRF)
    assert response.status_code == 201
    assert response.get_json()["createdBy"] == f"session:{services.settings.admin_email}"
    assert client.post(ROUTE, json={"name": "no csrf header"}).status_code == 403


# Credentials and scopes ###################################################################

@pytest.mark.parametrize("key", ["", "rds_", "rds_00000000_nope", "wrong", "rds_" + "a" * 500])
def test_unknown_keys_are_401(client, key):
    response = client.get("/v1/vms", headers={"X-API-Key": key})
    assert response.status_code == 401 and response.get_json() == {"message": "Unauthorized"}


@pytest.mark.parametrize(("method", "path"), [
    ("get", ROUTE), ("post", ROUTE), ("get", "/v1/admin/activity"),
    ("get", "/v1/admin/events"), ("get", "/metrics"), ("post", "/v1/images"),
    ("delete", "/v1/images/default"), ("post", "/v1/images/default/set-default")])
def test_a_vms_key_gets_403_on_admin_routes(client, make_key, method, path):
    created = make_key("ci")
    response = getattr(client, method)(path, json={"name": "x"}, headers=header(created))
    assert response.status_code == 403, response.text
    assert "admin" in response.get_json()["message"]


def test_a_vms_key_reads_images_and_an_admin_key_does_everything(client, make_key):
    vms_key, admin_key = make_key("ci"), make_key("ops", scopes=["admin"])
    assert client.get("/v1/images", headers=header(vms_key)).status_code == 200
    assert client.get(ROUTE, headers=header(admin_key)).status_code == 200
    assert client.get("/v1/admin/activity", headers=header(admin_key)).status_code == 200
    made = client.post(ROUTE, json={"name": "made by ops"}, headers=header(admin_key))
    assert made.get_json()["createdBy"] == "key:ops"


def test_an_expired_key_is_401(client, make_key, clock):
    created = make_key("short", expiresAt=iso(clock.now + 100))
    assert client.get("/v1/vms", headers=header(created)).status_code == 200
    clock.advance(101)
    assert client.get("/v1/vms", headers=header(created)).status_code == 401


def test_last_used_moves_on_at_most_once_a_minute(client, auth, make_key, clock):
    created = make_key("ci")

    def last_used() -> str | None:
        return client.get(f"{ROUTE}/{created['id']}", headers=auth).get_json()["lastUsedAt"]

    client.get("/v1/vms", headers=header(created))
    first = last_used()
    assert first is not None
    clock.advance(30)
    client.get("/v1/vms", headers=header(created))
    assert last_used() == first
    clock.advance(31)
    client.get("/v1/vms", headers=header(created))
    assert last_used() > first


# Ownership ################################################################################

VM_ROUTES = [
    ("get", "", None), ("patch", "", {"labels": {}}), ("delete", "", None),
    ("post", "/stop", None), ("post", "/start", None), ("post", "/keepalive", {}),
    ("put", "/network", {"allowIps": []}), ("post", "/exec", {"cmd": "true"}),
    ("post", "/run-ts", {"code": "1"}), ("post", "/run-js", {"code": "1"}),
    ("get", "/files/download?path=a", None), ("post", "/snapshots", None),
    ("get", "/logs", None), ("get", "/stats", None), ("get", "/exec-logs", None),
]


@pytest.fixture
def owned(client, make_key) -> tuple[dict, dict, dict]:
    """Two vms keys; the first created a VM. Returns (VM, its key, the other key)."""
    mine, theirs = make_key("team-a"), make_key("team-b")
    response = client.post("/v1/vms", json=VALID, headers=header(mine))
    assert response.status_code == 201, response.text
    return response.get_json(), mine, theirs


def test_a_vm_records_its_creator(client, auth, owned, services):
    vm, mine, _theirs = owned
    assert vm["createdBy"] == "key:team-a"
    record = services.vms.parts.records.any(vm["id"])
    assert record is not None and record.owner_key == mine["id"]
    assert client.get(f"/v1/vms/{vm['id']}", headers=auth).get_json()["createdBy"] == \
        "key:team-a"
    other = client.post("/v1/vms", json=VALID, headers=auth).get_json()
    assert other["createdBy"] == "api-key"


def test_a_vms_key_lists_only_its_own_vms(client, auth, owned):
    vm, mine, theirs = owned
    client.post("/v1/vms", json=VALID, headers=auth)  # the bootstrap key's
    assert [item["id"] for item in client.get("/v1/vms", headers=header(mine)).get_json()] == \
        [vm["id"]]
    assert client.get("/v1/vms", headers=header(theirs)).get_json() == []
    assert len(client.get("/v1/vms", headers=auth).get_json()) == 2


@pytest.mark.parametrize(("method", "suffix", "body"), VM_ROUTES,
                         ids=[f"{m} {s}" for m, s, _b in VM_ROUTES])
def test_another_keys_vm_is_404_on_every_route(client, owned, services, method, suffix, body):
    vm, _mine, theirs = owned
    kwargs = {"json": body} if body is not None else {}
    response = getattr(client, method)(f"/v1/vms/{vm['id']}{suffix}", headers=header(theirs),
                                       **kwargs)
    assert response.status_code == 404, response.text
    actor.enter(actor.SYSTEM_CALLER)  # the test thread still holds the request's caller
    assert services.vms.get(vm["id"]).state.value == "RUNNING"  # untouched


def test_delete_by_label_spares_other_keys_vms(client, auth, owned):
    vm, _mine, theirs = owned
    client.patch(f"/v1/vms/{vm['id']}", json={"labels": {"ci": "1"}}, headers=auth)
    answer = client.delete("/v1/vms?label=ci", headers=header(theirs)).get_json()
    assert answer == {"deleted": [], "failed": []}
    assert client.get(f"/v1/vms/{vm['id']}", headers=auth).status_code == 200


def test_the_owner_and_admins_use_the_vm(client, auth, owned, make_key, session):
    vm, mine, _theirs = owned
    path = f"/v1/vms/{vm['id']}"
    assert client.post(f"{path}/exec", json={"cmd": "true"}, headers=header(mine)).status_code \
        == 200
    admin_key = make_key("ops", scopes=["vms", "admin"])
    assert client.get(path, headers=header(admin_key)).status_code == 200
    assert client.get(path, headers=auth).status_code == 200
    assert session.login().status_code == 200
    assert client.get(path).status_code == 200
    assert client.delete(path, headers=header(mine)).status_code == 204


def test_snapshots_belong_to_the_key_that_took_them(client, auth, owned):
    vm, mine, theirs = owned
    snapshot = client.post(f"/v1/vms/{vm['id']}/snapshots", headers=header(mine)).get_json()
    assert [s["id"] for s in client.get("/v1/snapshots", headers=header(mine)).get_json()] == \
        [snapshot["id"]]
    assert client.get("/v1/snapshots", headers=header(theirs)).get_json() == []
    path = f"/v1/snapshots/{snapshot['id']}"
    assert client.get(path, headers=header(theirs)).status_code == 404
    assert client.delete(path, headers=header(theirs)).status_code == 404
    response = client.post("/v1/vms", json={**VALID, "snapshotId": snapshot["id"]},
                           headers=header(theirs))
    assert response.status_code == 404, response.text
    assert client.get(path, headers=auth).status_code == 200


def test_a_keys_vm_quota_is_429_and_freed_by_a_delete(client, make_key):
    created = make_key("small", maxVms=1)
    first = client.post("/v1/vms", json=VALID, headers=header(created))
    assert first.status_code == 201
    refused = client.post("/v1/vms", json=VALID, headers=header(created))
    assert refused.status_code == 429 and "API key" in refused.get_json()["message"]
    other = make_key("other", maxVms=1)
    assert client.post("/v1/vms", json=VALID, headers=header(other)).status_code == 201
    assert client.delete(f"/v1/vms/{first.get_json()['id']}",
                         headers=header(created)).status_code == 204
    assert client.post("/v1/vms", json=VALID, headers=header(created)).status_code == 201


def test_background_work_sees_every_vm(client, owned, services):
    vm, _mine, theirs = owned
    client.get("/v1/vms", headers=header(theirs))
    actor.enter(actor.SYSTEM_CALLER)  # as a background thread of the service runs
    assert services.vms.get(vm["id"]).id == vm["id"]
    services.vms.create(VmSpec(cpu=1, mem_mb=256))
    assert len(services.vms.list()) == 2


# Bad input ################################################################################

@pytest.mark.parametrize("body", [
    {}, {"name": ""}, {"name": 5}, {"name": None}, {"name": ["a"]}, {"name": "a" * 65},
    {"name": "a\0b"}, {"name": "a\nb"}, {"name": " lead"}, {"name": "ok", "extra": 1},
    {"name": "ok", "scopes": []}, {"name": "ok", "scopes": ["root"]},
    {"name": "ok", "scopes": "vms"}, {"name": "ok", "scopes": ["vms", "vms"]},
    {"name": "ok", "scopes": ["vms", "admin", "vms"]}, {"name": "ok", "scopes": [None]},
    {"name": "ok", "maxVms": 0}, {"name": "ok", "maxVms": -1}, {"name": "ok", "maxVms": 1.5},
    {"name": "ok", "maxVms": "2"}, {"name": "ok", "maxVms": 10 ** 30},
    {"name": "ok", "maxVms": True}, {"name": "ok", "expiresAt": "tomorrow"},
    {"name": "ok", "expiresAt": "2000-01-01T00:00:00Z"}, {"name": "ok", "expiresAt": 5},
    {"name": "ok", "expiresAt": "99999-01-01T00:00:00Z"},
    {"name": "ok", "expiresAt": "9999-12-31T23:59:59Z"},
    {"name": "ok", "expiresAt": "2030-01-01T00:00:00\u0000Z"}, [], "name", 5, None,
])
def test_bad_create_bodies_are_400(client, auth, body):
    response = client.post(ROUTE, json=body, headers=auth)
    assert response.status_code == 400, response.text
    assert response.get_json()["message"]


def test_an_expiry_without_a_time_zone_is_utc(make_key, clock):
    created = make_key("naive", expiresAt="2030-01-01T00:00:00")
    assert created["expiresAt"] == "2030-01-01T00:00:00.000Z"


@pytest.mark.parametrize("key", ["rds_\u00e9", "rds_" + "x" * 100_000])
def test_odd_presented_keys_are_401_not_500(client, key):
    response = client.get("/v1/vms", headers={"X-API-Key": key.encode().decode("latin-1")})
    assert response.status_code == 401
