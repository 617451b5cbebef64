"""Guest addresses and VM names on a remote host, safe with several managers at once (issue 17).

A manager's file lock (``STORAGE_ROOT/hosts/<host>.alloc.lock``) is on its own machine only, so
managers on different machines allocating on one host agree through that host's libvirt: an
address and a name are taken by adding a DHCP host entry ``<host mac=… name=… ip=…/>`` to the
host's guest network ``rds-net-<host>`` (``virNetworkUpdate``, live and persistent). libvirt
refuses an entry whose MAC, name or address an entry has already, checking and adding under
the network's lock: the first manager to add an address owns it, another one is refused and
tries the next free address with a new name.

- The entry's name is the VM's (``rds-<short id>``), its MAC the one derived from the address,
  so ``virsh net-dumpxml rds-net-h2`` tells which VM holds which address.
- An address is free when no entry and no domain's record holds it (VMs made before entries
  existed keep theirs).
- The entry is added before anything named after the VM is made (filter, volumes, domain), so
  it holds the name too: no other manager can take it, and the check that no domain has it
  (made after the entry is in) cannot race another manager's define.
- The entry is removed when the VM is deleted (after its domain) and by the undo of a create
  that failed half-way.
- An entry of ours (``rds-…``) with no domain of its name is a create between its reservation
  and its define, or a leftover (a manager died half-way, a removal failed). It is reclaimed
  (deleted) by a create that finds it once this process has seen it without a domain for
  :data:`RESERVATION_GRACE_S`, longer than a create takes from reservation to define; a create
  that took longer finds its entry gone when it confirms it after the define, and fails
  (undone). A stale entry holds its address for minutes, never for ever.

The guests do not use DHCP (their address is on their kernel command line); the network's
dnsmasq, which libvirt runs for DNS anyway, then also answers DHCP for exactly these MACs.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import logging
import threading
import time
import typing as t
import uuid

from app.config.hosts import RemoteHost
from app.errors import HostBusy, HypervisorError
from app.models import NAME_PREFIX, vm_name
from app.services.addresses import mac_for, pick_address
from app.virt.network_xml import DhcpHost

if t.TYPE_CHECKING:
    from app.virt.connection import Hypervisor

log = logging.getLogger(__name__)
RESERVATION_GRACE_S = 300.0
ATTEMPTS = 20


@dataclasses.dataclass(frozen=True)
class Reservation:
    """An address and a name held on a host for a VM being made there."""

    vm_id: str
    name: str
    address: ipaddress.IPv4Address
    entry: DhcpHost


class RemoteAddresses:
    """Thread-safe; one per worker process (what it has seen without a domain is per process).

    :param clock: monotonic seconds (tests pass a fake).
    """

    def __init__(self, clock: t.Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._unbacked: dict[tuple[str, DhcpHost], float] = {}  # (host, entry) -> first seen
        self._lock = threading.Lock()

    def reserve(self, host: RemoteHost, hypervisor: Hypervisor, taken: t.Iterable[str],
                domains: t.Collection[str]) -> Reservation:
        """Hold the lowest free address of ``host`` and a new VM name there.

        :param taken: the addresses its domains' records hold.
        :param domains: the names of its domains (what backs an entry).
        :raises CapacityExhausted: no address is free.
        :raises HostBusy: refused :data:`ATTEMPTS` times (other managers took each one first).
        """
        taken = list(taken)
        for _attempt in range(ATTEMPTS):
            entries = self._reclaim(host, hypervisor, domains)
            address = pick_address(host.network, host.gateway,
                                   taken + [entry.ip for entry in entries])
            vm_id = str(uuid.uuid4())
            entry = DhcpHost(mac=mac_for(address), name=vm_name(vm_id), ip=str(address))
            if not hypervisor.add_dhcp_host(host.network_name, entry):
                log.info("address reservation refused, taken meanwhile: trying another "
                         "host=%s ip=%s name=%s", host.name, entry.ip, entry.name)
                continue
            if hypervisor.domain_name_exists(entry.name):  # made without a reservation
                hypervisor.delete_dhcp_host(host.network_name, entry)
                continue
            log.info("address reserved host=%s ip=%s name=%s", host.name, entry.ip, entry.name)
            return Reservation(vm_id, entry.name, address, entry)
        raise HostBusy(f"host {host.name}: no guest address could be reserved in {ATTEMPTS} "
                       f"attempts (other managers took each one first); retry")

    def confirm(self, host: RemoteHost, hypervisor: Hypervisor, entry: DhcpHost) -> None:
        """Check, once the VM's domain is defined, that its entry is still there.

        :raises HypervisorError: it was reclaimed (the create took over the grace period).
        """
        if entry not in hypervisor.dhcp_hosts(host.network_name):
            raise HypervisorError(f"the address reservation of {entry.name} ({entry.ip}) on "
                                  f"host {host.name} was reclaimed meanwhile; retry")

    @staticmethod
    def release(host: RemoteHost, hypervisor: Hypervisor, entry: DhcpHost) -> None:
        """Remove the entry (none is fine)."""
        hypervisor.delete_dhcp_host(host.network_name, entry)

    def _reclaim(self, host: RemoteHost, hypervisor: Hypervisor,
                 domains: t.Collection[str]) -> list[DhcpHost]:
        """The host's entries, less those of ours seen without a domain for the grace period
        (deleted now)."""
        entries = hypervisor.dhcp_hosts(host.network_name)
        now = self.clock()
        stale = []
        with self._lock:
            for key in [key for key in self._unbacked if key[0] == host.name
                        and (key[1] not in entries or key[1].name in domains)]:
                del self._unbacked[key]
            for entry in entries:
                if entry.name.startswith(NAME_PREFIX) and entry.name not in domains:
                    since = self._unbacked.setdefault((host.name, entry), now)
                    if now - since >= RESERVATION_GRACE_S:
                        stale.append(entry)
        for entry in stale:
            if hypervisor.domain_name_exists(entry.name):  # defined since the list was read
                continue
            log.warning("reclaiming a stale address reservation (no domain of its name for "
                        "%.0fs) host=%s ip=%s name=%s", RESERVATION_GRACE_S, host.name, entry.ip,
                        entry.name)
            self.release(host, hypervisor, entry)
            with self._lock:
                self._unbacked.pop((host.name, entry), None)
            entries.remove(entry)
        return entries
