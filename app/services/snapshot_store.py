"""SnapshotStore: the disk snapshots on disk, ``STORAGE_ROOT/snapshots/<id>/``.

Each holds ``disk.qcow2`` (never written to; new VMs get overlays on it) and ``snapshot.json``
(:data:`app.persist.SNAPSHOT_FIELDS`). A snapshot is built in a hidden staging directory and
renamed into place last, so a crash never leaves a half snapshot visible; stale staging
directories are swept like orphan VM files.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
import typing as t
import uuid
from pathlib import Path

from app.errors import InvalidRequest, SnapshotNotFound, VmStateConflict
from app.models import Snapshot, Template, VmRecord, VmSpec, VmState
from app.persist import SNAPSHOT_FIELDS, snapshot_from_json, to_json
from app.services.ownership import visible
from app.services.templates import ImageBuild, TemplateCatalog
from app.virt.qemu_access import share_with_qemu

log = logging.getLogger(__name__)
DISK = "disk.qcow2"
META = "snapshot.json"
STAGING_PREFIX = ".staging-"


class VmBase(t.NamedTuple):
    """What a new VM's disk starts from."""

    template: Template
    build: ImageBuild  # kernel and initrd to boot; the record's image_path
    backing: Path  # the file the VM's overlay is created on
    disk_size_mb: int


class SnapshotSource(t.NamedTuple):
    """A VM's disk to snapshot, as found under its locks (a local VM's or a remote host's)."""

    record: VmRecord
    state: VmState  # RUNNING or STOPPED
    size_mb: int | None  # what a copy of its disk takes; None: known once it is copied
    image: Path  # the local template image the snapshot's disk is rebased onto
    copy: t.Callable[[Path], float]  # writes the VM's disk to a path as a qcow2 that depends
    # on ``image`` alone; returns how long the guest was frozen (seconds)


def snapshottable(vm_id: str, state: VmState) -> VmState:
    """:raises VmStateConflict: unless RUNNING or STOPPED."""
    if state not in (VmState.RUNNING, VmState.STOPPED):
        raise VmStateConflict(f"VM {vm_id} is {state.value}; only a RUNNING or STOPPED VM "
                              f"can be snapshotted")
    return state


def require_unchanged(vm_id: str, state: VmState, now: VmState) -> None:
    """:raises VmStateConflict: the VM went from ``state`` to ``now`` during the copy."""
    if now is not state:
        raise VmStateConflict(f"VM {vm_id} went from {state.value} to {now.value} during "
                              f"the snapshot; nothing was kept, try again")


class SnapshotStore:
    """The snapshot directories on disk; also where VmService finds a snapshot's disk.

    :param root: ``STORAGE_ROOT/snapshots``.
    """

    def __init__(self, root: Path, templates: TemplateCatalog) -> None:
        self.root = root
        self.templates = templates

    def list(self) -> list[Snapshot]:
        found = []
        if self.root.is_dir():
            for folder in self.root.iterdir():
                if folder.name.startswith(".") or not (folder / META).is_file():
                    continue
                snapshot = self._read(folder)
                if snapshot is not None:
                    found.append(snapshot)
        return sorted(found, key=lambda s: (s.created_at, s.id))

    def get(self, snapshot_id: str) -> Snapshot:
        """:raises SnapshotNotFound: for an unknown or malformed id."""
        folder = self._folder(snapshot_id)
        snapshot = self._read(folder) if (folder / META).is_file() else None
        if snapshot is None:
            raise SnapshotNotFound(f"snapshot {snapshot_id} not found")
        return snapshot

    def vm_base(self, spec: VmSpec) -> VmBase:
        """Where a VM created with ``spec.snapshot_id`` starts: the snapshot's disk, its
        template, and the image build it was taken on (whose kernel matches the modules on that
        disk, even after the image was rebuilt).

        :raises SnapshotNotFound: unknown snapshot, or another API key's.
        :raises InvalidRequest: ``imageId`` names another template, or ``diskSizeMb`` is
            smaller than the snapshot's disk.
        :raises ImageNotReady: the snapshot's image build is gone from this host.
        """
        snapshot = self.get(spec.snapshot_id or "")
        if not visible(snapshot.owner_key):  # another API key's: it does not exist for us
            raise SnapshotNotFound(f"snapshot {snapshot.id} not found")
        if spec.image_id not in (None, snapshot.image_id):
            raise InvalidRequest(f"imageId {spec.image_id!r} differs from the template of "
                                 f"snapshot {snapshot.id} ({snapshot.image_id!r}); leave "
                                 f"imageId out")
        if spec.disk_size_mb is not None and spec.disk_size_mb < snapshot.disk_size_mb:
            raise InvalidRequest(f"diskSizeMb must be at least {snapshot.disk_size_mb} for "
                                 f"snapshot {snapshot.id}")
        for folder in (self.root, self._folder(snapshot.id)):  # snapshots of older versions
            share_with_qemu(folder)
        return VmBase(template=self.templates.get(snapshot.image_id),
                      build=self.templates.build_at(Path(snapshot.image_path).parent),
                      backing=Path(snapshot.disk_path),
                      disk_size_mb=spec.disk_size_mb or snapshot.disk_size_mb)

    @contextlib.contextmanager
    def staging(self) -> t.Iterator[Path]:
        """A fresh hidden directory next to the snapshots, removed if the body fails."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        share_with_qemu(self.root)  # a snapshot's disk backs the disks of VMs made from it
        folder = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=self.root))
        share_with_qemu(folder)
        try:
            yield folder
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise

    def publish(self, staging: Path, snapshot: Snapshot) -> None:
        """Write ``snapshot.json`` and rename the staging directory to the snapshot's id."""
        (staging / META).write_text(
            json.dumps(to_json(snapshot, SNAPSHOT_FIELDS), indent=2) + "\n")
        for name in (DISK, META):  # on disk before the rename makes them visible
            _fsync(staging / name)
        os.rename(staging, self._folder(snapshot.id))
        _fsync(self.root)

    def remove(self, snapshot_id: str) -> None:
        folder = self._folder(snapshot_id)
        # Rename first: a half-deleted snapshot is never visible under its id.
        doomed = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=self.root))
        os.rename(folder, doomed / "old")
        shutil.rmtree(doomed, ignore_errors=True)

    def remove_stale_staging(self, min_age_s: float) -> list[str]:
        """Delete staging directories older than ``min_age_s`` (a crash mid-snapshot)."""
        removed = []
        if self.root.is_dir():
            now = time.time()
            for folder in self.root.glob(STAGING_PREFIX + "*"):
                if now - folder.stat().st_mtime >= min_age_s:
                    shutil.rmtree(folder, ignore_errors=True)
                    removed.append(f"files {folder}")
        return removed

    def disk_path(self, snapshot_id: str) -> Path:
        return self._folder(snapshot_id) / DISK

    def _folder(self, snapshot_id: str) -> Path:
        try:
            return self.root / str(uuid.UUID(snapshot_id))
        except (ValueError, TypeError):
            raise SnapshotNotFound(f"snapshot {snapshot_id} not found") from None

    def _read(self, folder: Path) -> Snapshot | None:
        try:
            data = json.loads((folder / META).read_text())
            return snapshot_from_json(data, disk_path=str(folder / DISK))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("unreadable snapshot skipped path=%s error=%s", folder, exc)
            return None


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
