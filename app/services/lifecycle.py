"""Lifecycle: stop, start, delete, network, label and lifetime changes of a caller's VM.

Each holds the VM's host-wide lock (a flock on ``vms/<name>/lock``), so whichever worker
process serves them they run one at a time: the sets in the kernel always hold the policy the
record says, and nothing is re-created for a VM that a concurrent delete removed.

A delete answers once the guest is powered off and the VM is marked ``deleting`` (gone for
callers, its quota slot free); its port, filter, sets and files are removed right after, in
the background, and the domain is undefined last, so the VM's name and address are not reused
before everything is gone. When the process dies in between, the maintaining process's reaper
finishes the job (:meth:`Lifecycle.finish_delete`).
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import logging
import time
import typing as t

from app.clock import now_iso
from app.config import Settings
from app.errors import AppError, HypervisorError, VmBusy, VmNotFound, VmStateConflict
from app.models import DomainInfo, Vm, VmPhase, VmRecord, VmState
from app.services.guests import GuestClients
from app.services.lifetimes import Activity, expires_at, lifetime_s
from app.services.locks import host_lock
from app.services.policy import EgressPolicy
from app.services.ports import VmPorts
from app.services.provisioner import LOCK_TIMEOUT
from app.services.records import VmRecords, to_vm
from app.services.teardown import VmTeardown
from app.services.undo import quietly

if t.TYPE_CHECKING:
    from app.virt.connection import Hypervisor

log = logging.getLogger(__name__)
VM_LOCK_FILE = "lock"  # in the VM's directory


class Lifecycle:
    def __init__(self, settings: Settings, hypervisor: Hypervisor, records: VmRecords,
                 policy: EgressPolicy, ports: VmPorts, guests: GuestClients,
                 teardown: VmTeardown, activity: Activity,
                 run_later: t.Callable[..., t.Any] | None = None) -> None:
        """:param run_later: runs ``fn(*args)`` soon, off the request (default: a small
            thread pool of this process; unit tests run it at once)."""
        self.settings = settings
        self.hypervisor = hypervisor
        self.records = records
        self.policy = policy
        self.ports = ports
        self.guests = guests
        self.teardown = teardown
        self.activity = activity
        if run_later is None:
            run_later = concurrent.futures.ThreadPoolExecutor(
                max_workers=2, thread_name_prefix="vm-delete").submit
        self._run_later = run_later

    @contextlib.contextmanager
    def locked(self, vm_id: str) -> t.Iterator[tuple[VmRecord, DomainInfo]]:
        """Hold the VM's host-wide lock and yield its record as read under it.

        :raises VmNotFound: unknown, or deleted while waiting.
        :raises VmBusy: another operation kept the lock for ``LOCK_TIMEOUT`` seconds.
        """
        record, _info = self.records.lookup(vm_id)
        with host_lock(self.settings.vms_dir / record.name / VM_LOCK_FILE, LOCK_TIMEOUT,
                       busy=lambda: VmBusy(f"VM {vm_id} is busy with another operation; "
                                           f"retry"),
                       missing=lambda: VmNotFound(f"VM {vm_id} not found")):
            yield self.records.lookup(vm_id)

    def update_network(self, vm_id: str, allow_ips: tuple[str, ...],
                       outbound_internet: bool) -> Vm:
        """Replace a VM's egress policy; a running VM's filter changes live.

        :raises VmNotFound: unknown VM.
        :raises InvalidRequest: too many entries.
        """
        self.policy.check(allow_ips)
        with self.locked(vm_id) as (record, info):
            updated = dataclasses.replace(record, allow_ips=allow_ips,
                                          outbound_internet=outbound_internet)
            self.policy.apply(updated)
            self.records.save(updated)
        log.info("vm network policy changed vm=%s outbound=%s entries=%s", vm_id,
                 outbound_internet, len(allow_ips))
        return to_vm(updated, info.state)

    def set_labels(self, vm_id: str, labels: dict[str, str]) -> Vm:
        """Replace a VM's labels."""
        with self.locked(vm_id) as (record, info):
            updated = dataclasses.replace(record, labels=dict(labels))
            self.records.save(updated)
        self.activity.touch(record.name)
        return to_vm(updated, info.state)

    def keepalive(self, vm_id: str, ttl_s: int | None) -> Vm:
        """Restart a VM's lifetime from now: ``ttl_s`` seconds, or its own length again
        (a VM without a lifetime keeps none); counts as activity.

        :raises InvalidRequest: against ``VM_MAX_TTL_S``.
        """
        with self.locked(vm_id) as (record, info):
            ttl = lifetime_s(self.settings, record.ttl_s if ttl_s is None else ttl_s)
            updated = dataclasses.replace(record, ttl_s=ttl, expires_at=expires_at(ttl))
            self.records.save(updated)
        self.activity.touch(record.name)
        log.info("vm kept alive vm=%s expires=%s", vm_id, updated.expires_at or "never")
        return to_vm(updated, info.state)

    def stop(self, vm_id: str, only_if: t.Callable[[VmRecord], bool] | None = None) -> bool:
        """Clean guest shutdown (guest agent, then ACPI, then power-off); disk kept.

        :param only_if: checked under the lock (the reaper's idle stop); nothing happens
            when it is false.
        :returns: whether the VM was stopped.
        :raises VmStateConflict: unless RUNNING.
        """
        with self.locked(vm_id) as (record, info):
            if only_if is not None and not only_if(record):
                return False
            require_state(vm_id, to_vm(record, info.state).state, VmState.RUNNING, "stopped")
            self.guests.forget(vm_id)
            self.records.set_phase(record, VmPhase.STOPPING)
            try:
                self.hypervisor.request_shutdown(vm_id)
            except HypervisorError as exc:
                log.warning("clean shutdown request failed vm=%s error=%s", vm_id, exc.message)
            if not wait_for_state(self.hypervisor, vm_id, "shutoff",
                                  self.settings.stop_timeout_s):
                log.warning("guest did not power off in time, forcing vm=%s", vm_id)
                self.hypervisor.destroy_domain(vm_id)
        log.info("vm stopped vm=%s", vm_id)
        return True

    def start(self, vm_id: str) -> None:
        """Boot a STOPPED VM from its kept disk; returns once the guest answers.

        The VM's lock is held while its network and domain are set up, not while the guest
        boots: a delete or a policy change meanwhile waits seconds, not a boot.

        :raises VmStateConflict: unless STOPPED.
        """
        with self.locked(vm_id) as (record, info):
            require_state(vm_id, to_vm(record, info.state).state, VmState.STOPPED, "started")
            record = self.records.set_phase(record, VmPhase.STARTING, started_at=now_iso())
            self.policy.apply(record)  # the sets are kernel state: gone after a host reboot
            self.ports.ensure(record)  # so is the tap, and libvirt's bindings live under /run
            self.hypervisor.start_domain(vm_id)
        self.activity.touch(record.name)
        try:
            self.guests.wait_ready(record)
        except AppError:
            with contextlib.suppress(VmNotFound), self.locked(vm_id):
                quietly(self.hypervisor.destroy_domain, vm_id)
            raise
        with self.locked(vm_id) as (record, info):
            if info.state == "running" and record.phase is VmPhase.STARTING:
                self.records.set_phase(record, VmPhase.READY)
        log.info("vm started vm=%s", vm_id)

    def note_stopped_on_its_own(self, vm_id: str) -> bool:
        """A READY VM found off that no API call stopped: move its phase on (so this is
        noticed once). :returns: whether it was still so under the lock."""
        with self.locked(vm_id) as (record, info):
            if record.phase is not VmPhase.READY or info.state == "running":
                return False
            self.records.set_phase(record, VmPhase.STOPPING)
        log.warning("vm stopped without the API vm=%s state=%s", vm_id, info.state)
        return True

    def delete(self, vm_id: str, only_if: t.Callable[[VmRecord], bool] | None = None,
               wait: bool = False) -> bool:
        """Power the VM off and mark it deleted; its parts go right after, in the background
        (or before returning, with ``wait``).

        :param only_if: checked under the lock (the reaper's expiry); nothing happens when it
            is false.
        :returns: whether the VM was deleted.
        :raises VmNotFound: when already gone.
        """
        with self.locked(vm_id) as (record, _info):
            if only_if is not None and not only_if(record):
                return False
            self.teardown.power_off(record.id)
            self.records.set_phase(record, VmPhase.DELETING)
        log.info("vm powered off for deletion vm=%s name=%s", vm_id, record.name)
        if wait:
            self.finish_delete(vm_id)
        else:
            self._run_later(self._finish_quietly, vm_id)
        return True

    def finish_delete(self, vm_id: str, lock_wait_s: float = LOCK_TIMEOUT) -> bool:
        """Remove what is left of a VM marked deleted (port, filter, sets, files, then the
        domain); any process may do it, any number of times.

        :returns: whether there was something to finish.
        :raises VmBusy: another process is at it (for ``lock_wait_s``).
        """
        record = self.records.any(vm_id)
        if record is None or record.phase is not VmPhase.DELETING:
            return False
        try:
            with host_lock(self.settings.vms_dir / record.name / VM_LOCK_FILE, lock_wait_s,
                           busy=lambda: VmBusy(f"VM {vm_id} is being deleted"),
                           missing=lambda: VmNotFound(vm_id)):
                current = self.records.any(vm_id)
                if current is None or current.phase is not VmPhase.DELETING:
                    return False
                self.teardown.finish(current)
        except VmNotFound:  # its directory is gone already: only the rest is left
            self.teardown.finish(record)
        return True

    def _finish_quietly(self, vm_id: str) -> None:
        try:
            self.finish_delete(vm_id)
        except AppError as exc:  # the reaper retries
            log.warning("deleting vm=%s did not finish: %s", vm_id, exc.message)


def require_state(vm_id: str, state: VmState, wanted: VmState, verb: str) -> None:
    """:raises VmStateConflict: ``state`` is not ``wanted`` (the VM cannot be ``verb``)."""
    if state is not wanted:
        raise VmStateConflict(f"VM {vm_id} is {state.value}; only a {wanted.value} VM can "
                              f"be {verb}")


def wait_for_state(hypervisor: Hypervisor, vm_id: str, wanted: str, timeout: float) -> bool:
    """Whether the domain reached libvirt's run state ``wanted`` within ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if hypervisor.get_domain(vm_id).state == wanted:
                return True
        except VmNotFound:
            return False
        time.sleep(0.25)
    return False
