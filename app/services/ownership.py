"""Who may see which VMs and snapshots, and each API key's own VM quota.

A VM or snapshot made by a managed API key carries that key's id (``ownerKey`` in its record).
A caller with the ``admin`` scope (the bootstrap ``API_KEY``, an admin session, an admin key,
and the service's own work) sees everything; a ``vms``-only key sees only what it made. To
such a key anything else does not exist: the lookups answer "not found", never "forbidden",
so ids of other teams' VMs cannot be probed.

The caller comes from :data:`app.actor.caller`, which the API's credential check sets for
each request (background work runs as the unrestricted system caller).
"""
from __future__ import annotations

import dataclasses
import typing as t

from app import actor
from app.errors import KeyQuotaExceeded
from app.models import VmPhase, VmRecord, VmRole, VmSpec


def visible(owner_key: str) -> bool:
    """Whether the current caller may see a VM or snapshot whose owner key is ``owner_key``."""
    who = actor.caller.get()
    return who.admin or (bool(who.key_id) and owner_key == who.key_id)


def stamp(spec: VmSpec) -> VmSpec:
    """The create request with the current caller as its creator (and its key's quota)."""
    who = actor.caller.get()
    return dataclasses.replace(spec, created_by=who.name, owner_key=who.key_id,
                               owner_max_vms=who.max_vms if who.key_id else None)


def check_quota(spec: VmSpec, records: t.Iterable[VmRecord]) -> None:
    """Refuse a create over its API key's ``maxVms`` (call it under the allocation lock, with
    every record of the host, so two creates cannot both take the last slot).

    :raises KeyQuotaExceeded: the key has ``maxVms`` VMs already (being deleted ones not counted).
    """
    if not spec.owner_key or spec.owner_max_vms is None:
        return
    mine = sum(1 for record in records if record.owner_key == spec.owner_key
               and record.role is VmRole.SANDBOX and record.phase is not VmPhase.DELETING)
    if mine >= spec.owner_max_vms:
        raise KeyQuotaExceeded(f"this API key's VM quota is reached ({spec.owner_max_vms} VMs)")
