"""VmService: create, list, inspect, stop, start and delete VMs.

Each VM is a libvirt domain ``rds-<short id>`` on a qcow2 overlay of its template's image, with
its own nwfilter, host key and address. libvirt is the source of truth: the VM's API fields live
in the domain's metadata, so every worker process sees the same VMs and nothing drifts after a
restart. Creation acts in order and registers the undo of each step; a failure half-way unwinds
everything (domain, filter, disk, address).
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import datetime as dt
import ipaddress
import logging
import shutil
import threading
import time
import typing as t
import uuid
from pathlib import Path

from app.config import Settings
from app.errors import (AppError, GuestUnreachable, HypervisorError, InvalidRequest,
                        QuotaExceeded, VmBusy, VmNotFound, VmStateConflict)
from app.guestssh import GuestSSH, SshTimeouts, load_private_key
from app.models import (ProvisionMode, Template, Vm, VmPhase, VmRecord, VmRole, VmSpec,
                        VmState)
from app.services.addresses import allocation_lock, mac_for, pick_address
from app.services.capacity import DiskBudget
from app.services.locks import host_lock
from app.services.ports import VmPorts
from app.services.seeds import Seed, SeedStore
from app.services.snapshots import SnapshotStore
from app.services.templates import ImageBuild, TemplateCatalog, default_disk_size_mb
from app.services.undo import quietly
from app.sshkeys import KeyPair, generate_keypair, manager_keypair, write_private
from app.virt import disks, identity, save_image
from app.virt.connection import DomainInfo, Hypervisor
from app.virt.domain_xml import (METADATA_NS, METADATA_PREFIX, BootFiles, DomainParams,
                                 build_domain_xml, kernel_cmdline, metadata_xml, parse_metadata,
                                 port_name, vm_title)
from app.virt.ipsets import IpSets
from app.virt.qemu_access import QEMU_WRITABLE, prepare_vm_dir
from app.virt.nwfilter_xml import build_filter_xml

log = logging.getLogger(__name__)
LOCK_TIMEOUT = 60.0
VM_LOCK_FILE = "lock"  # in the VM's directory: held by stop, start, delete and policy changes
ORPHAN_MIN_AGE_S = 600.0  # longer than any create (lock wait + boot timeout)
IDENTITY_SOCKET = f"{QEMU_WRITABLE}/identity.sock"  # in the VM's directory: app.virt.identity
RESTORE_TIMEOUT_S = 120.0
AGENT_TIMEOUT_S = 30.0
IDENTITY_TIMEOUT_S = 10.0  # a restored guest answers in well under a second
BACKGROUND_TIMEOUT_S = 120.0  # the calls have their own timeouts; this only bounds the wait


def vm_state(domain_state: str, phase: VmPhase) -> VmState:
    """The API state from libvirt's run state and the manager's last phase."""
    if phase is VmPhase.CREATING and domain_state in ("running", "shutoff", "paused"):
        return VmState.STARTING  # defined, being restored or booted: not a caller's yet
    if domain_state == "running":
        return {VmPhase.READY: VmState.RUNNING, VmPhase.STARTING: VmState.STARTING,
                VmPhase.CREATING: VmState.STARTING, VmPhase.STOPPING: VmState.STOPPING}[phase]
    if domain_state == "shutoff":
        return VmState.STOPPED
    if domain_state == "shutdown":
        return VmState.STOPPING
    return VmState.ERROR


def to_vm(record: VmRecord, domain_state: str) -> Vm:
    return Vm(id=record.id, state=vm_state(domain_state, record.phase), cpu=record.cpu,
              mem_mb=record.mem_mb, guest_ip=record.guest_ip,
              outbound_internet=record.outbound_internet, allow_ips=record.allow_ips,
              created_at=record.created_at, image_id=record.image_id,
              provision_mode=record.provision_mode, name=record.name,
              snapshot_id=record.snapshot_id or None)


class VmService:
    """VM lifecycle. Thread-safe; one instance per worker process."""

    def __init__(self, settings: Settings, hypervisor: Hypervisor, templates: TemplateCatalog,
                 domain_type: str, snapshots: SnapshotStore | None = None) -> None:
        self.settings = settings
        self.hypervisor = hypervisor
        self.templates = templates
        self.domain_type = domain_type
        self.seeds = SeedStore(settings.seeds_dir, domain_type,
                               lambda: hypervisor.emulator_version())
        self.ipsets = IpSets(settings.egress_never_list)
        self.ports = VmPorts(settings, hypervisor)
        self.disk_budget = DiskBudget(settings)
        self.snapshots = snapshots
        self._manager_key: KeyPair | None = None
        self._guests: dict[str, GuestSSH] = {}
        self._guests_lock = threading.Lock()
        # Work done alongside a guest's start (see _alongside).
        self._background = concurrent.futures.ThreadPoolExecutor(
            max_workers=4, thread_name_prefix="vm-start")

    # Queries ###############################################################################

    def records(self) -> list[tuple[VmRecord, DomainInfo]]:
        """Every domain of this service that carries our metadata (sandboxes, pool, seeds)."""
        found = []
        for info in self.hypervisor.list_domains():
            record = parse_metadata(info.xml)
            if record is not None:
                found.append((record, info))
        return found

    def list(self) -> list[Vm]:
        vms = [to_vm(record, info.state) for record, info in self.records()
               if record.role is VmRole.SANDBOX]
        return sorted(vms, key=lambda vm: (vm.created_at, vm.id))

    def get(self, vm_id: str) -> Vm:
        """:raises VmNotFound: for an unknown or malformed id."""
        record, info = self._lookup(vm_id)
        return to_vm(record, info.state)

    def _lookup(self, vm_id: str) -> tuple[VmRecord, DomainInfo]:
        try:
            uuid.UUID(vm_id)
        except ValueError:
            raise VmNotFound(f"VM {vm_id} not found") from None
        try:
            info = self.hypervisor.get_domain(vm_id)
        except VmNotFound:
            raise VmNotFound(f"VM {vm_id} not found") from None
        record = parse_metadata(info.xml)
        if record is None or record.role is not VmRole.SANDBOX or \
                not info.name.startswith("rds-"):
            raise VmNotFound(f"VM {vm_id} not found")
        return record, info

    @contextlib.contextmanager
    def _locked(self, vm_id: str) -> t.Iterator[tuple[VmRecord, DomainInfo]]:
        """Hold the VM's host-wide lock and yield its record as read under it.

        Stop, start, delete and policy changes of one VM run one at a time, whichever worker
        process serves them, so the sets in the kernel always hold the policy the metadata
        says, and nothing is re-created for a VM that a concurrent delete removed.

        :raises VmNotFound: unknown, or deleted while waiting.
        :raises VmBusy: another operation kept the lock for :data:`LOCK_TIMEOUT` seconds.
        """
        record, _info = self._lookup(vm_id)
        gone = lambda: VmNotFound(f"VM {vm_id} not found")  # noqa: E731
        with host_lock(self.settings.vms_dir / record.name / VM_LOCK_FILE, LOCK_TIMEOUT,
                       busy=lambda: VmBusy(f"VM {vm_id} is busy with another operation; "
                                           f"retry"), missing=gone):
            yield self._lookup(vm_id)

    # Create ################################################################################

    def create(self, spec: VmSpec) -> Vm:
        """Create a VM; returns once a command ran in the guest.

        ``spec.provision_mode``: ``auto`` and ``pool`` first claim a ready warm-pool VM of the
        shape; ``auto``, ``pool`` and ``snapshot`` then restore the shape's memory snapshot if
        one exists; everything falls back to a cold boot (logged), and ``boot`` always boots.
        At the quota, an idle pool VM is evicted to make room.

        :raises InvalidRequest: limits or unknown template.
        :raises QuotaExceeded: at ``MAX_VMS``.
        :raises InsufficientStorage: the host's disk budget has no room for the VM's disk.
        :raises GuestUnreachable: the guest did not answer in time (nothing is left behind).
        """
        self._check_limits(spec)
        template = self.templates.get(spec.image_id)
        build = self.templates.current_build(template)
        disk_size_mb = spec.disk_size_mb or default_disk_size_mb(template, build)
        self.disk_budget.check_disk_size(disk_size_mb)
        if disk_size_mb < build.disk_size_mb:
            raise InvalidRequest(f"diskSizeMb must be at least {build.disk_size_mb} for "
                                 f"template {template.id!r}")
        if spec.provision_mode in (ProvisionMode.AUTO, ProvisionMode.POOL) and \
                not spec.snapshot_id:
            claimed = self._claim_pool_vm(spec, template, build, disk_size_mb)
            if claimed is not None:
                return claimed
        try:
            return self._create_new(spec, template, build, disk_size_mb)
        except QuotaExceeded:
            if not self._evict_pool_vm():
                raise
        return self._create_new(spec, template, build, disk_size_mb)

    def _create_new(self, spec: VmSpec, template: Template, build: ImageBuild,
                    disk_size_mb: int) -> Vm:
        """A new VM, restored from the shape's memory snapshot if there is one, else booted.

        A VM whose disk starts from a disk snapshot always boots: a memory snapshot's guest
        expects the disk it was saved with.
        """
        if spec.provision_mode is not ProvisionMode.BOOT and not spec.snapshot_id:
            seed = self.seeds.find(template, build, spec.cpu, spec.mem_mb, disk_size_mb)
            if seed is None:
                log.info("no memory snapshot for template=%s shape=%sx%s disk=%s: cold boot",
                         template.id, spec.cpu, spec.mem_mb, disk_size_mb)
            else:
                try:
                    return self._create(spec, template, build, disk_size_mb, seed)
                except (HypervisorError, GuestUnreachable, save_image.SaveImageError) as exc:
                    log.warning("restore from memory snapshot failed seed=%s error=%s: "
                                "falling back to a cold boot", seed.key, exc)
        return self._create(spec, template, build, disk_size_mb, None)

    def _create(self, spec: VmSpec, template: Template, build: ImageBuild, disk_size_mb: int,
                seed: Seed | None, role: VmRole = VmRole.SANDBOX) -> Vm:
        started = time.monotonic()
        with contextlib.ExitStack() as undo:
            record, xml = self._provision(spec, template, build, disk_size_mb, undo, seed=seed,
                                          role=role)
            log.info("vm defined vm=%s name=%s ip=%s accel=%s mode=%s", record.id, record.name,
                     record.guest_ip, self.domain_type, record.provision_mode)
            # The port is filtered and plugged in while the guest starts, and the restored
            # guest's clock set while the manager connects: both finish before it is handed out.
            with self._alongside(f"connecting the network port of {record.name}",
                                 self.ports.connect, record):
                if seed is None:
                    self.hypervisor.start_domain(record.id)
                    undo.callback(quietly, self.hypervisor.destroy_domain, record.id)
                else:
                    self._restore(record, xml, seed, undo)
            with (self._alongside(f"setting the clock of {record.name}",
                                  self.hypervisor.set_guest_time, record.id, AGENT_TIMEOUT_S)
                  if seed else contextlib.nullcontext()):
                self._wait_ready(record)
            record = self._set_phase(record, VmPhase.READY)
            undo.pop_all()
        log.info("vm ready vm=%s name=%s mode=%s seconds=%.2f", record.id, record.name,
                 record.provision_mode, time.monotonic() - started)
        return to_vm(record, "running")

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

    def _restore(self, record: VmRecord, xml: str, seed: Seed,
                 undo: contextlib.ExitStack) -> None:
        """Run the seed's saved guest as this VM, then give the guest the VM's identity.

        The saved guest has eth0 down (so it never sends a frame with the seed's MAC) and a
        helper waiting on the VM's identity port (:mod:`app.virt.identity`), which brings eth0
        up with the VM's own MAC and address. (The clock is set alongside the first SSH
        connection, see :meth:`_create`.)
        """
        vm_dir = self.settings.vms_dir / record.name
        state = vm_dir / "restore.sav"
        save_image.write_clone(seed.state, state, xml)
        try:
            self.hypervisor.restore_domain(str(state), RESTORE_TIMEOUT_S)
        finally:
            state.unlink(missing_ok=True)
        undo.callback(quietly, self.hypervisor.destroy_domain, record.id)
        identity.send_identity(
            str(vm_dir / IDENTITY_SOCKET), record.mac,
            f"{record.guest_ip}/{self.settings.network.prefixlen}",
            str(self.settings.gateway_ip), record.name, record.host_key,
            (vm_dir / "ssh_host_ed25519_key").read_bytes(), IDENTITY_TIMEOUT_S)

    def _check_limits(self, spec: VmSpec) -> None:
        limits = self.settings
        if not 1 <= spec.cpu <= limits.max_cpu:
            raise InvalidRequest(f"cpu must be between 1 and {limits.max_cpu}")
        if not 128 <= spec.mem_mb <= limits.max_mem_mb:
            raise InvalidRequest(f"memMb must be between 128 and {limits.max_mem_mb}")
        self._check_allow_ips(spec.allow_ips)

    def _check_allow_ips(self, allow_ips: tuple[str, ...]) -> None:
        limit = self.settings.max_allow_ips
        if len(allow_ips) > limit:
            raise InvalidRequest(f"allowIps has {len(allow_ips)} entries; at most {limit} are "
                                 f"allowed (the first one over is {allow_ips[limit]!r})")

    def update_network(self, vm_id: str, allow_ips: tuple[str, ...],
                       outbound_internet: bool) -> Vm:
        """Replace a VM's egress policy; a running VM's filter changes live.

        :raises VmNotFound: unknown VM.
        :raises InvalidRequest: too many entries.
        """
        self._check_allow_ips(allow_ips)
        with self._locked(vm_id) as (record, info):
            updated = dataclasses.replace(record, allow_ips=allow_ips,
                                          outbound_internet=outbound_internet)
            self._apply_policy(updated)
            self.hypervisor.set_metadata(vm_id, metadata_xml(updated), METADATA_NS,
                                         METADATA_PREFIX)
        log.info("vm network policy changed vm=%s outbound=%s entries=%s", vm_id,
                 outbound_internet, len(allow_ips))
        return to_vm(updated, info.state)

    def _provision(self, spec: VmSpec, template: Template, build: ImageBuild,
                   disk_size_mb: int, undo: contextlib.ExitStack, seed: Seed | None = None,
                   role: VmRole = VmRole.SANDBOX) -> tuple[VmRecord, str]:
        """Allocate address and name, write disk and keys, define filter and domain.

        :returns: the record and the domain XML that was defined.
        """
        settings = self.settings
        host_key = generate_keypair()
        with allocation_lock(settings.lock_path, LOCK_TIMEOUT):
            backing = build.disk
            if spec.snapshot_id:  # the disk starts from a snapshot instead (extension); looked
                # up under the lock, so the snapshot cannot be deleted before the domain exists
                template, build, backing, disk_size_mb = self._snapshot_store().vm_base(spec)
            domains = self.hypervisor.list_domains()
            if len(domains) >= settings.max_vms:
                raise QuotaExceeded(f"VM quota reached ({settings.max_vms} VMs)")
            records = [r for r in (parse_metadata(d.xml) for d in domains) if r]
            self.disk_budget.check_new_vm(records, disk_size_mb)
            address = pick_address(settings.network, settings.gateway_ip,
                                   [r.guest_ip for r in records])
            vm_id, name = self._new_identity()
            record = VmRecord(
                id=vm_id, name=name, cpu=spec.cpu, mem_mb=spec.mem_mb, guest_ip=str(address),
                mac=mac_for(address), allow_ips=spec.allow_ips,
                outbound_internet=spec.outbound_internet, image_id=template.id,
                image_path=str(build.path), disk_size_mb=disk_size_mb,
                created_at=now_iso(),
                provision_mode="boot" if seed is None else "snapshot",
                host_key=host_key.public_openssh, phase=VmPhase.CREATING, role=role,
                seed=seed.key if seed else "", snapshot_id=spec.snapshot_id or "")
            vm_dir = settings.vms_dir / name
            vm_dir.mkdir(mode=0o700, parents=True)
            prepare_vm_dir(vm_dir)  # QEMU reads it, and binds the identity socket below it
            undo.callback(shutil.rmtree, vm_dir, True)
            disks.create_overlay(seed.disk if seed else backing, vm_dir / "disk.qcow2",
                                 disk_size_mb)
            self.write_guest_keys(vm_dir, host_key)
            self._apply_policy(record)
            # Registered before the domain: undone after it, once no filter rule uses the sets.
            undo.callback(quietly, self.ipsets.destroy, name)
            self.hypervisor.define_filter(self._filter_xml(record))
            undo.callback(quietly, self.hypervisor.undefine_filter, name)
            self.ports.create(record)  # filtered and plugged in by _create
            undo.callback(quietly, self.ports.remove, name)
            xml = self.domain_xml(record, template.domain_xml if seed is None else
                                   save_image.read_header(seed.state).xml, build, vm_dir,
                                   genid=str(uuid.uuid4()) if seed else "")
            self.hypervisor.define_domain(xml)
            undo.callback(quietly, self.hypervisor.undefine_domain, vm_id)
        return record, xml

    def write_guest_keys(self, vm_dir: Path, host_key: KeyPair) -> None:
        """The VM's own host key and the manager's public key, served to the guest by fw_cfg."""
        write_private(vm_dir / "ssh_host_ed25519_key", host_key.private_openssh)
        (vm_dir / "authorized_keys").write_text(self.manager_key().public_openssh + "\n")

    def _snapshot_store(self) -> SnapshotStore:
        if self.snapshots is None:
            raise InvalidRequest("snapshots are not available in this service")
        return self.snapshots

    def _new_identity(self) -> tuple[str, str]:
        for _ in range(10):
            vm_id = str(uuid.uuid4())
            name = "rds-" + vm_id.split("-")[0]
            if not self.hypervisor.domain_name_exists(name) and \
                    not (self.settings.vms_dir / name).exists():
                return vm_id, name
        raise HypervisorError("could not find a free VM name")

    def _filter_xml(self, record: VmRecord) -> str:
        return build_filter_xml(record.name, record.id, self.settings.network_cidr,
                                str(self.settings.gateway_ip))

    def _apply_policy(self, record: VmRecord) -> None:
        """Fill the VM's egress ipsets from its policy (its nwfilter matches against them)."""
        self.ipsets.apply(record.name, record.allow_ips, record.outbound_internet,
                          str(self.settings.gateway_ip))

    def domain_xml(self, record: VmRecord, base_xml: str, build: ImageBuild, vm_dir: Path,
                    genid: str = "") -> str:
        """The domain XML of ``record``, built on the template's XML or on a seed's saved XML
        (then only the VM's identity changes and the devices stay exactly as saved)."""
        template = self.templates.get(record.image_id)
        identity = f"rds.hostname={record.name}"
        if record.guest_ip:
            identity += (f" rds.ip={record.guest_ip}/{self.settings.network.prefixlen} "
                         f"rds.gw={self.settings.gateway_ip}")
        cmdline = kernel_cmdline(template.kernel_cmdline, self.domain_type, identity)
        params = DomainParams(
            accelerator=self.domain_type,
            boot=BootFiles(kernel=str(build.kernel), initrd=str(build.initrd), cmdline=cmdline),
            overlay_path=str(vm_dir / "disk.qcow2"),
            port=port_name(record.name),
            console_log=str(vm_dir / "console.log"),
            identity_socket=str(vm_dir / IDENTITY_SOCKET),
            fwcfg_files=(("ssh_host_ed25519_key", str(vm_dir / "ssh_host_ed25519_key")),
                         ("authorized_keys", str(vm_dir / "authorized_keys"))),
            genid=genid,
        )
        return build_domain_xml(base_xml, record, params)

    # Warm pool ###########################################################################

    def pool_records(self) -> list[tuple[VmRecord, str]]:
        """Every warm-pool VM with its libvirt run state."""
        return [(record, info.state) for record, info in self.records()
                if record.role is VmRole.POOL]

    def create_pool_vm(self, cpu: int, mem_mb: int, image_id: str | None = None) -> Vm:
        """Start one sealed warm-pool VM (no egress at all: its ipsets stay empty)."""
        template = self.templates.get(image_id)
        build = self.templates.current_build(template)
        disk_size_mb = default_disk_size_mb(template, build)
        spec = VmSpec(cpu=cpu, mem_mb=mem_mb, image_id=template.id)
        seed = self.seeds.find(template, build, cpu, mem_mb, disk_size_mb)
        return self._create(spec, template, build, disk_size_mb, seed, role=VmRole.POOL)

    def remove_pool_vm(self, record: VmRecord) -> bool:
        """Remove a warm-pool VM unless a create claimed it since ``record`` was read.

        Claims change a pool VM's role under the allocation lock; the role is read again under
        the same lock here, so a VM that was just handed out is never removed.

        :returns: whether it was removed.
        """
        with allocation_lock(self.settings.lock_path, LOCK_TIMEOUT):
            try:
                current = parse_metadata(self.hypervisor.get_domain(record.id).xml)
            except VmNotFound:
                return False
            if current is None or current.role is not VmRole.POOL:
                log.info("pool vm=%s was claimed meanwhile: kept", record.id)
                return False
            self._remove(current)
        return True

    def _claim_pool_vm(self, spec: VmSpec, template: Template, build: ImageBuild,
                       disk_size_mb: int) -> Vm | None:
        """Hand out a ready pool VM of this shape with the caller's policy, or None.

        The host-wide allocation lock makes the claim atomic across worker processes: a pool
        VM changes role in its metadata under the lock, so it is handed out exactly once.
        """
        if not self.settings.warm_pool_enabled:
            return None
        with allocation_lock(self.settings.lock_path, LOCK_TIMEOUT):
            candidates = sorted(
                (record for record, state in self.pool_records()
                 if state == "running" and record.phase is VmPhase.READY
                 and (record.cpu, record.mem_mb) == (spec.cpu, spec.mem_mb)
                 and record.image_id == template.id and record.image_path == str(build.path)
                 and record.disk_size_mb == disk_size_mb),
                key=lambda record: record.created_at)
            if not candidates:
                log.info("warm pool miss shape=%sx%s template=%s", spec.cpu, spec.mem_mb,
                         template.id)
                return None
            record = dataclasses.replace(
                candidates[0], role=VmRole.SANDBOX, provision_mode="pool",
                allow_ips=spec.allow_ips, outbound_internet=spec.outbound_internet,
                created_at=now_iso())
            try:
                self._apply_policy(record)
                self.hypervisor.set_metadata(record.id, metadata_xml(record), METADATA_NS,
                                             METADATA_PREFIX)
            except AppError as exc:
                log.warning("warm pool claim failed vm=%s error=%s: removing it", record.id,
                            exc.message)
                quietly(self._remove, record)
                return None
        quietly(self.hypervisor.set_title, record.id, vm_title(record))
        log.info("warm pool hit vm=%s name=%s", record.id, record.name)
        return to_vm(record, "running")

    def _evict_pool_vm(self) -> bool:
        """Make room for a caller's VM at the quota: remove the newest idle pool VM (one that
        no concurrent create claimed meanwhile)."""
        for record, _state in sorted(self.pool_records(), key=lambda item: item[0].created_at,
                                     reverse=True):
            if self.remove_pool_vm(record):
                log.info("quota reached: evicted pool vm=%s name=%s", record.id, record.name)
                return True
        return False

    # Stop / start / delete #################################################################

    def stop(self, vm_id: str) -> None:
        """Clean guest shutdown (guest agent, then ACPI, then power-off); disk kept.

        :raises VmStateConflict: unless RUNNING.
        """
        with self._locked(vm_id) as (record, info):
            state = to_vm(record, info.state).state
            if state is not VmState.RUNNING:
                raise VmStateConflict(f"VM {vm_id} is {state.value}; only a RUNNING VM can be "
                                      f"stopped")
            self._forget_guest(vm_id)
            record = self._set_phase(record, VmPhase.STOPPING)
            try:
                self.hypervisor.request_shutdown(vm_id)
            except HypervisorError as exc:
                log.warning("clean shutdown request failed vm=%s error=%s", vm_id, exc.message)
            if not self._wait_for_state(vm_id, "shutoff", self.settings.stop_timeout_s):
                log.warning("guest did not power off in time, forcing vm=%s", vm_id)
                self.hypervisor.destroy_domain(vm_id)
        log.info("vm stopped vm=%s", vm_id)

    def start(self, vm_id: str) -> None:
        """Boot a STOPPED VM from its kept disk; returns once the guest answers.

        The VM's lock is held while its network and domain are set up, not while the guest
        boots: a delete or a policy change meanwhile waits seconds, not a boot.

        :raises VmStateConflict: unless STOPPED.
        """
        with self._locked(vm_id) as (record, info):
            state = to_vm(record, info.state).state
            if state is not VmState.STOPPED:
                raise VmStateConflict(f"VM {vm_id} is {state.value}; only a STOPPED VM can be "
                                      f"started")
            record = self._set_phase(record, VmPhase.STARTING)
            self._apply_policy(record)  # the sets are kernel state: gone after a host reboot
            self.ports.ensure(record)  # so is the tap, and libvirt's bindings live under /run
            self.hypervisor.start_domain(vm_id)
        try:
            self._wait_ready(record)
        except AppError:
            with contextlib.suppress(VmNotFound), self._locked(vm_id):
                quietly(self.hypervisor.destroy_domain, vm_id)
            raise
        with self._locked(vm_id) as (record, info):
            if info.state == "running" and record.phase is VmPhase.STARTING:
                self._set_phase(record, VmPhase.READY)
        log.info("vm started vm=%s", vm_id)

    def delete(self, vm_id: str) -> None:
        """Remove domain, filter, disk and address.

        :raises VmNotFound: when already gone.
        """
        with self._locked(vm_id) as (record, _info):
            self._remove(record)

    def _remove(self, record: VmRecord) -> None:
        """Delete any domain of this service (sandbox, pool VM or seed) and all it owns."""
        self._forget_guest(record.id)
        self.hypervisor.destroy_domain(record.id)
        try:
            self.hypervisor.undefine_domain(record.id)
        except VmNotFound:
            pass  # undefined by someone else meanwhile: the goal is reached
        self.ports.remove(record.name)
        self.hypervisor.undefine_filter(record.name)
        quietly(self.ipsets.destroy, record.name)
        shutil.rmtree(self.settings.vms_dir / record.name, ignore_errors=True)
        log.info("vm deleted vm=%s name=%s role=%s", record.id, record.name, record.role.value)

    # Guests ################################################################################

    def manager_key(self) -> KeyPair:
        if self._manager_key is None:
            self._manager_key = manager_keypair(self.settings.keys_dir)
        return self._manager_key

    def guest(self, vm_id: str) -> GuestSSH:
        """The SSH client of a RUNNING VM (one per VM per process, reused).

        :raises VmStateConflict: unless RUNNING.
        """
        record, info = self._lookup(vm_id)
        state = to_vm(record, info.state).state
        if state is not VmState.RUNNING:
            raise VmStateConflict(f"VM {vm_id} is {state.value}; it must be RUNNING")
        return self._guest_client(record)

    def _guest_client(self, record: VmRecord) -> GuestSSH:
        with self._guests_lock:
            client = self._guests.get(record.id)
            if client is None or client.host_key != record.host_key:
                client = GuestSSH(record.guest_ip, record.host_key,
                                  load_private_key(self.manager_key().private_openssh),
                                  SshTimeouts(self.settings.ssh_connect_timeout_s,
                                              self.settings.ssh_auth_timeout_s,
                                              self.settings.ssh_channel_timeout_s))
                self._guests[record.id] = client
            return client

    def _forget_guest(self, vm_id: str) -> None:
        with self._guests_lock:
            client = self._guests.pop(vm_id, None)
        if client is not None:
            client.close()

    def close(self) -> None:
        with self._guests_lock:
            clients, self._guests = list(self._guests.values()), {}
        for client in clients:
            client.close()

    def _wait_ready(self, record: VmRecord) -> None:
        deadline = time.monotonic() + self.settings.boot_timeout_s
        client = self._guest_client(record)
        try:
            client.wait_until_ready(deadline, probe="true")
        except GuestUnreachable as exc:
            self._forget_guest(record.id)
            raise GuestUnreachable(f"VM {record.id} did not become ready within "
                                   f"{self.settings.boot_timeout_s:.0f}s: {exc.message}") from exc

    # Helpers ###############################################################################

    def _set_phase(self, record: VmRecord, phase: VmPhase) -> VmRecord:
        # Re-read first: a policy change may have landed since `record` was read.
        current = parse_metadata(self.hypervisor.get_domain(record.id).xml) or record
        updated = dataclasses.replace(current, phase=phase)
        self.hypervisor.set_metadata(record.id, metadata_xml(updated), METADATA_NS,
                                     METADATA_PREFIX)
        return updated

    def _wait_for_state(self, vm_id: str, wanted: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.hypervisor.get_domain(vm_id).state == wanted:
                    return True
            except VmNotFound:
                return False
            time.sleep(0.25)
        return False

    # Housekeeping ##########################################################################

    def remove_orphans(self, min_age_s: float = ORPHAN_MIN_AGE_S) -> list[str]:
        """Delete domains whose create never finished, and disks/keys, filters, ipsets and taps
        that belong to no domain (a crash mid-create).

        A create in flight has a fresh directory and no domain yet, so only directories older
        than ``min_age_s`` (and filters with no recent directory) count as orphans; that keeps
        the sweep safe while another process is creating VMs.
        """
        removed = self._remove_half_made(min_age_s)
        names = {info.name for info in self.hypervisor.list_domains()}
        fresh = set()
        if self.settings.vms_dir.is_dir():
            now = time.time()
            for vm_dir in self.settings.vms_dir.iterdir():
                if not vm_dir.name.startswith("rds-") or vm_dir.name in names:
                    continue
                if now - vm_dir.stat().st_mtime < min_age_s:
                    fresh.add(vm_dir.name)
                    continue
                shutil.rmtree(vm_dir, ignore_errors=True)
                removed.append(f"files {vm_dir}")
        # Ports first: libvirt keeps a filter, and the kernel an ipset, that rules still use.
        removed += self.ports.sweep(names | fresh)
        for filter_name in self.hypervisor.list_filter_names():
            if filter_name not in names and filter_name not in fresh:
                quietly(self.hypervisor.undefine_filter, filter_name)
                removed.append(f"nwfilter {filter_name}")
        for set_owner in self.ipsets.vm_names():
            if set_owner not in names and set_owner not in fresh:
                quietly(self.ipsets.destroy, set_owner)
                removed.append(f"ipsets {set_owner}-*")
        for item in removed:
            log.info("removed orphan %s", item)
        return removed

    def _remove_half_made(self, min_age_s: float) -> list[str]:
        """Domains whose create never finished (its worker was killed): still ``creating``
        after ``min_age_s``, longer than any create may take. They count against
        ``MAX_VMS`` and were never handed to a caller."""
        removed = []
        now = dt.datetime.now(dt.timezone.utc)
        for record, _info in self.records():
            if record.phase is not VmPhase.CREATING or record.role is VmRole.SEED:
                continue
            try:
                age = (now - dt.datetime.fromisoformat(record.created_at)).total_seconds()
            except ValueError:
                age = min_age_s + 1  # unreadable: as old as it gets
            if age >= min_age_s:
                quietly(self._remove, record)
                removed.append(f"half-made vm {record.name} ({record.id})")
        return removed

    def purge_all(self) -> int:
        """Delete every VM of this service (CI and ``make clean-vms``)."""
        records = self.records()
        for record, _info in records:
            self._remove(record)
        return len(records)


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def normalise_cidr(entry: str) -> str:
    """``allowIps`` entry as a canonical CIDR (host bits cleared).

    :raises ValueError: when the entry is no IPv4/IPv6 address or network.
    """
    return str(ipaddress.ip_network(entry.strip(), strict=False))
