"""create -> get -> list -> stop -> start (workspace survives) -> virsh behind our back -> delete.

One VM walks the whole life cycle, in file order; each step checks libvirt's view too.
"""
from __future__ import annotations

import subprocess

import pytest

from tests.integration.conftest import SEED_BODY, guest_sh, virsh, wait_until_undefined

CONTRACT_FIELDS = {"id", "state", "cpu", "memMb", "guestIp", "outboundInternet", "allowIps",
                   "createdAt", "imageId", "provisionMode"}


@pytest.fixture(scope="module")
def vm(api):
    created = api.create_vm(SEED_BODY)
    yield created
    api.delete_vm(created["id"])


def test_create_returns_running_vm_that_runs_commands(vm, services):
    assert set(vm) >= CONTRACT_FIELDS
    assert vm["state"] == "RUNNING"
    assert (vm["cpu"], vm["memMb"]) == (1, 256)
    assert vm["allowIps"] == ["172.16.0.1/32"] and vm["outboundInternet"] is True
    # The suite saved a memory snapshot of this shape first (conftest): auto restores it.
    assert vm["imageId"] == "default" and vm["provisionMode"] == "snapshot"
    assert vm["guestIp"].startswith("172.16.0.")
    assert guest_sh(services, vm["id"], "id -u; id -g").split() == ["1000", "1000"]


def test_domain_is_readable_for_operators(vm, services):
    name = vm["name"]
    assert name == "rds-" + vm["id"].split("-")[0]
    listing = virsh("list", "--all", "--title").stdout
    assert name in listing and vm["guestIp"] in listing
    dumped = virsh("dumpxml", name).stdout
    assert "https://run-dat-sheesh.dev/xmlns/vm/1" in dumped
    # The NIC is the VM's own tap, named after it, filtered by its own filter, on the bridge.
    assert f"<target dev='{name}' managed='no'/>" in dumped
    assert virsh("nwfilter-dumpxml", name).returncode == 0
    assert_port_connected(name, services.settings.network_bridge)


def assert_port_connected(name: str, bridge: str) -> None:
    bindings = virsh("nwfilter-binding-list").stdout
    assert any(line.split() == [name, name] for line in bindings.splitlines()), bindings
    link = subprocess.run(["ip", "-o", "link", "show", "dev", name], capture_output=True,
                          text=True, timeout=10).stdout
    flags = link.split("<", 1)[1].split(">", 1)[0].split(",")
    assert f"master {bridge} " in link and "UP" in flags, link


def test_get_and_list(api, vm):
    got = api.request("GET", f"/v1/vms/{vm['id']}")
    assert got.status_code == 200 and got.json["state"] == "RUNNING"
    assert got.json["guestIp"] == vm["guestIp"]
    listed = api.request("GET", "/v1/vms")
    assert listed.status_code == 200
    assert vm["id"] in [item["id"] for item in listed.json]


def test_stop_then_start_keeps_workspace(api, vm, services):
    guest_sh(services, vm["id"], "echo survived > /workspace/marker.txt && sync")
    assert api.request("POST", f"/v1/vms/{vm['id']}/stop").status_code == 204
    assert api.request("GET", f"/v1/vms/{vm['id']}").json["state"] == "STOPPED"
    assert "shut off" in virsh("domstate", vm["name"]).stdout
    again = api.request("POST", f"/v1/vms/{vm['id']}/stop")
    assert again.status_code == 409 and "message" in again.json
    for path, body in (("exec", {"cmd": "true"}), ("run-ts", {"code": "1"})):
        refused = api.request("POST", f"/v1/vms/{vm['id']}/{path}", json=body)
        assert refused.status_code == 409 and "RUNNING" in refused.json["message"]

    assert api.request("POST", f"/v1/vms/{vm['id']}/start").status_code == 204
    assert api.request("GET", f"/v1/vms/{vm['id']}").json["state"] == "RUNNING"
    assert guest_sh(services, vm["id"], "cat /workspace/marker.txt").strip() == "survived"
    # The tap and its filter outlive the stop.
    assert_port_connected(vm["name"], services.settings.network_bridge)
    assert api.request("POST", f"/v1/vms/{vm['id']}/start").status_code == 409


def test_virsh_destroy_behind_our_back_is_reported_stopped(api, vm):
    assert virsh("destroy", vm["name"]).returncode == 0
    got = api.request("GET", f"/v1/vms/{vm['id']}")
    assert got.status_code == 200 and got.json["state"] == "STOPPED"
    assert api.request("GET", "/v1/vms").status_code == 200
    # A hand-destroyed VM can be started again through the API.
    assert api.request("POST", f"/v1/vms/{vm['id']}/start").status_code == 204
    assert api.request("GET", f"/v1/vms/{vm['id']}").json["state"] == "RUNNING"


def test_delete_leaves_nothing_behind(api, vm, services):
    overlay = services.settings.vms_dir / vm["name"] / "disk.qcow2"
    assert overlay.exists()
    assert api.request("DELETE", f"/v1/vms/{vm['id']}").status_code == 204
    # Gone for callers at once; the rest follows within seconds, the domain last.
    assert api.request("GET", f"/v1/vms/{vm['id']}").status_code == 404
    wait_until_undefined(vm["name"])
    assert vm["name"] not in virsh("nwfilter-list").stdout
    assert vm["name"] not in virsh("nwfilter-binding-list").stdout
    assert subprocess.run(["ip", "link", "show", "dev", vm["name"]], capture_output=True,
                          timeout=10).returncode != 0
    assert not overlay.exists() and not overlay.parent.exists()
    assert api.request("GET", f"/v1/vms/{vm['id']}").status_code == 404
    assert api.request("DELETE", f"/v1/vms/{vm['id']}").status_code == 404
    assert vm["id"] not in [item["id"] for item in api.request("GET", "/v1/vms").json]
