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

from app.config import REPO_ROOT, load_settings
from app.errors import (GuestUnreachable, HypervisorError, InvalidRequest, SnapshotNotFound,
                        SnapshotInUse, VmNotFound, VmStateConflict)
from app.models import VmPhase, VmRecord, VmSpec, VmState
from app.services import snapshots as snapshots_module
from app.services.snapshots import SnapshotService, SnapshotStore
from app.services.templates import TemplateCatalog
from app.services.vms import VmService
from app.virt.connection import DomainInfo
from app.virt.domain_xml import METADATA_NS, metadata_element, parse_metadata

OLD_BUILD, NEW_BUILD = "0ld0ld0ld0ld0ld0", "4e34e34e34e34e34"


class FakeHypervisor:
    """The Hypervisor calls of VmService and SnapshotService over in-memory domains."""

    def __init__(self) -> None:
        self.domains: dict[str, DomainInfo] = {}
        self.defined: list[str] = []
        self.calls: list[str] = []
        self.frozen = False
        self.freeze_error: Exception | None = None
        self.thaw_error: Exception | None = None
        self.agent_error: Exception | None = None
        self.agent_exit = 0
        self.bindings: set[str] = set()

    def emulator_version(self) -> str:
        return "7.2.0"

    def add(self, record: VmRecord, state: str = "running") -> None:
        metadata = ET.tostring(metadata_element(record), encoding="unicode")
        self.domains[record.id] = DomainInfo(
            uuid=record.id, name=record.name, state=state,
            xml=f"<domain><name>{record.name}</name><metadata>{metadata}</metadata></domain>")

    def list_domains(self) -> list[DomainInfo]:
        return list(self.domains.values())

    def get_domain(self, uuid: str) -> DomainInfo:
        try:
            return self.domains[uuid]
        except KeyError:
            raise VmNotFound(f"no domain {uuid}") from None

    def fs_freeze(self, uuid: str, timeout: float) -> int:
        self.calls.append("freeze")
        if self.freeze_error:
            raise self.freeze_error
        self.frozen = True
        return 1

    def fs_thaw(self, uuid: str, timeout: float) -> int:
        self.calls.append("thaw")
        if self.thaw_error:
            raise self.thaw_error
        self.frozen = False
        return 1

    def guest_agent_exec(self, uuid: str, path: str, args: list[str], timeout: float) -> int:
        self.calls.append(f"agent {path}")
        if self.agent_error:
            raise self.agent_error
        return self.agent_exit

    # What VmService.create needs besides the above.
    def domain_name_exists(self, name: str) -> bool:
        return False

    def define_filter(self, xml: str) -> None:
        self.calls.append("define filter")

    def undefine_filter(self, name: str) -> None:
        self.calls.append("undefine filter")

    def list_filter_names(self) -> list[str]:
        return []

    def create_filter_binding(self, xml: str) -> None:
        self.calls.append("bind filter")
        self.bindings.add(ET.fromstring(xml).find("portdev").get("name"))

    def delete_filter_binding(self, port: str) -> None:
        self.calls.append("unbind filter")
        self.bindings.discard(port)

    def filter_binding_ports(self) -> list[str]:
        return sorted(self.bindings)

    def destroy_domain(self, uuid: str) -> None:
        self.calls.append("destroy")

    def undefine_domain(self, uuid: str) -> None:
        self.domains.pop(uuid, None)

    def define_domain(self, xml: str) -> None:
        self.defined.append(xml)
        record = parse_metadata(xml)
        self.domains[record.id] = DomainInfo(uuid=record.id, name=record.name,
                                             state="shutoff", xml=xml)

    def start_domain(self, uuid: str) -> None:
        self.domains[uuid] = DomainInfo(**{**vars(self.domains[uuid]), "state": "running"})

    def set_metadata(self, uuid: str, xml: str, namespace: str, prefix: str) -> None:
        record = parse_metadata(xml.replace("<vm>", f'<vm xmlns="{namespace}">', 1))
        self.add(record, self.domains[uuid].state)


class FakeIpSets:
    """Stands in for app.virt.ipsets.IpSets: records the policies it was given."""

    def __init__(self) -> None:
        self.applied: list[tuple[str, tuple[str, ...], bool]] = []

    def apply(self, vm_name: str, allow_ips: tuple[str, ...], outbound_internet: bool,
              _gateway_ip: str) -> None:
        self.applied.append((vm_name, allow_ips, outbound_internet))

    def destroy(self, _vm_name: str) -> None:
        pass

    def vm_names(self) -> set[str]:
        return set()


class FakeTaps:
    """Stands in for app.virt.taps.Taps: the taps are names in a set."""

    def __init__(self) -> None:
        self.ports: set[str] = set()
        self.attached: set[str] = set()

    def create(self, port: str, _mac: str) -> None:
        self.ports.add(port)

    def attach(self, port: str, _bridge: str) -> None:
        assert port in self.ports
        self.attached.add(port)

    def exists(self, port: str) -> bool:
        return port in self.ports

    def delete(self, port: str) -> None:
        self.ports.discard(port)
        self.attached.discard(port)

    def names(self) -> set[str]:
        return set(self.ports)


class FakeDisks:
    """Stands in for app.virt.disks: files are small text files, and every call is logged."""

    def __init__(self, hypervisor: FakeHypervisor) -> None:
        self.hypervisor = hypervisor
        self.calls: list[tuple] = []
        self.fail: dict[str, Exception] = {}

    def _call(self, name: str, *args) -> None:
        self.calls.append((name, *args))
        if name in self.fail:
            raise self.fail[name]

    def copy_image(self, source: Path, target: Path) -> None:
        self._call("copy", source, target, self.hypervisor.frozen)
        target.write_text(source.read_text())

    def rebase(self, image: Path, backing: Path) -> None:
        self._call("rebase", image, backing)

    def check(self, image: Path) -> None:
        self._call("check", image)

    def create_overlay(self, backing: Path, overlay: Path, size_mb: int) -> None:
        self._call("overlay", backing, overlay, size_mb)
        overlay.write_text(f"overlay on {backing}")


class World:
    """Services on a temporary STORAGE_ROOT with two image builds, the newest current."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.root = root
        self.settings = load_settings(environ={}, overrides={"STORAGE_ROOT": str(root),
                                                             "LIBVIRT_TIMEOUT_S": 1})
        image_dir = self.settings.images_dir / "debian-bookworm"
        for build in (OLD_BUILD, NEW_BUILD):
            (image_dir / build).mkdir(parents=True)
            (image_dir / build / "manifest.json").write_text('{"diskSizeMb": 4096}')
            (image_dir / build / "disk.qcow2").write_text("template")
        (image_dir / "current").symlink_to(NEW_BUILD)
        self.hypervisor = FakeHypervisor()
        self.disks = FakeDisks(self.hypervisor)
        for name in ("copy_image", "rebase", "check", "create_overlay"):
            monkeypatch.setattr(f"app.virt.disks.{name}", getattr(self.disks, name))
        self.templates = TemplateCatalog(str(REPO_ROOT / "vm-templates"),
                                         self.settings.images_dir, "default")
        self.store = SnapshotStore(self.settings.snapshots_dir, self.templates)
        self.vms = VmService(self.settings, self.hypervisor, self.templates, "qemu",
                             snapshots=self.store)
        self.vms.ipsets = FakeIpSets()  # never the host's kernel ipsets in a unit test
        self.vms.ports.taps = FakeTaps()  # nor its network devices
        self.snapshots = SnapshotService(self.settings, self.hypervisor, self.templates,
                                         self.vms, self.store)

    def build(self, name: str) -> Path:
        return self.settings.images_dir / "debian-bookworm" / name

    def add_vm(self, number: int, state: str = "running", phase: VmPhase = VmPhase.READY,
               build: str = OLD_BUILD, snapshot_id: str = "") -> VmRecord:
        vm_id = f"{number:08x}-0000-4000-8000-000000000000"
        record = VmRecord(
            id=vm_id, name=f"rds-{number:08x}", cpu=2, mem_mb=512, guest_ip="172.16.0.9",
            mac="52:54:00:10:00:09", allow_ips=(), outbound_internet=False, image_id="default",
            image_path=str(self.build(build)), disk_size_mb=6144,
            created_at="2024-01-01T00:00:00.000Z", provision_mode="boot",
            host_key="ssh-ed25519 AAAA", phase=phase, snapshot_id=snapshot_id)
        vm_dir = self.settings.vms_dir / record.name
        vm_dir.mkdir(parents=True, exist_ok=True)
        (vm_dir / "disk.qcow2").write_text(f"disk of {record.name}")
        self.hypervisor.add(record, state)
        return record

    def snapshot_dirs(self) -> list[str]:
        return sorted(p.name for p in self.settings.snapshots_dir.iterdir())


@pytest.fixture
def world(tmp_path, monkeypatch) -> World:
    return World(tmp_path, monkeypatch)


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
                      "diskSizeMb": 6144}
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
    world.hypervisor.freeze_error = HypervisorError("libvirt: guest agent is not responding")
    with caplog.at_level(logging.WARNING, logger="app.services.snapshots"):
        snapshot = world.snapshots.take(record.id)
    assert world.hypervisor.calls == ["freeze", "agent /bin/sync", "thaw"]
    assert "falling back to sync" in caplog.text and "crash-consistent" in caplog.text
    assert world.snapshot_dirs() == [snapshot.id]


@pytest.mark.parametrize("agent", ["error", "exit"])
def test_no_freeze_and_no_sync_is_504_and_leaves_nothing(world, agent):
    record = world.add_vm(1)
    world.hypervisor.freeze_error = HypervisorError("libvirt: no agent")
    if agent == "error":
        world.hypervisor.agent_error = HypervisorError("libvirt: no agent")
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
    world.hypervisor.thaw_error = HypervisorError("libvirt: agent busy")
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


def test_create_from_snapshot_overlays_it_and_records_it(world, monkeypatch):
    monkeypatch.setattr(VmService, "_wait_ready", lambda self, record: None)
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


def test_plain_create_records_no_snapshot(world, monkeypatch):
    monkeypatch.setattr(VmService, "_wait_ready", lambda self, record: None)
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
