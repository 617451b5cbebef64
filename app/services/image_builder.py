"""ImageBuilder: builds queued custom images in the background, one at a time per host.

A build holds the host-wide ``images/custom/build.lock`` (flock, released by the kernel when
its process dies) from start to end. So whoever takes the lock knows that no build runs
anywhere: an image still marked started was interrupted (its worker died or the service
stopped), and any build VM left is a leftover. The maintaining process tries every few seconds
(:mod:`app.services.maintenance`); nothing is ever left BUILDING: an interrupted build starts
again once (``MAX_ATTEMPTS``), then the image is FAILED.

One build, in order, each step undone in reverse when a later one fails:

1. the inputs disk (setup script and uploaded files) and, for an uploaded disk, a standalone
   qcow2 of it; a work directory ``images/custom/<id>/.build-*`` holds them;
2. a build VM (role ``build``, hidden from the API, counted in ``MAX_VMS``), cold-booted from
   the base image (or the upload) with the image's network policy, ready once SSH answers;
3. the setup script, as root, within its time limit; its output streams into the build log;
4. the seal (setuid bits, host keys, caches; :mod:`app.services.build_guest`), a clean
   shutdown, and the VM's disk flattened into a standalone read-only qcow2 next to the base's
   kernel and initrd: ``images/custom/<id>/<build>/``, published with ``current`` and a link
   in the storage pool's directory; the build VM goes;
5. the memory snapshot of every ``SNAPSHOT_SHAPES`` shape, saved from a boot of the new image
   (which checks that it comes up) unless ``SNAPSHOT_AUTO_BUILD`` is off;
6. READY, and the inputs are dropped.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import shutil
import threading
import time
import typing as t
import uuid
from pathlib import Path

from app.clock import age_s, now_iso
from app.config import Settings
from app.errors import AppError
from app.models import ImageRecord, ImageState, ProvisionMode, VmRole, VmSpec
from app.services.events import Events
from app.services.build_guest import (SEAL, SEAL_TIMEOUT_S, RUNNER, BuildFailed, BuildGuest,
                                      BuildInterrupted, write_inputs)
from app.services.image_store import FILES, INPUTS, LOG, SETUP, UPLOAD, BuildLog, ImageStore
from app.services.provisioner import CreatePlan
from app.services.seed_builder import SeedBuilder
from app.services.teardown import Cleanup
from app.services.templates import TemplateCatalog
from app.services.undo import quietly
from app.services.vm_files import BUILD_LOG_SOCKET, DISK
from app.virt import disks
from app.virt.pool_xml import POOL_NAME, build_pool_xml

if t.TYPE_CHECKING:
    from app.services.vms import VmParts

log = logging.getLogger(__name__)
MAX_ATTEMPTS = 2


class ImageBuilder:
    def __init__(self, settings: Settings, store: ImageStore, templates: TemplateCatalog,
                 parts: VmParts, seeds: SeedBuilder, events: Events | None = None) -> None:
        self.settings = settings
        self.events = events
        self.store = store
        self.templates = templates
        self.parts = parts
        self.seeds = seeds
        self._synced = False  # sync_pool() ran in this process

    # The queue ############################################################################

    def run_pending(self, stop: threading.Event | None = None) -> list[str]:
        """Build every queued image, oldest first, unless another process builds already.

        :returns: the ids built (READY or FAILED).
        """
        stop = stop or threading.Event()
        self.store.root.mkdir(parents=True, exist_ok=True)
        handle = open(self.store.root / "build.lock", "a")  # noqa: SIM115 - the flock's life
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return []
            if not self._synced:
                self.sync_pool()
            self._recover()
            self._expire_pending()
            done = []
            while not stop.is_set() and (record := self._next()) is not None:
                self.build(record.id, stop)
                done.append(record.id)
            return done
        finally:
            handle.close()

    def _next(self) -> ImageRecord | None:
        queued = [r for r in self.store.all()
                  if r.state is ImageState.BUILDING and not r.started_at]
        return queued[0] if queued else None

    def _recover(self) -> None:
        """No build runs now: started ones were interrupted, and their build VMs are
        leftovers (a build VM exists only after its image was marked started)."""
        started = [r for r in self.store.all() if r.state is ImageState.BUILDING and r.started_at]
        if not started:
            return
        for record, _info in self.parts.records.all():
            if record.role is VmRole.BUILD:
                log.warning("removing leftover build vm=%s name=%s", record.id, record.name)
                quietly(self.parts.teardown.remove, record)
        for record in started:
            self.store.remove_stale_staging(record.id)
            self._interrupted(record, "the build was interrupted (the service stopped)")

    def sync_pool(self) -> None:
        """Link every image's disk into the volumes directory (built-in ones follow their
        ``current`` build), drop links of images that are gone, and have libvirt's
        ``rds-images`` pool list them (``virsh vol-list rds-images``)."""
        self._synced = True
        wanted = {r.id: Path("..") / "custom" / r.id / "current" / "disk.qcow2"
                  for r in self.store.all() if r.state is ImageState.READY}
        for image_id in self.templates.builtin_ids():
            with contextlib.suppress(AppError):
                image = self.templates.get(image_id).image
                wanted[image_id] = Path("..") / image / "current" / "disk.qcow2"
        for image_id, target in wanted.items():
            self.store.link_volume(image_id, target)
        for link in self.store.volumes.glob("*.qcow2"):
            if link.name.removesuffix(".qcow2") not in wanted:
                link.unlink(missing_ok=True)
        hypervisor = self.parts.hypervisor
        try:
            hypervisor.ensure_storage_pool(POOL_NAME, build_pool_xml(
                POOL_NAME, str(self.store.volumes)))
            hypervisor.refresh_storage_pool(POOL_NAME)
        except AppError as exc:
            log.warning("storage pool %s not made current: %s", POOL_NAME, exc.message)

    def _expire_pending(self) -> None:
        wait = self.settings.image_upload_wait_s
        for record in self.store.all():
            if record.state is ImageState.PENDING and age_s(record.created_at) > wait:
                self._finish(record.id, ImageState.FAILED,
                             f"the announced upload ({', '.join(record.awaiting)}) did not "
                             f"arrive within {wait} s (IMAGE_UPLOAD_WAIT_S)")

    def _interrupted(self, record: ImageRecord, why: str) -> None:
        if record.attempts < MAX_ATTEMPTS:
            BuildLog(self.store.path(record.id, LOG)).line(f"{why}; starting it again")
            with self.store.lock():
                self.store.save(dataclasses.replace(record, started_at="", build_vm=""))
        else:
            self._finish(record.id, ImageState.FAILED,
                         f"{why}, {record.attempts} times; delete the image and retry")

    # One build ############################################################################

    def build(self, image_id: str, stop: threading.Event) -> None:
        """Build one queued image to READY or FAILED (or back to the queue when ``stop`` is
        set meanwhile)."""
        with self.store.lock():
            record = self.store.get(image_id)
            if record.state is not ImageState.BUILDING or record.started_at:
                return
            record = dataclasses.replace(record, started_at=now_iso(),
                                         attempts=record.attempts + 1)
            self.store.save(record)
        build_log = BuildLog(self.store.path(image_id, LOG))
        build_log.line(f"{_clock()} build {record.attempts} of image {image_id} from "
                       f"{record.base} started")
        started = time.monotonic()
        try:
            build = self._run(record, build_log, stop)
        except BuildInterrupted as exc:
            self._interrupted(record, f"the build was interrupted ({exc})")
            return
        except (BuildFailed, AppError) as exc:
            reason = getattr(exc, "message", None) or str(exc)
            build_log.line(f"{_clock()} FAILED: {reason}")
            self._finish(image_id, ImageState.FAILED, reason)
            log.warning("image build failed image=%s reason=%s", image_id, reason)
            return
        except Exception:
            log.exception("image build crashed image=%s", image_id)
            build_log.line(f"{_clock()} FAILED: internal error (see the service's log)")
            self._finish(image_id, ImageState.FAILED, "internal error (see the service's log)")
            return
        build_log.line(f"{_clock()} READY after {time.monotonic() - started:.1f} s")
        self._finish(image_id, ImageState.READY, "", build=build)
        quietly(self.parts.hypervisor.refresh_storage_pool, POOL_NAME)
        log.info("image ready image=%s build=%s seconds=%.1f", image_id, build,
                 time.monotonic() - started)

    def _finish(self, image_id: str, state: ImageState, reason: str, build: str = "") -> None:
        """The end of a build: READY or FAILED, and its inputs go (a FAILED image is not
        built again: a new create brings new ones)."""
        with self.store.lock():
            record = self.store.load(image_id)
            if record is not None:
                self.store.save(dataclasses.replace(
                    record, state=state, reason=reason, build=build or record.build,
                    build_vm="", finished_at=now_iso()))
                self.store.drop_inputs(image_id)
        if record is not None and self.events is not None:
            payload = {"reason": reason} if state is ImageState.FAILED else {"build": build}
            self.events.emit("image.ready" if state is ImageState.READY else "image.failed",
                             "image", image_id, payload, by="system")

    def _run(self, record: ImageRecord, build_log: BuildLog, stop: threading.Event) -> str:
        """Steps 1-5; returns the published build's name."""
        image_id = record.id
        build = uuid.uuid4().hex[:16]
        with Cleanup(f"build of image {image_id}") as cleanup:
            work = self.store.staging(image_id)
            cleanup.add("work directory", shutil.rmtree, work, True)
            out = work / build
            out.mkdir()
            self._disk(record, work, out, build_log, stop, cleanup)
            self._publish_files(record, out, build)
            self.store.publish(image_id, out, build)
            cleanup.add("published build", self._unpublish, image_id, build)
            self._snapshots(record, build_log)
            cleanup.keep()
        shutil.rmtree(work, ignore_errors=True)
        return build

    def _disk(self, record: ImageRecord, work: Path, out: Path, build_log: BuildLog,
              stop: threading.Event, cleanup: Cleanup) -> None:
        """Steps 1-4: the build VM runs the setup; its disk, flattened, is ``out/disk``."""
        base = self.templates.get(record.base)
        base_build = self.templates.current_build(base)
        backing = None
        if record.disk_format:
            backing = work / "upload.qcow2"
            build_log.line(f"{_clock()} converting the uploaded {record.disk_format} disk")
            disks.convert(self.store.path(record.id, UPLOAD), record.disk_format, backing)
        write_inputs(work / INPUTS, self.store.path(record.id, SETUP),
                     self.store.path(record.id, FILES) if record.has_files else None)
        spec = VmSpec(cpu=record.cpu, mem_mb=record.mem_mb, allow_ips=record.allow_ips,
                      outbound_internet=record.outbound_internet, image_id=base.id,
                      provision_mode=ProvisionMode.BOOT)
        build_log.line(f"{_clock()} booting a build VM from {record.base} ({record.cpu} vCPU, "
                       f"{record.mem_mb} MiB, disk {record.disk_size_mb} MiB, egress "
                       f"{_policy(record)})")
        vm = self.parts.provisioner.create(
            CreatePlan(spec, base, base_build, record.disk_size_mb, backing=backing,
                       inputs=work / INPUTS), role=VmRole.BUILD)
        vm_record = self.parts.records.any(vm.id)
        assert vm_record is not None
        cleanup.add("build VM", self.parts.teardown.remove, vm_record)
        with self.store.lock():
            self.store.save(dataclasses.replace(self.store.get(record.id), build_vm=vm.id))
        vm_dir = self.parts.files.directory(vm.name)
        with BuildGuest(self.parts.hypervisor, vm.id, vm_dir / BUILD_LOG_SOCKET,
                        build_log) as guest:
            build_log.line(f"{_clock()} running the setup script as root (time limit "
                           f"{record.timeout_s} s)")
            code = guest.run(RUNNER, record.timeout_s, stop)
            build_log.line(f"{_clock()} the setup script exited with {code}")
            if code != 0:
                raise BuildFailed(f"the setup script exited with {code}")
            build_log.line(f"{_clock()} sealing: setuid bits, SSH keys, caches")
            if guest.run(SEAL, SEAL_TIMEOUT_S, stop) != 0:
                raise BuildFailed("sealing the image failed (see the build log)")
            guest.power_off(self.settings.stop_timeout_s)
        build_log.line(f"{_clock()} flattening the disk")
        disks.convert(vm_dir / DISK, "qcow2", out / "disk.qcow2")
        disks.check(out / "disk.qcow2")
        (out / "disk.qcow2").chmod(0o444)
        self.parts.teardown.remove(vm_record)

    def _publish_files(self, record: ImageRecord, out: Path, build: str) -> None:
        """The base's kernel and initrd (the image's modules are the base's) and the
        manifest."""
        base_build = self.templates.current_build(self.templates.get(record.base))
        for name in ("vmlinuz", "initrd.img"):
            try:
                os.link(base_build.path / name, out / name)
            except OSError:
                shutil.copy2(base_build.path / name, out / name)
        manifest = {"image": f"custom/{record.id}", "build": build, "base": record.base,
                    "basePath": str(base_build.path), "template": record.template,
                    "diskSizeMb": record.disk_size_mb, "builtAt": now_iso()}
        (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")

    def _snapshots(self, record: ImageRecord, build_log: BuildLog) -> None:
        """Step 5: each shape's memory snapshot, from a boot of the new image.

        :raises BuildFailed: the new image's guest did not come up.
        """
        if not self.settings.snapshot_auto_build_enabled:
            return
        template = self.templates.template_of(record)
        build = self.templates.current_build(template)
        for cpu, mem_mb in self.settings.snapshot_shape_list:
            build_log.line(f"{_clock()} saving the memory snapshot {cpu}x{mem_mb} (a boot of "
                           f"the new image)")
            try:
                self.seeds.ensure_for(template, build, cpu, mem_mb)
            except AppError as exc:
                raise BuildFailed(f"a VM of the new image did not come up: {exc.message}") \
                    from exc

    def _unpublish(self, image_id: str, build: str) -> None:
        folder = self.store.folder(image_id)
        self.store.unlink_volume(image_id)
        (folder / "current").unlink(missing_ok=True)
        shutil.rmtree(folder / build, ignore_errors=True)


def _policy(record: ImageRecord) -> str:
    if record.outbound_internet and record.allow_ips:
        return ", ".join(record.allow_ips)
    return "none"


def _clock() -> str:
    return time.strftime("%H:%M:%S", time.gmtime())
