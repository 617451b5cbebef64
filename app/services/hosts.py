"""The libvirt hosts this service places VMs on, as operators see them (``GET /v1/hosts``).

Today that is one host: the one ``LIBVIRT_URI`` names, called ``local``. What is shown is read
live from libvirt and the host's records at each call, never cached: its state (``UP`` when
libvirt answered, ``DOWN`` with the reason when it did not), its CPUs and memory, the callers'
VMs on it against ``MAX_VMS``, and which images are built there with their memory snapshots.
"""
from __future__ import annotations

import dataclasses
import logging
import typing as t

from app.config import Settings
from app.errors import AppError, HostNotFound
from app.models import Image, ImageState, NodeInfo, VmPhase, VmRole
from app.services.records import VmRecords

if t.TYPE_CHECKING:
    from app.virt.connection import Hypervisor

log = logging.getLogger(__name__)
LOCAL_HOST = "local"


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


class HostsView:
    def __init__(self, settings: Settings, hypervisor: Hypervisor, records: VmRecords,
                 images: t.Callable[[], list[Image]]) -> None:
        self.settings = settings
        self.hypervisor = hypervisor
        self.records = records
        self.images = images

    def list(self, with_images: bool = True) -> list[Host]:
        """:param with_images: False leaves ``images`` empty (a scrape of /metrics: reading
            the images walks their files)."""
        return [self._local(with_images)]

    def get(self, name: str) -> Host:
        """:raises HostNotFound: no host has this name."""
        for host in self.list():
            if host.name == name:
                return host
        raise HostNotFound(f"host {name!r} not found")

    def _local(self, with_images: bool) -> Host:
        base = Host(name=LOCAL_HOST, uri=self.settings.libvirt_uri, state="DOWN",
                    guest_cidr=self.settings.network_cidr, max_vms=self.settings.max_vms)
        try:
            node: NodeInfo = self.hypervisor.node_info()
            found = self.records.all()
        except AppError as exc:
            log.warning("host %s does not answer: %s", LOCAL_HOST, exc.message)
            return dataclasses.replace(base, reason=exc.message)
        vms = sum(1 for record, _info in found
                  if record.role is VmRole.SANDBOX and record.phase is not VmPhase.DELETING)
        images = [HostImage(image.id, image.snapshot_ready) for image in self.images()
                  if image.state is ImageState.READY] if with_images else []
        return dataclasses.replace(
            base, state="UP", hostname=node.hostname, hypervisor_version=node.hypervisor_version,
            cpus=node.cpus, memory_mb=node.memory_mb, free_memory_mb=node.free_memory_mb,
            vms=vms, images=images)
