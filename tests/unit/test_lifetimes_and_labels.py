"""Labels, lifetimes (ttlSeconds, keepalive, idleStopSeconds), listing filters and paging,
delete by label and the deferred delete — on the real services over fakes."""
from __future__ import annotations

import datetime as dt
import os
import time

import pytest

from app.models import VmPhase
from app.services.lifetimes import ACTIVITY_FILE
from tests.unit.fakes import World

VALID = {"cpu": 1, "memMb": 256}
PAST = "2000-01-01T00:00:00.000Z"


def create(client, auth, **body):
    response = client.post("/v1/vms", json={**VALID, **body}, headers=auth)
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def seconds_until(iso: str) -> float:
    return (dt.datetime.fromisoformat(iso) - dt.datetime.now(dt.timezone.utc)).total_seconds()


# Create ###################################################################################

def test_labels_and_lifetimes_are_kept_in_the_domain_and_returned(client, auth, world):
    vm = create(client, auth, labels={"ci.job": "42", "team/x": "blue"}, ttlSeconds=600,
                idleStopSeconds=300)
    assert vm["labels"] == {"ci.job": "42", "team/x": "blue"}
    assert 590 < seconds_until(vm["expiresAt"]) <= 600
    assert vm["idleStopSeconds"] == 300
    xml = world.hypervisor.get_domain(vm["id"]).xml
    assert 'key="ci.job">42<' in xml and "<rds:ttlSeconds>600<" in xml
    assert client.get(f"/v1/vms/{vm['id']}", headers=auth).get_json() == vm


def test_without_them_a_vm_has_no_labels_and_never_expires(client, auth, world):
    vm = create(client, auth)
    assert (vm["labels"], vm["expiresAt"], vm["idleStopSeconds"]) == ({}, None, 0)
    assert "labels" not in world.hypervisor.get_domain(vm["id"]).xml


@pytest.mark.parametrize(("extra", "named"), [
    ({"labels": {f"k{i}": "v" for i in range(33)}}, "at most 32"),
    ({"labels": {"CI": "x"}}, "'CI'"),
    ({"labels": {"": "x"}}, "label key"),
    ({"labels": {"-x": "x"}}, "'-x'"),
    ({"labels": {"a" * 64: "x"}}, "label key"),
    ({"labels": {"a b": "x"}}, "'a b'"),
    ({"labels": {"a\u0000": "x"}}, "label key"),
    ({"labels": {"k": "x" * 257}}, "longer than 256"),
    ({"labels": {"k": "a\u0000b"}}, "control character"),
    ({"labels": {"k": "bell\u0007"}}, "control character"),
    ({"labels": {"k": 42}}, "labels"),
    ({"labels": {"k": None}}, "labels"),
    ({"labels": ["k=v"]}, "labels"),
    ({"ttlSeconds": -1}, "ttlSeconds"),
    ({"ttlSeconds": "60"}, "ttlSeconds"),
    ({"ttlSeconds": 1.5}, "ttlSeconds"),
    ({"ttlSeconds": 10**30}, "ttlSeconds"),
    ({"idleStopSeconds": -5}, "idleStopSeconds"),
    ({"idleStopSeconds": True}, "idleStopSeconds"),
])
def test_bad_labels_and_lifetimes_are_400_and_make_nothing(client, auth, services, extra,
                                                          named):
    response = client.post("/v1/vms", json={**VALID, **extra}, headers=auth)
    assert response.status_code == 400
    assert named in response.get_json()["message"]
    assert services.vms.list() == []


def test_a_host_maximum_gives_every_vm_a_lifetime(tmp_path, monkeypatch, auth):
    from app import create_app
    world = World(tmp_path, monkeypatch, VM_DEFAULT_TTL_S=600, VM_MAX_TTL_S=3600)
    client = create_app({"TESTING": True}, services=world.services).test_client()
    assert 590 < seconds_until(create(client, auth)["expiresAt"]) <= 600
    for ttl in (0, 3601):
        response = client.post("/v1/vms", json={**VALID, "ttlSeconds": ttl}, headers=auth)
        assert response.status_code == 400
        assert "between 1 and 3600" in response.get_json()["message"]
    world.services.close()


# Labels and keepalive #####################################################################

def test_patch_replaces_the_labels(client, auth, world):
    vm = create(client, auth, labels={"a": "1", "b": "2"})
    response = client.patch(f"/v1/vms/{vm['id']}", json={"labels": {"c": "3"}}, headers=auth)
    assert response.status_code == 200 and response.get_json()["labels"] == {"c": "3"}
    assert client.get(f"/v1/vms/{vm['id']}", headers=auth).get_json()["labels"] == {"c": "3"}
    assert 'key="c">3<' in world.hypervisor.get_domain(vm["id"]).xml


@pytest.mark.parametrize("body", [{}, {"labels": {"A": "1"}}, {"labels": "x"},
                                  {"labels": {}, "cpu": 2}, [1]])
def test_bad_patches_are_400_and_change_nothing(client, auth, body):
    vm = create(client, auth, labels={"a": "1"})
    response = client.patch(f"/v1/vms/{vm['id']}", json=body, headers=auth)
    assert response.status_code == 400 and "message" in response.get_json()
    assert client.get(f"/v1/vms/{vm['id']}", headers=auth).get_json()["labels"] == {"a": "1"}


def test_patch_and_keepalive_of_an_unknown_vm_are_404(client, auth):
    missing = "/v1/vms/00000000-0000-4000-8000-00000000abcd"
    assert client.patch(missing, json={"labels": {}}, headers=auth).status_code == 404
    assert client.post(f"{missing}/keepalive", json={}, headers=auth).status_code == 404


def test_keepalive_restarts_the_lifetime(client, auth):
    vm = create(client, auth, ttlSeconds=60)
    url = f"/v1/vms/{vm['id']}/keepalive"
    longer = client.post(url, json={"ttlSeconds": 3600}, headers=auth).get_json()
    assert 3590 < seconds_until(longer["expiresAt"]) <= 3600
    again = client.post(url, headers=auth)  # no body: its own (new) length again
    assert again.status_code == 200
    assert 3590 < seconds_until(again.get_json()["expiresAt"]) <= 3600
    forever = client.post(url, json={"ttlSeconds": 0}, headers=auth).get_json()
    assert forever["expiresAt"] is None
    assert client.post(url, json={"ttlSeconds": -1}, headers=auth).status_code == 400
    assert client.post(url, json={"ttl": 5}, headers=auth).status_code == 400


def test_keepalive_of_a_vm_without_lifetime_keeps_none(client, auth):
    vm = create(client, auth)
    response = client.post(f"/v1/vms/{vm['id']}/keepalive", json={}, headers=auth)
    assert response.status_code == 200 and response.get_json()["expiresAt"] is None


# Listing ##################################################################################

@pytest.fixture
def labelled(client, auth):
    # Three: the unit settings' MAX_VMS.
    return [create(client, auth, labels=labels) for labels in (
        {"ci.job": "42", "team": "x"}, {"ci.job": "42"}, {"team": "x"})]


def ids(response):
    return [vm["id"] for vm in response.get_json()]


def test_list_filters_by_labels_and_state(client, auth, labelled, world):
    one, two, three = (vm["id"] for vm in labelled)
    get = lambda query: client.get(f"/v1/vms?{query}", headers=auth)  # noqa: E731
    assert ids(get("label=ci.job=42")) == [one, two]
    assert ids(get("label=ci.job=42&label=team=x")) == [one]
    assert ids(get("label=team")) == [one, three]
    assert ids(get("label=ci.job=4")) == ids(get("label=nobody")) == []
    world.hypervisor.destroy_domain(three)
    assert ids(get("state=STOPPED")) == [three]
    assert ids(get("state=RUNNING&label=team=x")) == [one]
    assert ids(client.get("/v1/vms", headers=auth)) == [one, two, three]


@pytest.mark.parametrize("query", ["state=running", "state=DELETED", "limit=0", "limit=1001",
                                   "limit=x", "cursor=not-ours", "cursor=" + "A" * 2000,
                                   "label==x", "label="])
def test_bad_list_queries_are_400(client, auth, labelled, query):
    response = client.get(f"/v1/vms?{query}", headers=auth)
    assert response.status_code == 400 and "message" in response.get_json()


def test_paging_follows_the_cursor_and_old_clients_get_everything(client, auth, labelled):
    seen, url, pages = [], "/v1/vms?limit=2", 0
    while url:
        response = client.get(url, headers=auth)
        assert response.status_code == 200 and isinstance(response.get_json(), list)
        seen += ids(response)
        pages += 1
        link = response.headers.get("Link")
        assert (link is None) == ("X-Next-Cursor" not in response.headers)
        url = link[1:link.index(">")] if link else None
    assert pages == 2 and seen == [vm["id"] for vm in labelled]
    filtered = client.get("/v1/vms?limit=1&label=ci.job=42", headers=auth)
    assert "label=ci.job%3D42" in filtered.headers["Link"]
    assert "X-Next-Cursor" not in client.get("/v1/vms", headers=auth).headers


# Delete ###################################################################################

def test_delete_by_label_removes_only_the_matches(client, auth, labelled, world):
    response = client.delete("/v1/vms?label=ci.job=42", headers=auth)
    assert response.status_code == 200
    assert sorted(response.get_json()["deleted"]) == sorted(vm["id"] for vm in labelled[:2])
    assert response.get_json()["failed"] == []
    assert ids(client.get("/v1/vms", headers=auth)) == [vm["id"] for vm in labelled[2:]]
    assert set(world.hypervisor.domains) == {vm["id"] for vm in labelled[2:]}
    again = client.delete("/v1/vms?label=ci.job=42", headers=auth)
    assert again.get_json() == {"deleted": [], "failed": []}


@pytest.mark.parametrize("query", ["", "?label=", "?state=RUNNING", "?label==1"])
def test_delete_without_a_label_deletes_nothing(client, auth, labelled, query):
    response = client.delete(f"/v1/vms{query}", headers=auth)
    assert response.status_code == 400
    assert len(client.get("/v1/vms", headers=auth).get_json()) == len(labelled)


def test_delete_answers_when_off_and_the_rest_follows(client, auth, world, services):
    later = []
    world.parts.lifecycle._run_later = lambda fn, *args: later.append((fn, args))
    vm = create(client, auth)
    assert client.delete(f"/v1/vms/{vm['id']}", headers=auth).status_code == 204
    # Gone for callers, powered off, its quota slot free; name and address still taken.
    assert client.get(f"/v1/vms/{vm['id']}", headers=auth).status_code == 404
    assert client.delete(f"/v1/vms/{vm['id']}", headers=auth).status_code == 404
    assert ids(client.get("/v1/vms", headers=auth)) == []
    info = world.hypervisor.get_domain(vm["id"])
    assert info.state == "shutoff" and "<rds:phase>deleting<" in info.xml
    assert (world.settings.vms_dir / vm["name"]).is_dir()
    other = create(client, auth)
    assert other["guestIp"] != vm["guestIp"]
    (fn, args), = later
    fn(*args)
    assert vm["id"] not in world.hypervisor.domains
    assert not (world.settings.vms_dir / vm["name"]).exists()
    assert world.taps.names() == {other["name"]}


def test_delete_with_wait_removes_everything_before_answering(client, auth, world):
    world.parts.lifecycle._run_later = lambda fn, *args: pytest.fail("ran in background")
    vm = create(client, auth)
    assert client.delete(f"/v1/vms/{vm['id']}?wait=true", headers=auth).status_code == 204
    assert vm["id"] not in world.hypervisor.domains


def test_vms_being_deleted_do_not_count_against_the_quota(tmp_path, monkeypatch, auth):
    world = World(tmp_path, monkeypatch, MAX_VMS=1)
    world.parts.lifecycle._run_later = lambda fn, *args: None  # the process "dies"
    first = world.vms.create(_spec())
    world.vms.delete(first.id)
    second = world.vms.create(_spec())
    assert second.guest_ip != first.guest_ip
    world.services.close()


def _spec():
    from app.models import VmSpec
    return VmSpec(cpu=1, mem_mb=256)


# The reaper ###############################################################################

def test_the_reaper_deletes_expired_vms_and_keeps_the_others(world):
    expired = world.add_vm(1, expires_at=PAST, ttl_s=60)
    kept = world.add_vm(2, expires_at="2999-01-01T00:00:00.000Z", ttl_s=60)
    forever = world.add_vm(3)
    assert world.vms.reap() == [f"expired {expired.id}"]
    assert set(world.hypervisor.domains) == {kept.id, forever.id}
    assert not (world.settings.vms_dir / expired.name).exists()
    assert world.vms.reap() == []


def test_the_reaper_finishes_a_delete_whose_process_died(world):
    half = world.add_vm(1, phase=VmPhase.DELETING, state="shutoff")
    world.taps.create(half.name, half.mac)
    assert world.vms.reap() == [f"finished the delete of {half.id}"]
    assert world.hypervisor.domains == {}
    assert world.taps.names() == set()
    assert not (world.settings.vms_dir / half.name).exists()


def test_the_reaper_stops_idle_vms_only(world):
    idle = world.add_vm(1, idle_stop_s=60)
    busy = world.add_vm(2, idle_stop_s=60)
    never = world.add_vm(3)
    long_ago = time.time() - 120
    for vm in (idle, never):
        activity = world.settings.vms_dir / vm.name / ACTIVITY_FILE
        activity.touch()
        os.utime(activity, (long_ago, long_ago))
    world.parts.activity.touch(busy.name)
    assert world.vms.reap() == [f"stopped idle {idle.id}"]
    states = {uuid: info.state for uuid, info in world.hypervisor.domains.items()}
    assert states == {idle.id: "shutoff", busy.id: "running", never.id: "running"}
    assert world.vms.reap() == []  # a stopped VM stays stopped


def test_using_a_vm_counts_as_activity(world):
    vm = world.add_vm(1, idle_stop_s=60, phase=VmPhase.READY)
    activity = world.settings.vms_dir / vm.name / ACTIVITY_FILE
    assert not activity.exists()
    world.vms.guest(vm.id)
    assert time.time() - activity.stat().st_mtime < 5


def test_a_keepalive_that_lands_first_wins(world):
    vm = world.add_vm(1, expires_at=PAST, ttl_s=600)
    world.vms.keepalive(vm.id, None)
    assert world.vms.reap() == []
    assert vm.id in world.hypervisor.domains
