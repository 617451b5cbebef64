"""One lock per remote VM, shared by this manager's processes: its delete, the reaper's, stop,
start, labels, keepalive and network changes run one at a time, as a local VM's do
(:meth:`app.services.lifecycle.Lifecycle.locked`).

A remote host shares no file system with the manager, so the lock file is on the manager:
``STORAGE_ROOT/hosts/<host>/<vm id>.lock``. Between managers, every step of a remote delete is
one that may run twice (a volume, filter, domain or reservation already gone is fine).
"""
from __future__ import annotations

import contextlib
import typing as t
from pathlib import Path

from app.errors import VmBusy
from app.services.locks import host_lock


class RemoteVmLocks:
    def __init__(self, root: Path) -> None:
        """:param root: the directory of the hosts' lock files (``STORAGE_ROOT/hosts``)."""
        self.root = root

    def path(self, host_name: str, vm_id: str) -> Path:
        return self.root / host_name / f"{vm_id}.lock"

    @contextlib.contextmanager
    def held(self, host_name: str, vm_id: str, wait_s: float) -> t.Iterator[None]:
        """Hold the VM's lock.

        :raises VmBusy: another operation of this manager kept it for ``wait_s`` seconds.
        """
        with host_lock(self.path(host_name, vm_id), wait_s,
                       busy=lambda: VmBusy(f"VM {vm_id} is busy with another operation; "
                                           f"retry")):
            yield

    def drop(self, host_name: str, vm_id: str) -> None:
        """Remove a deleted VM's lock file (a waiter on it finds the VM gone)."""
        self.path(host_name, vm_id).unlink(missing_ok=True)
