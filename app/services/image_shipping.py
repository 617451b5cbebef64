"""Images on remote hosts (issue 17): shipped with libvirt's storage streams, verified by checksum.

An image's current build (its disk, and its kernel and initrd when it has them) is uploaded to
a remote host's ``rds-images`` pool (``virStorageVolUpload``; the pool, a ``dir`` pool in the
host's ``imagesDir``, is defined and built there when missing) as readable volumes::

    default.qcow2  default.vmlinuz  default.initrd.img  default.manifest.json

Verification is end to end: the SHA-256 of the bytes read from the local file while they are
sent is compared with the SHA-256 of the volume read back from the host
(``virStorageVolDownload``), so what is checked is what the remote libvirt stored, not what
was sent. Only when every file matched is the manifest written, last: the image id, the local
build it came from (``debian-bookworm/<build>``) and each volume's checksum and size. An image
is **ready** on a host when its manifest is there, names the image's current local build and
all of its volumes are listed; shipping deletes the manifest first, so an interrupted or failed
shipment is never ready. Readiness trusts the manifest (reading gigabytes back at each
``GET /v1/images`` is not possible); :meth:`ImageShipper.ship` is what verifies.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import time
import typing as t
from pathlib import Path

from app.config import Settings
from app.config.hosts import LOCAL_HOST
from app.errors import (AppError, HostNotFound, HypervisorError, ImageNotFound,
                        ImageNotReady, ImageStateConflict, InvalidRequest)
from app.models import HostReadiness, Image, ImageState
from app.services.locks import host_lock
from app.virt.pool_xml import POOL_NAME, build_pool_xml

if t.TYPE_CHECKING:
    from app.services.host_registry import HostRegistry, Probe
    from app.services.remote_seeds import RemoteSeeds
    from app.services.templates import TemplateCatalog
    from app.virt.connection import Hypervisor

log = logging.getLogger(__name__)
MANIFEST = ".manifest.json"
MAX_MANIFEST_BYTES = 64 * 1024
MIN_RATE_BYTES_S = 10 * 1024 * 1024  # a transfer slower than this is given up
CHUNK = 1024 * 1024


@dataclasses.dataclass(frozen=True)
class Shipment:
    """An image shipped to a host and verified there."""

    image_id: str
    host: str
    build: str
    files: dict[str, dict[str, t.Any]]  # volume name -> {"sha256", "bytes"}
    seconds: float
    memory_snapshots: tuple[str, ...] = ()  # the seeds saved there (app.services.remote_seeds)
    memory_snapshot_error: str | None = None  # why they were not


def build_of(settings: Settings, templates: TemplateCatalog, image_id: str) -> str | None:
    """The image's current local build (``<image dir>/<build>``, what a manifest names), None
    when it is not built."""
    try:
        build = templates.current_build(templates.get(image_id))
    except AppError:
        return None
    return str(build.path.relative_to(settings.images_dir.resolve()))


def read_shipped(hypervisor: Hypervisor, names: set[str]) -> dict[str, str]:
    """The images whose shipment to that host completed: image id -> its build (from the
    manifests whose volumes are all there). Manifests that do not parse are skipped.

    :param names: the volumes of its images pool.
    """
    found = {}
    for name in sorted(names):
        if not name.endswith(MANIFEST):
            continue
        manifest = _parse(read_volume(hypervisor, name))
        if manifest is None or not set(manifest["files"]) <= names:
            continue
        found[manifest["image"]] = manifest["build"]
    return found


def read_volume(hypervisor: Hypervisor, name: str, limit: int = MAX_MANIFEST_BYTES) -> bytes:
    """A small volume's bytes (at most ``limit``)."""
    data = bytearray()

    def keep(chunk: bytes) -> None:
        data.extend(chunk)
        if len(data) > limit:
            raise HypervisorError(f"volume {name} is larger than {limit} bytes")

    def sink() -> t.Callable[[bytes], None]:
        data.clear()
        return keep
    hypervisor.download_volume(POOL_NAME, name, sink, timeout=hypervisor.timeout)
    return bytes(data)


class Digest:
    """SHA-256 and size of the bytes a stream moved; :meth:`start` again when libvirt sends a
    transfer again on a new connection."""

    def __init__(self) -> None:
        self.start()

    def start(self) -> Digest:
        self._hash = hashlib.sha256()
        self.bytes = 0
        return self

    def add(self, data: bytes) -> bytes:
        self._hash.update(data)
        self.bytes += len(data)
        return data

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()


def _parse(data: bytes) -> dict[str, t.Any] | None:
    try:
        manifest = json.loads(data)
    except ValueError:
        return None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("image"), str) or \
            not isinstance(manifest.get("build"), str) or \
            not isinstance(manifest.get("files"), dict):
        return None
    return manifest


class ImageShipper:
    """Ships images to the ``HOSTS`` and says where each is ready. Thread-safe."""

    def __init__(self, settings: Settings, registry: HostRegistry,
                 templates: TemplateCatalog, images: t.Callable[[], list[Image]],
                 seeds: RemoteSeeds | None = None) -> None:
        """:param images: the local images (ImageService.local_list).
        :param seeds: makes the memory snapshots on the hosts (None: none are made)."""
        self.settings = settings
        self.registry = registry
        self.templates = templates
        self.images = images
        self.seeds = seeds

    def build_of(self, image_id: str) -> str | None:
        """The image's current local build (``<image dir>/<build>``), None when not built."""
        return build_of(self.settings, self.templates, image_id)

    def readiness(self, images: list[Image]) -> list[Image]:
        """``images`` with ``hosts``: local (READY) then each remote host (shipped, current
        build); a host that does not answer within HOST_PROBE_TIMEOUT_S: not ready."""
        probes = self.registry.probe(with_images=True) if self.registry.hosts else {}
        shown = []
        for image in images:
            ready = image.state is ImageState.READY
            build = self.build_of(image.id) if ready and probes else None
            hosts = [HostReadiness(LOCAL_HOST, ready, image.snapshot_ready)]
            for name, probe in probes.items():
                shipped = build is not None and (probe.images or {}).get(image.id) == build
                hosts.append(HostReadiness(name, shipped, shipped and
                                           self.snapshot_ready(probe, image.id)))
            shown.append(dataclasses.replace(image, hosts=tuple(hosts)))
        return shown

    def snapshot_ready(self, probe: Probe, image_id: str) -> bool:
        """Whether the probed host (with its images) has the image's memory snapshots of
        every ``SNAPSHOT_SHAPES`` shape."""
        if self.seeds is None:
            return False
        try:
            template = self.templates.get(image_id)
            return self.seeds.ready(probe, template, self.templates.current_build(template))
        except AppError:
            return False

    def ship(self, host_name: str, image_id: str) -> Shipment:
        """Upload the image's current build to the host and verify it there, then make its
        memory snapshots there (their failure is reported, the image is ready all the same).

        :raises HostNotFound: not a ``HOSTS`` name.
        :raises ImageNotFound: unknown image.
        :raises ImageStateConflict: a custom image that is not READY.
        :raises ImageNotReady: the image is not built here.
        :raises ImageStateConflict: the same image is being shipped to that host already.
        :raises HypervisorError: the host does not answer, or a checksum did not match.
        """
        if self.registry.host(host_name) is None:
            raise HostNotFound(f"host {host_name!r} not found (HOSTS names the remote hosts)")
        try:
            template = self.templates.get(image_id)
        except InvalidRequest as exc:
            raise ImageNotFound(exc.message) from None
        build = self.templates.current_build(template)
        probe = self.registry.probe([host_name])[host_name]
        if not probe.up:  # answered within HOST_PROBE_TIMEOUT_S, not after LIBVIRT_TIMEOUT_S
            raise HypervisorError(f"host {host_name} is DOWN: {probe.reason}")
        with host_lock(self.lock_path(host_name, image_id), timeout=0,
                       busy=lambda: ImageStateConflict(
                           f"image {image_id!r} is being shipped to {host_name} already")):
            shipment = self._ship(host_name, image_id, build)
            return self._make_snapshots(shipment)

    def _make_snapshots(self, shipment: Shipment) -> Shipment:
        if self.seeds is None or not self.settings.snapshot_shape_list:
            return shipment
        started = time.monotonic()
        try:
            keys = self.seeds.ensure_image(shipment.host, shipment.image_id)
        except AppError as exc:
            log.warning("memory snapshots of image %s not made on %s: %s", shipment.image_id,
                        shipment.host, exc.message)
            return dataclasses.replace(shipment, memory_snapshot_error=exc.message,
                                       seconds=shipment.seconds + time.monotonic() - started)
        return dataclasses.replace(shipment, memory_snapshots=tuple(keys),
                                   seconds=shipment.seconds + time.monotonic() - started)

    def lock_path(self, host_name: str, image_id: str) -> Path:
        """Held while the image is shipped to the host (by any process of this manager)."""
        return Path(self.settings.storage_root) / "shipping" / f"{host_name}.{image_id}.lock"

    def ship_missing(self) -> list[str]:
        """Ship every READY image to every UP host where it is not ready (the maintainer's,
        every SHIP_INTERVAL_S); returns what was shipped. A failure is logged, the others go
        on."""
        if not self.registry.hosts:
            return []
        shipped = []
        probes = self.registry.probe()
        up = {name for name, probe in probes.items() if probe.up}
        for name in sorted(up) if self.seeds is not None else []:
            used = {record.seed for record, _info in probes[name].records if record.seed}
            try:
                shipped += [f"removed memory snapshot {key} of {name}"
                            for key in self.seeds.prune(name, used)]
            except AppError as exc:
                log.warning("memory snapshots of %s not pruned: %s", name, exc.message)
        for image in self.readiness(self.images()):
            for host in image.hosts[1:]:
                if host.name not in up or image.state is not ImageState.READY:
                    continue  # a host DOWN is logged by the registry
                if host.ready:
                    if not host.snapshot_ready and self.seeds is not None and \
                            self.settings.snapshot_shape_list:
                        made = self._make_snapshots(Shipment(image.id, host.name, "", {}, 0.0))
                        if made.memory_snapshot_error is None:
                            shipped.append(f"memory snapshots of image {image.id} on "
                                           f"{host.name}")
                    continue
                try:
                    self.ship(host.name, image.id)
                except AppError as exc:
                    log.warning("image %s not shipped to %s: %s", image.id, host.name,
                                exc.message)
                    continue
                shipped.append(f"image {image.id} to {host.name}")
        return shipped

    def _ship(self, host_name: str, image_id: str, build: t.Any) -> Shipment:
        started = time.monotonic()
        host = self.registry.host(host_name)
        assert host is not None
        hypervisor = self.registry.hypervisor(host_name)
        hypervisor.ensure_storage_pool(POOL_NAME, build_pool_xml(POOL_NAME, host.images_dir),
                                       build=True)
        manifest_name = f"{image_id}{MANIFEST}"
        hypervisor.delete_volume(POOL_NAME, manifest_name)  # not ready while shipping
        build_id = self.build_of(image_id)
        if build_id is None:
            raise ImageNotReady(f"image {image_id!r} is not built on this host")
        files = {}
        for suffix, path in (("qcow2", build.disk), ("vmlinuz", build.kernel),
                             ("initrd.img", build.initrd)):
            if suffix != "qcow2" and not Path(path).is_file():
                continue  # a custom image boots its base's kernel
            volume = f"{image_id}.{suffix}"
            files[volume] = self._send_verified(hypervisor, volume, Path(path))
        manifest = json.dumps({"image": image_id, "build": build_id, "files": files},
                              indent=1, sort_keys=True).encode()
        self._send_bytes(hypervisor, manifest_name, manifest)
        if read_volume(hypervisor, manifest_name) != manifest:
            hypervisor.delete_volume(POOL_NAME, manifest_name)
            raise HypervisorError(f"the manifest of {image_id!r} did not arrive intact on "
                                  f"{host_name}")
        seconds = time.monotonic() - started
        log.info("image shipped image=%s host=%s build=%s volumes=%s seconds=%.1f", image_id,
                 host_name, build_id, ",".join(files), seconds)
        return Shipment(image_id=image_id, host=host_name, build=build_id, files=files,
                        seconds=seconds)

    def _send_verified(self, hypervisor: Hypervisor, volume: str,
                       path: Path) -> dict[str, t.Any]:
        """Upload ``path`` as ``volume``, hashing what is sent; read it back and compare."""
        size = path.stat().st_size
        timeout = max(hypervisor.timeout, size / MIN_RATE_BYTES_S)
        sent, received = Digest(), Digest()
        with contextlib.ExitStack() as files:
            def source() -> t.Callable[[int], bytes]:
                handle = files.enter_context(path.open("rb"))
                digest = sent.start()
                return lambda n: digest.add(handle.read(min(n, CHUNK)))
            hypervisor.upload_volume(POOL_NAME, volume, size, source, timeout=timeout)
        hypervisor.download_volume(POOL_NAME, volume, lambda: received.start().add,
                                   timeout=timeout)
        if (received.sha256, received.bytes) != (sent.sha256, size):
            hypervisor.delete_volume(POOL_NAME, volume)
            raise HypervisorError(
                f"{volume} did not arrive intact: sent {sent.bytes} bytes sha256 "
                f"{sent.sha256}, the host has {received.bytes} bytes sha256 {received.sha256}")
        return {"sha256": sent.sha256, "bytes": size}

    def _send_bytes(self, hypervisor: Hypervisor, volume: str, data: bytes) -> None:
        hypervisor.upload_volume(POOL_NAME, volume, len(data), lambda: io.BytesIO(data).read,
                                 timeout=hypervisor.timeout)
