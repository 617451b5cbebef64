"""SnapshotService, SnapshotStore and create-from-snapshot on a fake hypervisor and fake disks.

The real services run on a temporary STORAGE_ROOT; the fakes record what was asked of libvirt
and qemu-img, and whether the guest was frozen while its overlay was copied.
"""
from __future__ import annotations

import json
import logging
import os
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from app.errors import (GuestUnreachable, HypervisorError, InvalidRequest, SnapshotNotFound,
                        SnapshotInUse, VmNotFound, VmStateConflict)
from app.models import VmPhase, VmSpec, VmState
from app.services import snapshots as snapshots_module
from app.virt.metadata_xml import METADATA_NS, parse_metadata
from tests.unit.fakes import NEW_BUILD, OLD_BUILD

# Taking ###################################################################################

def test_running_vm_is_frozen_while_its_overlay_is_copied(world):
    record = world.add_vm(1)
    snapshot = world.snapshots.take(record.id)
    assert world.hypervisor.calls == ["freeze", "thaw"]
    copy = world.settings.snapshots_dir / snapshot.id / "disk.qcow2"
    assert [call[0] for call in world.disks.calls] == ["copy", "rebase", "check"]
    _, source, target, frozen = world.disks.calls[0]
    assert frozen and source == world.settings.vms_dir / record.name / "disk.qcow2"
    assert target.name == "disk.qcow2" and target.parent.name.startswith(".staging-")
    assert world.disks.calls[1][2] == world.build(OLD_BUILD) / "disk.qcow2"
    assert copy.read_text() == f"disk of {record.name}"
    assert copy.stat().st_mode & 0o777 == 0o444
    assert world.snapshot_dirs() == [snapshot.id]


def test_snapshot_fields_and_json(world):
    record = world.add_vm(1)
    snapshot = world.snapshots.take(record.id)
    assert (snapshot.kind, snapshot.has_overlay, snapshot.cpu, snapshot.mem_mb) == (
        "user_overlay", True, 2, 512)
    assert (snapshot.image_id, snapshot.source_vm_id, snapshot.disk_size_mb) == (
        "default", record.id, 6144)
    stored = json.loads((world.settings.snapshots_dir / snapshot.id / "snapshot.json")
                        .read_text())
    assert stored == {"id": snapshot.id, "kind": "user_overlay",
                      "createdAt": snapshot.created_at, "cpu": 2, "memMb": 512,
                      "imageId": "default", "sourceVmId": record.id, "hasOverlay": True,
                      "imagePath": str(world.build(OLD_BUILD) / "disk.qcow2"),
                      "diskSizeMb": 6144, "createdBy": "system"}
    assert world.snapshots.list() == [snapshot]
    assert world.snapshots.get(snapshot.id) == snapshot


def test_stopped_vm_is_copied_without_the_guest_agent(world):
    record = world.add_vm(1, state="shutoff")
    world.snapshots.take(record.id)
    assert world.hypervisor.calls == []
    assert world.disks.calls[0][-1] is False


@pytest.mark.parametrize(("state", "phase", "shown"), [
    ("running", VmPhase.STARTING, "STARTING"),
    ("running", VmPhase.STOPPING, "STOPPING"),
    ("shutdown", VmPhase.STOPPING, "STOPPING"),
    ("paused", VmPhase.READY, "ERROR"),
])
def test_other_states_are_409(world, state, phase, shown):
    record = world.add_vm(1, state=state, phase=phase)
    with pytest.raises(VmStateConflict, match=shown):
        world.snapshots.take(record.id)
    assert world.disks.calls == [] and world.hypervisor.calls == []


@pytest.mark.parametrize("vm_id", ["00000000-0000-4000-8000-00000000dead", "nope"])
def test_unknown_vm_is_404(world, vm_id):
    with pytest.raises(VmNotFound, match=vm_id):
        world.snapshots.take(vm_id)


def test_failed_freeze_falls_back_to_sync_and_warns(world, caplog):
    record = world.add_vm(1)
    world.hypervisor.fail["freeze"] = HypervisorError("libvirt: guest agent is not responding")
    with caplog.at_level(logging.WARNING, logger="app.services.snapshots"):
        snapshot = world.snapshots.take(record.id)
    assert world.hypervisor.calls == ["freeze", "agent /bin/sync", "thaw"]
    assert "falling back to sync" in caplog.text and "crash-consistent" in caplog.text
    assert world.snapshot_dirs() == [snapshot.id]


@pytest.mark.parametrize("agent", ["error", "exit"])
def test_no_freeze_and_no_sync_is_504_and_leaves_nothing(world, agent):
    record = world.add_vm(1)
    world.hypervisor.fail["freeze"] = HypervisorError("libvirt: no agent")
    if agent == "error":
        world.hypervisor.fail["agent /bin/sync"] = HypervisorError("libvirt: no agent")
    else:
        world.hypervisor.agent_exit = 1
    with pytest.raises(GuestUnreachable, match=record.id):
        world.snapshots.take(record.id)
    assert world.hypervisor.calls[-1] == "thaw"
    assert world.disks.calls == [] and world.snapshot_dirs() == []


@pytest.mark.parametrize("step", ["copy", "rebase", "check"])
def test_failed_step_thaws_and_leaves_nothing(world, step):
    record = world.add_vm(1)
    world.disks.fail[step] = HypervisorError(f"qemu-img {step} failed")
    with pytest.raises(HypervisorError, match=step):
        world.snapshots.take(record.id)
    assert world.hypervisor.calls == ["freeze", "thaw"] and not world.hypervisor.frozen
    assert world.snapshot_dirs() == [] and world.snapshots.list() == []


def test_thaw_is_retried_while_the_guest_is_frozen(world, monkeypatch, caplog):
    monkeypatch.setattr(time, "sleep", lambda _s: None)
    record = world.add_vm(1)
    world.hypervisor.fail["thaw"] = HypervisorError("libvirt: agent busy")
    with caplog.at_level(logging.ERROR, logger="app.services.snapshots"):
        world.snapshots.take(record.id)
    assert world.hypervisor.calls == ["freeze"] + ["thaw"] * snapshots_module.THAW_ATTEMPTS
    assert "may still be frozen" in caplog.text


def test_vm_changing_state_during_the_copy_is_409(world, monkeypatch):
    record = world.add_vm(1, state="shutoff")

    def copy_while_started(source: Path, target: Path) -> None:
        target.write_text("torn")
        world.hypervisor.start_domain(record.id)  # someone starts the VM meanwhile

    monkeypatch.setattr("app.virt.disks.copy_image", copy_while_started)
    with pytest.raises(VmStateConflict, match="STOPPED to RUNNING"):
        world.snapshots.take(record.id)
    assert world.snapshot_dirs() == []


# Deleting #################################################################################

def test_delete_is_409_while_a_vm_from_it_exists_in_any_state(world):
    snapshot = world.snapshots.take(world.add_vm(1).id)
    user = world.add_vm(2, state="shutoff", snapshot_id=snapshot.id)
    with pytest.raises(SnapshotInUse, match=user.id):
        world.snapshots.delete(snapshot.id)
    assert world.snapshots.users(snapshot.id) == [user.id]
    del world.hypervisor.domains[user.id]
    world.snapshots.delete(snapshot.id)
    assert world.snapshot_dirs() == []
    with pytest.raises(SnapshotNotFound):
        world.snapshots.get(snapshot.id)
    with pytest.raises(SnapshotNotFound):
        world.snapshots.delete(snapshot.id)


def test_deleting_the_source_vm_keeps_the_snapshot(world):
    record = world.add_vm(1)
    snapshot = world.snapshots.take(record.id)
    del world.hypervisor.domains[record.id]
    assert world.snapshots.get(snapshot.id) == snapshot


@pytest.mark.parametrize("snapshot_id", ["nope", "../vms", "", "00000000-0000-4000-8000-0"])
def test_malformed_ids_are_not_found(world, snapshot_id):
    with pytest.raises(SnapshotNotFound):
        world.snapshots.get(snapshot_id)


def test_purge_keeps_snapshots_in_use(world):
    first = world.snapshots.take(world.add_vm(1).id)
    second = world.snapshots.take(world.add_vm(2).id)
    world.add_vm(3, snapshot_id=second.id)
    assert world.snapshots.purge_all() == 1
    assert world.snapshot_dirs() == [second.id] and first.id != second.id


def test_stale_staging_directories_are_swept(world):
    world.settings.snapshots_dir.mkdir(parents=True)
    stale = world.settings.snapshots_dir / ".staging-old"
    fresh = world.settings.snapshots_dir / ".staging-new"
    for folder in (stale, fresh):
        folder.mkdir()
        (folder / "disk.qcow2").write_text("half")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    assert world.snapshots.remove_orphans() == [f"files {stale}"]
    assert world.snapshot_dirs() == [".staging-new"]
    assert world.snapshots.list() == []


# Creating VMs from snapshots ##############################################################

def test_vm_base_uses_the_snapshots_disk_and_build(world):
    snapshot = world.snapshots.take(world.add_vm(1, build=OLD_BUILD).id)
    base = world.store.vm_base(VmSpec(cpu=1, mem_mb=256, snapshot_id=snapshot.id))
    assert base.template.id == "default"
    assert base.build.path == world.build(OLD_BUILD)  # not the current build
    assert base.backing == world.settings.snapshots_dir / snapshot.id / "disk.qcow2"
    assert base.disk_size_mb == 6144
    bigger = world.store.vm_base(VmSpec(cpu=1, mem_mb=256, snapshot_id=snapshot.id,
                                        disk_size_mb=8192, image_id="default"))
    assert bigger.disk_size_mb == 8192


@pytest.mark.parametrize(("changes", "error", "needle"), [
    ({"snapshot_id": "00000000-0000-4000-8000-00000000dead"}, SnapshotNotFound, "not found"),
    ({"image_id": "other"}, InvalidRequest, "imageId 'other'"),
    ({"disk_size_mb": 4096}, InvalidRequest, "at least 6144"),
])
def test_vm_base_refuses(world, changes, error, needle):
    snapshot = world.snapshots.take(world.add_vm(1).id)
    spec = VmSpec(**{"cpu": 1, "mem_mb": 256, "snapshot_id": snapshot.id, **changes})
    with pytest.raises(error, match=needle):
        world.store.vm_base(spec)


def test_create_from_snapshot_overlays_it_and_records_it(world):
    snapshot = world.snapshots.take(world.add_vm(1, build=OLD_BUILD).id)
    vm = world.vms.create(VmSpec(cpu=1, mem_mb=256, snapshot_id=snapshot.id))
    assert vm.snapshot_id == snapshot.id and vm.state is VmState.RUNNING
    overlay = world.disks.calls[-1]
    assert overlay[:2] == ("overlay", world.settings.snapshots_dir / snapshot.id / "disk.qcow2")
    assert overlay[3] == 6144
    record = parse_metadata(world.hypervisor.get_domain(vm.id).xml)
    assert (record.snapshot_id, record.image_path) == (snapshot.id, str(world.build(OLD_BUILD)))
    kernel = ET.fromstring(world.hypervisor.defined[-1]).findtext("os/kernel")
    assert kernel == str(world.build(OLD_BUILD) / "vmlinuz")
    with pytest.raises(SnapshotInUse):
        world.snapshots.delete(snapshot.id)


def test_create_from_unknown_snapshot_leaves_nothing(world):
    with pytest.raises(SnapshotNotFound):
        world.vms.create(VmSpec(cpu=1, mem_mb=256,
                                snapshot_id="00000000-0000-4000-8000-00000000dead"))
    assert world.hypervisor.domains == {} and world.disks.calls == []
    assert not world.settings.vms_dir.exists() or list(world.settings.vms_dir.iterdir()) == []


def test_plain_create_records_no_snapshot(world):
    vm = world.vms.create(VmSpec(cpu=1, mem_mb=256))
    assert vm.snapshot_id is None
    assert world.disks.calls[-1][1] == world.build(NEW_BUILD) / "disk.qcow2"
    vm_element = ET.fromstring(world.hypervisor.defined[-1]).find(f"metadata/{{{METADATA_NS}}}vm")
    assert vm_element is not None and vm_element.find(f"{{{METADATA_NS}}}snapshotId") is None


# CLI ######################################################################################

@pytest.mark.parametrize(("argv", "snapshots_purged"), [(["purge"], False),
                                                        (["purge", "--snapshots"], True)])
def test_purge_deletes_snapshots_only_when_asked(monkeypatch, capsys, argv, snapshots_purged):
    calls = []

    class Bundle:
        vms = type("Vms", (), {"purge_all": lambda self: calls.append("vms") or 2})()
        seeds = type("Seeds", (), {"prune": lambda self: []})()
        snapshots = type("Snaps", (), {"purge_all": lambda self: calls.append("snaps") or 3})()

        def remove_orphans(self, min_age_s=None):
            calls.append(f"orphans {min_age_s}")
            return []

    monkeypatch.setattr("app.cli.load_settings", lambda: None)
    monkeypatch.setattr("app.services.container.build_services", lambda settings: Bundle())
    from app import cli
    cli.main(argv)
    assert calls == ["vms", *(["snaps"] if snapshots_purged else []), "orphans 0"]
    assert f"{3 if snapshots_purged else 0} snapshot(s)" in capsys.readouterr().out
