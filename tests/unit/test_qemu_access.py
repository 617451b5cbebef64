"""Directories QEMU (an unprivileged user in group kvm) must pass: app.virt.qemu_access."""
from __future__ import annotations

import os
import stat

import pytest

from app.virt.qemu_access import open_storage_root, qemu_gid

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or qemu_gid() is None,
                                reason="needs root and the kvm group (as the service)")


def test_a_storage_root_made_private_first_is_opened_to_qemus_group(tmp_path):
    """On a fresh host the state database made the root 0700 before any image or VM: QEMU
    could not reach the disks below it."""
    root = tmp_path / "state"
    root.mkdir(mode=0o700)
    open_storage_root(root)
    info = root.stat()
    assert stat.S_IMODE(info.st_mode) == 0o750 and info.st_gid == qemu_gid()


def test_a_missing_root_is_made_and_an_open_one_left_alone(tmp_path):
    made = tmp_path / "a" / "b"
    open_storage_root(made)
    assert made.is_dir() and made.stat().st_mode & 0o001  # as mkdir -p made it (umask 022)
    open_root = tmp_path / "open"
    open_root.mkdir()
    open_root.chmod(0o755)
    open_storage_root(open_root)
    assert stat.S_IMODE(open_root.stat().st_mode) == 0o755 and open_root.stat().st_gid == 0
