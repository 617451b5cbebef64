"""Receiving the uploads an image's create announced: its files (a tar.gz) and its disk.

Both are written next to the image as ``.*.part`` first (a fresh name per upload) and checked;
the caller moves the checked file into place, under the image's lock, only if the image still
awaits it. Nothing of a refused upload stays.

- **Files** are checked and re-packed like a VM upload (:mod:`app.services.archives`: no
  absolute names, ``..``, devices or links out, bounded sizes): the build VM gets a tar that
  Python wrote, with the accepted entries only.
- **A disk** is read as raw or qcow2 only, decided from its header
  (:mod:`app.virt.disk_formats`; a qcow2 naming a backing file or an external data file, i.e.
  a host path, is refused), then ``qemu-img info`` with that format must agree, and its size
  must be within ``MAX_IMAGE_UPLOAD_MB`` (bytes sent) and ``MAX_DISK_SIZE_MB`` (virtual).
"""
from __future__ import annotations

import logging
import math
import typing as t
import uuid
from pathlib import Path

from app.config import Settings
from app.errors import InvalidRequest, PayloadTooLarge
from app.services.archives import ArchiveLimits, repack_archive
from app.virt import disks
from app.virt.disk_formats import HEADER_BYTES, UnsafeImage, check_info, detect_format

log = logging.getLogger(__name__)
CHUNK = 1024 * 1024
MIB = 1024 * 1024


def receive(body: t.BinaryIO, target: Path, limit: int, what: str) -> int:
    """Write ``body`` to ``target``, at most ``limit`` bytes; returns how many.

    :raises PayloadTooLarge: over ``limit`` (``target`` is removed).
    :raises InvalidRequest: an empty body.
    """
    size = 0
    try:
        with open(target, "wb") as out:
            while chunk := body.read(CHUNK):
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"{what} is larger than {limit} bytes")
                out.write(chunk)
        if size == 0:
            raise InvalidRequest(f"{what} is empty")
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    return size


def part_for(target: Path) -> Path:
    """A fresh name next to ``target`` for an upload on its way (two uploads never share one)."""
    return target.with_name(f".{target.name}.{uuid.uuid4().hex[:12]}.part")


def accept_files(settings: Settings, body: t.BinaryIO, target: Path) -> Path:
    """Receive a tar.gz of files for the build, checked and re-packed (a plain tar); returns
    the checked file next to ``target``, for the caller to move into place.

    :raises InvalidRequest: an unsafe or corrupt archive.
    :raises PayloadTooLarge: over ``MAX_UPLOAD_BYTES`` or the archive limits.
    """
    part = part_for(target)
    limits = ArchiveLimits(settings.max_upload_uncompressed_bytes, settings.max_upload_entries)
    receive(body, part, settings.max_upload_bytes, "the files upload")
    tar_part = part_for(target)
    try:
        with open(part, "rb") as source, open(tar_part, "wb") as out:
            repack_archive(source, limits, out)  # checks every entry as it goes
    except BaseException:
        tar_part.unlink(missing_ok=True)
        raise
    finally:
        part.unlink(missing_ok=True)
    return tar_part


def accept_disk(settings: Settings, body: t.BinaryIO, target: Path) -> tuple[Path, str, int]:
    """Receive a disk image; returns the checked file next to ``target`` (for the caller to
    move into place), its format and its virtual size in MiB.

    :raises InvalidRequest: another format than raw/qcow2, a backing or data file,
        encryption, a raw disk without ext4, or a virtual size over ``MAX_DISK_SIZE_MB``.
    :raises PayloadTooLarge: more than ``MAX_IMAGE_UPLOAD_MB`` sent.
    """
    part = part_for(target)
    receive(body, part, settings.max_image_upload_mb * MIB, "the disk upload")
    try:
        with open(part, "rb") as handle:
            header = handle.read(HEADER_BYTES)
        image_format = detect_format(header)
        size = check_info(disks.info(part, image_format), image_format,
                          settings.max_disk_size_mb * MIB)
        part.chmod(0o444)
    except BaseException as exc:
        part.unlink(missing_ok=True)
        if isinstance(exc, UnsafeImage):
            raise InvalidRequest(f"disk refused: {exc}") from None
        raise
    log.info("disk upload accepted path=%s format=%s virtual_mb=%s", target, image_format,
             math.ceil(size / MIB))
    return part, image_format, math.ceil(size / MIB)
