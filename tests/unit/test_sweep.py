"""The periodic sweep (VmService.remove_orphans, run by the maintaining process): a worker
killed mid-create leaves a domain in phase ``creating`` that counts against MAX_VMS; it goes
once it is older than any create may take, and nothing younger or finished is touched."""
from __future__ import annotations

import dataclasses
import datetime as dt


from app.models import VmPhase, VmRole
from tests.unit.fakes import World

def ago(seconds: float) -> str:
    when = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=seconds)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def add(world: World, number: int, phase: VmPhase, age_s: float,
        role: VmRole = VmRole.SANDBOX):
    record = dataclasses.replace(world.add_vm(number, phase=phase), created_at=ago(age_s),
                                 role=role)
    world.hypervisor.add(record, "running")
    return record


def test_a_create_that_never_finished_is_swept_after_the_age_guard(world):
    stale = add(world, 1, VmPhase.CREATING, age_s=11 * 60)
    fresh = add(world, 2, VmPhase.CREATING, age_s=60)
    ready = add(world, 3, VmPhase.READY, age_s=3600)
    starting = add(world, 4, VmPhase.STARTING, age_s=3600)  # a start, not a create
    pool = add(world, 5, VmPhase.CREATING, age_s=11 * 60, role=VmRole.POOL)
    removed = world.vms.remove_orphans()
    assert stale.id not in world.hypervisor.domains and pool.id not in world.hypervisor.domains
    assert {fresh.id, ready.id, starting.id} <= set(world.hypervisor.domains)
    assert any(stale.name in item for item in removed)
    assert not (world.settings.vms_dir / stale.name).exists()


def test_a_creating_vm_is_reported_as_starting(world):
    record = add(world, 1, VmPhase.CREATING, age_s=1)
    assert world.vms.get(record.id).state.value == "STARTING"


def test_a_create_that_begins_during_the_sweep_keeps_its_port_filter_and_sets(world,
                                                                             monkeypatch):
    """The sweep read the domains and directories first and the ports after: a create that
    made its directory, sets, filter and tap in between lost its tap (its restore then failed:
    "target managed='no' but specified dev doesn't exist"). Only what existed before the
    domains and directories were read may go."""
    name = "rds-0c0ffee0"
    bindings = world.hypervisor.filter_binding_ports
    began = []

    def a_create_begins():  # while the sweep reads the filter bindings
        if not began:
            began.append(True)
            (world.settings.vms_dir / name).mkdir(parents=True)
            world.ipsets.apply(name, ("10.0.0.1/32",), True, "172.16.0.1")
            world.hypervisor.filters.add(name)
            world.taps.create(name, "52:54:00:10:00:0c")
        return bindings()
    monkeypatch.setattr(world.hypervisor, "filter_binding_ports", a_create_begins)
    removed = world.vms.remove_orphans()
    assert began and removed == []
    assert name in world.taps.names() and name in world.hypervisor.filters
    assert name in world.ipsets.vm_names() and (world.settings.vms_dir / name).is_dir()
