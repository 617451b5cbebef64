"""The libvirt hosts this service places VMs on, as operators see them (``GET /v1/hosts``).

The one ``LIBVIRT_URI`` names, called ``local``, then each of ``HOSTS`` (issue 17, asked at once
through :class:`~app.services.host_registry.HostRegistry`, each within
``HOST_PROBE_TIMEOUT_S``). What is shown is read live from libvirt and the host's records at
each call, never cached: its state (``UP`` when libvirt answered, ``DOWN`` with the reason when
it did not), its CPUs and memory, the callers' VMs on it (a remote host's: from its own
domains' metadata) against its ``MAX_VMS``, and which images are ready there (local: built,
with their memory snapshots; remote: shipped and verified, :mod:`app.services.image_shipping`).
"""
from __future__ import annotations

import dataclasses
import logging
import typing as t

from app.config import Settings
from app.config.hosts import LOCAL_HOST
from app.errors import AppError, HostNotFound
from app.models import Image, ImageState, NodeInfo
from app.services.host_registry import HostRegistry, Probe, callers_vms
from app.services.records import VmRecords

if t.TYPE_CHECKING:
    from app.virt.connection import Hypervisor

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class HostImage:
    id: str
    snapshot_ready: bool  # a memory snapshot of every SNAPSHOT_SHAPES shape is saved there


@dataclasses.dataclass(frozen=True)
class Host:
    name: str
    uri: str
    state: str  # UP or DOWN
    guest_cidr: str
    max_vms: int
    reason: str | None = None  # why DOWN
    hostname: str | None = None
    hypervisor_version: str | None = None
    cpus: int | None = None
    memory_mb: int | None = None
    free_memory_mb: int | None = None
    vms: int | None = None  # callers' VMs there (not pool VMs, seeds or VMs being deleted)
    images: list[HostImage] = dataclasses.field(default_factory=list)  # built there
    # A remote host's other own addresses its HOSTS entry lists (kept out of its VMs' reach);
    # the local host's are read from its interfaces, not listed.
    host_addresses: list[str] = dataclasses.field(default_factory=list)


class HostsView:
    def __init__(self, settings: Settings, hypervisor: Hypervisor, records: VmRecords,
                 images: t.Callable[[], list[Image]], registry: HostRegistry,
                 build_of: t.Callable[[str], str | None],
                 snapshot_ready: t.Callable[[Probe, str], bool] | None = None) -> None:
        """:param images: the local images; :param build_of: an image's current local build
        (what a remote host must hold for the image to be ready there); :param
        snapshot_ready: whether a probed remote host has the image's memory snapshots."""
        self.settings = settings
        self.hypervisor = hypervisor
        self.records = records
        self.images = images
        self.registry = registry
        self.build_of = build_of
        self.snapshot_ready = snapshot_ready

    def list(self, with_images: bool = True) -> list[Host]:
        """:param with_images: False leaves ``images`` empty (a scrape of /metrics: reading
            the images walks their files, and a remote host's their manifests)."""
        return [self._local(with_images), *self._remote(self.registry.names(), with_images)]

    def get(self, name: str) -> Host:
        """:raises HostNotFound: no host has this name."""
        if name == LOCAL_HOST:
            return self._local(with_images=True)
        if self.registry.host(name) is None:
            raise HostNotFound(f"host {name!r} not found")
        [host] = self._remote([name], with_images=True)
        return host

    def _remote(self, names: list[str], with_images: bool) -> list[Host]:
        probes = self.registry.probe(names, with_images=with_images)
        hosts = []
        for name in names:
            config = self.registry.host(name)
            assert config is not None
            probe = probes[name]
            base = Host(name=name, uri=config.uri, state="DOWN", guest_cidr=config.guest_cidr,
                        max_vms=config.max_vms or self.settings.max_vms, reason=probe.reason,
                        host_addresses=list(config.host_addresses))
            node = probe.node
            if node is None:
                hosts.append(base)
                continue
            images = [HostImage(image_id, snapshot_ready=bool(
                          self.snapshot_ready and self.snapshot_ready(probe, image_id)))
                      for image_id, build in sorted((probe.images or {}).items())
                      if build == self.build_of(image_id)]
            hosts.append(dataclasses.replace(
                base, state="UP", hostname=node.hostname,
                hypervisor_version=node.hypervisor_version, cpus=node.cpus,
                memory_mb=node.memory_mb, free_memory_mb=node.free_memory_mb, vms=probe.vms,
                images=images))
        return hosts

    def _local(self, with_images: bool) -> Host:
        base = Host(name=LOCAL_HOST, uri=self.settings.libvirt_uri, state="DOWN",
                    guest_cidr=self.settings.network_cidr, max_vms=self.settings.max_vms)
        try:
            node: NodeInfo = self.hypervisor.node_info()
            found = self.records.all()
        except AppError as exc:
            log.warning("host %s does not answer: %s", LOCAL_HOST, exc.message)
            return dataclasses.replace(base, reason=exc.message)
        vms = callers_vms(found)
        images = [HostImage(image.id, image.snapshot_ready) for image in self.images()
                  if image.state is ImageState.READY] if with_images else []
        return dataclasses.replace(
            base, state="UP", hostname=node.hostname, hypervisor_version=node.hypervisor_version,
            cpus=node.cpus, memory_mb=node.memory_mb, free_memory_mb=node.free_memory_mb,
            vms=vms, images=images)
