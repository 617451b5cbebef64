"""Lifetimes: how long a caller's VM lives (``ttlSeconds``, keepalive) and when an unused one
is stopped (``idleStopSeconds``).

The expiry is a time in the VM's record (its domain's metadata), so it survives restarts and
every process sees the same one. "Activity" is the modification time of
``vms/<name>/activity``, touched by every call that uses the VM (exec, run-ts/js, files,
keepalive, start, label changes): cheap, host-wide, and gone with the VM. The maintaining
process's :class:`~app.services.reaper.Reaper` acts on both.
"""
from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from app.clock import age_s, iso_after
from app.config import Settings
from app.errors import InvalidRequest
from app.models import VmRecord

ACTIVITY_FILE = "activity"  # in the VM's directory


def lifetime_s(settings: Settings, ttl_s: int | None) -> int:
    """The lifetime a create or keepalive gets: the asked ``ttl_s`` or the default.

    :raises InvalidRequest: above ``VM_MAX_TTL_S``, or none (0) while a maximum is set.
    """
    ttl = settings.vm_default_ttl_s if ttl_s is None else ttl_s
    limit = settings.vm_max_ttl_s
    if limit and not 0 < ttl <= limit:
        raise InvalidRequest(f"ttlSeconds must be between 1 and {limit} on this host "
                             f"(every VM has a lifetime here)")
    return ttl


def expires_at(ttl_s: int) -> str:
    """The expiry of a lifetime that starts now; "" for none."""
    return iso_after(ttl_s) if ttl_s else ""


def is_expired(record: VmRecord) -> bool:
    if not record.expires_at:
        return False
    try:
        return age_s(record.expires_at) >= 0
    except ValueError:
        return False  # unreadable: never delete on a guess


class Activity:
    """When each VM was last used through the API."""

    def __init__(self, vms_dir: Path) -> None:
        self.vms_dir = vms_dir

    def touch(self, name: str) -> None:
        """Record a use of VM ``name`` now (nothing when its directory is gone)."""
        path = self.vms_dir / name / ACTIVITY_FILE
        try:
            os.utime(path)
        except FileNotFoundError:
            with contextlib.suppress(FileNotFoundError):
                path.touch(mode=0o600)

    def idle_s(self, record: VmRecord) -> float:
        """Seconds since the VM was last used (since its creation when never)."""
        try:
            used = (self.vms_dir / record.name / ACTIVITY_FILE).stat().st_mtime
            return max(0.0, time.time() - used)
        except FileNotFoundError:
            try:
                return age_s(record.created_at)
            except ValueError:
                return 0.0
