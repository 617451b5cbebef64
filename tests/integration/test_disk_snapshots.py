"""Disk snapshots on real VMs, with four boots in all. Each stage is a module-scoped fixture,
made on first use, so any test runs alone (``-k``) with what it needs:

``s1``: A (source) writes a marker without syncing and is snapshotted RUNNING -> ``b``: a VM
created from S1 -> ``c``: A is deleted, S1 survives and C is created from it (alias field) ->
``s2``: B, a VM on top of S1, is stopped and snapshotted -> a VM created from S2 alone. At the
end everything is deleted and nothing is left on disk (checked when the module ends).
"""
from __future__ import annotations

import json
import subprocess
import time
import typing as t
import uuid

import pytest

from tests.integration.conftest import SEED_BODY, Api, exec_ok, virsh

MARKER = f"unsynced-{uuid.uuid4().hex}"
UNKNOWN = "00000000-0000-4000-8000-00000000dead"


class Snapshots:
    """Snapshots this module takes and VMs it creates from them; all deleted at the end (VMs
    first, so no snapshot is in use), even after a failure."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.ids: list[str] = []
        self.vm_ids: list[str] = []

    def take(self, vm_id: str) -> dict:
        started = time.monotonic()
        response = self.api.request("POST", f"/v1/vms/{vm_id}/snapshots")
        if response.status_code == 201:
            self.ids.append(response.json["id"])
        assert response.status_code == 201, response.json
        print(f"snapshot of VM {vm_id} took {time.monotonic() - started:.2f}s")
        return response.json

    def create_vm(self, **fields: t.Any) -> dict:
        vm = self.api.create_vm({**SEED_BODY, **fields})
        self.vm_ids.append(vm["id"])
        return vm

    def cleanup(self) -> None:
        for vm_id in self.vm_ids:
            try:
                self.api.delete_vm(vm_id)
            except Exception as exc:  # noqa: BLE001 - keep cleaning the others
                print(f"cleanup of VM {vm_id} failed: {exc}")
        for snapshot_id in self.ids:
            response = self.api.request("DELETE", f"/v1/snapshots/{snapshot_id}")
            if response.status_code not in (204, 404):
                print(f"cleanup of snapshot {snapshot_id} failed: {response.json}")


@pytest.fixture(scope="module")
def snaps(api, services):
    """Every snapshot and VM of this module, deleted at its end; then the snapshot directory
    must hold what it held before."""
    folder = services.settings.snapshots_dir
    before = set(folder.iterdir()) if folder.is_dir() else set()
    tracker = Snapshots(api)
    yield tracker
    tracker.cleanup()
    for snapshot_id in tracker.ids:
        assert api.request("GET", f"/v1/snapshots/{snapshot_id}").status_code == 404
    assert (set(folder.iterdir()) if folder.is_dir() else set()) == before


@pytest.fixture(scope="module")
def source(snaps):
    return snaps.create_vm()


@pytest.fixture(scope="module")
def s1(api, snaps, source):
    """S1: the source VM snapshotted RUNNING with a marker it never synced."""
    # No sync: the marker is only in the guest's page cache when the snapshot starts.
    exec_ok(api, source["id"], f"echo {MARKER} > /workspace/marker.txt")
    return snaps.take(source["id"])


@pytest.fixture(scope="module")
def b(snaps, s1):
    return snaps.create_vm(snapshotId=s1["id"])


@pytest.fixture(scope="module")
def c(api, snaps, source, s1):
    """C, from S1 through the alias field, after S1's source VM was deleted."""
    api.delete_vm(source["id"])
    return snaps.create_vm(userOverlaySnapshotId=s1["id"])


@pytest.fixture(scope="module")
def s2(api, snaps, b):
    """S2: B (a VM on top of S1) stopped and snapshotted, with a second file."""
    exec_ok(api, b["id"], "echo second > /workspace/second.txt")
    assert api.request("POST", f"/v1/vms/{b['id']}/stop").status_code == 204
    return snaps.take(b["id"])


def cat(api: Api, vm_id: str, path: str) -> str:
    return exec_ok(api, vm_id, f"cat {path}")["stdout"].strip()


def qemu_img_info(path) -> dict:
    return json.loads(subprocess.run(["qemu-img", "info", "--output=json", "-U", str(path)],
                                     capture_output=True, text=True, timeout=60,
                                     check=True).stdout)


def test_unknown_snapshot_on_create_is_404_and_creates_nothing(api):
    before = virsh("list", "--all", "--name").stdout
    for field in ("snapshotId", "userOverlaySnapshotId"):
        response = api.request("POST", "/v1/vms", json={**SEED_BODY, field: UNKNOWN})
        assert response.status_code == 404, response.json
        assert f"snapshot {UNKNOWN} not found" in response.json["message"]
    assert virsh("list", "--all", "--name").stdout == before
    for path in (f"/v1/snapshots/{UNKNOWN}", "/v1/snapshots/not-a-uuid"):
        assert api.request("GET", path).status_code == 404
        assert api.request("DELETE", path).status_code == 404


def test_snapshot_of_a_running_vm_keeps_unsynced_writes(api, source, s1, services):
    snapshot = s1
    assert {key: snapshot[key] for key in ("kind", "hasOverlay", "cpu", "memMb", "imageId",
                                           "sourceVmId")} == {
        "kind": "user_overlay", "hasOverlay": True, "cpu": SEED_BODY["cpu"],
        "memMb": SEED_BODY["memMb"], "imageId": "default", "sourceVmId": source["id"]}
    assert api.request("GET", f"/v1/snapshots/{snapshot['id']}").json == snapshot
    assert snapshot["id"] in [item["id"] for item in api.request("GET", "/v1/snapshots").json]

    # Thawed again: the source VM keeps writing.
    status = virsh("qemu-agent-command", source["name"], '{"execute":"guest-fsfreeze-status"}')
    assert json.loads(status.stdout)["return"] == "thawed"
    exec_ok(api, source["id"], "echo after > /workspace/after.txt && sync")

    folder = services.settings.snapshots_dir / snapshot["id"]
    meta = json.loads((folder / "snapshot.json").read_text())
    assert meta["id"] == snapshot["id"] and meta["imagePath"].endswith("/disk.qcow2")
    assert (folder / "disk.qcow2").stat().st_mode & 0o777 == 0o444
    info = qemu_img_info(folder / "disk.qcow2")
    assert info["full-backing-filename"] == meta["imagePath"]


def test_vm_from_the_snapshot_sees_the_marker(api, s1, b):
    snapshot, vm = s1, b
    assert vm["snapshotId"] == snapshot["id"] and vm["state"] == "RUNNING"
    assert cat(api, vm["id"], "/workspace/marker.txt") == MARKER
    exec_ok(api, vm["id"], "test ! -e /workspace/after.txt")  # written after the snapshot


def test_snapshot_survives_deleting_its_source_vm(api, source, s1, c):
    snapshot, vm = s1, c
    assert api.request("GET", f"/v1/vms/{source['id']}").status_code == 404
    assert api.request("GET", f"/v1/snapshots/{snapshot['id']}").status_code == 200
    assert vm["snapshotId"] == snapshot["id"]
    assert cat(api, vm["id"], "/workspace/marker.txt") == MARKER


def test_snapshot_in_use_cannot_be_deleted(api, s1, b, c):
    snapshot = s1
    response = api.request("DELETE", f"/v1/snapshots/{snapshot['id']}")
    assert response.status_code == 409, response.json
    for vm in (b, c):
        assert vm["id"] in response.json["message"]
    assert api.request("GET", f"/v1/snapshots/{snapshot['id']}").status_code == 200


def test_snapshot_of_a_stopped_vm_on_a_snapshot_stands_alone(api, services, s1, b, c, s2):
    first, vm, second = s1, b, s2
    assert second["sourceVmId"] == vm["id"]
    # B's overlay is backed by S1's disk; S2's disk is rebased onto the template image.
    disk = services.settings.snapshots_dir / second["id"] / "disk.qcow2"
    assert qemu_img_info(disk)["full-backing-filename"] == \
        qemu_img_info(services.settings.snapshots_dir / first["id"] / "disk.qcow2")[
            "full-backing-filename"]

    # Stopped counts as in use too; deleting both VMs frees S1.
    assert api.request("DELETE", f"/v1/snapshots/{first['id']}").status_code == 409
    for user in (vm, c):
        api.delete_vm(user["id"])
    response = api.request("DELETE", f"/v1/snapshots/{first['id']}")
    assert response.status_code == 204, response.json
    assert api.request("GET", f"/v1/snapshots/{first['id']}").status_code == 404
    assert api.request("DELETE", f"/v1/snapshots/{first['id']}").status_code == 404


def test_vm_from_the_second_snapshot_needs_nothing_else(api, snaps, s2):
    second = s2
    vm = snaps.create_vm(snapshotId=second["id"])
    assert cat(api, vm["id"], "/workspace/marker.txt") == MARKER
    assert cat(api, vm["id"], "/workspace/second.txt") == "second"
    api.delete_vm(vm["id"])
    assert api.request("DELETE", f"/v1/snapshots/{second['id']}").status_code == 204
