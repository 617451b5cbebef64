"""Sweeper: what crashed creates left behind, and the purge of everything (CI, operators).

A worker killed mid-create leaves a domain still in phase ``creating`` (it counts against
``MAX_VMS`` and was never handed to a caller), or, before the domain was defined, files, sets,
a filter or a port that belong to no domain. Both go once they are older than any create may
take (``min_age_s``, 10 minutes), so the sweep is safe while other processes create VMs. The
maintaining process sweeps every minute; ``prepare-host`` and gunicorn's start do too.
Everything is removed with the steps of :mod:`app.services.teardown`.
"""
from __future__ import annotations

import logging
import time
import typing as t

from app.clock import age_s
from app.config import Settings
from app.models import NAME_PREFIX, VmPhase, VmRole
from app.services.ports import VmPorts
from app.services.records import VmRecords
from app.services.teardown import VmTeardown
from app.services.undo import quietly
from app.virt.ipsets import IpSets

if t.TYPE_CHECKING:
    from app.virt.connection import Hypervisor

log = logging.getLogger(__name__)
ORPHAN_MIN_AGE_S = 600.0  # longer than any create (lock wait + boot timeout)


class Sweeper:
    def __init__(self, settings: Settings, hypervisor: Hypervisor, records: VmRecords,
                 ports: VmPorts, ipsets: IpSets, teardown: VmTeardown) -> None:
        self.settings = settings
        self.hypervisor = hypervisor
        self.records = records
        self.ports = ports
        self.ipsets = ipsets
        self.teardown = teardown

    def remove_orphans(self, min_age_s: float = ORPHAN_MIN_AGE_S) -> list[str]:
        """Delete domains whose create never finished, and files, ports, filters and sets that
        belong to no domain; returns what was removed.

        A create in flight has a fresh directory and no domain yet, so only directories older
        than ``min_age_s`` (and filters, sets and ports with no recent directory) count.
        """
        # What may be an orphan is what exists before the domains and directories are read:
        # a create makes its directory first, then its sets, filter and port, then its domain,
        # so whatever is seen here has its directory or domain seen below. (Read the other
        # way round, a create that began in between lost its new port: "target managed='no'
        # but specified dev doesn't exist" at its restore.)
        ports = self.ports.present()
        filters = set(self.hypervisor.list_filter_names())
        sets = self.ipsets.vm_names()
        removed = self._remove_half_made(min_age_s)
        names = {info.name for info in self.hypervisor.list_domains()}
        fresh = set()
        if self.settings.vms_dir.is_dir():
            now = time.time()
            for vm_dir in self.settings.vms_dir.iterdir():
                if not vm_dir.name.startswith(NAME_PREFIX) or vm_dir.name in names:
                    continue
                if now - vm_dir.stat().st_mtime < min_age_s:
                    fresh.add(vm_dir.name)
                    continue
                self.teardown.files(vm_dir.name)
                removed.append(f"files {vm_dir}")
        keep = names | fresh
        # In the teardown order: ports, then filters and sets that no rule uses any more.
        removed += self.ports.sweep(keep, ports)
        for name in sorted(filters - keep):
            quietly(self.teardown.filter, name)
            removed.append(f"nwfilter {name}")
        for name in sorted(sets - keep):
            quietly(self.teardown.egress_sets, name)
            removed.append(f"ipsets {name}-*")
        for item in removed:
            log.info("removed orphan %s", item)
        return removed

    def _remove_half_made(self, min_age_s: float) -> list[str]:
        removed = []
        for record, _info in self.records.all():
            if record.phase is not VmPhase.CREATING or record.role is VmRole.SEED:
                continue
            try:
                age = age_s(record.created_at)
            except ValueError:
                age = min_age_s + 1  # unreadable: as old as it gets
            if age >= min_age_s:
                quietly(self.teardown.remove, record)
                removed.append(f"half-made vm {record.name} ({record.id})")
        return removed

    def purge_all(self) -> int:
        """Delete every VM of this service, pool VMs and seeds included (CI, ``make
        clean-vms``)."""
        records = self.records.all()
        for record, _info in records:
            self.teardown.remove(record)
        return len(records)
