"""The image builder on the real services over fakes: a build from queue to READY or FAILED,
what it leaves (and never leaves) behind, interrupted builds, and the host lock."""
from __future__ import annotations

import dataclasses
import fcntl
import json
import threading
import time
import types

import pytest

from app.clock import iso_after
from app.models import ImageRequest, ImageState, VmRole, VmSpec
from app.services.build_guest import RUNNER, SEAL
from app.services.image_store import LOG
from tests.unit.fakes import World

SETUP = "apt-get install -y ./hello.deb\n"


class FakePortReader:
    """The build-log port: the "guest" writes one line when the reader connects."""

    def __init__(self, socket_path: str, sink) -> None:
        self.socket_path = socket_path
        self.sink = sink

    def start(self, timeout: float) -> None:
        self.sink(b"hello from the build VM\n")

    def stop(self, quiet_s: float = 0.5, timeout: float = 5.0) -> None:
        pass


@pytest.fixture
def world(tmp_path, monkeypatch, clock) -> World:
    monkeypatch.setattr("app.services.build_guest.PortReader", FakePortReader)
    monkeypatch.setattr("app.services.build_guest.POLL_S", 0.01)
    return World(tmp_path, monkeypatch, clock, SNAPSHOT_AUTO_BUILD="false")


def queue(world: World, name: str = "node", **fields) -> str:
    world.services.images.create(ImageRequest(name=name, setup=SETUP, **fields))
    return name


def record(world: World, name: str = "node"):
    return world.services.images.store.get(name)


def build_log(world: World, name: str = "node") -> str:
    return world.services.images.store.path(name, LOG).read_text()


def test_a_queued_image_is_built_to_ready(world):
    queue(world, allow_ips=("172.16.0.1/32",), outbound_internet=True)
    assert world.services.image_builder.run_pending() == ["node"]
    image = world.services.images.get("node")
    assert (image.state, image.reason, image.base) == (ImageState.READY, None, "default")
    assert image.build_started_at and image.build_finished_at
    # The setup ran as root through the agent, then the seal; the build VM is gone.
    assert world.hypervisor.agent_scripts == [RUNNER, SEAL]
    assert world.hypervisor.domains == {}
    assert "hello from the build VM" in build_log(world) and "READY" in build_log(world)
    # It booted from the base image with the image's policy and both build devices.
    defined = world.hypervisor.defined[0]
    assert "<target dev=\"vdb\" bus=\"virtio\" />" in defined and "build-log.sock" in defined
    assert ("rds-" + defined.split("<name>rds-")[1][:8], ("172.16.0.1/32",), True) in \
        world.ipsets.applied
    # Published: flattened disk, the base's kernel and initrd, manifest, volume link.
    build = world.settings.custom_images_dir / "node" / "current"
    assert sorted(p.name for p in build.resolve().iterdir()) == [
        "disk.qcow2", "initrd.img", "manifest.json", "vmlinuz"]
    manifest = json.loads((build / "manifest.json").read_text())
    assert (manifest["base"], manifest["diskSizeMb"]) == ("default", 4096)
    link = world.settings.image_volumes_dir / "node.qcow2"
    assert link.resolve() == (build / "disk.qcow2").resolve()
    assert world.disks.calls[-2][:1] == ("convert",)
    # Its inputs are dropped; no work directory is left.
    folder = world.settings.custom_images_dir / "node"
    assert sorted(p.name for p in folder.iterdir() if not p.is_dir()) == ["build.log",
                                                                          "image.json"]
    assert not list(folder.glob(".build-*"))
    # ... and the activity feed says so.
    ready = world.services.events.recent(limit=5, types=("image.ready",))
    assert [(e.entity_id, e.actor) for e in ready] == [("node", "system")]


def test_a_ready_image_makes_vms(world):
    queue(world)
    world.services.image_builder.run_pending()
    vm = world.vms.create(VmSpec(cpu=1, mem_mb=256, image_id="node"))
    assert vm.image_id == "node"
    overlay = world.disks.calls[-1]
    assert overlay[0] == "overlay" and "custom/node" in str(overlay[1])


def test_a_failing_setup_script_ends_failed_with_its_log_and_leaves_nothing(world):
    queue(world)
    world.hypervisor.agent_statuses = [None, None, 3]
    world.services.image_builder.run_pending()
    image = world.services.images.get("node")
    assert image.state is ImageState.FAILED
    assert image.reason == "the setup script exited with 3"
    assert "hello from the build VM" in build_log(world)
    assert "FAILED: the setup script exited with 3" in build_log(world)
    failed = world.services.events.recent(limit=5, types=("image.failed",))
    assert [(e.entity_id, e.payload) for e in failed] == [
        ("node", {"reason": "the setup script exited with 3"})]
    assert world.hypervisor.domains == {} and world.taps.ports == set()
    folder = world.settings.custom_images_dir / "node"
    assert not (folder / "current").exists() and not list(folder.glob(".build-*"))
    assert not (world.settings.image_volumes_dir / "node.qcow2").exists()


def test_a_setup_script_over_its_time_limit_fails(world, monkeypatch):
    queue(world, timeout_s=1)
    ticks = iter(range(1000))  # each look at the clock: a second later
    monkeypatch.setattr("app.services.build_guest.time", types.SimpleNamespace(
        monotonic=lambda: float(next(ticks)), time=time.time, sleep=lambda _s: None))
    world.hypervisor.agent_statuses = [None] * 10
    world.services.image_builder.run_pending()
    assert record(world).reason == "did not finish within 1 s"


def test_a_guest_that_never_answers_fails_the_build(world):
    from app.errors import GuestUnreachable
    queue(world)
    world.parts.guests.wait_ready = lambda _record: (_ for _ in ()).throw(
        GuestUnreachable("the guest did not answer"))
    world.services.image_builder.run_pending()
    assert record(world).state is ImageState.FAILED
    assert "did not answer" in record(world).reason
    assert world.hypervisor.domains == {}


def test_a_stop_puts_the_build_back_in_the_queue_then_fails_it(world):
    queue(world)
    stop = threading.Event()
    world.hypervisor.agent_statuses = [None]
    original = world.hypervisor.guest_agent_status

    def status(*args):
        stop.set()  # the service stops while the setup runs
        return original(*args)
    world.hypervisor.guest_agent_status = status
    world.services.image_builder.build("node", stop)
    again = record(world)
    assert (again.state, again.started_at, again.attempts) == (ImageState.BUILDING, "", 1)
    assert world.hypervisor.domains == {}
    assert "starting it again" in build_log(world)
    world.hypervisor.agent_statuses = [None]
    world.services.image_builder.build("node", stop)
    assert record(world).state is ImageState.FAILED
    assert "2 times" in record(world).reason


def test_a_build_left_by_a_dead_process_is_recovered(world):
    """A started build whose builder died: its VM is removed and the build starts again."""
    queue(world)
    store = world.services.images.store
    store.save(dataclasses.replace(record(world), started_at=iso_after(0), attempts=1,
                                   build_vm="x"))
    world.add_vm(9, role=VmRole.BUILD)
    assert world.services.image_builder.run_pending() == ["node"]
    assert record(world).state is ImageState.READY and record(world).attempts == 2
    assert world.hypervisor.domains == {}


def test_only_one_process_builds(world):
    queue(world)
    lock = world.settings.custom_images_dir / "build.lock"
    with open(lock, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        assert world.services.image_builder.run_pending() == []
    assert record(world).state is ImageState.BUILDING
    assert world.services.image_builder.run_pending() == ["node"]


def test_a_pending_image_whose_upload_never_comes_fails(world, monkeypatch):
    queue(world, files=True)
    monkeypatch.setattr("app.services.image_builder.age_s", lambda _iso: 10**6)
    assert world.services.image_builder.run_pending() == []
    assert record(world).state is ImageState.FAILED
    assert "did not arrive" in record(world).reason


def test_a_new_image_that_does_not_come_up_fails_and_is_unpublished(tmp_path, monkeypatch,
                                                                    clock):
    monkeypatch.setattr("app.services.build_guest.PortReader", FakePortReader)
    world = World(tmp_path, monkeypatch, clock)  # memory snapshots on: the fakes cannot save
    queue(world)
    world.services.image_builder.run_pending()
    assert record(world).state is ImageState.FAILED
    assert record(world).reason.startswith("a VM of the new image did not come up")
    folder = world.settings.custom_images_dir / "node"
    assert not (folder / "current").exists()
    assert [p for p in folder.iterdir() if p.is_dir()] == []
    assert not (world.settings.image_volumes_dir / "node.qcow2").exists()


def test_an_image_built_on_a_custom_image(world):
    queue(world)
    world.services.image_builder.run_pending()
    queue(world, "node-plus", base="node")
    world.services.image_builder.run_pending()
    plus = record(world, "node-plus")
    assert (plus.state, plus.base, plus.template) == (ImageState.READY, "node", "default")
    overlays = [call for call in world.disks.calls if call[0] == "overlay"]
    assert "custom/node/" in str(overlays[-1][1])  # its build VM started from node's disk


def test_memory_snapshots_saved_during_a_build_are_not_pruned(world):
    """Step 5 saves the new image's snapshots before it is READY: a prune meanwhile (the
    maintaining process's, every few seconds) must keep them."""
    queue(world)
    builder = world.services.image_builder
    seen = []

    def snapshots(record, _log):
        template = world.templates.template_of(record)
        build = world.templates.current_build(template)
        seen.append([t.id for t, _b in world.templates.current_builds(building=True)])
        assert (template.id, build.path) in [(t.id, b.path) for t, b in
                                             world.templates.current_builds(building=True)]
    builder._snapshots = snapshots
    builder.run_pending()
    assert seen == [["default", "node"]]
    assert [t.id for t, _b in world.templates.current_builds()] == ["default", "node"]
