"""Events on the real services over fakes: what each operation records (type, entity, actor,
payload), the activity feed and its paging, the SSE stream (frames, resume, filters,
heartbeats), listeners inside the event's transaction, and a broken store."""
from __future__ import annotations

import json

import pytest

from app.api import admin
from app.errors import GuestUnreachable, StoreUnavailable
from app.models import VmPhase, VmSpec
from tests.unit.fakes import CSRF

VALID = {"cpu": 1, "memMb": 256}


def activity(client, auth, query: str = "") -> list[dict]:
    response = client.get(f"/v1/admin/activity{query}", headers=auth)
    assert response.status_code == 200, response.text
    return response.get_json()


def test_a_vms_life_is_recorded(client, auth, services):
    vm = client.post("/v1/vms", json={**VALID, "labels": {"ci.job": "7"}, "ttlSeconds": 60},
                     headers=auth).get_json()
    assert client.post(f"/v1/vms/{vm['id']}/stop", headers=auth).status_code == 204
    assert client.post(f"/v1/vms/{vm['id']}/start", headers=auth).status_code == 204
    assert client.delete(f"/v1/vms/{vm['id']}", headers=auth).status_code == 204
    events = activity(client, auth)
    assert [event["type"] for event in events] == ["vm.deleted", "vm.started", "vm.stopped",
                                                   "vm.created"]
    created = events[-1]
    assert created["entity"] == {"type": "vm", "id": vm["id"]}
    assert created["actor"] == "api-key"
    assert created["payload"]["labels"] == {"ci.job": "7"}
    assert created["payload"]["expiresAt"] == vm["expiresAt"]
    assert events[0]["payload"] == {"reason": "api"}
    seqs = [event["seq"] for event in events]
    assert seqs == sorted(seqs, reverse=True) and len(set(event["id"] for event in events)) == 4


def test_a_create_the_host_failed_is_recorded(client, auth, fakes):
    fakes.hypervisor.fail["start"] = GuestUnreachable("guest did not answer")
    response = client.post("/v1/vms", json=VALID, headers=auth)
    assert response.status_code == 504
    event, = activity(client, auth)
    assert event["type"] == "vm.failed" and event["payload"]["stage"] == "create"
    # A refused request (400, 429) is the caller's, not a failure of the host.
    client.post("/v1/vms", json={"cpu": 99, "memMb": 256}, headers=auth)
    assert len(activity(client, auth)) == 1


def test_the_reaper_reports_expiry_idle_stops_and_guests_that_stopped(world, services):
    expired = world.add_vm(1, expires_at="2000-01-01T00:00:00.000Z", ttl_s=60)
    died = world.add_vm(2, state="shutoff", phase=VmPhase.READY)
    world.vms.reap()
    events = {event.entity_id: event for event in services.events.recent(10)}
    assert events[expired.id].type == "vm.expired" and events[expired.id].actor == "system"
    assert events[died.id].type == "vm.failed"
    assert "without the API" in events[died.id].payload["reason"]
    world.vms.reap()  # said once
    assert len(services.events.recent(10)) == 2


def test_snapshots_are_recorded(client, auth, services):
    vm = services.vms.create(VmSpec(cpu=1, mem_mb=256))
    snapshot = client.post(f"/v1/vms/{vm.id}/snapshots", headers=auth).get_json()
    assert client.delete(f"/v1/snapshots/{snapshot['id']}", headers=auth).status_code == 204
    types = [event["type"] for event in activity(client, auth, "?type=snapshot.created"
                                                               "&type=snapshot.deleted")]
    assert types == ["snapshot.deleted", "snapshot.created"]


def test_an_admin_session_is_the_actor(client, session, services):
    assert session.login().status_code == 200
    assert client.post("/v1/vms", json=VALID, headers=CSRF).status_code == 201
    event, = client.get("/v1/admin/activity").get_json()
    assert event["actor"] == f"session:{services.settings.admin_email}"


def test_activity_pages_with_before(client, auth, services):
    for number in range(5):
        services.events.emit("vm.deleted", "vm", f"vm-{number}", by="system")
    first = activity(client, auth, "?limit=2")
    rest = activity(client, auth, f"?limit=10&before={first[-1]['seq']}")
    assert [event["entity"]["id"] for event in first + rest] == [
        f"vm-{number}" for number in (4, 3, 2, 1, 0)]


@pytest.mark.parametrize("query", ["?limit=0", "?limit=501", "?type=vm.exploded",
                                   "?before=0", "?before=x"])
def test_bad_activity_queries_are_400(client, auth, query):
    response = client.get(f"/v1/admin/activity{query}", headers=auth)
    assert response.status_code == 400 and "message" in response.get_json()


def test_admin_routes_need_credentials(client):
    assert client.get("/v1/admin/activity").status_code == 401
    assert client.get("/v1/admin/events").status_code == 401


def test_listeners_run_inside_the_events_transaction(services):
    seen = []
    services.events.subscribe(lambda conn, event: seen.append(
        (event.type, conn.in_transaction)))
    services.events.emit("apikey.created", "apikey", "k1", {"name": "ci"}, by="x")
    assert seen == [("apikey.created", True)]

    def failing(_conn, _event):
        raise StoreUnavailable("queue full")

    services.events.subscribe(failing)
    assert services.events.emit("apikey.revoked", "apikey", "k1", by="x") is None
    # Rolled back with its listeners' work: not recorded.
    assert [event.type for event in services.events.recent(10)] == ["apikey.created"]


def test_a_broken_store_never_fails_the_operation(client, auth, services, monkeypatch):
    def broken(*_args, **_kwargs):
        raise StoreUnavailable("state database unavailable: disk full")

    monkeypatch.setattr(services.events.store, "transaction", broken)
    assert client.post("/v1/vms", json=VALID, headers=auth).status_code == 201


# The SSE stream ###########################################################################

def frames(body: bytes) -> list[dict]:
    found = []
    for block in body.decode().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines()
                      if line and not line.startswith(":") and ": " in line)
        if "data" in fields:
            found.append({"id": int(fields["id"]), "event": fields["event"],
                          "data": json.loads(fields["data"])})
    return found


@pytest.fixture
def short_streams(monkeypatch):
    monkeypatch.setattr(admin, "STREAM_MAX_S", 0.3)
    monkeypatch.setattr(admin, "POLL_S", 0.01)


def test_the_stream_sends_new_events_then_resumes(client, auth, services, short_streams):
    old = services.events.emit("vm.created", "vm", "old", by="system")
    response = client.get("/v1/admin/events", headers=auth)
    assert response.status_code == 200 and response.mimetype == "text/event-stream"
    assert response.headers["X-Accel-Buffering"] == "no"
    assert frames(response.get_data()) == []  # from now on: the old event is not replayed
    new = services.events.emit("vm.deleted", "vm", "new", {"reason": "api"}, by="system")
    resumed = client.get("/v1/admin/events", headers={**auth, "Last-Event-ID": str(old.seq)})
    body = resumed.get_data()
    assert body.startswith(b"retry: 2000\n\n")
    frame, = frames(body)
    assert frame == {"id": new.seq, "event": "vm.deleted", "data": new.to_json()}


def test_the_stream_filters_by_type_and_beats(client, auth, services, short_streams,
                                              monkeypatch):
    monkeypatch.setattr(admin, "HEARTBEAT_S", 0.05)
    services.events.emit("vm.created", "vm", "a", by="system")
    services.events.emit("vm.deleted", "vm", "a", by="system")
    body = client.get("/v1/admin/events?after=0&type=vm.deleted", headers=auth).get_data()
    assert [frame["event"] for frame in frames(body)] == ["vm.deleted"]
    assert b": keepalive\n\n" in body


@pytest.mark.parametrize("value", ["abc", "-1", "1" * 30])
def test_a_bad_last_event_id_is_400(client, auth, value):
    response = client.get("/v1/admin/events", headers={**auth, "Last-Event-ID": value})
    assert response.status_code == 400 and "Last-Event-ID" in response.get_json()["message"]
