"""Claiming a warm-pool VM (VmService, fake libvirt): only a ready pool VM of the caller's shape
and the current image build is handed out, once, with the caller's policy; at the quota an idle
pool VM makes room."""
from __future__ import annotations

import dataclasses

import pytest

from app.services.records import to_vm
from app.models import ProvisionMode, VmPhase, VmRecord, VmRole, VmSpec
from tests.unit.fakes import NEW_BUILD, OLD_BUILD, World, record


@pytest.fixture
def world(tmp_path, monkeypatch) -> World:
    return World(tmp_path, monkeypatch, ENABLE_WARM_POOL="true")


def add_pool_vm(world: World, number: int, phase: VmPhase = VmPhase.READY, cpu: int = 1,
                build: str = NEW_BUILD, state: str = "running") -> VmRecord:
    record = world.add_vm(number, state=state, phase=phase, build=build)
    record = dataclasses.replace(record, cpu=cpu, mem_mb=256, disk_size_mb=4096,
                                 role=VmRole.POOL, provision_mode=ProvisionMode.SNAPSHOT)
    world.hypervisor.add(record, state)
    return record


SPEC = VmSpec(cpu=1, mem_mb=256, allow_ips=("10.0.0.0/8",), outbound_internet=True)


def claim(world: World, spec: VmSpec = SPEC):
    return world.parts.pool.claim(world.parts.provisioner.plan(spec))


def test_only_a_ready_pool_vm_of_the_shape_and_build_is_claimed_once(world):
    add_pool_vm(world, 1, phase=VmPhase.STARTING)
    add_pool_vm(world, 2, cpu=2)
    add_pool_vm(world, 3, build=OLD_BUILD)
    add_pool_vm(world, 4, state="shutoff")
    ready = add_pool_vm(world, 5)
    assert world.vms.list() == []  # pool VMs are invisible

    vm = world.vms.create(SPEC)  # auto: a pool hit answers without booting anything
    assert (vm.id, vm.provision_mode) == (ready.id, "pool")
    assert (vm.allow_ips, vm.outbound_internet) == (("10.0.0.0/8",), True)
    assert world.ipsets.applied == [(ready.name, ("10.0.0.0/8",), True)]
    assert [v.id for v in world.vms.list()] == [ready.id]
    assert world.vms.get(ready.id).provision_mode == "pool"
    assert claim(world) is None  # handed out once; the others are not claimable


def test_boot_and_snapshot_modes_never_take_from_the_pool(world, monkeypatch):
    add_pool_vm(world, 5)
    made = []
    def create(plan, *_args):
        made.append(plan.spec)
        return to_vm(record(9), "running")

    monkeypatch.setattr(world.parts.provisioner, "create", create)
    for mode in (ProvisionMode.BOOT, ProvisionMode.SNAPSHOT):
        world.vms.create(dataclasses.replace(SPEC, provision_mode=mode))
    assert [spec.provision_mode for spec in made] == [ProvisionMode.BOOT,
                                                      ProvisionMode.SNAPSHOT]
    assert world.vms.list() == [] and world.ipsets.applied == []


def test_disabled_pool_is_never_claimed(tmp_path, monkeypatch):
    world = World(tmp_path, monkeypatch, ENABLE_WARM_POOL="false")
    add_pool_vm(world, 5)
    assert claim(world) is None


def test_quota_evicts_an_idle_pool_vm(world):
    pool_vm = add_pool_vm(world, 5, cpu=2)  # not the caller's shape: not claimable
    assert world.parts.pool.evict() is True
    assert pool_vm.id not in world.hypervisor.domains
    assert world.parts.pool.evict() is False


def test_evicting_never_removes_a_vm_claimed_meanwhile(world, monkeypatch):
    """The eviction reads the pool, a concurrent create claims that VM, then the eviction
    removes what it read: the claimed VM must survive (it re-checks the role under the
    allocation lock)."""
    pool_vm = add_pool_vm(world, 5)
    stale = world.parts.pool.vms()
    claimed = world.vms.create(SPEC)  # another worker's create takes it first
    assert claimed.id == pool_vm.id
    monkeypatch.setattr(world.parts.pool, "vms", lambda: stale)
    assert world.parts.pool.evict() is False
    assert pool_vm.id in world.hypervisor.domains
    assert [vm.id for vm in world.vms.list()] == [pool_vm.id]


def test_maintainer_never_removes_a_vm_claimed_meanwhile(world):
    pool_vm = add_pool_vm(world, 5)
    claimed = world.vms.create(SPEC)
    assert claimed.id == pool_vm.id
    assert world.parts.pool.remove(pool_vm) is False
    assert world.vms.get(pool_vm.id).state.value == "RUNNING"
