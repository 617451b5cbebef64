"""QEMU runs as an unprivileged user (``libvirt-qemu``, group ``kvm``; deploy/host-setup.sh
configures libvirt so): the directories whose files it opens itself must let that group in.

libvirt's DAC driver hands the files a VM uses (disk and backing chain, kernel, initrd, fw_cfg
files) to the QEMU user while the VM runs and gives them back afterwards (``dynamic_ownership``,
``remember_owner``), but it does not touch directories: a VM's directory must be searchable, and
writable where QEMU creates a socket, by the QEMU group. Nothing here is world-readable.
"""
from __future__ import annotations

import grp
import os
from pathlib import Path

QEMU_GROUP = "kvm"  # Debian's libvirt-qemu user is in it (and /dev/kvm belongs to it)
QEMU_WRITABLE = "qemu"  # a VM directory's subdirectory where QEMU creates files (sockets)


def qemu_gid(group: str = QEMU_GROUP) -> int | None:
    """The QEMU group's id, or None on a host without it (then QEMU runs as root)."""
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        return None


def share_with_qemu(path: Path, writable: bool = False, group: str = QEMU_GROUP) -> None:
    """Let QEMU's group search (and with ``writable``, create files in) the directory ``path``:
    root-owned, mode 0750 or 0770, group ``group``."""
    gid = qemu_gid(group)
    if gid is None or os.geteuid() != 0:  # no such group, or not root (unit tests)
        return
    os.chown(path, 0, gid)
    os.chmod(path, 0o770 if writable else 0o750)


def open_storage_root(root: Path) -> None:
    """Make the storage root (and its parents) if missing, and let QEMU's group search it: the
    disks, kernels and snapshots QEMU opens are below it. A root that QEMU's group can
    already pass (searchable by others, or by its group when that is QEMU's) stays as it is.

    Whoever comes first may create it (the state database does, 0700): on a fresh host the
    first VM then failed with "Cannot access storage file ... Permission denied"."""
    root.mkdir(parents=True, exist_ok=True)
    mode, gid = root.stat().st_mode, root.stat().st_gid
    if mode & 0o001 or (gid == qemu_gid() and mode & 0o010):
        return
    share_with_qemu(root)


def prepare_vm_dir(vm_dir: Path) -> Path:
    """Open a VM's directory to QEMU's group for reading, and give QEMU a subdirectory of it
    to create files in (its unix sockets); returns that subdirectory.

    QEMU never writes the VM's directory itself: root-owned daemons open paths there (virtlogd
    the console log), and a compromised QEMU must not be able to plant links for them.
    """
    share_with_qemu(vm_dir)
    writable = vm_dir / QEMU_WRITABLE
    writable.mkdir(mode=0o700, exist_ok=True)
    share_with_qemu(writable, writable=True)
    return writable
