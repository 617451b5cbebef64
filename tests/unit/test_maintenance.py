"""The maintaining process (Maintainer) on the real warm pool over fakes: it removes broken pool
VMs, tops the pool up to its target within its maximum, sweeps periodically, and only one
process per host owns the work."""
from __future__ import annotations

import dataclasses
import time

import pytest

from app.models import ProvisionMode, VmPhase, VmRecord, VmRole
from app.services import maintenance
from app.services.maintenance import Maintainer
from tests.unit.fakes import NEW_BUILD, OLD_BUILD, World

POOL = {"ENABLE_WARM_POOL": "true", "SNAPSHOT_AUTO_BUILD": "false", "MAX_VMS": 10}


def maintainer(world: World, sweep=lambda: []) -> Maintainer:
    return Maintainer(world.settings, world.parts.pool, None, world.templates,  # type: ignore
                      world.ipsets, sweep=sweep)


def add_pool_vm(world: World, number: int, state: str = "running", cpu: int = 1,
                build: str = NEW_BUILD, phase: VmPhase = VmPhase.READY) -> VmRecord:
    made = world.add_vm(number, state=state, build=build, phase=phase)
    made = dataclasses.replace(made, cpu=cpu, mem_mb=256, role=VmRole.POOL,
                               provision_mode=ProvisionMode.SNAPSHOT)
    world.hypervisor.add(made, state)
    return made


def test_refill_removes_broken_pool_vms_and_tops_up_to_the_target(tmp_path, monkeypatch):
    world = World(tmp_path, monkeypatch, WARM_POOL_TARGET=3, WARM_POOL_MAX_VMS=4,
                  WARM_POOL_SHAPES="1x256", **POOL)
    ok = add_pool_vm(world, 1)
    broken = [add_pool_vm(world, 2, state="shutoff"), add_pool_vm(world, 3, build=OLD_BUILD),
              add_pool_vm(world, 4, phase=VmPhase.CREATING), add_pool_vm(world, 5, cpu=2)]
    owner = maintainer(world)
    assert owner.refill_pool() == 2
    pool = {record.id for record, _state in world.parts.pool.vms()}
    assert ok.id in pool and len(pool) == 3
    assert not pool & {record.id for record in broken}
    assert owner.refill_pool() == 0
    assert owner.drain() == 3 and world.parts.pool.vms() == []


def test_pool_never_grows_past_its_maximum(tmp_path, monkeypatch):
    world = World(tmp_path, monkeypatch, WARM_POOL_TARGET=5, WARM_POOL_MAX_VMS=2,
                  WARM_POOL_SHAPES="1x256,2x512", **POOL)
    assert maintainer(world).refill_pool() == 2
    assert len(world.parts.pool.vms()) == 2


def test_only_one_maintainer_owns_the_host(tmp_path, monkeypatch):
    world = World(tmp_path, monkeypatch)
    first, second = maintainer(world), maintainer(world)
    assert first.try_become_owner() and first.try_become_owner()
    assert not second.try_become_owner()


def test_the_maintainer_sweeps_periodically_not_only_at_start(tmp_path, monkeypatch):
    world = World(tmp_path, monkeypatch, SNAPSHOT_AUTO_BUILD="false")
    sweeps = []
    owner = maintainer(world, sweep=lambda: sweeps.append(1) or [])
    clock = [1000.0]
    monkeypatch.setattr(maintenance.time, "monotonic", lambda: clock[0])
    owner.run_once()
    owner.run_once()
    assert len(sweeps) == 1 and world.ipsets.host_refreshes == 2
    clock[0] += maintenance.SWEEP_INTERVAL_S
    owner.run_once()
    assert len(sweeps) == 2


def test_pool_vms_of_an_image_that_is_no_longer_the_default_are_removed(tmp_path, monkeypatch):
    world = World(tmp_path, monkeypatch, WARM_POOL_TARGET=0, **POOL)
    old = add_pool_vm(world, 1)
    world.services.images.store.set_default("other")
    maintainer(world).refill_pool()
    assert old.id not in {record.id for record, _state in world.parts.pool.vms()}


def test_memory_snapshots_are_kept_for_the_default_and_every_ready_custom_image(
        tmp_path, monkeypatch):
    from app.models import ImageRequest
    monkeypatch.setattr("app.services.build_guest.PortReader", _NoPort)
    world = World(tmp_path, monkeypatch, SNAPSHOT_AUTO_BUILD="false",
                  SNAPSHOT_SHAPES="1x256,2x512")
    for name in ("ready", "queued"):
        world.services.images.create(ImageRequest(name=name, setup="true"))
        if name == "ready":
            world.services.image_builder.run_pending()

    class Seeds:
        asked: list = []

        def ensure(self, cpu, mem_mb, image_id=None):
            self.asked.append((image_id, cpu, mem_mb))

        def prune(self):
            return []
    owner = Maintainer(world.settings, world.parts.pool, Seeds(), world.templates,  # type: ignore
                       world.ipsets, sweep=lambda: [])
    owner.ensure_seeds()
    assert Seeds.asked == [("default", 1, 256), ("default", 2, 512), ("ready", 1, 256),
                           ("ready", 2, 512)]


@pytest.mark.parametrize("loop", ["build", "deliver"])
def test_the_builder_and_webhook_threads_work_only_in_the_owner(tmp_path, monkeypatch, loop):
    monkeypatch.setattr(maintenance, "BUILD_INTERVAL_S", 0.01)
    monkeypatch.setattr(maintenance, "DELIVER_INTERVAL_S", 0.01)
    world = World(tmp_path, monkeypatch, SNAPSHOT_AUTO_BUILD="false")
    rounds = []

    def work(number: int) -> dict:
        return {"build": lambda stop: rounds.append(number) or []} if loop == "build" else \
            {"deliver": lambda: rounds.append(number) or 0}

    owner = Maintainer(world.settings, world.parts.pool, None, world.templates,  # type: ignore
                       world.ipsets, sweep=lambda: [], **work(1))
    other = Maintainer(world.settings, world.parts.pool, None, world.templates,  # type: ignore
                       world.ipsets, sweep=lambda: [], **work(2))
    assert owner.try_become_owner()  # this one holds the host's maintenance lock
    other.start()
    time.sleep(0.2)
    other.stop(wait_s=2)
    assert rounds == []
    owner.start()
    deadline = time.monotonic() + 5
    while not rounds and time.monotonic() < deadline:
        time.sleep(0.01)
    owner.stop(wait_s=2)
    assert set(rounds) == {1}


class _NoPort:
    def __init__(self, *_args):
        pass

    def start(self, timeout):
        pass

    def stop(self, quiet_s=0.5, timeout=5.0):
        pass
