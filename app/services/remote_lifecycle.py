"""Labels, keepalive, stop and start of a VM of a remote host of ``HOSTS`` (issue 17), through
that host's libvirt only, with the local VMs' rules (:mod:`app.services.lifecycle`): the record
(its labels, its lifetime and ``expiresAt``, which the reaper reads there) kept in the domain's
metadata there, the same states and the same refusals.

A stop asks the guest to shut down (ACPI; after ``STOP_TIMEOUT_S`` the domain is powered off)
and forgets the VM's SSH client; its disk, filter and address reservation stay on the host. A
start boots it cold again (a remote VM always boots cold) and returns once the guest answers
over SSH. Each call holds the VM's lock of this manager (:mod:`app.services.remote_vm_locks`),
as a local VM's do; two managers' calls on one VM at once are not serialised.
"""
from __future__ import annotations

import dataclasses
import logging
import typing as t

from app.clock import now_iso
from app.config import Settings
from app.config.hosts import RemoteHost
from app.errors import AppError, HypervisorError
from app.models import Vm, VmPhase, VmState
from app.services.guests import GuestClients
from app.services.lifecycle import require_state, wait_for_state
from app.services.lifetimes import expires_at, lifetime_s
from app.services.records import VmRecords, to_vm
from app.services.remote_lookup import Found, RemoteLookup
from app.services.undo import quietly

if t.TYPE_CHECKING:
    from app.virt.connection import Hypervisor

log = logging.getLogger(__name__)


class RemoteLifecycle:
    """Thread-safe; one per worker process (part of :class:`~app.services.remote_vms.RemoteVms`)."""

    def __init__(self, settings: Settings, lookup: RemoteLookup, guests: GuestClients,
                 ensure_host: t.Callable[[RemoteHost, Hypervisor], None],
                 locked: t.Callable[[str], t.ContextManager[Found]]) -> None:
        """:param ensure_host: makes sure the host's VM pool and network are there (a start
            after the host rebooted).
        :param locked: holds a VM's lock and yields it as found under the lock."""
        self.settings = settings
        self.lookup = lookup
        self.guests = guests
        self.ensure_host = ensure_host
        self.locked = locked

    def set_labels(self, vm_id: str, labels: dict[str, str]) -> Vm:
        """Replace the VM's labels (its record in the domain's metadata there)."""
        with self.locked(vm_id) as found:
            updated = dataclasses.replace(found.record, labels=dict(labels))
            VmRecords(found.hypervisor).save(updated)
        self.lookup.remember(found.host.name, updated)
        return to_vm(updated, found.state)

    def keepalive(self, vm_id: str, ttl_s: int | None) -> Vm:
        """Restart the VM's lifetime from now: ``ttl_s`` seconds, or its own length again (a
        VM without a lifetime keeps none), as a local VM's.

        :raises InvalidRequest: against ``VM_MAX_TTL_S``.
        """
        with self.locked(vm_id) as found:
            record = found.record
            ttl = lifetime_s(self.settings, record.ttl_s if ttl_s is None else ttl_s)
            updated = dataclasses.replace(record, ttl_s=ttl, expires_at=expires_at(ttl))
            VmRecords(found.hypervisor).save(updated)
        self.lookup.remember(found.host.name, updated)
        log.info("vm kept alive vm=%s host=%s expires=%s", vm_id, found.host.name,
                 updated.expires_at or "never")
        return to_vm(updated, found.state)

    def stop(self, vm_id: str) -> None:
        """Clean guest shutdown (ACPI, then power-off); disk kept.

        :raises VmStateConflict: unless RUNNING.
        """
        with self.locked(vm_id) as found:
            self._stop(vm_id, found)

    def _stop(self, vm_id: str, found: Found) -> None:
        hypervisor = found.hypervisor
        require_state(vm_id, to_vm(found.record, found.state).state, VmState.RUNNING, "stopped")
        self.guests.forget(vm_id)
        VmRecords(hypervisor).set_phase(found.record, VmPhase.STOPPING)
        try:
            hypervisor.request_shutdown(vm_id)
        except HypervisorError as exc:
            log.warning("clean shutdown request failed vm=%s host=%s error=%s", vm_id,
                        found.host.name, exc.message)
        if not wait_for_state(hypervisor, vm_id, "shutoff", self.settings.stop_timeout_s):
            log.warning("guest did not power off in time, forcing vm=%s host=%s", vm_id,
                        found.host.name)
            hypervisor.destroy_domain(vm_id)
        log.info("vm stopped vm=%s host=%s", vm_id, found.host.name)

    def start(self, vm_id: str) -> None:
        """Boot a STOPPED VM cold from its kept disk; returns once the guest answers (a guest
        that does not is powered off again).

        :raises VmStateConflict: unless STOPPED.
        :raises GuestUnreachable: the guest did not answer in time.
        """
        with self.locked(vm_id) as found:
            self._start(vm_id, found)

    def _start(self, vm_id: str, found: Found) -> None:
        hypervisor = found.hypervisor
        require_state(vm_id, to_vm(found.record, found.state).state, VmState.STOPPED, "started")
        self.ensure_host(found.host, hypervisor)
        records = VmRecords(hypervisor)
        record = records.set_phase(found.record, VmPhase.STARTING, started_at=now_iso())
        hypervisor.start_domain(vm_id)
        try:
            self.guests.wait_ready(record)
        except AppError:
            self.guests.forget(vm_id)
            quietly(hypervisor.destroy_domain, vm_id)
            raise
        current = records.any(vm_id)
        if current is not None and current.phase is VmPhase.STARTING:
            records.set_phase(current, VmPhase.READY)
        log.info("vm started vm=%s host=%s", vm_id, found.host.name)
