"""Lifetimes, labels and the fast delete with real VMs through the real API: a VM with a TTL is
gone (domain, disk, filter, address) in time, keepalive moves the expiry, a restart of the
service does not lose it, an idle VM is stopped, labels live in the domain's XML and select
VMs for listing and deleting."""
from __future__ import annotations

import subprocess
import time
import typing as t

import pytest

from app import create_app
from app.virt.domain_xml import parse_metadata
from tests.integration.conftest import API_KEY, SEED_BODY, Api, exec_ok, virsh

TTL_S = 20
GRACE_S = 15  # the bound: gone within TTL + 15 s


@pytest.fixture
def owner():
    """A service instance whose maintainer runs (as in a gunicorn worker): it enforces
    lifetimes. Stopped at the end, so the next instance can take over."""
    made: list[t.Any] = []

    def start() -> Api:
        app = create_app({"TESTING": True, "API_KEY": API_KEY})
        services = app.extensions["rds"]
        services.maintainer.start()
        deadline = time.monotonic() + 30
        while not services.maintainer.try_become_owner():
            assert time.monotonic() < deadline, "another process maintains this host"
            time.sleep(0.5)
        made.append(app)
        return Api(app)

    yield start
    for app in made:
        app.extensions["rds"].maintainer.stop(wait_s=120)
        app.extensions["rds"].close()


def _everything_of(name: str) -> dict[str, bool]:
    """Which parts of VM ``name`` the host still has."""
    return {
        "domain": name in virsh("list", "--all", "--name").stdout.split(),
        "filter": name in virsh("nwfilter-list").stdout,
        "binding": name in virsh("nwfilter-binding-list").stdout,
        "tap": subprocess.run(["ip", "link", "show", "dev", name], capture_output=True,
                              timeout=10, check=False).returncode == 0,
    }


def _wait_gone(services: t.Any, vm: dict, deadline: float) -> float:
    """Poll until nothing of ``vm`` is left; returns when (monotonic)."""
    while True:
        parts = _everything_of(vm["name"])
        files = (services.settings.vms_dir / vm["name"]).exists()
        addresses = {getattr(parse_metadata(info.xml), "guest_ip", None)
                     for info in services.hypervisor.list_domains()}
        if not any(parts.values()) and not files and vm["guestIp"] not in addresses:
            return time.monotonic()
        assert time.monotonic() < deadline, (parts, files)
        time.sleep(0.5)


def test_a_vm_with_a_ttl_is_gone_in_time(owner, services):
    api = owner()
    started = time.monotonic()
    vm = api.create_vm({**SEED_BODY, "ttlSeconds": TTL_S})
    assert vm["expiresAt"]
    assert api.request("GET", f"/v1/vms/{vm['id']}").status_code == 200
    gone_at = _wait_gone(services, vm, started + TTL_S + GRACE_S)
    assert gone_at - started >= TTL_S - 1  # not before its time
    assert api.request("GET", f"/v1/vms/{vm['id']}").status_code == 404


def test_keepalive_moves_the_expiry(owner, services):
    api = owner()
    started = time.monotonic()
    vm = api.create_vm({**SEED_BODY, "ttlSeconds": TTL_S})
    time.sleep(TTL_S / 2)
    kept = api.request("POST", f"/v1/vms/{vm['id']}/keepalive", json={"ttlSeconds": 60})
    assert kept.status_code == 200 and kept.json["expiresAt"] > vm["expiresAt"]
    time.sleep(max(0.0, started + TTL_S + GRACE_S - time.monotonic()))
    assert api.request("GET", f"/v1/vms/{vm['id']}").status_code == 200
    exec_ok(api, vm["id"], "true")
    api.delete_vm(vm["id"])


def test_a_restart_does_not_lose_the_expiry(owner, services):
    first = owner()
    started = time.monotonic()
    vm = first.create_vm({**SEED_BODY, "ttlSeconds": TTL_S})
    # The service goes down before the VM expires; a new instance takes over.
    first.app.extensions["rds"].maintainer.stop(wait_s=120)
    first.app.extensions["rds"].close()
    assert virsh("dumpxml", vm["name"]).stdout.count(vm["expiresAt"]) == 1
    owner()
    _wait_gone(services, vm, started + TTL_S + GRACE_S)


def test_an_idle_vm_is_stopped_and_keeps_its_disk(owner, services):
    api = owner()
    vm = api.create_vm({**SEED_BODY, "idleStopSeconds": 6})
    exec_ok(api, vm["id"], "echo kept > /workspace/kept.txt && sync")
    deadline = time.monotonic() + 6 + 30
    while api.request("GET", f"/v1/vms/{vm['id']}").json["state"] != "STOPPED":
        assert time.monotonic() < deadline, "the idle VM was not stopped"
        time.sleep(0.5)
    assert api.request("POST", f"/v1/vms/{vm['id']}/start").status_code == 204
    assert exec_ok(api, vm["id"], "cat /workspace/kept.txt")["stdout"] == "kept\n"
    api.delete_vm(vm["id"])


def test_labels_select_vms_and_delete_them(api, services):
    job = f"job-{time.time_ns()}"
    tagged = [api.create_vm({**SEED_BODY, "labels": {"ci.job": job, "n": str(i)}})
              for i in range(2)]
    other = api.create_vm({**SEED_BODY, "labels": {"ci.job": "someone-else"}})
    # Operators see them with virsh.
    assert f'key="ci.job">{job}<' in virsh("dumpxml", tagged[0]["name"]).stdout
    patched = api.request("PATCH", f"/v1/vms/{tagged[1]['id']}",
                          json={"labels": {"ci.job": job, "n": "changed"}})
    assert patched.status_code == 200 and patched.json["labels"]["n"] == "changed"
    assert 'key="n">changed<' in virsh("dumpxml", tagged[1]["name"]).stdout

    listed = api.request("GET", f"/v1/vms?label=ci.job={job}")
    assert [vm["id"] for vm in listed.json] == [vm["id"] for vm in tagged]
    assert [vm["id"] for vm in api.request(
        "GET", f"/v1/vms?label=ci.job={job}&label=n=changed").json] == [tagged[1]["id"]]

    deleted = api.request("DELETE", f"/v1/vms?label=ci.job={job}")
    assert deleted.status_code == 200
    assert sorted(deleted.json["deleted"]) == sorted(vm["id"] for vm in tagged)
    for vm in tagged:
        _wait_gone(services, vm, time.monotonic() + 30)
    assert api.request("GET", f"/v1/vms/{other['id']}").json["state"] == "RUNNING"
    api.delete_vm(other["id"])


def test_delete_answers_before_the_cleanup_and_then_nothing_is_left(api, services):
    vm = api.create_vm(SEED_BODY)
    assert api.request("DELETE", f"/v1/vms/{vm['id']}").status_code == 204
    # Gone for callers at once, even while its parts are still being removed.
    assert api.request("GET", f"/v1/vms/{vm['id']}").status_code == 404
    assert vm["id"] not in [item["id"] for item in api.request("GET", "/v1/vms").json]
    assert api.request("DELETE", f"/v1/vms/{vm['id']}").status_code == 404
    _wait_gone(services, vm, time.monotonic() + 30)
    assert not subprocess.run(["ipset", "list", "-n"], capture_output=True, text=True,
                              timeout=10, check=True).stdout.count(vm["name"])


def test_a_delete_interrupted_after_the_power_off_is_finished_by_the_reaper(api, services,
                                                                            monkeypatch):
    vm = api.create_vm(SEED_BODY)
    # The process "dies" right after answering: its background cleanup never runs.
    monkeypatch.setattr(services.vms.parts.lifecycle, "_run_later", lambda *_args: None)
    assert api.request("DELETE", f"/v1/vms/{vm['id']}").status_code == 204
    left = _everything_of(vm["name"])
    assert left["domain"] and left["filter"] and left["tap"]
    assert "<rds:phase>deleting</rds:phase>" in virsh("dumpxml", vm["name"]).stdout
    assert "shut off" in virsh("domstate", vm["name"]).stdout
    # Its name and address are still taken: a new VM gets others.
    other = api.create_vm(SEED_BODY)
    assert (other["name"], other["guestIp"]) != (vm["name"], vm["guestIp"])
    monkeypatch.undo()
    assert f"finished the delete of {vm['id']}" in services.vms.reap()
    _wait_gone(services, vm, time.monotonic() + 5)
    api.delete_vm(other["id"])
