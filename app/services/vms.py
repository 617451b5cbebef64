"""VmService: what the API asks of VMs, over the parts that do it.

Each VM is a libvirt domain ``rds-<short id>`` on a qcow2 overlay of its template's image, with
its own nwfilter, egress sets, network port, host key and address; libvirt holds its record
(:mod:`app.services.records`). The work is split by responsibility:

- :class:`~app.services.provisioner.Provisioner` makes VMs (cold boot or memory snapshot),
- :class:`~app.services.pool.WarmPool` hands out pre-started ones,
- :class:`~app.services.lifecycle.Lifecycle` stops, starts, deletes and changes policies,
- :class:`~app.services.sweeper.Sweeper` removes what crashes left,
- :class:`~app.services.teardown.VmTeardown` is the one way anything of a VM is removed,
- :class:`~app.services.guests.GuestClients` holds one SSH client per VM.

:func:`build_vm_parts` wires them; this class is the face the API and the other services use.
"""
from __future__ import annotations

import dataclasses
import time
import typing as t

from app import metrics
from app.config import Settings
from app.config.hosts import LOCAL_HOST
from app.errors import AppError, KeyQuotaExceeded, QuotaExceeded, VmNotFound, VmStateConflict
from app.guestssh import GuestSSH
from app.models import DomainInfo, ProvisionMode, Vm, VmRecord, VmSpec, VmState
from app.services.capacity import DiskBudget
from app.services.guests import GuestClients, ManagerKey
from app.services.lifecycle import Lifecycle
from app.services.events import Events
from app.services.lifetimes import Activity
from app.services.listing import VmPage, VmQuery, select
from app.services.ownership import stamp, visible
from app.services.policy import EgressPolicy
from app.services.pool import WarmPool
from app.services.ports import VmPorts
from app.services.provisioner import Provisioner
from app.services.remote_vms import RemoteVms
from app.services.reaper import Reaper
from app.services.records import VmRecords, to_vm
from app.services.seeds import SeedStore
from app.services.snapshot_store import SnapshotStore
from app.services.sweeper import ORPHAN_MIN_AGE_S, Sweeper
from app.services.teardown import VmTeardown
from app.services.templates import TemplateCatalog
from app.services.vm_files import VmFiles
from app.sshkeys import KeyPair
from app.virt.ipsets import IpSets
from app.virt.taps import Taps

T = t.TypeVar("T")

if t.TYPE_CHECKING:
    from app.services.host_registry import HostRegistry
    from app.virt.connection import Hypervisor


@dataclasses.dataclass(frozen=True)
class VmParts:
    """The VM service's parts, built once per process (:func:`build_vm_parts`)."""

    settings: Settings
    hypervisor: Hypervisor
    templates: TemplateCatalog
    seeds: SeedStore
    records: VmRecords
    ipsets: IpSets
    ports: VmPorts
    policy: EgressPolicy
    manager_key: ManagerKey
    guests: GuestClients
    files: VmFiles
    teardown: VmTeardown
    provisioner: Provisioner
    pool: WarmPool
    lifecycle: Lifecycle
    sweeper: Sweeper
    activity: Activity
    reaper: Reaper
    events: Events | None = None
    remote: RemoteVms | None = None  # the VMs of the HOSTS (None without HOSTS)


def build_vm_parts(settings: Settings, hypervisor: Hypervisor, templates: TemplateCatalog,
                   domain_type: str, ipsets: IpSets, taps: Taps,
                   snapshots: SnapshotStore | None = None,
                   connect: t.Callable[..., GuestSSH] = GuestSSH,
                   run_later: t.Callable[..., t.Any] | None = None,
                   forget: t.Callable[[str], None] | None = None,
                   events: Events | None = None,
                   registry: HostRegistry | None = None) -> VmParts:
    """Wire the parts over the host adapters (unit tests pass fakes)."""
    seeds = SeedStore(settings.seeds_dir, domain_type, lambda: hypervisor.emulator_version())
    records = VmRecords(hypervisor)
    ports = VmPorts(settings, hypervisor, taps)
    policy = EgressPolicy(settings, ipsets)
    manager_key = ManagerKey(settings.keys_dir)
    guests = GuestClients(settings, manager_key, connect)
    activity = Activity(settings.vms_dir)
    files = VmFiles(settings, templates, domain_type, manager_key)
    teardown = VmTeardown(settings, hypervisor, ports, ipsets, guests, forget)
    remote = RemoteVms(settings, registry, templates, guests, manager_key, domain_type,
                       seeds) \
        if registry is not None and registry.hosts else None
    provisioner = Provisioner(settings, hypervisor, templates, seeds, snapshots, records, files,
                              ports, policy, guests, teardown, DiskBudget(settings), remote)
    lifecycle = Lifecycle(settings, hypervisor, records, policy, ports, guests, teardown,
                          activity, run_later)
    return VmParts(
        settings=settings, hypervisor=hypervisor, templates=templates, seeds=seeds,
        records=records, ipsets=ipsets, ports=ports, policy=policy, manager_key=manager_key,
        guests=guests, files=files, teardown=teardown, provisioner=provisioner,
        pool=WarmPool(settings, hypervisor, records, provisioner, policy, teardown),
        lifecycle=lifecycle,
        sweeper=Sweeper(settings, hypervisor, records, ports, ipsets, teardown),
        activity=activity, reaper=Reaper(records, lifecycle, activity, events),
        events=events, remote=remote)


class VmService:
    """VMs as the API sees them. Thread-safe; one per worker process."""

    def __init__(self, parts: VmParts) -> None:
        self.parts = parts
        self.settings = parts.settings
        self.ipsets = parts.ipsets  # operators' and tests' view of the kernel state
        self.ports = parts.ports

    # Queries ###############################################################################

    def list(self) -> list[Vm]:
        return self._sandboxes()

    def _sandboxes(self) -> list[Vm]:
        """The callers' VMs here, then those of the remote hosts that answer."""
        vms = self.parts.records.sandboxes()
        if self.parts.remote is not None:
            vms += self.parts.remote.sandboxes()
        return vms

    def query(self, query: VmQuery) -> VmPage:
        """The caller's VMs that carry the labels and state asked for, a page at a time (a
        ``vms``-only API key's own VMs only).

        :raises InvalidRequest: a cursor this service did not hand out.
        """
        vms = self._sandboxes()
        if self.parts.remote is not None:
            vms.sort(key=lambda vm: (vm.created_at, vm.id))
        return select([vm for vm in vms if visible(vm.owner_key)], query)

    def get(self, vm_id: str) -> Vm:
        """:raises VmNotFound: for an unknown or malformed id.
        :raises HypervisorError: not here nor on a host that answers, and a host is DOWN."""
        return self._here_or_remote(vm_id, lambda: self.parts.records.get(vm_id),
                                    lambda remote: remote.get(vm_id))

    def _here_or_remote(self, vm_id: str, here: t.Callable[[], T],
                        remote: t.Callable[[RemoteVms], T]) -> T:
        """``here()`` on a local VM; on one that is not here, ``remote()`` (with HOSTS)."""
        try:
            return here()
        except VmNotFound:
            if self.parts.remote is None:
                raise
        return remote(self.parts.remote)

    def records(self) -> list[tuple[VmRecord, DomainInfo]]:
        """Every domain of this service with its record (sandboxes, pool VMs, seeds)."""
        return self.parts.records.all()

    def pool_records(self) -> list[tuple[VmRecord, str]]:
        """Every warm-pool VM with its libvirt run state (operators' and tests' view)."""
        return self.parts.pool.vms()

    def guest(self, vm_id: str) -> GuestSSH:
        """The SSH client of a RUNNING VM (one per VM per process, reused).

        :raises VmNotFound: unknown VM.
        :raises VmStateConflict: unless RUNNING.
        """
        try:
            record, info = self.parts.records.lookup(vm_id, cached=True)
        except VmNotFound:
            if self.parts.remote is None:
                raise
            return self.parts.remote.guest(vm_id)
        state = to_vm(record, info.state).state
        if state is not VmState.RUNNING:
            raise VmStateConflict(f"VM {vm_id} is {state.value}; it must be RUNNING")
        self.parts.activity.touch(record.name)
        return self.parts.guests.client(record)

    def manager_key(self) -> KeyPair:
        return self.parts.manager_key.pair()

    # Changes ###############################################################################

    def create(self, spec: VmSpec) -> Vm:
        """Create a VM for the current caller (its creator and owner); returns once a command
        ran in the guest.

        ``spec.provision_mode``: ``auto`` and ``pool`` first claim a ready warm-pool VM of the
        shape; ``auto``, ``pool`` and ``snapshot`` then restore the shape's memory snapshot if
        one exists; everything falls back to a cold boot (logged), and ``boot`` always boots.
        At the quota, an idle pool VM is evicted to make room.

        :raises InvalidRequest: limits or unknown template.
        :raises QuotaExceeded: at ``MAX_VMS``, or at the caller's API key's ``maxVms``.
        :raises InsufficientStorage: the host's disk budget has no room for the VM's disk.
        :raises GuestUnreachable: the guest did not answer in time (nothing is left behind).
        """
        started = time.monotonic()
        spec = stamp(spec)
        try:
            vm = self._create(spec)
        except AppError as exc:
            metrics.VM_CREATE_FAILURES.labels(type(exc).__name__).inc()
            if exc.http_status >= 500:  # the host failed it, not the request
                self._emit("vm.failed", "", {"stage": "create", "error": type(exc).__name__,
                                             "message": exc.message})
            raise
        metrics.VM_CREATE_DURATION.labels(vm.provision_mode.value).observe(
            time.monotonic() - started)
        self._emit("vm.created", vm.id, {
            "name": vm.name, "cpu": vm.cpu, "memMb": vm.mem_mb, "imageId": vm.image_id,
            "provisionMode": vm.provision_mode.value, "labels": vm.labels,
            "expiresAt": vm.expires_at})
        return vm

    def _create(self, spec: VmSpec) -> Vm:
        parts = self.parts
        plan = parts.provisioner.plan(spec)
        if plan.host != LOCAL_HOST:
            return parts.provisioner.create(plan)
        if spec.provision_mode in (ProvisionMode.AUTO, ProvisionMode.POOL) and \
                not spec.snapshot_id:
            claimed = parts.pool.claim(plan)
            if claimed is not None:
                return claimed
        try:
            return parts.provisioner.create(plan)
        except KeyQuotaExceeded:
            raise
        except QuotaExceeded:
            if not parts.pool.evict():
                raise
        return parts.provisioner.create(plan)

    def update_network(self, vm_id: str, allow_ips: tuple[str, ...],
                       outbound_internet: bool) -> Vm:
        return self._here_or_remote(
            vm_id, lambda: self.parts.lifecycle.update_network(vm_id, allow_ips,
                                                               outbound_internet),
            lambda remote: remote.update_network(vm_id, allow_ips, outbound_internet))

    def stop(self, vm_id: str) -> None:
        self._here_or_remote(vm_id, lambda: self.parts.lifecycle.stop(vm_id),
                             lambda remote: remote.lifecycle.stop(vm_id))
        self._emit("vm.stopped", vm_id, {"reason": "api"})

    def start(self, vm_id: str) -> None:
        self._here_or_remote(vm_id, lambda: self.parts.lifecycle.start(vm_id),
                             lambda remote: remote.lifecycle.start(vm_id))
        self._emit("vm.started", vm_id)

    def delete(self, vm_id: str, wait: bool = False) -> None:
        """Power the VM off and answer; the rest of it goes right after (before returning
        with ``wait``).

        :raises VmNotFound: unknown or already deleted.
        """
        self._here_or_remote(vm_id, lambda: self.parts.lifecycle.delete(vm_id, wait=wait),
                             lambda remote: remote.delete(vm_id))
        metrics.VMS_DELETED.labels("api").inc()
        self._emit("vm.deleted", vm_id, {"reason": "api"})

    def delete_matching(self, labels: tuple[tuple[str, str | None], ...]
                        ) -> tuple[list[str], list[dict[str, str]]]:
        """Delete every caller's VM that carries all ``labels`` (a CI job's cleanup).

        :returns: the ids deleted, and the ones that could not be, with the reason.
        """
        deleted, failed = [], []
        for vm in self.query(VmQuery(labels=labels)).vms:
            try:
                self._here_or_remote(vm.id, lambda vm_id=vm.id: self.parts.lifecycle.delete(vm_id),
                                     lambda remote, vm_id=vm.id: remote.delete(vm_id))
                metrics.VMS_DELETED.labels("label").inc()
                self._emit("vm.deleted", vm.id, {"reason": "label", "name": vm.name})
                deleted.append(vm.id)
            except VmNotFound:
                pass  # deleted meanwhile by someone else
            except AppError as exc:
                failed.append({"id": vm.id, "message": exc.message})
        return deleted, failed

    def set_labels(self, vm_id: str, labels: dict[str, str]) -> Vm:
        return self._here_or_remote(
            vm_id, lambda: self.parts.lifecycle.set_labels(vm_id, labels),
            lambda remote: remote.lifecycle.set_labels(vm_id, labels))

    def keepalive(self, vm_id: str, ttl_s: int | None) -> Vm:
        return self._here_or_remote(
            vm_id, lambda: self.parts.lifecycle.keepalive(vm_id, ttl_s),
            lambda remote: remote.lifecycle.keepalive(vm_id, ttl_s))

    def reap(self) -> list[str]:
        """Enforce lifetimes once (the maintaining process calls it every few seconds), on
        the remote hosts too (their VMs' expiry and unfinished deletes)."""
        done = self.parts.reaper.run_once()
        if self.parts.remote is not None:
            for what, record in self.parts.remote.reap():
                if what == "expired":
                    metrics.VMS_DELETED.labels("expired").inc()
                    self._emit("vm.expired", record.id, {"name": record.name,
                                                         "expiresAt": record.expires_at})
                done.append(f"{what} {record.id}")
        return done

    # Housekeeping ##########################################################################

    def remove_orphans(self, min_age_s: float = ORPHAN_MIN_AGE_S) -> list[str]:
        return self.parts.sweeper.remove_orphans(min_age_s)

    def purge_all(self) -> int:
        return self.parts.sweeper.purge_all()

    def close(self) -> None:
        self.parts.guests.close()

    def _emit(self, type_: str, vm_id: str, payload: dict[str, t.Any] | None = None) -> None:
        if self.parts.events is not None:
            self.parts.events.emit(type_, "vm", vm_id, payload)

