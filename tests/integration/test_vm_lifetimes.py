"""Lifetimes, labels and the fast delete with real VMs through the real API: a VM with a TTL is
gone (domain, disk, filter, address) in time, keepalive moves the expiry, a restart of the
service does not lose it, an idle VM is stopped, labels live in the domain's XML and select
VMs for listing and deleting."""
from __future__ import annotations

import fcntl
import subprocess
import threading
import time
import typing as t

import pytest

from app import create_app
from app.services.lifecycle import VM_LOCK_FILE
from app.services.maintenance import REAP_INTERVAL_S
from app.virt.metadata_xml import parse_metadata
from tests.integration.conftest import API_KEY, SEED_BODY, Api, exec_ok, virsh

TTL_S = 20
GRACE_S = 15  # the bound: gone within TTL + 15 s


class Instance:
    """A service instance that enforces lifetimes, as the maintaining gunicorn worker does:
    its reaper runs every REAP_INTERVAL_S. (Not through the host's maintenance lock: a live
    server of another test module may hold that one; reapers may run side by side.)"""

    def __init__(self) -> None:
        self.app = create_app({"TESTING": True, "API_KEY": API_KEY})
        self.api = Api(self.app)
        self.services = self.app.extensions["rds"]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._reap, daemon=True)
        self._thread.start()

    def _reap(self) -> None:
        while not self._stop.wait(REAP_INTERVAL_S):
            self.services.vms.reap()

    def shut_down(self) -> None:
        if not self._stop.is_set():
            self._stop.set()
            self._thread.join(120)
            self.services.close()


@pytest.fixture
def owner():
    """Start service instances that enforce lifetimes; all are shut down at the end."""
    made: list[Instance] = []

    def start() -> Instance:
        made.append(Instance())
        return made[-1]

    yield start
    for instance in made:
        instance.shut_down()


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
    api = owner().api
    started = time.monotonic()
    vm = api.create_vm({**SEED_BODY, "ttlSeconds": TTL_S})
    assert vm["expiresAt"]
    assert api.request("GET", f"/v1/vms/{vm['id']}").status_code == 200
    gone_at = _wait_gone(services, vm, started + TTL_S + GRACE_S)
    assert gone_at - started >= TTL_S - 1  # not before its time
    assert api.request("GET", f"/v1/vms/{vm['id']}").status_code == 404


def test_keepalive_moves_the_expiry(owner, services):
    api = owner().api
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
    vm = first.api.create_vm({**SEED_BODY, "ttlSeconds": TTL_S})
    # The service goes down before the VM expires; a new instance takes over.
    first.shut_down()
    assert virsh("dumpxml", vm["name"]).stdout.count(vm["expiresAt"]) == 1
    owner()
    _wait_gone(services, vm, started + TTL_S + GRACE_S)


def test_an_idle_vm_is_stopped_and_keeps_its_disk(owner, services):
    api = owner().api
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
    # Hold the VM's lock while looking, as a process finishing it would: the reaper of a
    # live server (another test module's) must not finish it under our eyes.
    with open(services.settings.vms_dir / vm["name"] / VM_LOCK_FILE, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        left = _everything_of(vm["name"])
        assert left["domain"] and left["filter"] and left["tap"]
        assert "<rds:phase>deleting</rds:phase>" in virsh("dumpxml", vm["name"]).stdout
        assert "shut off" in virsh("domstate", vm["name"]).stdout
        # Its name and address are still taken: a new VM gets others.
        other = api.create_vm(SEED_BODY)
        assert (other["name"], other["guestIp"]) != (vm["name"], vm["guestIp"])
        monkeypatch.undo()
        assert services.vms.reap() == [], "the reaper finished a delete another process holds"
    # Released: a reaper finishes it (this one, or a live server's that came first).
    reaped = services.vms.reap()
    _wait_gone(services, vm, time.monotonic() + 5 + (0 if reaped else REAP_INTERVAL_S))
    assert reaped in ([f"finished the delete of {vm['id']}"], [])
    api.delete_vm(other["id"])
