"""Provisioner: makes a new VM, restored from a memory snapshot when one fits, else booted.

One resource plan serves every path (a caller's VM, a warm-pool VM, from a disk snapshot or
not): under the host-wide allocation lock the quota, the disk budget, an address and a name
are taken; then, in order, the VM's files, its egress sets, its filter, its port and its
domain are made, each registering its removal in a :class:`~app.services.teardown.Cleanup`.
The guest then starts (cold boot) or resumes (memory snapshot) while its port is filtered and
plugged in alongside; the create returns once a command ran in it. A failure anywhere unwinds
everything, in the one teardown order.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import logging
import os
import time
import typing as t
import uuid
from pathlib import Path

from app.clock import now_iso
from app.config import Settings
from app.config.hosts import LOCAL_HOST
from app.errors import (AppError, GuestUnreachable, HypervisorError, InvalidRequest,
                        QuotaExceeded)
from app.models import (ProvisionMode, Template, Vm, VmPhase, VmRecord, VmRole, VmSpec,
                        vm_name)
from app.services.addresses import allocation_lock, mac_for, pick_address
from app.services.capacity import DiskBudget
from app.services.guests import GuestClients
from app.services.lifetimes import expires_at, lifetime_s
from app.services.ownership import check_quota
from app.services.placement import Room, room
from app.services.policy import EgressPolicy
from app.services.ports import VmPorts
from app.services.records import VmRecords, to_vm
from app.services.seeds import Seed, SeedStore
from app.services.snapshot_store import SnapshotStore
from app.services.teardown import Cleanup, VmTeardown
from app.services.templates import ImageBuild, TemplateCatalog, default_disk_size_mb
from app.services.vm_files import DISK, HOST_KEY, IDENTITY_SOCKET, VmFiles
from app.sshkeys import generate_keypair
from app.virt import disks, identity, save_image
from app.virt.metadata_xml import parse_metadata
from app.virt.qemu_access import prepare_vm_dir

if t.TYPE_CHECKING:
    from app.services.remote_vms import RemoteVms
    from app.virt.connection import Hypervisor

log = logging.getLogger(__name__)
LOCK_TIMEOUT = 60.0
RESTORE_TIMEOUT_S = 120.0
AGENT_TIMEOUT_S = 30.0
# A restored guest answers in well under a second; on a host whose cores are all busy it gets
# a share of one, and a cold boot instead would cost far more than the wait (RELIABILITY.md).
IDENTITY_TIMEOUT_S = 10.0
IDENTITY_TIMEOUT_MAX_S = 60.0
BACKGROUND_TIMEOUT_S = 120.0  # the calls have their own timeouts; this only bounds the wait


@dataclasses.dataclass(frozen=True)
class CreatePlan:
    """A checked create request: what the VM is made of."""

    spec: VmSpec
    template: Template
    build: ImageBuild
    disk_size_mb: int
    ttl_s: int = 0  # the lifetime it gets (the default applied)
    backing: Path | None = None  # the disk's backing file when not the build's disk
    inputs: Path | None = None  # an image build VM's inputs (app.services.image_builder)
    host: str = LOCAL_HOST  # where it is made: the local host or a HOSTS name (issue 17)

    def caller_fields(self) -> dict[str, t.Any]:
        """What the caller asked for that a record carries besides the shape and policy:
        labels and lifetimes (the expiry starts now)."""
        return {"labels": dict(self.spec.labels), "ttl_s": self.ttl_s,
                "expires_at": expires_at(self.ttl_s), "idle_stop_s": self.spec.idle_stop_s,
                "created_by": self.spec.created_by, "owner_key": self.spec.owner_key}


def identity_timeout(load: float | None = None, cpus: int | None = None,
                     creating: int = 0) -> float:
    """How long a restored guest may take to answer its identity: ``IDENTITY_TIMEOUT_S``,
    stretched by the host's run queue per core (the 1-minute load average) or by the creates
    in flight per core (``creating``, this one included), whichever is more, at most
    ``IDENTITY_TIMEOUT_MAX_S``. The load average lags a burst by a minute: 20 restores at once
    on an idle 2-core host would otherwise each get the idle host's 10 s."""
    load = os.getloadavg()[0] if load is None else load
    cpus = (os.cpu_count() or 1) if cpus is None else cpus
    busy = max(load, float(creating)) / max(1, cpus)
    return min(IDENTITY_TIMEOUT_MAX_S, IDENTITY_TIMEOUT_S * max(1.0, busy))


class Provisioner:
    """Thread-safe; one per worker process."""

    def __init__(self, settings: Settings, hypervisor: Hypervisor, templates: TemplateCatalog,
                 seeds: SeedStore, snapshots: SnapshotStore | None, records: VmRecords,
                 files: VmFiles, ports: VmPorts, policy: EgressPolicy, guests: GuestClients,
                 teardown: VmTeardown, budget: DiskBudget,
                 remote: RemoteVms | None = None) -> None:
        """:param remote: makes the VMs of a plan for a remote host (``HOSTS``)."""
        self.settings = settings
        self.remote = remote
        self.hypervisor = hypervisor
        self.templates = templates
        self.seeds = seeds
        self.snapshots = snapshots
        self.records = records
        self.files = files
        self.ports = ports
        self.policy = policy
        self.guests = guests
        self.teardown = teardown
        self.budget = budget
        # Work done alongside a guest's start (see _alongside).
        self._background = concurrent.futures.ThreadPoolExecutor(
            max_workers=4, thread_name_prefix="vm-start")

    def plan(self, spec: VmSpec) -> CreatePlan:
        """Check a request against the limits and find its template and image build.

        :raises InvalidRequest: limits, unknown template or host, or what a remote host does
            not do (a VM from a disk snapshot: always made here).
        :raises ImageNotReady: the template's image is not built on this host.
        """
        limits = self.settings
        host = spec.host or LOCAL_HOST
        if host != LOCAL_HOST:
            if self.remote is None:
                raise InvalidRequest(f"placement.host {host!r} is not a host (known: "
                                     f"{LOCAL_HOST}; HOSTS names the others)")
            self.remote.host(host)
            if spec.snapshot_id:
                raise InvalidRequest(f"snapshotId: snapshots start VMs on the local host "
                                     f"only (a snapshot lives on this manager), not on "
                                     f"{host}; leave placement.host out")
            if spec.idle_stop_s:
                raise InvalidRequest(f"idleStopSeconds: a VM of a remote host ({host}) cannot "
                                     f"be stopped yet")
        if not 1 <= spec.cpu <= limits.max_cpu:
            raise InvalidRequest(f"cpu must be between 1 and {limits.max_cpu}")
        if not 128 <= spec.mem_mb <= limits.max_mem_mb:
            raise InvalidRequest(f"memMb must be between 128 and {limits.max_mem_mb}")
        self.policy.check(spec.allow_ips)
        template = self.templates.get(spec.image_id)
        build = self.templates.current_build(template)
        if not spec.host and self.remote is not None and limits.placement != "local" and \
                not spec.snapshot_id and not spec.idle_stop_s:
            host = self.remote.place(limits.placement, spec, template.id,
                                     self._local_room(spec))
        disk_size_mb = spec.disk_size_mb or default_disk_size_mb(template, build)
        self.budget.check_disk_size(disk_size_mb)
        if disk_size_mb < build.disk_size_mb:
            raise InvalidRequest(f"diskSizeMb must be at least {build.disk_size_mb} for "
                                 f"template {template.id!r}")
        return CreatePlan(spec, template, build, disk_size_mb,
                          lifetime_s(self.settings, spec.ttl_s), host=host)

    def create(self, plan: CreatePlan, role: VmRole = VmRole.SANDBOX) -> Vm:
        """A new VM, restored from the shape's memory snapshot if there is one (and the mode
        allows it), else booted. A VM whose disk starts from a disk snapshot always boots: a
        memory snapshot's guest expects the disk it was saved with.

        :raises QuotaExceeded: at ``MAX_VMS``.
        :raises InsufficientStorage: the host's disk budget has no room for the VM's disk.
        :raises GuestUnreachable: the guest did not answer in time (nothing is left behind).

        A plan for a remote host is made there, booted (:mod:`app.services.remote_vms`).
        """
        if plan.host != LOCAL_HOST and self.remote is not None:
            return self.remote.create(plan)
        spec = plan.spec
        if spec.provision_mode is not ProvisionMode.BOOT and not spec.snapshot_id:
            seed = self.seeds.find(plan.template, plan.build, spec.cpu, spec.mem_mb,
                                   plan.disk_size_mb)
            if seed is None:
                log.info("no memory snapshot for template=%s shape=%sx%s disk=%s: cold boot",
                         plan.template.id, spec.cpu, spec.mem_mb, plan.disk_size_mb)
            else:
                try:
                    return self._create(plan, seed, role)
                except (HypervisorError, GuestUnreachable, save_image.SaveImageError) as exc:
                    log.warning("restore from memory snapshot failed seed=%s error=%s: "
                                "falling back to a cold boot", seed.key, exc)
        return self._create(plan, None, role)

    def _create(self, plan: CreatePlan, seed: Seed | None, role: VmRole) -> Vm:
        started = time.monotonic()
        with Cleanup(f"create of a {role.value} VM") as cleanup:
            record, xml, creating = self._provision(plan, seed, role, cleanup)
            log.info("vm defined vm=%s name=%s ip=%s mode=%s", record.id, record.name,
                     record.guest_ip, record.provision_mode.value)
            # The port is filtered and plugged in while the guest starts, and the restored
            # guest's clock set while the manager connects: both finish before it is handed out.
            with self._alongside(f"connecting the network port of {record.name}",
                                 self.ports.connect, record):
                if seed is None:
                    self.hypervisor.start_domain(record.id)
                else:
                    self._restore(record, xml, seed, creating)
            with (self._alongside(f"setting the clock of {record.name}",
                                  self.hypervisor.set_guest_time, record.id, AGENT_TIMEOUT_S)
                  if seed else contextlib.nullcontext()):
                self.guests.wait_ready(record)
            record = self.records.set_phase(record, VmPhase.READY, started_at=now_iso())
            cleanup.keep()
        log.info("vm ready vm=%s name=%s mode=%s seconds=%.2f", record.id, record.name,
                 record.provision_mode.value, time.monotonic() - started)
        return to_vm(record, "running")

    def _provision(self, plan: CreatePlan, seed: Seed | None, role: VmRole,
                   cleanup: Cleanup) -> tuple[VmRecord, str, int]:
        """Take quota, budget, address and name; make files, sets, filter, port, domain.

        :returns: the record, the domain XML that was defined and how many creates are in
            flight on this host (this one included).
        """
        settings, spec = self.settings, plan.spec
        template, build, backing, disk_size_mb = (plan.template, plan.build,
                                                  plan.backing or plan.build.disk,
                                                  plan.disk_size_mb)
        host_key = generate_keypair()
        with allocation_lock(settings.lock_path, LOCK_TIMEOUT):
            if spec.snapshot_id:  # the disk starts from a snapshot instead (extension); looked
                # up under the lock, so the snapshot cannot be deleted before the domain exists
                template, build, backing, disk_size_mb = self._snapshot_store().vm_base(spec)
            if not backing.is_file():  # its image was deleted since the plan was made
                raise InvalidRequest(f"image {template.id!r} is gone (deleted meanwhile)")
            domains = self.hypervisor.list_domains()
            others = [r for r in (parse_metadata(domain.xml) for domain in domains) if r]
            # A VM being deleted is powered off already: it holds its address, not the quota.
            deleting = sum(1 for other in others if other.phase is VmPhase.DELETING)
            creating = 1 + sum(1 for other in others if other.phase is VmPhase.CREATING)
            if len(domains) - deleting >= settings.max_vms:
                raise QuotaExceeded(f"VM quota reached ({settings.max_vms} VMs)")
            check_quota(spec, others)
            self.budget.check_new_vm(others, disk_size_mb)
            address = pick_address(settings.network, settings.gateway_ip,
                                   [other.guest_ip for other in others])
            vm_id, name = self._new_identity()
            record = VmRecord(
                id=vm_id, name=name, cpu=spec.cpu, mem_mb=spec.mem_mb, guest_ip=str(address),
                mac=mac_for(address), allow_ips=spec.allow_ips,
                outbound_internet=spec.outbound_internet, image_id=template.id,
                image_path=str(build.path), disk_size_mb=disk_size_mb, created_at=now_iso(),
                provision_mode=ProvisionMode.BOOT if seed is None else ProvisionMode.SNAPSHOT,
                host_key=host_key.public_openssh, phase=VmPhase.CREATING, role=role,
                seed=seed.key if seed else "", snapshot_id=spec.snapshot_id or "",
                **(plan.caller_fields() if role is VmRole.SANDBOX else {}))
            vm_dir = self.files.directory(name)
            vm_dir.mkdir(mode=0o700, parents=True)
            cleanup.add("files", self.teardown.files, name)
            prepare_vm_dir(vm_dir)  # QEMU reads it, and binds the identity socket below it
            disks.create_overlay(seed.disk if seed else backing, vm_dir / DISK, disk_size_mb)
            self.files.write_keys(vm_dir, host_key)
            cleanup.add("ipsets", self.teardown.egress_sets, name)
            self.policy.apply(record)
            cleanup.add("filter", self.teardown.filter, name)
            self.hypervisor.define_filter(self.files.filter_xml(record))
            cleanup.add("port", self.teardown.port, name)
            self.ports.create(record)  # filtered and plugged in by _create
            xml = self.files.domain_xml(record, template.domain_xml if seed is None else
                                        save_image.read_header(seed.state).xml, build, vm_dir,
                                        genid=str(uuid.uuid4()) if seed else "",
                                        template=template, inputs=plan.inputs)
            cleanup.add("domain", self.teardown.domain, vm_id)
            self.hypervisor.define_domain(xml)
        return record, xml, creating

    def _restore(self, record: VmRecord, xml: str, seed: Seed, creating: int) -> None:
        """Run the seed's saved guest as this VM, then give the guest the VM's identity.

        The wait for the guest's answer follows the creates in flight while it lasts: the
        first create of a burst counts only itself when it is provisioned, and its guest
        then shares the cores with every restore that came after (:func:`identity_timeout`).

        The saved guest has eth0 down (so it never sends a frame with the seed's MAC) and a
        helper waiting on the VM's identity port (:mod:`app.virt.identity`), which brings eth0
        up with the VM's own MAC and address. (The clock is set alongside the first SSH
        connection, see :meth:`_create`.)
        """
        vm_dir = self.files.directory(record.name)
        state = vm_dir / "restore.sav"
        save_image.write_clone(seed.state, state, xml)
        try:
            self.hypervisor.restore_domain(str(state), RESTORE_TIMEOUT_S)
        finally:
            state.unlink(missing_ok=True)
        identity.send_identity(
            str(vm_dir / IDENTITY_SOCKET), record.mac,
            f"{record.guest_ip}/{self.settings.network.prefixlen}",
            str(self.settings.gateway_ip), record.name, record.host_key,
            (vm_dir / HOST_KEY).read_bytes(),
            lambda: identity_timeout(creating=max(creating, self._creates_in_flight())))

    def _creates_in_flight(self) -> int:
        """How many creates are in flight on this host now (0 when libvirt cannot say)."""
        try:
            records = [parse_metadata(domain.xml) for domain in self.hypervisor.list_domains()]
        except AppError:
            return 0
        return sum(1 for record in records if record and record.phase is VmPhase.CREATING)

    @contextlib.contextmanager
    def _alongside(self, what: str, action: t.Callable[..., t.Any],
                   *args: t.Any) -> t.Iterator[None]:
        """Run ``action(*args)`` in the background while the body runs. Leaving waits for it
        (so no undo step races it) and raises its error: the create fails with it."""
        future = self._background.submit(action, *args)
        try:
            yield
        finally:
            done, _pending = concurrent.futures.wait([future], timeout=BACKGROUND_TIMEOUT_S)
            if not done:
                raise HypervisorError(f"{what} did not finish in time")
        future.result()

    def _local_room(self, spec: VmSpec) -> Room:
        """The local host's room for ``spec`` (PLACEMENT; its image is built here)."""
        try:
            node = self.hypervisor.node_info()
            records = [parse_metadata(domain.xml) for domain in self.hypervisor.list_domains()]
        except AppError as exc:
            return room(LOCAL_HOST, spec, None, (), self.settings.max_vms, True, exc.message)
        return room(LOCAL_HOST, spec, node, [record for record in records if record],
                    self.settings.max_vms, True, snapshot_ready=self._has_seed(spec))

    def _has_seed(self, spec: VmSpec) -> bool:
        """Whether a create of ``spec`` here would restore a memory snapshot."""
        if spec.provision_mode is ProvisionMode.BOOT:
            return False
        template = self.templates.get(spec.image_id)
        build = self.templates.current_build(template)
        return self.seeds.find(template, build, spec.cpu, spec.mem_mb, spec.disk_size_mb or
                               default_disk_size_mb(template, build)) is not None

    def _snapshot_store(self) -> SnapshotStore:
        if self.snapshots is None:
            raise InvalidRequest("snapshots are not available in this service")
        return self.snapshots

    def _new_identity(self) -> tuple[str, str]:
        for _ in range(10):
            vm_id = str(uuid.uuid4())
            name = vm_name(vm_id)
            if not self.hypervisor.domain_name_exists(name) and \
                    not self.files.directory(name).exists():
                return vm_id, name
        raise HypervisorError("could not find a free VM name")
