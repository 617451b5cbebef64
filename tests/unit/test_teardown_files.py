"""VmTeardown.files: the VM's directory goes even when another process re-creates the VM's
lock file in it while it is being removed (the reaper finishing the same delete)."""
from __future__ import annotations

import shutil
import types

from app.services import teardown as teardown_service
from app.services.lifecycle import VM_LOCK_FILE
from app.services.teardown import VmTeardown


def test_a_lock_file_made_during_the_removal_does_not_keep_the_directory(tmp_path, monkeypatch):
    directory = tmp_path / "rds-12345678"
    directory.mkdir()
    (directory / "disk.qcow2").write_bytes(b"x")
    real_rmtree = shutil.rmtree
    calls = []

    def rmtree_racing_a_locker(path, ignore_errors=False):
        calls.append(path)
        real_rmtree(path, ignore_errors=ignore_errors)
        if len(calls) == 1:  # another process opened the lock file in the meantime
            directory.mkdir()
            (directory / VM_LOCK_FILE).touch()

    monkeypatch.setattr(teardown_service.shutil, "rmtree", rmtree_racing_a_locker)
    settings = types.SimpleNamespace(vms_dir=tmp_path)
    VmTeardown(settings, None, None, None, None).files("rds-12345678")
    assert not directory.exists() and len(calls) == 2
