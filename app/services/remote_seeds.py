"""Memory snapshots ("seeds") on the remote hosts of ``HOSTS`` (issue 17): made on that host,
through its libvirt only, once an image is shipped there; VMs there are restored from them
(:mod:`app.services.remote_vms`) as the local host's are from its own (:mod:`app.services.seeds`).

A seed is the image's current build in one ``SNAPSHOT_SHAPES`` shape, booted once on the host
and saved by its libvirt (``virDomainSave``). Its key is the local one's, made with the remote
host's QEMU version (a saved guest only restores on the QEMU that saved it). What it is made of,
volumes of the host's ``rds-images`` pool named after its domain ``rds-seed-<key>``:

- ``<name>.qcow2``: its disk, an overlay on the image's volume; every VM restored from it has
  its own overlay backed by it (the saved memory matches it);
- ``<name>.sav``: the save image (domain XML + QEMU's migration stream);
- ``<name>.seed.json``: what it is, written last: without it there is no seed (a build that
  failed half-way, or one under way).

While it is made, the guest boots with no address, its NIC on the host's network behind a
filter that drops every frame (:func:`~app.virt.nwfilter_xml.build_sealed_filter_xml`), its
own throw-away host key; it is reached through its guest agent only. Its domain, filter, key
volumes and console log are removed once it is saved.
"""
from __future__ import annotations

import contextlib
import json
import logging
import posixpath
import threading
import time
import typing as t
import uuid
from pathlib import Path

from app.clock import now_iso
from app.config import Settings
from app.config.hosts import RemoteHost
from app.errors import AppError, HypervisorError, ImageStateConflict
from app.models import NAME_PREFIX, ProvisionMode, VmRecord, VmRole
from app.services.guests import ManagerKey
from app.services.locks import host_lock
from app.services.provisioner import (AGENT_TIMEOUT_S, IDENTITY_TIMEOUT_MAX_S,
                                      RESTORE_TIMEOUT_S, identity_timeout)
from app.services.remote_domains import (VMS_POOL, boot_volumes, domain_params,
                                         remove_domain)
from app.services.seed_builder import wait_idle
from app.services.seeds import SeedStore, seed_mac
from app.services.teardown import Cleanup
from app.services.templates import ImageBuild, TemplateCatalog, default_disk_size_mb
from app.services.vm_files import AUTHORIZED_KEYS, HOST_KEY
from app.sshkeys import generate_keypair
from app.virt import identity, save_image
from app.virt.domain_xml import IDENTITY_CHANNEL, build_domain_xml
from app.virt.nwfilter_xml import build_sealed_filter_xml
from app.virt.pool_xml import POOL_NAME, build_overlay_volume_xml

if t.TYPE_CHECKING:
    from app.models import Template
    from app.services.host_registry import HostRegistry, Probe
    from app.virt.connection import Hypervisor

log = logging.getLogger(__name__)
MARKER = ".seed.json"
SAVED = (".qcow2", ".sav", MARKER)  # a seed's volumes once it is complete
BUILDING = (f".{HOST_KEY}", f".{AUTHORIZED_KEYS}", ".console.log")  # removed once saved
RESTORE_SUFFIX = ".restore.sav"  # a VM's copy of its seed's save image while it restores


def seed_name(key: str) -> str:
    """The seed's domain on its host, and the prefix of its volumes there."""
    return f"{NAME_PREFIX}seed-{key}"


def saved_seeds(volumes: t.Iterable[str]) -> set[str]:
    """The keys of the complete seeds among an images pool's volume names."""
    names = set(volumes)
    prefix = seed_name("")
    return {name[len(prefix):-len(MARKER)] for name in names
            if name.startswith(prefix) and name.endswith(MARKER) and
            all(name[:-len(MARKER)] + suffix in names for suffix in SAVED)}


class RemoteSeed(t.NamedTuple):
    key: str
    host: str
    disk: str  # its disk's path on the host

    @property
    def name(self) -> str:
        return seed_name(self.key)

    @property
    def state_volume(self) -> str:
        return f"{self.name}.sav"


class RemoteSeeds:
    """Makes, finds and reads the seeds of the remote hosts. Thread-safe."""

    def __init__(self, settings: Settings, registry: HostRegistry, templates: TemplateCatalog,
                 keys: SeedStore, manager_key: ManagerKey, domain_type: str,
                 ensure_host: t.Callable[[RemoteHost, Hypervisor], None]) -> None:
        """:param keys: names seeds (:meth:`SeedStore.key`).
        :param ensure_host: makes the host's VM pool and guest network (RemoteVms')."""
        self.settings = settings
        self.registry = registry
        self.templates = templates
        self.keys = keys
        self.manager_key = manager_key
        self.domain_type = domain_type
        self.ensure_host = ensure_host
        self._headers: dict[tuple[str, str], save_image.SaveImageHeader] = {}
        self._headers_lock = threading.Lock()

    def key(self, qemu_version: str, template: Template, build: ImageBuild, cpu: int,
            mem_mb: int, disk_size_mb: int) -> str:
        return self.keys.key(template, build, cpu, mem_mb, disk_size_mb,
                             emulator_version=f"{qemu_version}@remote")

    def ready(self, probe: Probe, template: Template, build: ImageBuild) -> bool:
        """Whether the host (as probed, with its images) has a seed of every
        ``SNAPSHOT_SHAPES`` shape of the image's build."""
        shapes = self.settings.snapshot_shape_list
        return bool(shapes) and all(self.ready_for(probe, template, build, cpu, mem)
                                    for cpu, mem in shapes)

    def ready_for(self, probe: Probe, template: Template, build: ImageBuild, cpu: int,
                  mem_mb: int, disk_size_mb: int | None = None) -> bool:
        """Whether the host (as probed, with its images) has a seed for a VM of this build
        and shape (``disk_size_mb`` None: the image's default, the only size seeds have)."""
        if probe.node is None or probe.seeds is None:
            return False
        size = default_disk_size_mb(template, build)
        if disk_size_mb not in (None, size):
            return False
        return self.key(probe.node.hypervisor_version, template, build, cpu, mem_mb,
                        size) in probe.seeds

    def find(self, host: RemoteHost, hypervisor: Hypervisor, template: Template,
             build: ImageBuild, cpu: int, mem_mb: int, disk_size_mb: int) -> RemoteSeed | None:
        """The complete seed for this build and shape on the host, if one was saved."""
        key = self.key(hypervisor.emulator_version(), template, build, cpu, mem_mb,
                       disk_size_mb)
        if key not in saved_seeds(hypervisor.list_volumes(POOL_NAME)):
            return None
        return RemoteSeed(key, host.name, posixpath.join(host.images_dir,
                                                         f"{seed_name(key)}.qcow2"))

    def header(self, hypervisor: Hypervisor, seed: RemoteSeed) -> save_image.SaveImageHeader:
        """The seed's save-image header, read from the host once (a seed never changes).

        :raises HypervisorError: unreadable, or not a save image.
        """
        cached = self._headers.get((seed.host, seed.key))
        if cached is not None:
            return cached
        where = f"{seed.host}:{seed.state_volume}"
        try:
            first = hypervisor.read_volume_range(POOL_NAME, seed.state_volume, 0,
                                                 save_image.HEADER_SIZE, hypervisor.timeout)
            size = save_image.HEADER_SIZE + save_image.data_length(first, where)
            header = save_image.parse_header(hypervisor.read_volume_range(
                POOL_NAME, seed.state_volume, 0, size, hypervisor.timeout), where)
        except save_image.SaveImageError as exc:
            raise HypervisorError(str(exc)) from None
        with self._headers_lock:
            self._headers[(seed.host, seed.key)] = header
        return header

    def restore(self, host: RemoteHost, hypervisor: Hypervisor, seed: RemoteSeed,
                record: VmRecord, xml: str, host_key: bytes, creating: int,
                cpus: int) -> None:
        """Run the seed's saved guest as the VM ``record`` (its domain, defined with ``xml``),
        then give the guest the VM's identity.

        The save image is copied on the host (``virStorageVolCreateXMLFrom``) into the VM
        pool as ``<name>.restore.sav``, its header rewritten in place with ``xml`` (libvirt
        restores an image only under the name and UUID it carries), restored and removed.
        The identity goes through libvirt's channel stream (:mod:`app.virt.libvirt_channel`):
        the port's socket lies on that host.

        :param host_key: the VM's OpenSSH private host key.
        :param creating: the creates in flight on that host (this one included) and
        :param cpus: its CPUs: how long the guest may take to answer
            (:func:`~app.services.provisioner.identity_timeout`; that host's load average is
            not known here).
        :raises HypervisorError: a step failed, or the guest did not take its identity.
        """
        head = save_image.encode_header(self.header(hypervisor, seed), xml)
        clone = f"{record.name}{RESTORE_SUFFIX}"
        try:
            path = hypervisor.clone_volume(VMS_POOL, seed.state_volume, POOL_NAME, clone,
                                           RESTORE_TIMEOUT_S)
            hypervisor.write_volume_range(VMS_POOL, clone, 0, head, hypervisor.timeout)
            hypervisor.restore_domain(path, RESTORE_TIMEOUT_S)
        finally:
            with contextlib.suppress(AppError):
                hypervisor.delete_volume(VMS_POOL, clone)
        request = identity.identity_request(
            record.mac, f"{record.guest_ip}/{host.network.prefixlen}", str(host.gateway),
            record.name, record.host_key, host_key)
        identity.check_reply(hypervisor.channel_exchange(
            record.id, IDENTITY_CHANNEL, request, identity.REPLY_LIMIT,
            lambda: identity_timeout(load=0.0, cpus=cpus, creating=creating),
            IDENTITY_TIMEOUT_MAX_S))
        hypervisor.set_guest_time(record.id, AGENT_TIMEOUT_S)

    def ensure_image(self, host_name: str, image_id: str) -> list[str]:
        """Make the seeds of every ``SNAPSHOT_SHAPES`` shape of the image's current build on
        the host (those missing); returns their keys.

        :raises AppError: the host, image or a seed's build failed.
        """
        host = self.registry.host(host_name)
        assert host is not None
        hypervisor = self.registry.hypervisor(host_name)
        template = self.templates.get(image_id)
        build = self.templates.current_build(template)
        return [self.ensure(host, hypervisor, template, build, cpu, mem).key
                for cpu, mem in self.settings.snapshot_shape_list]

    def ensure(self, host: RemoteHost, hypervisor: Hypervisor, template: Template,
               build: ImageBuild, cpu: int, mem_mb: int) -> RemoteSeed:
        """The seed for this build and shape on the host, made if missing (one process of
        this manager makes it, the others wait)."""
        size = default_disk_size_mb(template, build)
        seed = self.find(host, hypervisor, template, build, cpu, mem_mb, size)
        if seed is not None:
            return seed
        key = self.key(hypervisor.emulator_version(), template, build, cpu, mem_mb, size)
        lock = Path(self.settings.storage_root) / "hosts" / f"{host.name}.seed-{key}.lock"
        with host_lock(lock, self.settings.boot_timeout_s + 2 * RESTORE_TIMEOUT_S,
                       busy=lambda: ImageStateConflict(
                           f"memory snapshot {key} is being made on {host.name}")):
            seed = self.find(host, hypervisor, template, build, cpu, mem_mb, size)
            if seed is None:
                seed = self._make(host, hypervisor, template, key, cpu, mem_mb, size)
        return seed

    def prune(self, host_name: str, used: set[str]) -> list[str]:
        """Remove the host's seeds that no current build and shape names and no VM there is
        restored from (``used``); returns their keys."""
        host = self.registry.host(host_name)
        assert host is not None
        hypervisor = self.registry.hypervisor(host_name)
        version = hypervisor.emulator_version()
        current = {self.key(version, template, build, cpu, mem,
                            default_disk_size_mb(template, build))
                   for template, build in self.templates.current_builds()
                   for cpu, mem in self.settings.snapshot_shape_list}
        removed = []
        for key in sorted(saved_seeds(hypervisor.list_volumes(POOL_NAME)) - current - used):
            self._remove_volumes(hypervisor, seed_name(key), (MARKER, *SAVED, *BUILDING))
            removed.append(key)
            log.info("removed memory snapshot %s of host %s (outdated, unused)", key,
                     host_name)
        return removed

    def _make(self, host: RemoteHost, hypervisor: Hypervisor, template: Template, key: str,
              cpu: int, mem_mb: int, disk_size_mb: int) -> RemoteSeed:
        """Boot the image with no address, wait until it is idle, save it there."""
        started = time.monotonic()
        self.ensure_host(host, hypervisor)
        boot = boot_volumes(host, template.id, set(hypervisor.list_volumes(POOL_NAME)))
        name = seed_name(key)
        self._remove_stale_domain(hypervisor, name)
        host_key = generate_keypair()
        record = VmRecord(
            id=str(uuid.uuid4()), name=name, cpu=cpu, mem_mb=mem_mb, guest_ip="",
            mac=seed_mac(key),
            allow_ips=(), outbound_internet=False, image_id=template.id,
            image_path=posixpath.join(host.images_dir, boot["qcow2"]),
            disk_size_mb=disk_size_mb, created_at=now_iso(), provision_mode=ProvisionMode.BOOT,
            host_key=host_key.public_openssh, role=VmRole.SEED, host=host.name)
        log.info("building memory snapshot seed=%s host=%s", key, host.name)
        with Cleanup(f"build of memory snapshot {key} on {host.name}") as cleanup:
            cleanup.add("volumes", self._remove_volumes, hypervisor, name,
                        (MARKER, *SAVED, *BUILDING))
            for suffix, data in ((HOST_KEY, host_key.private_openssh.encode()),
                                 (AUTHORIZED_KEYS,
                                  (self.manager_key.pair().public_openssh + "\n").encode())):
                hypervisor.upload_volume(POOL_NAME, f"{name}.{suffix}", len(data),
                                         _reader(data), timeout=hypervisor.timeout)
            disk = hypervisor.create_volume(POOL_NAME, build_overlay_volume_xml(
                f"{name}.qcow2", disk_size_mb, record.image_path))
            cleanup.add("filter", hypervisor.undefine_filter, name)
            hypervisor.define_filter(build_sealed_filter_xml(name, record.id))
            cleanup.add("domain", remove_domain, hypervisor, record.id)
            hypervisor.define_domain(build_domain_xml(
                template.domain_xml, record,
                domain_params(host, record, disk, boot, self.domain_type,
                              template.kernel_cmdline, host.images_dir)))
            hypervisor.start_domain(record.id)
            wait_idle(hypervisor, record, self.settings.boot_timeout_s)
            hypervisor.save_domain(record.id, posixpath.join(host.images_dir, f"{name}.sav"),
                                   RESTORE_TIMEOUT_S)
            hypervisor.refresh_storage_pool(POOL_NAME)
            seed = RemoteSeed(key, host.name, disk)
            self.header(hypervisor, seed)  # fail here, not in every restore
            remove_domain(hypervisor, record.id)
            hypervisor.undefine_filter(name)
            self._remove_volumes(hypervisor, name, BUILDING)
            marker = json.dumps({"key": key, "image": template.id, "cpu": cpu,
                                 "memMb": mem_mb, "diskSizeMb": disk_size_mb,
                                 "createdAt": now_iso()}, indent=1).encode()
            hypervisor.upload_volume(POOL_NAME, f"{name}{MARKER}", len(marker),
                                     _reader(marker), timeout=hypervisor.timeout)
            cleanup.keep()
        log.info("memory snapshot saved seed=%s host=%s seconds=%.1f", key, host.name,
                 time.monotonic() - started)
        return seed

    def _remove_stale_domain(self, hypervisor: Hypervisor, name: str) -> None:
        """A seed domain of this name left by a build that died half-way."""
        for info in hypervisor.list_domains():
            if info.name == name:
                log.warning("removing stale domain %s", name)
                remove_domain(hypervisor, info.uuid)
                hypervisor.undefine_filter(name)

    @staticmethod
    def _remove_volumes(hypervisor: Hypervisor, name: str, suffixes: t.Iterable[str]) -> None:
        rotated = [volume for volume in hypervisor.list_volumes(POOL_NAME)
                   if volume.startswith(f"{name}.console.log.")]
        for volume in [name + suffix for suffix in suffixes] + rotated:
            hypervisor.delete_volume(POOL_NAME, volume)


def _reader(data: bytes) -> t.Callable[[], t.Callable[[int], bytes]]:
    def source() -> t.Callable[[int], bytes]:
        remaining = [data]

        def read(n: int) -> bytes:
            chunk, remaining[0] = remaining[0][:n], remaining[0][n:]
            return chunk
        return read
    return source

