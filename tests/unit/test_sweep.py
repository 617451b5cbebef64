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
