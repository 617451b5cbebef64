"""Snapshots of a VM of a remote host (HOSTS, issue 17) over fakes: its disk volume downloaded
from its host under its lock, a RUNNING guest frozen there meanwhile and thawed whatever
happens, a STOPPED one not; the copy's backing checked to be the host's image volume, then
rebased (unsafe) onto the local build of that image; a VM made from it is made here."""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

from app.errors import HypervisorError, VmBusy
from app.virt.pool_xml import build_overlay_volume_xml
from tests.unit import remote_hosts
from tests.unit.fakes import API_KEY, NEW_BUILD

AUTH = {"X-API-Key": API_KEY}
ON_H2 = {"cpu": 1, "memMb": 256, "placement": {"host": "h2"}}
IMAGE_THERE = "/var/lib/libvirt/images/rds-images/default.qcow2"


@pytest.fixture
def world_settings():
    # No memory snapshot on h2: its VMs boot (restores: tests/unit/test_remote_seeds.py).
    return {**remote_hosts.hosts_settings(remote_hosts.H2), "STOP_TIMEOUT_S": "0.5",
            "SNAPSHOT_SHAPES": ""}


@pytest.fixture
def h2(world):
    return remote_hosts.shipped_h2(world)


@pytest.fixture
def vm(client, h2):
    """A RUNNING VM on h2 (h2's calls so far forgotten)."""
    answer = client.post("/v1/vms", json=ON_H2, headers=AUTH)
    assert answer.status_code == 201, answer.text
    h2.calls.clear()
    return answer.get_json()


def snapshot(client, vm_id):
    return client.post(f"/v1/vms/{vm_id}/snapshots", headers=AUTH)


def watch_disk_downloads(h2, monkeypatch, also=lambda: None):
    """Each download of a VM disk volume from h2: (name, whether the guest was frozen);
    ``also`` runs first (it may raise)."""
    seen = []
    download = h2.download_volume

    def watched(pool, name, sink, timeout):
        if pool == "rds-vms":
            seen.append((name, h2.frozen))
            also()
        return download(pool, name, sink, timeout)
    monkeypatch.setattr(h2, "download_volume", watched)
    return seen


def test_a_running_remote_vm_is_frozen_there_while_its_disk_is_downloaded(client, world, h2,
                                                                           vm, monkeypatch):
    def locked():
        # Its lock is held: a stop or delete waits.
        with pytest.raises(VmBusy), world.parts.remote.locks.held("h2", vm["id"], 0):
            pass
    seen = watch_disk_downloads(h2, monkeypatch, locked)
    answer = snapshot(client, vm["id"])
    assert answer.status_code == 201, answer.text
    taken = answer.get_json()
    assert seen == [(f"{vm['name']}.qcow2", True)] and not world.hypervisor.frozen
    assert [call for call in h2.calls if call in ("freeze", "thaw")] == ["freeze", "thaw"]
    assert not h2.frozen and world.hypervisor.calls == []
    assert (taken["sourceVmId"], taken["imageId"], taken["cpu"], taken["memMb"]) == (
        vm["id"], "default", 1, 256)
    image_here = world.build(NEW_BUILD) / "disk.qcow2"
    steps = [call[0] for call in world.disks.calls]
    assert steps == ["info", "rebase", "check"]
    assert world.disks.calls[1][2:] == (image_here, True)  # unsafe: the same bytes
    folder = world.settings.snapshots_dir / taken["id"]
    stored = json.loads((folder / "snapshot.json").read_text())
    assert stored["imagePath"] == str(image_here) and stored["sourceVmId"] == vm["id"]
    assert ET.fromstring((folder / "disk.qcow2").read_text()).findtext(
        "backingStore/path") == IMAGE_THERE  # what was downloaded (the fake rebase keeps it)
    assert world.snapshot_dirs() == [taken["id"]]
    # The VM is untouched there.
    assert client.get(f"/v1/vms/{vm['id']}", headers=AUTH).get_json()["state"] == "RUNNING"


def test_a_stopped_remote_vm_is_copied_without_its_guest_agent(client, world, h2, vm,
                                                               monkeypatch):
    assert client.post(f"/v1/vms/{vm['id']}/stop", headers=AUTH).status_code in (200, 202, 204)
    h2.calls.clear()
    seen = watch_disk_downloads(h2, monkeypatch)
    answer = snapshot(client, vm["id"])
    assert answer.status_code == 201, answer.text
    assert "freeze" not in h2.calls and "thaw" not in h2.calls
    assert seen == [(f"{vm['name']}.qcow2", False)]


def test_a_failed_download_thaws_the_guest_and_leaves_nothing(client, world, h2, vm,
                                                              monkeypatch):
    def broken():
        raise HypervisorError("libvirt: the stream broke")
    watch_disk_downloads(h2, monkeypatch, broken)
    answer = snapshot(client, vm["id"])
    assert answer.status_code == 503, answer.text
    assert "the stream broke" in answer.get_json()["message"]
    assert [call for call in h2.calls if call in ("freeze", "thaw")] == ["freeze", "thaw"]
    assert not h2.frozen
    assert world.snapshot_dirs() == [] and world.disks.calls == []
    assert client.get("/v1/snapshots", headers=AUTH).get_json() == []


@pytest.mark.parametrize("backing", ["/etc/shadow", "/var/lib/libvirt/images/rds-images/x.qcow2"])
def test_a_disk_backed_by_anything_but_the_image_volume_is_refused(client, world, h2, vm,
                                                                   backing):
    h2.volumes[("rds-vms", f"{vm['name']}.qcow2")] = build_overlay_volume_xml(
        f"{vm['name']}.qcow2", 1024, backing).encode()
    answer = snapshot(client, vm["id"])
    assert answer.status_code == 503, answer.text
    assert "not an overlay of its image's volume" in answer.get_json()["message"]
    assert not h2.frozen and world.snapshot_dirs() == []
    assert [call[0] for call in world.disks.calls] == ["info"]  # never rebased


def test_a_vm_from_a_remote_vms_snapshot_is_made_here(client, world, h2, vm):
    taken = snapshot(client, vm["id"]).get_json()
    refused = client.post("/v1/vms", headers=AUTH,
                          json={**ON_H2, "snapshotId": taken["id"]})
    assert refused.status_code == 400, refused.text
    assert "local host only" in refused.get_json()["message"]
    made = client.post("/v1/vms", headers=AUTH, json={"cpu": 1, "memMb": 256,
                                                     "snapshotId": taken["id"]})
    assert made.status_code == 201, made.text
    assert made.get_json()["host"] == "local"
    assert made.get_json()["id"] in world.hypervisor.domains
    overlay = world.disks.calls[-1]
    assert overlay[0] == "overlay" and overlay[1] == world.settings.snapshots_dir / \
        taken["id"] / "disk.qcow2"


def test_placement_never_sends_a_snapshot_create_elsewhere(world, h2, vm, monkeypatch):
    import dataclasses

    from app.models import VmSpec
    provisioner = world.parts.provisioner
    monkeypatch.setattr(provisioner, "settings",
                        dataclasses.replace(provisioner.settings, placement="spread"))
    monkeypatch.setattr(world.parts.remote, "place", lambda *_args: "h2")  # h2 has more room
    assert provisioner.plan(VmSpec(cpu=1, mem_mb=256)).host == "h2"
    taken = world.snapshots.take(vm["id"])
    assert provisioner.plan(VmSpec(cpu=1, mem_mb=256, snapshot_id=taken.id)).host == "local"


def test_a_copy_beyond_the_disk_budget_is_507_and_leaves_nothing(client, world, h2, vm,
                                                                 monkeypatch):
    """A remote disk's size is known once it is here: the budget is checked again then."""
    import dataclasses

    name = f"{vm['name']}.qcow2"
    big = h2.volumes[("rds-vms", name)].decode().replace(
        "</volume>", f"<!-- {'x' * (3 << 20)} --></volume>")
    h2.volumes[("rds-vms", name)] = big.encode()
    snapshots = world.snapshots
    monkeypatch.setattr(snapshots.budget, "settings",
                        dataclasses.replace(snapshots.budget.settings, disk_budget_mb=2))
    answer = snapshot(client, vm["id"])
    assert answer.status_code == 507, answer.text
    assert not h2.frozen and world.snapshot_dirs() == []


@pytest.mark.parametrize("build", ["../../etc", "/etc", "default/../../x"])
def test_a_build_named_outside_the_image_directory_is_refused(client, world, vm, build,
                                                              monkeypatch):
    """The manifest naming the build is read from the remote host: a name that leads out of
    the image directory never becomes a snapshot's backing file."""
    monkeypatch.setattr("app.services.remote_snapshots.read_shipped",
                        lambda _hypervisor, _names: {"default": build})
    answer = snapshot(client, vm["id"])
    assert answer.status_code == 503, answer.text
    assert "outside the image directory" in answer.get_json()["message"]
    assert [call[0] for call in world.disks.calls if call[0] == "rebase"] == []
    folder = world.settings.snapshots_dir
    assert not folder.exists() or list(folder.iterdir()) == []
