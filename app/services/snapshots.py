"""SnapshotService: "user_overlay" snapshots of a VM's disk, and new VMs that start from them.

A snapshot is a directory ``STORAGE_ROOT/snapshots/<id>/`` holding ``disk.qcow2`` and
``snapshot.json`` (the API fields plus the path of the template image the disk is based on).
The disk is a copy of the VM's overlay, rebased in qemu-img's safe mode onto the template image
itself, so it depends on nothing else: it outlives the VM it came from and any intermediate
file behind that VM's overlay. It is never written to; a VM created from it gets an overlay of
its own on top of it.

A snapshot is built in a hidden staging directory next to the others and renamed into place
last, so a crash never leaves a half snapshot visible (stale staging directories are swept like
orphan VM files). For a RUNNING VM the guest's filesystems are frozen through the guest agent
while its overlay is copied, and thawed whatever happens, so writes the guest has not synced yet
are in the snapshot too.

A VM of a remote host of ``HOSTS`` is snapshotted the same way, its disk copied here from its
host (:mod:`app.services.remote_snapshots`); the snapshot is a local one like the others, and
VMs made from it are made on the local host.

libvirt stays the only store of VM state: a VM records the snapshot it started from in its
metadata, and a snapshot is in use, and cannot be deleted, while any such VM exists.
"""
from __future__ import annotations

import contextlib
import logging
import time
import typing as t
import uuid
from pathlib import Path

from app import actor
from app.clock import now_iso
from app.config import Settings
from app.config.hosts import LOCAL_HOST
from app.errors import (AppError, GuestUnreachable, HypervisorError, SnapshotInUse,
                        SnapshotNotFound, VmNotFound)
from app.models import Snapshot, VmRecord, VmState
from app.services.addresses import allocation_lock
from app.services.events import Events
from app.services.capacity import DiskBudget, allocated_mb
from app.services.ownership import visible
from app.services.remote_snapshots import RemoteSnapshots
from app.services.snapshot_store import (DISK, SnapshotSource, SnapshotStore, require_unchanged,
                                         snapshottable)
from app.services.templates import TemplateCatalog
from app.virt import disks
from app.virt.metadata_xml import parse_metadata

if t.TYPE_CHECKING:
    from app.services.vms import VmService
    from app.virt.connection import Hypervisor

log = logging.getLogger(__name__)
LOCK_TIMEOUT = 60.0
SYNC_TIMEOUT = 30.0
THAW_ATTEMPTS = 3
ORPHAN_MIN_AGE_S = 600.0  # longer than any snapshot takes


class SnapshotService:
    """Take, list, inspect and delete snapshots. Thread-safe; one per worker process."""

    def __init__(self, settings: Settings, hypervisor: Hypervisor, templates: TemplateCatalog,
                 vms: VmService, store: SnapshotStore, events: Events | None = None) -> None:
        self.events = events
        self.settings = settings
        self.hypervisor = hypervisor
        self.templates = templates
        self.vms = vms
        self.store = store
        self.budget = DiskBudget(settings)
        remote = vms.parts.remote
        self.remote = None if remote is None else \
            RemoteSnapshots(settings, templates, remote, self.quiesced)

    def list(self) -> list[Snapshot]:
        """The caller's snapshots (a ``vms``-only API key's own only)."""
        return [snapshot for snapshot in self.store.list() if visible(snapshot.owner_key)]

    def get(self, snapshot_id: str) -> Snapshot:
        """:raises SnapshotNotFound: for an unknown or malformed id, or another API key's."""
        snapshot = self.store.get(snapshot_id)
        if not visible(snapshot.owner_key):
            raise SnapshotNotFound(f"snapshot {snapshot_id} not found")
        return snapshot

    def take(self, vm_id: str) -> Snapshot:
        """Snapshot the disk of a RUNNING or STOPPED VM, local or of a remote host (its disk
        is copied here: :mod:`app.services.remote_snapshots`).

        :raises VmNotFound: unknown VM.
        :raises VmStateConflict: the VM is neither RUNNING nor STOPPED, or changed state during
            the copy.
        :raises QuotaExceeded: at ``MAX_SNAPSHOTS``.
        :raises InsufficientStorage: the host's disk budget has no room for the copy.
        :raises GuestUnreachable: the guest agent could neither freeze nor sync the guest.
        :raises HypervisorError: copying or checking the disk failed.
        """
        started = time.monotonic()
        # One snapshot at a time on this host: freezes of the same guest must not overlap.
        with allocation_lock(self.settings.snapshot_lock_path, LOCK_TIMEOUT,
                             busy="the host is busy taking snapshots; retry"), \
                self._source(vm_id) as source:
            snapshot = self._take(source)
        log.info("snapshot taken snapshot=%s vm=%s host=%s seconds=%.2f", snapshot.id, vm_id,
                 source.record.host or LOCAL_HOST, time.monotonic() - started)
        if self.events is not None:
            self.events.emit("snapshot.created", "snapshot", snapshot.id,
                             {"sourceVmId": vm_id, "imageId": snapshot.image_id})
        return snapshot

    def delete(self, snapshot_id: str) -> None:
        """Remove a snapshot.

        :raises SnapshotNotFound: unknown snapshot, or another API key's.
        :raises SnapshotInUse: while a VM created from it exists (in any state).
        """
        # Creates look snapshots up under this lock, up to defining the VM's domain: no VM can
        # appear on top of the snapshot between the check and the removal.
        with allocation_lock(self.settings.lock_path, LOCK_TIMEOUT):
            snapshot = self.get(snapshot_id)
            users = self.users(snapshot.id)
            if users:
                raise SnapshotInUse(
                    f"snapshot {snapshot.id} is in use by {len(users)} VM(s) created from it "
                    f"({', '.join(users)}); delete them first")
            self.store.remove(snapshot.id)
        log.info("snapshot deleted snapshot=%s", snapshot.id)
        if self.events is not None:
            self.events.emit("snapshot.deleted", "snapshot", snapshot.id)

    def users(self, snapshot_id: str) -> list[str]:
        """Ids of the VMs (any state) whose disk started from the snapshot."""
        return [vm.id for vm in self.vms.list() if vm.snapshot_id == snapshot_id]

    # Copying ##############################################################################

    def _take(self, source: SnapshotSource) -> Snapshot:
        record = source.record
        self.budget.check_new_snapshot(
            [vm for vm, _info in self.vms.records()], len(self.store.list()), source.size_mb or 0)
        snapshot_id = str(uuid.uuid4())
        snapshot = Snapshot(
            id=snapshot_id, created_at=now_iso(), cpu=record.cpu, mem_mb=record.mem_mb,
            image_id=record.image_id, source_vm_id=record.id, image_path=str(source.image),
            disk_size_mb=record.disk_size_mb,
            disk_path=str(self.store.disk_path(snapshot_id)),
            created_by=actor.current.get(), owner_key=actor.caller.get().key_id)
        with self.store.staging() as staging:
            frozen_s = source.copy(staging / DISK)
            if source.size_mb is None:  # known now: the copy is in the snapshots' directory
                self.budget.check_new_snapshot(
                    [vm for vm, _info in self.vms.records()], len(self.store.list()), 0)
            disks.check(staging / DISK)
            (staging / DISK).chmod(0o444)  # a backing file from now on
            self.store.publish(staging, snapshot)
        log.info("snapshot copied snapshot=%s vm=%s state=%s frozen_seconds=%.2f", snapshot.id,
                 record.id, source.state.value, frozen_s)
        return snapshot

    @contextlib.contextmanager
    def _source(self, vm_id: str) -> t.Iterator[SnapshotSource]:
        """The VM's disk, here or on a remote host (under that VM's lock there)."""
        vm = self.vms.get(vm_id)
        if vm.host != LOCAL_HOST:
            if self.remote is None:  # pragma: no cover - a remote VM comes from HOSTS
                raise VmNotFound(f"VM {vm_id} not found")
            with self.remote.source(vm_id) as source:
                yield source
            return
        state = snapshottable(vm_id, vm.state)
        record = parse_metadata(self.hypervisor.get_domain(vm_id).xml)
        if record is None:
            raise VmNotFound(f"VM {vm_id} not found")
        image = self.templates.build_at(Path(record.image_path)).disk

        def copy(target: Path) -> float:
            frozen_s = self._copy_overlay(record, state, target)
            self._require_state(vm_id, state)
            disks.rebase(target, image)
            return frozen_s
        yield SnapshotSource(record, state,
                             allocated_mb(self.settings.vms_dir / record.name / DISK), image, copy)

    def _require_state(self, vm_id: str, state: VmState) -> None:
        require_unchanged(vm_id, state, self.vms.get(vm_id).state)

    def _copy_overlay(self, record: VmRecord, state: VmState, target: Path) -> float:
        """Copy the VM's overlay as it is; returns how long the guest was frozen (seconds)."""
        overlay = self.settings.vms_dir / record.name / DISK
        if state is VmState.STOPPED:
            disks.copy_image(overlay, target)
            return 0.0
        began = time.monotonic()
        with self.quiesced(self.hypervisor, record.id):
            disks.copy_image(overlay, target)
        return time.monotonic() - began

    @contextlib.contextmanager
    def quiesced(self, hypervisor: Hypervisor, vm_id: str) -> t.Iterator[None]:
        """The guest's filesystems flushed and frozen for the body, thawed in any case.

        When the freeze fails, the guest agent runs ``sync`` instead: what was written so far is
        on the disk, but the guest keeps writing during the copy (crash-consistent only).

        :raises GuestUnreachable: when neither the freeze nor the sync worked.
        """
        timeout = self.settings.libvirt_timeout_s
        try:
            frozen = hypervisor.fs_freeze(vm_id, timeout) > 0
        except HypervisorError as exc:
            log.warning("guest filesystem freeze failed, falling back to sync vm=%s error=%s",
                        vm_id, exc.message)
            frozen = False
        try:
            if not frozen:
                self._sync(hypervisor, vm_id)
            yield
        finally:
            # Also after a failed freeze: one that timed out may still land in the guest.
            self._thaw(hypervisor, vm_id, frozen)

    def _sync(self, hypervisor: Hypervisor, vm_id: str) -> None:
        try:
            code = hypervisor.guest_agent_exec(vm_id, "/bin/sync", [], SYNC_TIMEOUT)
        except HypervisorError as exc:
            raise GuestUnreachable(f"VM {vm_id}: the guest agent could neither freeze nor sync "
                                   f"the guest's filesystems ({exc.message})") from exc
        if code != 0:
            raise GuestUnreachable(f"VM {vm_id}: sync in the guest failed (exit code {code})")
        log.warning("snapshot of vm=%s is crash-consistent only (sync, no freeze)", vm_id)

    def _thaw(self, hypervisor: Hypervisor, vm_id: str, frozen: bool) -> None:
        for attempt in range(1, THAW_ATTEMPTS + 1):
            try:
                hypervisor.fs_thaw(vm_id, self.settings.libvirt_timeout_s)
                return
            except VmNotFound:
                return  # the VM is gone: nothing left to thaw
            except HypervisorError as exc:
                if not frozen:
                    log.debug("thaw after a failed freeze failed vm=%s error=%s", vm_id,
                              exc.message)
                    return
                log.warning("thaw failed vm=%s attempt=%s error=%s", vm_id, attempt,
                            exc.message)
                time.sleep(0.5 * attempt)
        log.error("guest filesystems of vm=%s may still be frozen: thaw failed %s times",
                  vm_id, THAW_ATTEMPTS)

    # Housekeeping #########################################################################

    def remove_orphans(self, min_age_s: float = ORPHAN_MIN_AGE_S) -> list[str]:
        """Delete staging directories a crash left behind (older than ``min_age_s``)."""
        removed = self.store.remove_stale_staging(min_age_s)
        for item in removed:
            log.info("removed orphan %s", item)
        return removed

    def purge_all(self) -> int:
        """Delete every snapshot no VM uses any more (CI, after the VMs were purged)."""
        count = 0
        for snapshot in self.store.list():
            try:
                self.delete(snapshot.id)
                count += 1
            except AppError as exc:
                log.warning("snapshot kept snapshot=%s reason=%s", snapshot.id, exc.message)
        return count
