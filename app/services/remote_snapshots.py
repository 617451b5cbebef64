"""Snapshots of a VM of a remote host of ``HOSTS`` (issue 17): its disk copied to the manager.

A snapshot lives on the manager, in the snapshot store, as a local VM's does
(:mod:`app.services.snapshots`); only the copy differs. Under the VM's lock of this manager
(:mod:`app.services.remote_vm_locks`: its stop or delete waits), the VM's disk volume
``<name>.qcow2`` of the host's ``rds-vms`` pool is downloaded into the snapshot's staging
directory (``virStorageVolDownload``, :func:`app.virt.volume_files.download_to_file`), a
RUNNING VM's guest filesystems frozen through that host's guest agent meanwhile and thawed
whatever happens, a STOPPED VM's as it is.

The copy's backing file is then a path on that host: the image volume shipped to its
``rds-images`` pool, byte for byte the local build the manifest there names (shipping checked
its SHA-256, :mod:`app.services.image_shipping`). After ``qemu-img info`` confirmed the copy is
a qcow2 backed by exactly that volume (and names no data file), it is rebased in qemu-img's
unsafe mode (``-u``: the name only, the contents are the same) onto that local build, and
from then on is a snapshot like any other: a VM made from it is made on the local host.
"""
from __future__ import annotations

import contextlib
import logging
import time
import typing as t
from pathlib import Path

from app.config import Settings
from app.errors import HypervisorError, ImageNotReady
from app.models import VmState
from app.services.image_shipping import read_shipped
from app.services.remote_seeds import seed_name
from app.services.records import to_vm
from app.services.remote_domains import VMS_POOL
from app.services.snapshot_store import SnapshotSource, require_unchanged, snapshottable
from app.services.templates import TemplateCatalog
from app.virt import disks
from app.virt.disk_formats import UnsafeImage, check_overlay_info
from app.virt.pool_xml import POOL_NAME
from app.virt.volume_files import download_to_file

if t.TYPE_CHECKING:
    from app.services.remote_lookup import Found
    from app.services.remote_vms import RemoteVms
    from app.virt.connection import Hypervisor

log = logging.getLogger(__name__)
MIB = 1024 * 1024
HEADROOM_MB = 64  # a qcow2 overlay's metadata beyond its virtual size, with room to spare

Quiesce = t.Callable[["Hypervisor", str], t.ContextManager[None]]


class RemoteSnapshots:
    """Thread-safe; one per worker process (part of the SnapshotService)."""

    def __init__(self, settings: Settings, templates: TemplateCatalog, remote: RemoteVms,
                 quiesced: Quiesce) -> None:
        """:param quiesced: freezes a guest's filesystems through a host's libvirt for the
            body, thaws them in any case (:meth:`SnapshotService.quiesced`)."""
        self.settings = settings
        self.templates = templates
        self.remote = remote
        self.quiesced = quiesced

    @contextlib.contextmanager
    def source(self, vm_id: str) -> t.Iterator[SnapshotSource]:
        """The remote VM's disk, its lock held for the body.

        :raises VmStateConflict: unless RUNNING or STOPPED (also: changed during the copy).
        :raises ImageNotReady: its image's build is not shipped there, or not here any more.
        :raises HypervisorError: the host failed, or the disk is not an overlay of that image.
        """
        with self.remote.locked(vm_id) as found:
            state = snapshottable(vm_id, to_vm(found.record, found.state).state)
            image = self._local_image(found)
            yield SnapshotSource(found.record, state, None, image,
                                 lambda target: self._copy(found, state, image, target))

    def _local_image(self, found: Found) -> Path:
        """The local build's disk of the image the host's image volume holds (its manifest
        there names the build)."""
        image_id = found.record.image_id
        build = read_shipped(found.hypervisor,
                             set(found.hypervisor.list_volumes(POOL_NAME))).get(image_id)
        if build is None:
            raise ImageNotReady(f"image {image_id!r} of VM {found.record.id} is not shipped to "
                                f"host {found.host.name} any more")
        images_dir = self.settings.images_dir.resolve()
        path = (images_dir / build).resolve()
        if images_dir not in path.parents:  # the manifest is read from that host: checked
            raise HypervisorError(f"host {found.host.name} names build {build[:60]!r} of image "
                                  f"{image_id!r}, outside the image directory: refused")
        return self.templates.build_at(path).disk

    def _copy(self, found: Found, state: VmState, image: Path, target: Path) -> float:
        record, hypervisor = found.record, found.hypervisor
        backing = hypervisor.volume_path(POOL_NAME, f"{record.image_id}.qcow2")
        if backing is None:
            raise ImageNotReady(f"image {record.image_id!r} of VM {record.id} is not on host "
                                f"{found.host.name} any more")
        began = time.monotonic()
        if state is VmState.STOPPED:
            self._download(found, target)
            frozen_s = 0.0
        else:
            with self.quiesced(hypervisor, record.id):
                self._download(found, target)
            frozen_s = time.monotonic() - began
        require_unchanged(record.id, state, self.remote.get(record.id).state)
        if record.seed:  # restored from that host's memory snapshot: its disk is on the seed's
            self._flatten_seed(found, target, backing, image)
        else:
            self._check_backing(found, target, backing, "its image's volume")
            disks.rebase(target, image, unsafe=True)
        log.info("remote disk copied vm=%s host=%s seconds=%.2f", record.id, found.host.name,
                 time.monotonic() - began)
        return frozen_s

    def _flatten_seed(self, found: Found, target: Path, image_volume: str, image: Path) -> None:
        """A VM restored from its host's memory snapshot has its overlay on the snapshot's
        disk, itself an overlay on the image's volume there: that disk is copied too (after
        the guest is thawed: it never changes), both are checked, put on the local build
        (``-u``: same bytes), and the VM's overlay rebased onto the build in qemu-img's safe
        mode, which copies the snapshot disk's clusters into it."""
        seed_disk = f"{seed_name(found.record.seed)}.qcow2"
        seed_path = found.hypervisor.volume_path(POOL_NAME, seed_disk)
        if seed_path is None:
            raise ImageNotReady(f"the memory snapshot {found.record.seed} that VM "
                                f"{found.record.id} was restored from is not on host "
                                f"{found.host.name} any more")
        self._check_backing(found, target, seed_path, "its memory snapshot's disk")
        copy = target.with_name(f".{seed_disk}")
        try:
            download_to_file(found.hypervisor, POOL_NAME, seed_disk, copy,
                             timeout=disks.COPY_TIMEOUT,
                             max_bytes=(found.record.disk_size_mb + HEADROOM_MB) * MIB)
            self._check_backing(found, copy, image_volume, "its image's volume")
            disks.rebase(copy, image, unsafe=True)
            disks.rebase(target, copy, unsafe=True)
            disks.rebase(target, image)
        finally:
            copy.unlink(missing_ok=True)

    @staticmethod
    def _check_backing(found: Found, disk: Path, backing: str, what: str) -> None:
        try:
            check_overlay_info(disks.info(disk, "qcow2"), backing)
        except UnsafeImage as exc:
            raise HypervisorError(f"the disk of VM {found.record.id} on host {found.host.name} "
                                  f"is not an overlay of {what} there, refused: {exc}") from None

    def _download(self, found: Found, target: Path) -> None:
        download_to_file(found.hypervisor, VMS_POOL, f"{found.record.name}.qcow2", target,
                         timeout=disks.COPY_TIMEOUT,
                         max_bytes=(found.record.disk_size_mb + HEADROOM_MB) * MIB)
