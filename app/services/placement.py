"""Placement (issue 17): which host a create without ``placement.host`` goes to (``PLACEMENT``).

- ``local`` (the default): the local host, as without ``HOSTS``;
- ``spread``: among the hosts with room, the least full one (its VMs against its ``maxVms``),
  then one with a memory snapshot for the VM (a restore instead of a boot), then the one
  with more free memory, then the first (local, then ``HOSTS`` in order);
- ``pack``: the first host with room (local, then ``HOSTS`` in order): fill one host before
  the next.

A host has room for a VM when it answers (within ``HOST_PROBE_TIMEOUT_S``), has the image
ready (the local host: built; a remote one: its current build shipped there), holds fewer
domains than its ``maxVms`` (being deleted ones not counted, as the create's own check under
its lock), has at least the VM's memory free (libvirt's node memory statistics: free, buffers
and page cache) and at least as many CPUs as the VM has vCPUs. No host with room → 429 naming
each host and why. The choice is read without a lock: two creates at once may choose the same
host, whose own check under its lock then refuses the one too many (429).
"""
from __future__ import annotations

import dataclasses
import typing as t

from app.errors import QuotaExceeded
from app.models import NodeInfo, VmPhase, VmRecord, VmSpec


@dataclasses.dataclass(frozen=True)
class Room:
    """What a host has for one more VM: ``reason`` says why it has none (None: it has)."""

    name: str
    vms: int = 0
    max_vms: int = 1
    free_memory_mb: int = 0
    reason: str | None = None
    snapshot_ready: bool = False  # a memory snapshot of the VM's image and shape is there


def room(name: str, spec: VmSpec, node: NodeInfo | None, records: t.Iterable[VmRecord],
         max_vms: int, image_ready: bool, down: str | None = None,
         snapshot_ready: bool = False) -> Room:
    """A host's room for ``spec``, from what its libvirt answered (``node`` None: ``down``).

    :param snapshot_ready: the VM would be restored there from a memory snapshot.
    """
    if node is None:
        return Room(name, reason=f"DOWN ({down})")
    held = sum(1 for record in records if record.phase is not VmPhase.DELETING)
    found = Room(name, vms=held, max_vms=max_vms, free_memory_mb=node.free_memory_mb,
                 snapshot_ready=snapshot_ready)
    if not image_ready:
        return dataclasses.replace(found, reason="the image is not ready there")
    if held >= max_vms:
        return dataclasses.replace(found, reason=f"at its maxVms ({max_vms})")
    if node.free_memory_mb < spec.mem_mb:
        return dataclasses.replace(found, reason=f"{node.free_memory_mb} MiB free")
    if node.cpus < spec.cpu:
        return dataclasses.replace(found, reason=f"{node.cpus} CPUs")
    return found


def choose(policy: str, spec: VmSpec, rooms: list[Room]) -> str:
    """The host ``policy`` picks among ``rooms`` (local first, then HOSTS in order).

    :raises QuotaExceeded: no host has room (429), naming each and why.
    """
    fits = [(order, found) for order, found in enumerate(rooms) if found.reason is None]
    if not fits:
        why = "; ".join(f"{found.name}: {found.reason}" for found in rooms)
        raise QuotaExceeded(f"no host has room for a VM of {spec.cpu} vCPU {spec.mem_mb} MiB "
                            f"({why})")
    if policy == "pack":
        return fits[0][1].name
    return min(fits, key=lambda item: (item[1].vms / item[1].max_vms,
                                       not item[1].snapshot_ready,
                                       -item[1].free_memory_mb, item[0]))[1].name
