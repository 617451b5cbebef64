"""The host's disk budget: VMs' disks and snapshots must never fill the storage filesystem.

A VM's overlay is thin: it starts at a few MiB and may grow to its ``diskSizeMb``. So what a
VM commits is its full ``diskSizeMb``, and the budget is checked against commitments, not
against what is written today:

- with ``DISK_BUDGET_MB`` set: the disks of all VMs (``diskSizeMb`` each) plus the snapshots'
  and custom images' files plus the new one must fit in it;
- without (``0``, the default): the storage filesystem's free space must still hold what every
  existing VM's disk may yet grow, the new one, and ``DISK_RESERVE_MB`` on top.

Creates check under the allocation lock, so two creates never spend the same room twice.
"""
from __future__ import annotations

import dataclasses
import os
import typing as t
from pathlib import Path

from app.config import Settings
from app.errors import InsufficientStorage, InvalidRequest, QuotaExceeded
from app.models import VmRecord

MIB = 1024 * 1024


@dataclasses.dataclass(frozen=True)
class DiskUsage:
    """What the service's disks take and may take, in MiB."""

    committed_mb: int  # Σ diskSizeMb of every VM (sandboxes, pool, seeds)
    grown_mb: int  # what their overlays hold now
    snapshots_mb: int  # the snapshots' files and the custom images' (app.services.images)
    free_mb: int  # free space on the storage filesystem (for unprivileged use)


def allocated_mb(path: Path) -> int:
    """Bytes a file or a directory tree really takes on disk, in MiB (sparse files count
    what they hold, not their size)."""
    total = 0
    paths: t.Iterable[Path] = path.rglob("*") if path.is_dir() else [path]
    for item in paths:
        try:
            if item.is_file() and not item.is_symlink():
                total += item.stat().st_blocks * 512
        except OSError:
            continue  # removed meanwhile
    return total // MIB


class DiskBudget:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def usage(self, records: t.Iterable[VmRecord]) -> DiskUsage:
        committed = grown = 0
        for record in records:
            committed += record.disk_size_mb
            grown += min(record.disk_size_mb,
                         allocated_mb(self.settings.vms_dir / record.name / "disk.qcow2"))
        root = Path(self.settings.storage_root)
        root.mkdir(parents=True, exist_ok=True)
        stats = os.statvfs(root)
        return DiskUsage(committed_mb=committed, grown_mb=grown,
                         snapshots_mb=allocated_mb(self.settings.snapshots_dir)
                         + allocated_mb(self.settings.custom_images_dir),
                         free_mb=stats.f_bavail * stats.f_frsize // MIB)

    def check_disk_size(self, disk_size_mb: int) -> None:
        """:raises InvalidRequest: above ``MAX_DISK_SIZE_MB``."""
        limit = self.settings.max_disk_size_mb
        if disk_size_mb > limit:
            raise InvalidRequest(f"diskSizeMb must be at most {limit} (MAX_DISK_SIZE_MB)")

    def check_new_vm(self, records: t.Iterable[VmRecord], disk_size_mb: int) -> None:
        """:raises InsufficientStorage: when a new disk of ``disk_size_mb`` does not fit."""
        self._check(self.usage(records), disk_size_mb, f"a VM disk of {disk_size_mb} MiB")

    def check_new_snapshot(self, records: t.Iterable[VmRecord], snapshot_count: int,
                           size_mb: int) -> None:
        """:raises QuotaExceeded: at ``MAX_SNAPSHOTS``.
        :raises InsufficientStorage: when a copy of ``size_mb`` does not fit."""
        if snapshot_count >= self.settings.max_snapshots:
            raise QuotaExceeded(f"snapshot quota reached ({self.settings.max_snapshots} "
                                f"snapshots, MAX_SNAPSHOTS); delete some first")
        self._check(self.usage(records), size_mb, f"a snapshot of {size_mb} MiB")

    def _check(self, usage: DiskUsage, new_mb: int, what: str) -> None:
        budget = self.settings.disk_budget_mb
        if budget:
            total = usage.committed_mb + usage.snapshots_mb + new_mb
            if total > budget:
                raise InsufficientStorage(
                    f"not enough disk budget for {what}: VM disks ({usage.committed_mb} MiB) "
                    f"and snapshots ({usage.snapshots_mb} MiB) would take {total} MiB of "
                    f"DISK_BUDGET_MB={budget}; delete VMs or snapshots first")
            return
        growth = max(0, usage.committed_mb - usage.grown_mb)
        reserve = self.settings.disk_reserve_mb
        if usage.free_mb - growth - new_mb < reserve:
            raise InsufficientStorage(
                f"not enough free disk space for {what}: {usage.free_mb} MiB free, existing "
                f"VM disks may still grow by {growth} MiB and {reserve} MiB stay in reserve "
                f"(DISK_RESERVE_MB); delete VMs or snapshots first")
