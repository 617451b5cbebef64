"""ImageStore: custom images on disk, and which image is the default.

``STORAGE_ROOT/images/custom/<id>/`` holds one custom image:

- ``image.json``: its record (:data:`app.persist.IMAGE_FIELDS`), replaced atomically;
- ``setup.sh``, ``files.tar`` (the uploaded files, checked and re-packed) and ``upload.img``
  (an uploaded disk, checked): the build's inputs, removed once it is READY;
- ``build.log``: the build's output, host steps and setup script alike;
- ``<build>/`` once READY: ``disk.qcow2`` (flattened, read-only: the backing file of its VMs'
  disks), ``vmlinuz``, ``initrd.img`` and ``manifest.json``, the layout of the built-in
  image builds, with ``current`` pointing at it, so :class:`TemplateCatalog` reads both alike.

``STORAGE_ROOT/images/volumes/<id>.qcow2`` links to each image's disk, built-in ones too: the
libvirt storage pool ``rds-images`` over that directory is how ``virsh vol-list`` shows them.
``STORAGE_ROOT/images/default-image`` names the default image once one was set
(``DEFAULT_IMAGE_ID`` otherwise). Record changes happen under a host-wide lock
(``images/custom/.lock``), so an upload, a delete and the builder never act on the same
image at once.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import typing as t
from pathlib import Path

from app.errors import HostBusy, ImageNotFound
from app.models import ImageRecord
from app.persist import IMAGE_FIELDS, image_from_json, to_json
from app.services.locks import host_lock
from app.virt.qemu_access import share_with_qemu

log = logging.getLogger(__name__)
IMAGE_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")  # as a template's id
META, SETUP, FILES, UPLOAD, LOG, INPUTS = ("image.json", "setup.sh", "files.tar", "upload.img",
                                           "build.log", "inputs.tar")
LOCK_TIMEOUT = 30.0
MAX_LOG_BYTES = 8 * 1024 * 1024  # beyond it the oldest half of a build log is dropped
TRASH_PREFIX = ".deleting-"
STAGING_PREFIX = ".build-"


class ImageStore:
    """Custom image directories under ``root`` (``STORAGE_ROOT/images/custom``).

    :param volumes: the directory the ``rds-images`` pool lists.
    :param default_file: where a chosen default image is named.
    :param fallback_default: the default image when none was chosen (``DEFAULT_IMAGE_ID``).
    """

    def __init__(self, root: Path, volumes: Path, default_file: Path,
                 fallback_default: str) -> None:
        self.root = root
        self.volumes = volumes
        self.default_file = default_file
        self.fallback_default = fallback_default

    # Records ##############################################################################

    def folder(self, image_id: str) -> Path:
        """:raises ImageNotFound: for a malformed id."""
        if not isinstance(image_id, str) or not IMAGE_ID.match(image_id):
            raise ImageNotFound(f"image {image_id} not found")
        return self.root / image_id

    def load(self, image_id: str) -> ImageRecord | None:
        try:
            data = json.loads((self.folder(image_id) / META).read_text())
            return image_from_json(data)
        except ImageNotFound:
            return None
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            if not isinstance(exc, FileNotFoundError):
                log.warning("unreadable image record skipped image=%s error=%s", image_id, exc)
            return None

    def get(self, image_id: str) -> ImageRecord:
        """:raises ImageNotFound: unknown or malformed id."""
        record = self.load(image_id)
        if record is None:
            raise ImageNotFound(f"image {image_id} not found")
        return record

    def all(self) -> list[ImageRecord]:
        """Every custom image, oldest first."""
        if not self.root.is_dir():
            return []
        records = [self.load(path.name) for path in self.root.iterdir()
                   if path.is_dir() and not path.name.startswith(".")]
        return sorted((r for r in records if r is not None), key=lambda r: (r.created_at, r.id))

    def create(self, record: ImageRecord, setup: str) -> None:
        """Make the image's directory with its record and setup script.

        :raises FileExistsError: when the directory exists already.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        share_with_qemu(self.root)
        folder = self.folder(record.id)
        folder.mkdir(mode=0o700)
        share_with_qemu(folder)  # QEMU reads the build's inputs and, later, its disk
        (folder / SETUP).write_text(setup)
        self.save(record)

    def save(self, record: ImageRecord) -> None:
        """Replace the record (a temporary file renamed over it: never half-written)."""
        folder = self.folder(record.id)
        fd, tmp = tempfile.mkstemp(prefix=".image-", dir=folder)
        with os.fdopen(fd, "w") as handle:
            json.dump(to_json(record, IMAGE_FIELDS), handle, indent=2)
            handle.write("\n")
        os.replace(tmp, folder / META)

    @contextlib.contextmanager
    def lock(self) -> t.Iterator[None]:
        """Host-wide: one record change at a time.

        :raises HostBusy: when another process holds it for ``LOCK_TIMEOUT``.
        """
        with host_lock(self.root / ".lock", LOCK_TIMEOUT,
                       lambda: HostBusy("the host is busy changing images; retry")):
            yield

    def path(self, image_id: str, name: str) -> Path:
        """A file of the image's directory (``SETUP``, ``FILES``, ``UPLOAD``, ``LOG``, ...)."""
        return self.folder(image_id) / name

    def drop_inputs(self, image_id: str) -> None:
        for name in (SETUP, FILES, UPLOAD, INPUTS):
            self.path(image_id, name).unlink(missing_ok=True)

    # Builds ###############################################################################

    def staging(self, image_id: str) -> Path:
        """A fresh hidden directory in the image's directory for a build to fill."""
        path = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=self.folder(image_id)))
        share_with_qemu(path)
        return path

    def publish(self, image_id: str, staging: Path, build: str) -> Path:
        """Move a finished build into place, point ``current`` at it and link its disk into
        the volumes directory; returns the build's directory."""
        folder = self.folder(image_id)
        target = folder / build
        staging.rename(target)
        link = folder / ".current"
        link.unlink(missing_ok=True)
        link.symlink_to(build)
        os.replace(link, folder / "current")
        self.link_volume(image_id, Path("..") / "custom" / image_id / "current" / "disk.qcow2")
        return target

    def remove_stale_staging(self, image_id: str) -> None:
        for path in self.folder(image_id).glob(STAGING_PREFIX + "*"):
            shutil.rmtree(path, ignore_errors=True)

    def remove(self, image_id: str) -> None:
        """Remove the image: its volume link, then its directory (renamed away first, so a
        half-removed image is never seen under its id)."""
        self.unlink_volume(image_id)
        folder = self.folder(image_id)
        trash = Path(tempfile.mkdtemp(prefix=TRASH_PREFIX, dir=self.root))
        os.rename(folder, trash / image_id)
        shutil.rmtree(trash, ignore_errors=True)

    # The volumes directory ################################################################

    def link_volume(self, image_id: str, target: Path) -> None:
        """``volumes/<id>.qcow2`` -> ``target`` (relative to the volumes directory)."""
        self.volumes.mkdir(parents=True, exist_ok=True)
        link = self.volumes / f".{image_id}.link"
        link.unlink(missing_ok=True)
        link.symlink_to(target)
        os.replace(link, self.volumes / f"{image_id}.qcow2")

    def unlink_volume(self, image_id: str) -> None:
        (self.volumes / f"{image_id}.qcow2").unlink(missing_ok=True)

    # The default image ####################################################################

    def default_id(self) -> str:
        try:
            chosen = self.default_file.read_text().strip()
        except OSError:
            return self.fallback_default
        return chosen if IMAGE_ID.match(chosen) else self.fallback_default

    def set_default(self, image_id: str) -> None:
        """Name ``image_id`` the default for every process (the fallback: forget the choice)."""
        if image_id == self.fallback_default:
            self.default_file.unlink(missing_ok=True)
            return
        self.default_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.default_file.with_name(f".{self.default_file.name}.tmp")
        tmp.write_text(image_id + "\n")
        os.replace(tmp, self.default_file)


class BuildLog:
    """A build's log file, appended to by the builder's threads (host steps, the guest's
    output); past :data:`MAX_LOG_BYTES` its oldest half is dropped."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._at_line_start = True

    def write(self, data: bytes) -> None:
        with self._lock:
            self._append(data)

    def line(self, text: str) -> None:
        """A line of the builder's own (``==> ...``), on a line of its own."""
        with self._lock:
            self._append((b"" if self._at_line_start else b"\n") + f"==> {text}\n".encode())

    def _append(self, data: bytes) -> None:
        if not data:
            return
        with open(self.path, "ab") as handle:
            handle.write(data)
            size = handle.tell()
        self._at_line_start = data.endswith(b"\n")
        if size > MAX_LOG_BYTES:
            with open(self.path, "rb") as handle:
                handle.seek(-MAX_LOG_BYTES // 2, os.SEEK_END)
                tail = handle.read()
            tmp = self.path.with_name(f".{self.path.name}.tmp")
            tmp.write_bytes(b"[... earlier output dropped ...]\n" + tail)
            os.replace(tmp, self.path)


def read_tail(path: Path, lines: int, max_bytes: int = 1024 * 1024,
              end: int | None = None) -> tuple[list[str], bool]:
    """The last ``lines`` lines of a log (from at most its last ``max_bytes``), as text, and
    whether earlier ones were left out.

    :param end: read the log as it was when it had this size (a follower goes on from there).
    """
    try:
        with open(path, "rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            size = size if end is None else min(end, size)
            handle.seek(max(0, size - max_bytes))
            data = handle.read(min(max_bytes, size))
    except FileNotFoundError:
        return [], False
    text = data.decode("utf-8", errors="replace")
    found = text.splitlines()
    if size > max_bytes and found:
        found = found[1:]  # the first line was cut by the byte window
    return found[-lines:] if lines else [], len(found) > lines or size > max_bytes
