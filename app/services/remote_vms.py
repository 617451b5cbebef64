"""VMs on the remote hosts of ``HOSTS`` (issue 17): made, used and deleted through that host's
libvirt connection only — a real second host shares no file system with the manager. Finding
them on the hosts is :mod:`app.services.remote_lookup`; making their parts there
:mod:`app.services.remote_provisioning`; their labels, keepalive, stop and start
:mod:`app.services.remote_lifecycle` (:attr:`RemoteVms.lifecycle`).

What a remote VM is made of, all on its host, all named after the VM (``rds-<short id>``):

- its disk: a qcow2 volume ``<name>.qcow2`` in the host's ``rds-vms`` pool whose backing store
  is the shipped image's volume in ``rds-images`` (``virStorageVolCreateXML``: that host's
  libvirt runs qemu-img);
- its SSH host key and the manager's public key: volumes ``<name>.ssh_host_ed25519_key`` and
  ``<name>.authorized_keys`` there, uploaded with ``virStorageVolUpload`` and served to the
  guest by fw_cfg ``file=`` entries, as on the local host (not inline fw_cfg values: those
  would put the private key into the domain XML, which any read-only connection can dump);
- while it is restored from a memory snapshot, its copy of the save image
  ``<name>.restore.sav`` there;
- its console log ``<name>.console.log`` there (virtlogd writes it and rotates it to
  ``<name>.console.log.0``…; ``GET .../logs`` reads its tail through libvirt,
  :mod:`app.services.console`; removed as volumes);
- its nwfilter ``<name>``, the policy written into the rules (the manager's ipsets and taps
  are in the manager's kernel, not there; :func:`~app.virt.nwfilter_xml.build_remote_filter_xml`),
  referenced from its NIC on the host's routed network ``rds-net-<host>``;
- its address reservation, a DHCP host entry named after it in that network, added first and
  removed last (:mod:`app.services.remote_addresses`);
- its domain, whose metadata record names the host (``host``).

It is restored from the host's memory snapshot of its image and shape when there is one
(:mod:`app.services.remote_seeds`: a copy of the save image there whose header names the VM,
its identity sent through libvirt's channel stream), else it boots cold and gets its identity
from its kernel command line and fw_cfg, as a cold-booted local VM does. Its address is the
lowest free one of the host's ``guestCidr`` that neither a domain's record nor an address
reservation there holds;
the reservation, a DHCP host entry of the host's network that libvirt adds atomically, makes
it (and the VM's name) safe with several managers at once (:mod:`app.services.remote_addresses`).
This manager's lock (``STORAGE_ROOT/hosts/<host>.alloc.lock``) still makes its own processes
create there one at a time; the host's ``maxVms`` counts the reservations too, so it holds
across managers (two racing for the last place may both back off, never both make it).
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
import typing as t
from pathlib import Path

from app.clock import now_iso
from app.config import Settings
from app.config.hosts import LOCAL_HOST, RemoteHost
from app.errors import (AppError, GuestUnreachable, HypervisorError, ImageStateConflict,
                        InvalidRequest, VmBusy, VmNotFound, VmStateConflict)
from app.guestssh import GuestSSH
from app.models import ProvisionMode, Vm, VmPhase, VmRecord, VmRole, VmSpec, VmState
from app.services.guests import GuestClients, ManagerKey
from app.services.image_shipping import build_of
from app.services.lifetimes import is_expired
from app.services.placement import Room, choose, room
from app.services.records import VmRecords, to_vm
from app.services.remote_addresses import RemoteAddresses
from app.services.remote_domains import ensure_host
from app.services.remote_lifecycle import RemoteLifecycle
from app.services.remote_vm_locks import RemoteVmLocks
from app.services.remote_lookup import Found, RemoteLookup
from app.services.remote_provisioning import RemoteProvisioning, remove_volumes
from app.services.remote_seeds import RemoteSeed, RemoteSeeds
from app.services.seeds import SeedStore
from app.services.teardown import Cleanup
from app.services.templates import TemplateCatalog
from app.virt.ipsets import host_addresses
from app.virt.network_xml import DhcpHost

if t.TYPE_CHECKING:
    from app.services.host_registry import HostRegistry, Probe
    from app.services.provisioner import CreatePlan
    from app.virt.connection import Hypervisor

log = logging.getLogger(__name__)
LOCK_TIMEOUT = 60.0


class RemoteVms:
    """Thread-safe; one per worker process."""

    def __init__(self, settings: Settings, registry: HostRegistry, templates: TemplateCatalog,
                 guests: GuestClients, manager_key: ManagerKey, domain_type: str,
                 seed_keys: SeedStore,
                 own_addresses: t.Callable[[], list[str]] = host_addresses) -> None:
        """:param seed_keys: names memory snapshots (:meth:`SeedStore.key`).
        :param own_addresses: this manager's IPv4 addresses (``a.b.c.d/32``)."""
        self.own_addresses = own_addresses
        self.settings = settings
        self.registry = registry
        self.templates = templates
        self.guests = guests
        self.manager_key = manager_key
        self.domain_type = domain_type
        self.lookup = RemoteLookup(registry)
        self.addresses = RemoteAddresses()
        self.locks = RemoteVmLocks(Path(settings.storage_root) / "hosts")
        self.lifecycle = RemoteLifecycle(settings, self.lookup, guests, ensure_host,
                                         self.locked)
        self.seeds = RemoteSeeds(settings, registry, templates, seed_keys, manager_key,
                                 domain_type, ensure_host)
        # Both looked up here on each call: tests point them elsewhere.
        self.provisioning = RemoteProvisioning(
            settings, self.addresses, self.seeds, manager_key, domain_type,
            lambda host_name: self.lock_path(host_name), lambda: self.own_addresses())

    def host(self, name: str) -> RemoteHost:
        """:raises InvalidRequest: not a ``HOSTS`` name."""
        host = self.registry.host(name)
        if host is None:
            known = ", ".join([LOCAL_HOST, *self.registry.names()])
            raise InvalidRequest(f"placement.host {name!r} is not a host (known: {known})")
        return host

    # Queries (app.services.remote_lookup) ################################################

    def sandboxes(self) -> list[Vm]:
        """The callers' VMs of every remote host (:meth:`RemoteLookup.sandboxes`)."""
        return self.lookup.sandboxes()

    def find(self, vm_id: str, deleting: bool = False) -> Found:
        """A caller's VM on a remote host (:meth:`RemoteLookup.find`)."""
        return self.lookup.find(vm_id, deleting)

    def get(self, vm_id: str) -> Vm:
        found = self.find(vm_id)
        return to_vm(found.record, found.state)

    def guest(self, vm_id: str) -> GuestSSH:
        """The SSH client of a RUNNING remote VM (reached through the host's route)."""
        found = self.find(vm_id)
        state = to_vm(found.record, found.state).state
        if state is not VmState.RUNNING:
            raise VmStateConflict(f"VM {vm_id} is {state.value}; it must be RUNNING")
        return self.guests.client(found.record)

    def place(self, policy: str, spec: VmSpec, image_id: str, local: Room) -> str:
        """The host ``policy`` (``PLACEMENT``) picks for ``spec``: ``local`` (its room as the
        caller found it) or one of the remote hosts (app.services.placement).

        :raises QuotaExceeded: no host has room.
        """
        probes = self.registry.probe(with_images=True)
        build = build_of(self.settings, self.templates, image_id)
        template = self.templates.get(image_id)
        rooms = [local]
        for host in self.registry.hosts:
            probe = probes[host.name]
            shipped = build is not None and (probe.images or {}).get(image_id) == build
            rooms.append(room(host.name, spec, probe.node,
                              [record for record, _info in probe.records],
                              host.max_vms or self.settings.max_vms, shipped, probe.reason,
                              shipped and spec.provision_mode is not ProvisionMode.BOOT and
                              self.seeds.ready_for(probe, template,
                                                   self.templates.current_build(template),
                                                   spec.cpu, spec.mem_mb, spec.disk_size_mb)))
        return choose(policy, spec, rooms)

    # Changes ###############################################################################

    def create(self, plan: CreatePlan) -> Vm:
        """A new VM on ``plan.host``, booted; returns once a command ran in it. A failure
        anywhere removes what was made there.

        :raises HypervisorError: the host is DOWN (503).
        :raises ImageStateConflict: the image is not shipped there (its current build).
        :raises QuotaExceeded: at the host's ``maxVms``.
        :raises GuestUnreachable: the guest did not answer in time.
        """
        started = time.monotonic()
        host = self.host(plan.host)
        image_id = plan.template.id
        probe = self.registry.probe([host.name], with_images=True)[host.name]
        if not probe.up:
            raise HypervisorError(f"host {host.name} is DOWN: {probe.reason}")
        build = build_of(self.settings, self.templates, image_id)
        if build is None or (probe.images or {}).get(image_id) != build:
            raise ImageStateConflict(
                f"image {image_id!r} is not ready on host {host.name} (its current build is "
                f"not shipped there): PUT /v1/hosts/{host.name}/images/{image_id}")
        hypervisor = self.registry.hypervisor(host.name)
        ensure_host(host, hypervisor)
        seed = None
        if plan.spec.provision_mode is not ProvisionMode.BOOT:
            seed = self.seeds.find(host, hypervisor, plan.template, plan.build, plan.spec.cpu,
                                   plan.spec.mem_mb, plan.disk_size_mb)
            if seed is None:
                log.info("no memory snapshot on host=%s for image=%s shape=%sx%s disk=%s: "
                         "cold boot", host.name, image_id, plan.spec.cpu, plan.spec.mem_mb,
                         plan.disk_size_mb)
        if seed is not None:
            try:
                return self._create(plan, host, hypervisor, probe, seed, started)
            except (HypervisorError, GuestUnreachable) as exc:
                log.warning("restore from memory snapshot failed seed=%s host=%s error=%s: "
                            "falling back to a cold boot", seed.key, host.name, exc.message)
        return self._create(plan, host, hypervisor, probe, None, started)

    def _create(self, plan: CreatePlan, host: RemoteHost, hypervisor: Hypervisor,
                probe: Probe, seed: RemoteSeed | None, started: float) -> Vm:
        mode = ProvisionMode.BOOT if seed is None else ProvisionMode.SNAPSHOT
        with Cleanup(f"create of a VM on {host.name}") as cleanup:
            record, xml, host_key, creating = self.provisioning.provision(
                plan, host, hypervisor, seed, cleanup, LOCK_TIMEOUT)
            log.info("vm defined vm=%s name=%s host=%s ip=%s mode=%s", record.id,
                     record.name, host.name, record.guest_ip, mode.value)
            cleanup.add("ssh client", self.guests.forget, record.id)
            if seed is None:
                hypervisor.start_domain(record.id)
            else:
                self.seeds.restore(host, hypervisor, seed, record, xml, host_key, creating,
                                   probe.node.cpus if probe.node else 1)
            self.guests.wait_ready(record)
            record = VmRecords(hypervisor).set_phase(record, VmPhase.READY,
                                                     started_at=now_iso())
            cleanup.keep()
        self.lookup.remember(host.name, record)
        log.info("vm ready vm=%s name=%s host=%s mode=%s seconds=%.2f", record.id,
                 record.name, host.name, mode.value, time.monotonic() - started)
        return to_vm(record, "running")

    def update_network(self, vm_id: str, allow_ips: tuple[str, ...],
                       outbound_internet: bool) -> Vm:
        """Replace the VM's policy: its filter is defined again (libvirt re-instantiates it
        on the running VM), then its record."""
        with self.locked(vm_id) as found:
            updated = dataclasses.replace(found.record, allow_ips=allow_ips,
                                          outbound_internet=outbound_internet)
            found.hypervisor.define_filter(self.provisioning.filter_xml(updated, found.host))
            VmRecords(found.hypervisor).save(updated)
        log.info("vm network policy changed vm=%s host=%s outbound=%s entries=%s", vm_id,
                 found.host.name, outbound_internet, len(allow_ips))
        return to_vm(updated, found.state)

    def delete(self, vm_id: str) -> None:
        """Power the VM off, mark it deleting, then remove its volumes, filter and domain
        (undefined last). A failure half-way leaves it marked: deleting it again finishes.

        :raises VmNotFound: on no remote host.
        :raises HypervisorError: its host does not answer (or failed half-way).
        """
        with self.locked(vm_id, deleting=True) as found:
            self._remove(found.host, found.hypervisor, found.record)
        self.locks.drop(found.host.name, vm_id)

    @contextlib.contextmanager
    def locked(self, vm_id: str, deleting: bool = False) -> t.Iterator[Found]:
        """Hold the VM's lock (:mod:`app.services.remote_vm_locks`) and yield it as found under
        the lock.

        :raises VmNotFound: / :raises HypervisorError: as :meth:`find`.
        :raises VmBusy: another operation of this manager kept it for ``LOCK_TIMEOUT``.
        """
        host_name = self.find(vm_id, deleting=deleting).host.name
        with self.locks.held(host_name, vm_id, LOCK_TIMEOUT):
            yield self.find(vm_id, deleting=deleting)

    def reap(self) -> list[tuple[str, VmRecord]]:
        """The reaper's round on the remote hosts that answer: delete the callers' VMs whose
        ``expiresAt`` passed, finish the deletes that did not; returns (what, record) done."""
        done = []
        for name, probe in self.lookup.probe().items():
            for record, _info in probe.records:
                if not _to_reap(record):
                    continue
                what = "finished the delete of" if record.phase is VmPhase.DELETING \
                    else "expired"
                try:
                    # A delete of this manager under way holds the lock: it finishes it.
                    with self.locks.held(name, record.id, 0):
                        hypervisor = self.registry.hypervisor(name)
                        # Read again under the lock: a keepalive may have landed first.
                        current = VmRecords(hypervisor).any(record.id)
                        if current is None or not _to_reap(current):
                            continue
                        self._remove(self.registry.host(name), hypervisor, current)
                    self.locks.drop(name, record.id)
                except VmBusy:
                    continue
                except AppError as exc:
                    log.warning("reaper: vm=%s host=%s: %s", record.id, name, exc.message)
                    continue
                done.append((what, record))
        return done

    def _remove(self, host: RemoteHost, hypervisor: Hypervisor, record: VmRecord) -> None:
        vm_id = record.id
        self.guests.forget(vm_id)
        with contextlib.suppress(VmNotFound):
            hypervisor.destroy_domain(vm_id)
        if record.phase is not VmPhase.DELETING:
            record = VmRecords(hypervisor).set_phase(record, VmPhase.DELETING)
        remove_volumes(hypervisor, record.name)
        hypervisor.undefine_filter(record.name)
        with contextlib.suppress(VmNotFound):
            hypervisor.undefine_domain(vm_id)
        self.addresses.release(host, hypervisor,
                               DhcpHost(mac=record.mac, name=record.name, ip=record.guest_ip))
        self.lookup.remember(host.name, record, gone=True)
        log.info("vm deleted vm=%s name=%s host=%s", vm_id, record.name, host.name)

    def lock_path(self, host_name: str) -> Path:
        """Held by this manager's processes while they allocate on that host."""
        return Path(self.settings.storage_root) / "hosts" / f"{host_name}.alloc.lock"


def _to_reap(record: VmRecord) -> bool:
    """A caller's VM whose delete did not finish, or whose ``expiresAt`` passed."""
    return record.role is VmRole.SANDBOX and (record.phase is VmPhase.DELETING or
                                              is_expired(record))

