"""The host's disk budget (app.services.capacity): a create or a snapshot that would not fit is
refused with 507 (429 at the snapshot quota), never a full host disk."""
from __future__ import annotations

import dataclasses
import os
import types

import pytest

from app.config import load_settings
from app.errors import InsufficientStorage, InvalidRequest, QuotaExceeded
from app.services import capacity
from app.services.capacity import DiskBudget
from tests.unit.fakes import World


def records(world: World, sizes: list[int]):
    return [dataclasses.replace(world.add_vm(i + 1), disk_size_mb=size)
            for i, size in enumerate(sizes)]



def free_space(monkeypatch, mib: int) -> None:
    monkeypatch.setattr(capacity.os, "statvfs", lambda _path: types.SimpleNamespace(
        f_bavail=mib, f_frsize=1024 * 1024))


def budget(world: World, **overrides) -> DiskBudget:
    return DiskBudget(dataclasses.replace(world.settings, **overrides))


def test_explicit_budget_counts_every_vm_disk_at_its_full_size(world):
    existing = records(world, [4096, 4096])
    check = budget(world, disk_budget_mb=12288)
    check.check_new_vm(existing, 4096)  # 12288: fits exactly
    with pytest.raises(InsufficientStorage, match="DISK_BUDGET_MB=12288"):
        check.check_new_vm(existing, 4097)


def test_snapshots_count_against_the_explicit_budget(world):
    (world.settings.snapshots_dir / "s1").mkdir(parents=True)
    with open(world.settings.snapshots_dir / "s1" / "disk.qcow2", "wb") as handle:
        handle.write(os.urandom(3 * 1024 * 1024))
    with pytest.raises(InsufficientStorage):
        budget(world, disk_budget_mb=4096 + 2).check_new_vm([], 4096)
    budget(world, disk_budget_mb=4096 + 3).check_new_vm([], 4096)


def test_without_a_budget_free_space_must_hold_what_disks_may_still_grow(world, monkeypatch):
    existing = records(world, [4096])  # its overlay holds ~0 MiB: it may grow by 4096
    free_space(monkeypatch, 4096 + 4096 + 2048)
    check = budget(world)
    check.check_new_vm(existing, 4096)
    with pytest.raises(InsufficientStorage, match="DISK_RESERVE_MB"):
        check.check_new_vm(existing, 4097)


def test_disk_size_is_capped_by_config(world):
    with pytest.raises(InvalidRequest, match="MAX_DISK_SIZE_MB"):
        budget(world, max_disk_size_mb=8192).check_disk_size(8193)
    budget(world, max_disk_size_mb=8192).check_disk_size(8192)


def test_snapshot_quota_and_budget_are_checked_before_the_copy(world):
    record = world.add_vm(1)
    world.snapshots.budget = budget(world, max_snapshots=0)
    with pytest.raises(QuotaExceeded, match="MAX_SNAPSHOTS"):
        world.snapshots.take(record.id)
    world.snapshots.budget = budget(world, disk_budget_mb=1)
    with pytest.raises(InsufficientStorage):
        world.snapshots.take(record.id)
    assert world.disks.calls == []  # nothing copied
    assert not world.settings.snapshots_dir.exists() or world.snapshot_dirs() == []


def test_budget_settings_are_validated():
    from app.config import ConfigError
    with pytest.raises(ConfigError, match="DISK_BUDGET_MB"):
        load_settings({}, {"DISK_BUDGET_MB": "-1"})
    assert load_settings({}, {"MAX_DISK_SIZE_MB": "2048"}).max_disk_size_mb == 2048
