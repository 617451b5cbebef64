"""VmRecords: the VMs as libvirt holds them, the service's only registry of VMs.

Each domain of this service carries its VM's record in its ``<metadata>``
(:data:`app.persist.VM_FIELDS`), so every worker process reads the same VMs and nothing drifts
after a restart. This module reads records, and writes the one thing that changes in place: a
record after a phase or policy change.
"""
from __future__ import annotations

import dataclasses
import typing as t
import uuid

from app.config.hosts import LOCAL_HOST
from app.errors import VmNotFound
from app.models import NAME_PREFIX, DomainInfo, Vm, VmPhase, VmRecord, VmRole, VmState
from app.services.ownership import visible
from app.virt.metadata_xml import METADATA_NS, METADATA_PREFIX, metadata_xml, parse_metadata

if t.TYPE_CHECKING:
    from app.virt.connection import Hypervisor


def vm_state(domain_state: str, phase: VmPhase) -> VmState:
    """The API state from libvirt's run state and the manager's last phase."""
    if phase is VmPhase.CREATING and domain_state in ("running", "shutoff", "paused"):
        return VmState.STARTING  # defined, being restored or booted: not a caller's yet
    if domain_state == "running":
        return {VmPhase.READY: VmState.RUNNING, VmPhase.STARTING: VmState.STARTING,
                VmPhase.CREATING: VmState.STARTING, VmPhase.STOPPING: VmState.STOPPING,
                VmPhase.DELETING: VmState.STOPPING}[phase]
    if domain_state == "shutoff":
        return VmState.STOPPED
    if domain_state == "shutdown":
        return VmState.STOPPING
    return VmState.ERROR


def to_vm(record: VmRecord, domain_state: str) -> Vm:
    """The API's view of a record."""
    return Vm(id=record.id, state=vm_state(domain_state, record.phase), cpu=record.cpu,
              mem_mb=record.mem_mb, guest_ip=record.guest_ip,
              outbound_internet=record.outbound_internet, allow_ips=record.allow_ips,
              created_at=record.created_at, image_id=record.image_id,
              provision_mode=record.provision_mode, name=record.name,
              snapshot_id=record.snapshot_id or None, labels=dict(record.labels),
              expires_at=record.expires_at or None, idle_stop_s=record.idle_stop_s,
              created_by=record.created_by or None, owner_key=record.owner_key,
              host=record.host or LOCAL_HOST)


class VmRecords:
    """Reads and updates VM records in libvirt. Thread-safe (the Hypervisor is)."""

    def __init__(self, hypervisor: Hypervisor) -> None:
        self.hypervisor = hypervisor

    def all(self) -> list[tuple[VmRecord, DomainInfo]]:
        """Every domain of this service that carries a record (sandboxes, pool, seeds)."""
        found = []
        for info in self.hypervisor.list_domains():
            record = parse_metadata(info.xml)
            if record is not None:
                found.append((record, info))
        return found

    def sandboxes(self) -> list[Vm]:
        """The callers' VMs (pool VMs and seeds are not), oldest first."""
        vms = [to_vm(record, info.state) for record, info in self.all()
               if record.role is VmRole.SANDBOX and record.phase is not VmPhase.DELETING]
        return sorted(vms, key=lambda vm: (vm.created_at, vm.id))

    def pool(self) -> list[tuple[VmRecord, str]]:
        """Every warm-pool VM with its libvirt run state."""
        return [(record, info.state) for record, info in self.all()
                if record.role is VmRole.POOL]

    def get(self, vm_id: str) -> Vm:
        """:raises VmNotFound: for an unknown or malformed id."""
        record, info = self.lookup(vm_id)
        return to_vm(record, info.state)

    def lookup(self, vm_id: str, cached: bool = False) -> tuple[VmRecord, DomainInfo]:
        """A caller's VM by id, with its domain.

        :param cached: may be answered from what libvirt said before, if it has said nothing
            about the domain since (app.virt.domain_cache): for the calls that only need the
            VM's address, keys and run state (exec, run-ts, files).

        :raises VmNotFound: unknown or malformed id, not a caller's VM (pool, seed), being
            deleted, or another API key's VM (for a ``vms``-only key, app.services.ownership).
        """
        try:
            uuid.UUID(vm_id)
        except ValueError:
            raise VmNotFound(f"VM {vm_id} not found") from None
        try:
            info = (self.hypervisor.get_domain_cached(vm_id) if cached
                    else self.hypervisor.get_domain(vm_id))
        except VmNotFound:
            raise VmNotFound(f"VM {vm_id} not found") from None
        record = parse_metadata(info.xml)
        if record is None or record.role is not VmRole.SANDBOX or \
                record.phase is VmPhase.DELETING or not info.name.startswith(NAME_PREFIX) or \
                not visible(record.owner_key):
            raise VmNotFound(f"VM {vm_id} not found")
        return record, info

    def any(self, vm_id: str) -> VmRecord | None:
        """The record of any domain of this service (pool VMs and seeds too), or None."""
        try:
            return parse_metadata(self.hypervisor.get_domain(vm_id).xml)
        except VmNotFound:
            return None

    def save(self, record: VmRecord) -> None:
        """Replace the record kept in the VM's domain."""
        self.hypervisor.set_metadata(record.id, metadata_xml(record), METADATA_NS,
                                     METADATA_PREFIX)

    def set_phase(self, record: VmRecord, phase: VmPhase, **changes: t.Any) -> VmRecord:
        """Record what the manager did last (and ``changes`` to other fields); re-read first,
        so a policy change that landed since ``record`` was read is kept."""
        current = self.any(record.id) or record
        updated = dataclasses.replace(current, phase=phase, **changes)
        self.save(updated)
        return updated
