"""Finding the VMs of the remote hosts of ``HOSTS`` (issue 17): which host holds a VM, what each
host held when it last answered, and the callers' VMs of all of them. Making, using and
deleting them is :mod:`app.services.remote_vms`.

A remote VM is found by asking the hosts (:meth:`HostRegistry.probe`, answered within
``HOST_PROBE_TIMEOUT_S`` or the host is DOWN): a VM that is on no host that answered, while a
host is DOWN, may be on that one, so the call is refused with 503 naming the host, not 404.
What each host held when it last answered is kept (per process): ``GET /v1/vms`` shows those
VMs of a DOWN host as ``UNKNOWN``, and a call on one names its host.
"""
from __future__ import annotations

import dataclasses
import threading
import typing as t
import uuid

from app.config.hosts import RemoteHost
from app.errors import HypervisorError, VmNotFound
from app.models import DomainInfo, Vm, VmPhase, VmRecord, VmRole, VmState
from app.services.ownership import visible
from app.services.records import to_vm

if t.TYPE_CHECKING:
    from app.services.host_registry import HostRegistry, Probe
    from app.virt.connection import Hypervisor


@dataclasses.dataclass(frozen=True)
class Found:
    """A remote VM as its host's libvirt has it."""

    host: RemoteHost
    hypervisor: Hypervisor
    record: VmRecord
    state: str  # libvirt's run state


class RemoteLookup:
    """Thread-safe; one per worker process (what it keeps is per process)."""

    def __init__(self, registry: HostRegistry) -> None:
        self.registry = registry
        self._known: dict[str, tuple[tuple[VmRecord, t.Any], ...]] = {}  # host -> last seen
        self._lock = threading.Lock()

    def probe(self) -> dict[str, Probe]:
        """Every remote host's answer (within HOST_PROBE_TIMEOUT_S); what each host that
        answered holds is kept as its last known VMs."""
        probes = self.registry.probe()
        with self._lock:
            for name, probe in probes.items():
                if probe.up:
                    self._known[name] = probe.records
        return probes

    def sandboxes(self) -> list[Vm]:
        """The callers' VMs on every remote host that answers, and the last known ones of a
        host that does not (``UNKNOWN``; known to this process only: those it saw there)."""
        vms = []
        for name, probe in self.probe().items():
            if probe.up:
                vms += [to_vm(record, info.state) for record, info in probe.records
                        if callers(record)]
                continue
            with self._lock:
                known = self._known.get(name, ())
            vms += [dataclasses.replace(to_vm(record, info.state), state=VmState.UNKNOWN)
                    for record, info in known if callers(record)]
        return vms

    def find(self, vm_id: str, deleting: bool = False) -> Found:
        """A caller's VM on a remote host.

        :param deleting: also one whose delete did not finish.
        :raises VmNotFound: on no host, and every host answered.
        :raises HypervisorError: on no host that answered, and a host is DOWN (it may be
            there): 503 naming it.
        """
        try:
            uuid.UUID(vm_id)
        except ValueError:
            raise VmNotFound(f"VM {vm_id} not found") from None
        probes = self.probe()
        for name, probe in probes.items():
            for record, info in probe.records:
                if record.id == vm_id and callers(record, deleting):
                    return Found(self.registry.host(name), self.registry.hypervisor(name),
                                 record, info.state)
        down = {name: probe.reason for name, probe in probes.items() if not probe.up}
        for name, reason in down.items():
            with self._lock:
                known = self._known.get(name, ())
            if any(record.id == vm_id and callers(record, deleting) for record, _ in known):
                raise HypervisorError(f"VM {vm_id} is on host {name}, which does not answer: "
                                      f"{reason}")
        if down:
            hosts = "; ".join(f"{name}: {reason}" for name, reason in down.items())
            raise HypervisorError(f"VM {vm_id} is not on any host that answers, and "
                                  f"{len(down)} host(s) do not answer (it may be there): "
                                  f"{hosts}")
        raise VmNotFound(f"VM {vm_id} not found")

    def remember(self, host_name: str, record: VmRecord, gone: bool = False) -> None:
        """Add a VM made there to what is known of the host (or drop one deleted)."""
        with self._lock:
            known = [(other, info) for other, info in self._known.get(host_name, ())
                     if other.id != record.id]
            if not gone:
                known.append((record, DomainInfo(record.id, record.name, "running", "")))
            self._known[host_name] = tuple(known)


def callers(record: VmRecord, deleting: bool = False) -> bool:
    """A caller's VM (not a pool VM or seed), visible to the caller, not being deleted."""
    return record.role is VmRole.SANDBOX and visible(record.owner_key) and \
        (deleting or record.phase is not VmPhase.DELETING)
