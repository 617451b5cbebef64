"""qcow2 disks: overlays on a template's read-only image, snapshot copies of them, and the
flattened disks of custom images.

Every external command runs from an argv list with a timeout; failures become
:class:`HypervisorError`.
"""
from __future__ import annotations

import json
import logging
import subprocess
from pathlib import Path

from app.errors import DISK_FULL_MESSAGES, HypervisorError, disk_full

log = logging.getLogger(__name__)
QEMU_IMG_TIMEOUT = 60.0
COPY_TIMEOUT = 120.0  # a snapshot copies a VM's overlay: its size is what the guest wrote
REBASE_TIMEOUT = 120.0
CONVERT_TIMEOUT = 900.0  # a custom image's disk: up to a few GiB read through its chain


def create_overlay(backing: Path, overlay: Path, size_mb: int,
                   timeout: float = QEMU_IMG_TIMEOUT) -> None:
    """Create ``overlay`` (qcow2) backed by ``backing`` with a virtual size of ``size_mb``.

    :raises HypervisorError: when qemu-img fails or times out.
    :raises InsufficientStorage: the filesystem is full (so is every helper here).
    """
    _qemu_img(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(backing),
               str(overlay), f"{size_mb}M"], timeout)
    log.debug("overlay created path=%s backing=%s size_mb=%s", overlay, backing, size_mb)


def backing_file(image: Path, timeout: float = QEMU_IMG_TIMEOUT) -> Path | None:
    """The file ``image`` is directly backed by, or None."""
    info = json.loads(_qemu_img(["info", "--output=json", "-U", str(image)], timeout))
    name = info.get("full-backing-filename") or info.get("backing-filename")
    return Path(name) if name else None


def copy_image(source: Path, target: Path, timeout: float = COPY_TIMEOUT) -> None:
    """Copy a qcow2 file byte for byte (sparse; its backing file reference is kept).

    A plain copy ignores QEMU's lock on a running VM's overlay, so the caller makes sure nothing
    writes to ``source`` meanwhile: the VM is stopped or its guest filesystems are frozen.

    :raises HypervisorError: when the copy fails or times out.
    """
    _run(["cp", "--sparse=always", "--", str(source), str(target)], timeout)


def rebase(image: Path, backing: Path, timeout: float = REBASE_TIMEOUT,
           unsafe: bool = False) -> None:
    """Make ``image`` depend on ``backing`` alone (qemu-img's safe mode).

    Every cluster where ``image``'s old backing chain reads differently from ``backing`` is
    first copied into ``image``, so the guest sees the same disk; the old chain may be deleted
    afterwards.

    :param unsafe: only write ``backing``'s name into ``image``'s header (``-u``; the old
        backing file is not opened, it may be on another host): for a ``backing`` whose
        contents are the old one's, byte for byte.
    :raises HypervisorError: when qemu-img fails or times out.
    """
    _qemu_img(["rebase", "-q", *(["-u"] if unsafe else []), "-f", "qcow2", "-F", "qcow2",
               "-b", str(backing), str(image)], timeout)
    log.debug("image rebased path=%s backing=%s unsafe=%s", image, backing, unsafe)


def convert(source: Path, source_format: str, target: Path,
            timeout: float = CONVERT_TIMEOUT) -> None:
    """Write ``source`` (read through its backing chain, if any) as a standalone qcow2
    ``target``: no backing file, no external data file, no internal snapshots.

    :param source_format: ``raw`` or ``qcow2``, never probed: a raw file that looks like a
        qcow2 header would otherwise be read as one (and could name any host file).
    :raises HypervisorError: when qemu-img fails or times out.
    """
    _qemu_img(["convert", "-q", "-f", source_format, "-O", "qcow2", str(source), str(target)],
              timeout)
    log.debug("image converted source=%s target=%s", source, target)


def info(image: Path, image_format: str, timeout: float = QEMU_IMG_TIMEOUT) -> dict:
    """``qemu-img info`` of ``image`` read as ``image_format`` (never probed); qemu-img does
    not open backing files for it.

    :raises HypervisorError: when qemu-img fails (e.g. the file is not of that format).
    """
    return json.loads(_qemu_img(["info", "--output=json", "-f", image_format, str(image)],
                                timeout))


def check(image: Path, timeout: float = QEMU_IMG_TIMEOUT) -> None:
    """Verify a qcow2's metadata; leaked clusters (harmless) are repaired.

    :raises HypervisorError: when the image is corrupt or qemu-img fails.
    """
    _qemu_img(["check", "-q", "-r", "leaks", "-f", "qcow2", str(image)], timeout)


def _qemu_img(args: list[str], timeout: float) -> str:
    return _run(["qemu-img", *args], timeout)


def _run(argv: list[str], timeout: float) -> str:
    what = f"{argv[0]} {argv[1]}" if argv[0] == "qemu-img" else argv[0]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              check=False)
    except subprocess.TimeoutExpired:
        raise HypervisorError(f"{what} timed out after {timeout:.0f}s") from None
    except OSError as exc:
        raise HypervisorError(f"{argv[0]} cannot run: {exc}") from exc
    if done.returncode != 0:
        for full in DISK_FULL_MESSAGES:
            if full in done.stderr:
                raise disk_full(full)
        raise HypervisorError(f"{what} failed: {done.stderr.strip()}")
    return done.stdout
