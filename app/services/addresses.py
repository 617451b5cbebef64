"""Guest addresses: one IP (and the MAC derived from it) per VM, unique across processes.

libvirt is the only record of which addresses are taken (each domain's metadata), so an
allocation is: take the host-wide lock, read the taken set, pick, define the domain, release.
"""
from __future__ import annotations

import ipaddress
import typing as t
from pathlib import Path

from app.errors import CapacityExhausted, HostBusy
from app.services.locks import host_lock


def allocation_lock(path: Path, timeout: float,
                    busy: str = "the host is busy allocating VMs; retry"
                    ) -> t.ContextManager[None]:
    """An exclusive host-wide lock (flock), shared by every worker process.

    :param busy: the error message when the lock stays taken.
    :raises HostBusy: when it cannot be taken within ``timeout`` seconds.
    """
    return host_lock(path, timeout, lambda: HostBusy(busy))


def pick_address(network: ipaddress.IPv4Network, gateway: ipaddress.IPv4Address,
                 taken: t.Iterable[str]) -> ipaddress.IPv4Address:
    """The lowest free guest address.

    :raises CapacityExhausted: when the network is full.
    """
    used = {ipaddress.ip_address(ip) for ip in taken if ip}
    for candidate in network.hosts():
        if candidate != gateway and candidate not in used:
            return candidate
    raise CapacityExhausted(f"no free guest address left in {network}")


def mac_for(address: ipaddress.IPv4Address) -> str:
    """A locally administered QEMU MAC derived from the address (unique per address, and a
    reused address keeps its MAC, so the host's ARP cache is never stale)."""
    octets = address.packed[1:]
    return "52:54:00:" + ":".join(f"{b:02x}" for b in octets)
