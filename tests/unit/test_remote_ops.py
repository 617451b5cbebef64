"""Keepalive and the console log of a VM of a remote host (HOSTS, issue 17) over fakes: the
lifetime is renewed in the record there under the VM's lock, the log is read through that
host's libvirt (a volume of its ``rds-vms`` pool), both with a local VM's answers, limits and
4xx for bad input; the reaper spares a VM kept alive; a delete removes the rotated logs too."""
from __future__ import annotations

import dataclasses
import datetime as dt
import re

import pytest

from app.errors import HypervisorError
from app.services.console import MAX_LINE_CHARS, MAX_READ_BYTES
from app.virt.metadata_xml import parse_metadata
from tests.unit import remote_hosts
from tests.unit.fakes import API_KEY

AUTH = {"X-API-Key": API_KEY}
ON_H2 = {"cpu": 1, "memMb": 256, "placement": {"host": "h2"}}
LOCAL = {"cpu": 1, "memMb": 256}
MAX_TTL_S = 3600
PAST = "2000-01-01T00:00:00.000Z"


@pytest.fixture
def world_settings():
    # Every VM has a lifetime here (so keepalive has limits to check against).
    return {**remote_hosts.hosts_settings({**remote_hosts.H2, "maxVms": 2}),
            "VM_MAX_TTL_S": MAX_TTL_S, "VM_DEFAULT_TTL_S": 600}


@pytest.fixture
def h2(world):
    world.services.shipper.ship("h2", "default")
    return world.fakes.remotes["h2"]


@pytest.fixture
def remote_vm(client, h2):
    answer = client.post("/v1/vms", json=ON_H2, headers=AUTH)
    assert answer.status_code == 201, answer.text
    return answer.get_json()


@pytest.fixture
def local_vm(client):
    answer = client.post("/v1/vms", json=LOCAL, headers=AUTH)
    assert answer.status_code == 201, answer.text
    return answer.get_json()


def seconds_until(iso: str) -> float:
    return (dt.datetime.fromisoformat(iso) - dt.datetime.now(dt.timezone.utc)).total_seconds()


def record_there(h2, vm):
    return parse_metadata(h2.domains[vm["id"]].xml)


# Keepalive ################################################################################

def test_keepalive_of_a_remote_vm_renews_its_lifetime_in_the_record_there(
        client, world, h2, remote_vm):
    url = f"/v1/vms/{remote_vm['id']}/keepalive"
    assert 590 < seconds_until(remote_vm["expiresAt"]) <= 600  # VM_DEFAULT_TTL_S
    longer = client.post(url, json={"ttlSeconds": 3000}, headers=AUTH)
    assert longer.status_code == 200, longer.text
    body = longer.get_json()
    assert body["host"] == "h2" and body["state"] == "RUNNING"
    assert 2990 < seconds_until(body["expiresAt"]) <= 3000
    there = record_there(h2, remote_vm)  # kept in its domain's metadata on its host
    assert (there.ttl_s, there.expires_at) == (3000, body["expiresAt"])
    assert world.hypervisor.domains == {}  # nothing of it here
    assert client.get(f"/v1/vms/{remote_vm['id']}", headers=AUTH).get_json() == body
    again = client.post(url, headers=AUTH)  # no body: its own (new) length again
    assert again.status_code == 200
    assert 2990 < seconds_until(again.get_json()["expiresAt"]) <= 3000
    assert record_there(h2, remote_vm).labels == remote_vm["labels"]  # the rest kept


def test_a_remote_vm_kept_alive_is_not_reaped(client, world, h2, remote_vm):
    h2.add(dataclasses.replace(record_there(h2, remote_vm), expires_at=PAST))
    assert client.post(f"/v1/vms/{remote_vm['id']}/keepalive", json={},
                       headers=AUTH).status_code == 200
    assert world.vms.reap() == []
    assert remote_vm["id"] in h2.domains
    h2.add(dataclasses.replace(record_there(h2, remote_vm), expires_at=PAST))
    assert world.vms.reap() == [f"expired {remote_vm['id']}"]


def test_a_keepalive_after_the_reapers_look_wins(client, world, h2, remote_vm, monkeypatch):
    """The reaper saw the VM expired; a keepalive lands before it takes the VM's lock: the
    reaper reads the record again under the lock and leaves the VM."""
    h2.add(dataclasses.replace(record_there(h2, remote_vm), expires_at=PAST))
    lookup = world.vms.parts.remote.lookup
    look, kept = lookup.probe, []

    def look_then_keepalive(*args, **kwargs):
        seen = look(*args, **kwargs)
        if not kept:  # the reaper's look (the keepalive's own looks pass through)
            kept.append(None)
            kept[0] = client.post(f"/v1/vms/{remote_vm['id']}/keepalive", json={},
                                  headers=AUTH).status_code
        return seen
    monkeypatch.setattr(lookup, "probe", look_then_keepalive)
    assert world.vms.reap() == [] and kept == [200]
    assert remote_vm["id"] in h2.domains


def test_keepalive_of_a_remote_vm_waits_for_its_lock(client, world, remote_vm, monkeypatch):
    monkeypatch.setattr("app.services.remote_vms.LOCK_TIMEOUT", 0.2)
    with world.vms.parts.remote.locks.held("h2", remote_vm["id"], 1):
        answer = client.post(f"/v1/vms/{remote_vm['id']}/keepalive", json={}, headers=AUTH)
    assert answer.status_code == 409 and "busy" in answer.get_json()["message"]


def test_keepalive_of_a_vm_of_a_host_that_does_not_answer_is_503(client, h2, remote_vm):
    h2.down = HypervisorError("libvirt: unable to connect: Connection refused")
    answer = client.post(f"/v1/vms/{remote_vm['id']}/keepalive", json={}, headers=AUTH)
    assert answer.status_code == 503 and "host h2" in answer.get_json()["message"]
    h2.down = None
    h2.fail["set_metadata"] = HypervisorError("libvirt: cannot write the metadata")
    answer = client.post(f"/v1/vms/{remote_vm['id']}/keepalive", json={}, headers=AUTH)
    assert answer.status_code == 503, answer.text


def same_answer(client, local_vm, remote_vm, method: str, path: str, **request) -> int:
    """The status and message of a call on a local VM and a remote one are the same."""
    answers = []
    for vm in (local_vm, remote_vm):
        answer = getattr(client, method)(f"/v1/vms/{vm['id']}{path}", headers=AUTH,
                                         **request)
        answers.append((answer.status_code,
                        (answer.get_json() or {}).get("message", "").replace(vm["id"], "…")))
    assert answers[0] == answers[1], answers
    return answers[0][0]


@pytest.mark.parametrize("body", [
    {"ttlSeconds": MAX_TTL_S + 1}, {"ttlSeconds": 0}, {"ttlSeconds": -1},
    {"ttlSeconds": "x"}, {"ttlSeconds": 1.5}, {"ttl": 5}, [1], "x"])
def test_bad_keepalives_are_the_same_4xx_for_a_remote_vm(client, h2, local_vm, remote_vm,
                                                          body):
    before = record_there(h2, remote_vm)
    assert same_answer(client, local_vm, remote_vm, "post", "/keepalive", json=body) == 400
    assert record_there(h2, remote_vm) == before  # nothing changed there


@pytest.mark.parametrize("text", ['{"ttlSeconds": 1', '{"ttlSeconds": NaN}',
                                  '{"\\ud800": 1}', "[" * 2000 + "]" * 2000])
def test_unreadable_keepalive_bodies_are_the_same_400_for_a_remote_vm(
        client, local_vm, remote_vm, text):
    assert same_answer(client, local_vm, remote_vm, "post", "/keepalive", data=text,
                       content_type="application/json") == 400


def test_keepalive_and_logs_of_an_unknown_vm_are_404_with_hosts(client, h2):
    for vm_id in ("00000000-0000-4000-8000-00000000abcd", "not-a-uuid"):
        assert client.post(f"/v1/vms/{vm_id}/keepalive", json={},
                           headers=AUTH).status_code == 404
        assert client.get(f"/v1/vms/{vm_id}/logs", headers=AUTH).status_code == 404


def test_a_deleted_remote_vm_is_404_for_keepalive_and_logs(client, remote_vm):
    assert client.delete(f"/v1/vms/{remote_vm['id']}", headers=AUTH).status_code == 204
    base = f"/v1/vms/{remote_vm['id']}"
    assert client.post(f"{base}/keepalive", json={}, headers=AUTH).status_code == 404
    assert client.get(f"{base}/logs", headers=AUTH).status_code == 404


# Console log ##############################################################################

def console(vm) -> tuple[str, str]:
    return ("rds-vms", f"{vm['name']}.console.log")


def logs(client, vm, query: str = ""):
    answer = client.get(f"/v1/vms/{vm['id']}/logs{query}", headers=AUTH)
    assert answer.status_code == 200, answer.text
    return answer.get_json()


def test_the_console_log_of_a_remote_vm_is_read_from_its_hosts_pool(client, world, h2,
                                                                    remote_vm):
    h2.volumes[console(remote_vm)] = b"[    0.000000] Linux version 6.1\r\nsecond\nthird\n"
    h2.volume_mtimes[console(remote_vm)] = 1_700_000_000.5
    body = logs(client, remote_vm, "?tail=2")
    assert body == {"type": "console", "lines": ["second", "third"], "truncated": True,
                    "updatedAt": "2023-11-14T22:13:20.500Z"}
    everything = logs(client, remote_vm)
    assert everything["lines"][0].startswith("[    0.000000]")
    assert everything["truncated"] is False
    assert logs(client, remote_vm, "?tail=0")["lines"] == []
    assert not (world.settings.vms_dir / remote_vm["name"]).exists()  # nothing of it here


def test_a_remote_vm_without_console_output_has_an_empty_log(client, h2, remote_vm):
    assert console(remote_vm) not in h2.volumes  # virtlogd made none yet
    assert logs(client, remote_vm) == {"type": "console", "lines": [], "truncated": False,
                                       "updatedAt": None}
    h2.volumes[console(remote_vm)] = b""
    assert logs(client, remote_vm)["lines"] == []


def test_a_remote_console_log_is_read_with_the_local_bounds(client, h2, remote_vm):
    h2.volumes[console(remote_vm)] = b"\xff\xfe\x00bin\n" + b"x" * 100_000 + b"\n"
    body = logs(client, remote_vm)
    assert body["lines"][0] == "\ufffd\ufffd\x00bin"
    assert len(body["lines"][1]) == MAX_LINE_CHARS
    # Longer than what is read: the end only, its first (cut) line dropped.
    h2.volumes[console(remote_vm)] = b"".join(b"line %07d\n" % n for n in range(200_000))
    assert len(h2.volumes[console(remote_vm)]) > MAX_READ_BYTES
    body = logs(client, remote_vm, "?tail=10000")
    assert body["truncated"] is True and body["lines"][-1] == "line 0199999"
    assert len(body["lines"]) == 10_000
    assert all(re.fullmatch(r"line \d{7}", line) for line in body["lines"])


def test_a_rotated_remote_console_log_is_truncated(client, h2, remote_vm):
    h2.volumes[console(remote_vm)] = b"new\n"
    assert logs(client, remote_vm)["truncated"] is False
    h2.volumes[("rds-vms", f"{remote_vm['name']}.console.log.0")] = b"old\n"
    body = logs(client, remote_vm)
    assert (body["lines"], body["truncated"]) == (["new"], True)


@pytest.mark.parametrize("query", ["tail=-1", "tail=10001", "tail=x", "tail=1.5"])
def test_bad_tails_are_the_same_400_for_a_remote_vm(client, local_vm, remote_vm, query):
    assert same_answer(client, local_vm, remote_vm, "get", f"/logs?{query}") == 400


def test_the_console_log_of_a_vm_of_a_host_that_does_not_answer_is_503(client, h2, remote_vm):
    h2.down = HypervisorError("libvirt: unable to connect: Connection refused")
    answer = client.get(f"/v1/vms/{remote_vm['id']}/logs", headers=AUTH)
    assert answer.status_code == 503 and "host h2" in answer.get_json()["message"]
    h2.down = None
    h2.fail["volume_tail"] = HypervisorError("libvirt: the read failed")
    answer = client.get(f"/v1/vms/{remote_vm['id']}/logs", headers=AUTH)
    assert answer.status_code == 503 and "the read failed" in answer.get_json()["message"]


def test_a_remote_vms_delete_removes_its_rotated_console_logs(client, h2, remote_vm):
    name = remote_vm["name"]
    for suffix in ("console.log", "console.log.0", "console.log.1"):
        h2.volumes[("rds-vms", f"{name}.{suffix}")] = b"output\n"
    h2.volumes[("rds-vms", "rds-other.console.log.0")] = b"another VM's\n"
    assert client.delete(f"/v1/vms/{remote_vm['id']}", headers=AUTH).status_code == 204
    assert [volume for pool, volume in h2.volumes if pool == "rds-vms"] == \
        ["rds-other.console.log.0"]
