"""ImageService: what the API asks of images (``/v1/images``), built-in and custom.

Built-in images are the templates in ``vm-templates/`` (``default``: the Debian image that
``make image`` builds); they are listed, can be made the default, and are never deleted.
Custom images are built from one of them (or another custom image) by a setup script run as
root in a build VM, or from an uploaded disk; :mod:`app.services.image_builder` builds them in
the background, :mod:`app.services.image_store` keeps them on disk. A custom image is used like
a template: ``POST /v1/vms {"imageId": ...}``, with its own memory snapshots for fast creates.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
import typing as t
from pathlib import Path

from app.clock import now_iso
from app.config import Settings
from app.config.hosts import LOCAL_HOST
from app.errors import (ImageInUse, ImageNotFound, ImageStateConflict, InvalidRequest,
                        PayloadTooLarge, QuotaExceeded)
from app.models import (BuildLogView, HostReadiness, Image, ImageRecord, ImageRequest,
                        ImageState, Template, VmRecord, VmRole)
from app.services.addresses import allocation_lock
from app.services.image_store import FILES, LOG, UPLOAD, BuildLog, ImageStore
from app.services.image_uploads import accept_disk, accept_files
from app.services.image_views import ImageViews, read_from
from app.services.provisioner import LOCK_TIMEOUT
from app.services.seeds import SeedStore
from app.services.snapshot_store import SnapshotStore
from app.services.templates import ImageBuild, TemplateCatalog, default_disk_size_mb
from app.services.undo import quietly
from app.virt.pool_xml import POOL_NAME

if t.TYPE_CHECKING:
    from app.services.vms import VmParts

log = logging.getLogger(__name__)
T = t.TypeVar("T")
DEFAULT_BUILD_MEM_MB = 1024
FOLLOW_POLL_S = 0.5
FOLLOW_MAX_S = 3600.0
BUSY = (ImageState.PENDING, ImageState.BUILDING)


class ImageService:
    """Thread-safe; one per worker process."""

    def __init__(self, settings: Settings, store: ImageStore, templates: TemplateCatalog,
                 parts: VmParts, snapshots: SnapshotStore, seeds: SeedStore) -> None:
        self.settings = settings
        self.store = store
        self.templates = templates
        self.parts = parts
        self.snapshots = snapshots
        self.seeds = seeds
        self.views = ImageViews(settings, store, templates, seeds)
        # Where each answered image is ready (``hosts``): the local host only, unless the
        # container wires in the remote hosts' (app.services.image_shipping).
        self.readiness: t.Callable[[list[Image]], list[Image]] = local_readiness

    # Queries ##############################################################################

    def list(self) -> list[Image]:
        """Built-in images first, then custom ones, oldest first; with ``hosts``."""
        return self.readiness(self.local_list())

    def local_list(self) -> list[Image]:
        """:meth:`list` without ``hosts`` (no remote host is asked)."""
        return [*(self.views.builtin(i) for i in self.templates.builtin_ids()),
                *(self.views.custom(record) for record in self.store.all())]

    def get(self, image_id: str) -> Image:
        """:raises ImageNotFound: unknown image."""
        if self.templates.is_builtin(image_id):
            return self._shown(self.views.builtin(image_id))
        return self._shown(self.views.custom(self.store.get(image_id)))

    def _shown(self, image: Image) -> Image:
        [shown] = self.readiness([image])
        return shown

    def build_log(self, image_id: str, tail: int) -> BuildLogView:
        """The last ``tail`` lines of a custom image's build log.

        :raises ImageNotFound: unknown image (built-in images have no build log here).
        """
        return self.views.build_log(self._custom_record(image_id), tail)

    def follow_log(self, image_id: str, tail: int) -> t.Iterator[bytes]:
        """The log's last ``tail`` lines, then its new output as it comes, until the build
        ended (READY or FAILED) or an hour passed.

        :raises ImageNotFound: unknown image.
        """
        path = self.store.path(image_id, LOG)
        start = path.stat().st_size if path.exists() else 0
        first = self.views.build_log(self._custom_record(image_id), tail, end=start)

        def chunks() -> t.Iterator[bytes]:
            yield "".join(f"{line}\n" for line in first.lines).encode()
            offset = start
            deadline = time.monotonic() + FOLLOW_MAX_S
            while time.monotonic() < deadline:
                record = self.store.load(image_id)  # None: deleted meanwhile
                ended = record is None or record.state not in BUSY
                data, offset = read_from(path, offset)
                if data:
                    yield data
                elif ended:
                    return
                time.sleep(FOLLOW_POLL_S)
        return chunks()

    # Changes ##############################################################################

    def create(self, request: ImageRequest) -> Image:
        """Queue a build (or wait for the uploads the request announces).

        :raises InvalidRequest: a bad name, base or limit; nothing to build.
        :raises ImageInUse: the name is taken (409).
        :raises ImageStateConflict: the base image is not READY.
        :raises QuotaExceeded: at ``MAX_IMAGES``.
        """
        if self.templates.is_builtin(request.name):
            raise ImageInUse(f"image {request.name} exists (built in)")
        try:
            base = self.templates.get(request.base)
        except InvalidRequest:
            raise InvalidRequest(f"from: unknown image {request.base!r}") from None
        record = self._plan(request, base, self.templates.current_build(base))
        awaiting = record.awaiting
        with self.store.lock():
            if len(self.store.all()) >= self.settings.max_images:
                raise QuotaExceeded(f"image quota reached ({self.settings.max_images} images, "
                                    f"MAX_IMAGES); delete some first")
            try:
                self.store.create(record, request.setup)
            except FileExistsError:
                raise ImageInUse(f"image {request.name} exists; delete it first") from None
        BuildLog(self.store.path(record.id, LOG)).line(
            f"image {record.id} created from {record.base}: " +
            (f"waiting for the upload of its {' and '.join(awaiting)}" if awaiting else
             "queued for building"))
        log.info("image created image=%s base=%s state=%s", record.id, record.base,
                 record.state.value)
        return self._shown(self.views.custom(record))

    def _plan(self, request: ImageRequest, base: Template, build: ImageBuild) -> ImageRecord:
        """The record of a new image, every limit checked.

        :raises InvalidRequest: naming the first broken rule.
        """
        limits = self.settings
        if not request.setup.strip() and not request.disk:
            raise InvalidRequest("nothing to build: give a setup script, or disk: true and "
                                 "upload a disk")
        timeout = request.timeout_s or limits.image_build_timeout_s
        mem_mb = request.mem_mb or min(DEFAULT_BUILD_MEM_MB, limits.max_mem_mb)
        for name, value, low, high in (
                ("timeoutSeconds", timeout, 1, limits.max_image_build_timeout_s),
                ("cpu", request.cpu, 1, limits.max_cpu), ("memMb", mem_mb, 128, limits.max_mem_mb)):
            if not low <= value <= high:
                raise InvalidRequest(f"{name} must be between {low} and {high}")
        self.parts.policy.check(request.allow_ips)
        disk_size_mb = request.disk_size_mb or default_disk_size_mb(base, build)
        if not request.disk and disk_size_mb < build.disk_size_mb:
            raise InvalidRequest(f"diskSizeMb must be at least {build.disk_size_mb} (the "
                                 f"disk of {base.id})")
        if disk_size_mb > limits.max_disk_size_mb:
            raise InvalidRequest(f"diskSizeMb must be at most {limits.max_disk_size_mb} "
                                 f"(MAX_DISK_SIZE_MB)")
        awaiting = tuple(name for name, wanted in (("files", request.files),
                                                   ("disk", request.disk)) if wanted)
        template = base.id if self.templates.is_builtin(base.id) else \
            self.store.get(base.id).template
        return ImageRecord(
            id=request.name, description=request.description, base=base.id, template=template,
            state=ImageState.PENDING if awaiting else ImageState.BUILDING,
            created_at=now_iso(), allow_ips=request.allow_ips,
            outbound_internet=request.outbound_internet, timeout_s=timeout, cpu=request.cpu,
            mem_mb=mem_mb, disk_size_mb=disk_size_mb, awaiting=awaiting)

    def upload_files(self, image_id: str, body: t.BinaryIO, declared_size: int | None) -> Image:
        """The tar.gz of files the create announced; the build is queued once nothing else
        is awaited.

        :raises ImageNotFound: unknown image.
        :raises ImageStateConflict: no files awaited (any more).
        :raises InvalidRequest: an unsafe archive.
        :raises PayloadTooLarge: over the upload limits.
        """
        self._expect(image_id, "files", declared_size, self.settings.max_upload_bytes)
        target = self.store.path(image_id, FILES)
        checked = self._receiving(image_id, lambda: accept_files(self.settings, body, target))
        return self._received(image_id, "files", checked, target, has_files=True)

    def upload_disk(self, image_id: str, body: t.BinaryIO, declared_size: int | None) -> Image:
        """The disk the create announced (raw or qcow2, nothing that names another file).

        :raises ImageNotFound: unknown image.
        :raises ImageStateConflict: no disk awaited (any more).
        :raises InvalidRequest: a refused disk (format, backing or data file, size).
        :raises PayloadTooLarge: over ``MAX_IMAGE_UPLOAD_MB``.
        """
        self._expect(image_id, "disk", declared_size, self.settings.max_image_upload_mb << 20)
        target = self.store.path(image_id, UPLOAD)
        checked, image_format, size_mb = self._receiving(
            image_id, lambda: accept_disk(self.settings, body, target))
        return self._received(image_id, "disk", checked, target, disk_format=image_format,
                              size_mb=size_mb)

    def _receiving(self, image_id: str, receive: t.Callable[[], T]) -> T:
        """Run an upload's receive step; an image deleted meanwhile (its directory gone) is
        404, not a failed write."""
        try:
            return receive()
        except OSError:
            if self.store.load(image_id) is None:
                raise ImageNotFound(f"image {image_id} not found (deleted meanwhile)") from None
            raise

    def _expect(self, image_id: str, what: str, declared: int | None, limit: int) -> None:
        record = self._custom_record(image_id)
        if what not in record.awaiting:
            raise ImageStateConflict(f"image {image_id} awaits no {what} upload (it is "
                                     f"{record.state.value})")
        if declared is not None and declared > limit:
            raise PayloadTooLarge(f"the {what} upload is larger than {limit} bytes")

    def _received(self, image_id: str, what: str, checked: Path, target: Path,
                  has_files: bool = False, disk_format: str = "", size_mb: int = 0) -> Image:
        """Move a checked upload into place and update the record, unless the image stopped
        waiting for it meanwhile (a concurrent upload came first, or a delete)."""
        try:
            with self.store.lock():
                record = self.store.get(image_id)
                if what not in record.awaiting:
                    raise ImageStateConflict(f"image {image_id} awaits no {what} upload")
                os.replace(checked, target)
                record = self._took(record, what, has_files, disk_format, size_mb)
        finally:
            checked.unlink(missing_ok=True)
        BuildLog(self.store.path(image_id, LOG)).line(
            f"{what} received" + ("" if record.awaiting else "; queued for building"))
        return self._shown(self.views.custom(record))

    def _took(self, record: ImageRecord, what: str, has_files: bool, disk_format: str,
              size_mb: int) -> ImageRecord:
        awaiting = tuple(name for name in record.awaiting if name != what)
        record = dataclasses.replace(
            record, awaiting=awaiting, has_files=record.has_files or has_files,
            disk_format=disk_format or record.disk_format,
            disk_size_mb=max(record.disk_size_mb, size_mb),
            state=ImageState.PENDING if awaiting else ImageState.BUILDING)
        self.store.save(record)
        return record

    def set_default(self, image_id: str) -> Image:
        """Make ``image_id`` what creates without ``imageId`` get.

        :raises ImageNotFound: unknown image.
        :raises ImageStateConflict: not READY.
        """
        image = self.get(image_id)
        if image.state is not ImageState.READY:
            raise ImageStateConflict(f"image {image_id} is {image.state.value}, not READY")
        self.store.set_default(image_id)
        log.info("default image is now image=%s", image_id)
        return self.get(image_id)

    def delete(self, image_id: str) -> None:
        """Remove a custom image with its memory snapshots and its idle warm-pool VMs.

        :raises ImageNotFound: unknown image.
        :raises ImageInUse: built in, the default, being built, or used by a VM, a disk
            snapshot or a build (409).
        """
        if self.templates.is_builtin(image_id):
            raise ImageInUse(f"image {image_id} is built in (vm-templates/{image_id}) and "
                             f"cannot be deleted")
        # Creates look their image up under this lock up to defining the domain: no VM can
        # appear on the image between the check and the removal.
        with allocation_lock(self.settings.lock_path, LOCK_TIMEOUT), self.store.lock():
            record = self.store.get(image_id)
            pool = self._check_unused(record)
            for vm in pool:
                quietly(self.parts.teardown.remove, vm)
            self.seeds.remove_template(image_id)
            self.store.remove(image_id)
        quietly(self.parts.hypervisor.refresh_storage_pool, POOL_NAME)
        log.info("image deleted image=%s", image_id)

    def _check_unused(self, record: ImageRecord) -> list[VmRecord]:
        """The image's idle pool VMs, once nothing else uses it.

        :raises ImageInUse: saying what uses it.
        """
        image_id = record.id
        if image_id == self.templates.default_id:
            raise ImageInUse(f"image {image_id} is the default; make another image the "
                             f"default first")
        if record.state is ImageState.BUILDING:
            raise ImageInUse(f"image {image_id} is being built; delete it once it is READY "
                             f"or FAILED")
        vms = [r for r, _info in self.parts.records.all() if r.image_id == image_id]
        users = [r.id for r in vms if r.role is not VmRole.POOL]
        if users:
            raise ImageInUse(f"image {image_id} is in use by {len(users)} VM(s) "
                             f"({', '.join(users)}); delete them first")
        snapshots = [s.id for s in self.snapshots.list() if s.image_id == image_id]
        if snapshots:
            raise ImageInUse(f"image {image_id} is in use by {len(snapshots)} disk "
                             f"snapshot(s) ({', '.join(snapshots)}); delete them first")
        builds = [r.id for r in self.store.all() if r.base == image_id and r.state in BUSY]
        if builds:
            raise ImageInUse(f"image {image_id} is the base of image(s) being built "
                             f"({', '.join(builds)})")
        return [r for r in vms if r.role is VmRole.POOL]


    def _custom_record(self, image_id: str) -> ImageRecord:
        """:raises ImageNotFound: unknown, or a built-in image (no build log, no uploads)."""
        if self.templates.is_builtin(image_id):
            raise ImageNotFound(f"image {image_id} is built in: it has no build log or "
                                f"uploads here")
        return self.store.get(image_id)


def local_readiness(images: list[Image]) -> list[Image]:
    """``hosts`` with the local host alone: ready when the image is READY."""
    return [dataclasses.replace(image, hosts=(HostReadiness(
        LOCAL_HOST, image.state is ImageState.READY, image.snapshot_ready),)) for image in images]
