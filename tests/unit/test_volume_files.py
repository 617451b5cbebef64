"""A remote host's volume copied into a local file (app/virt/volume_files.py) over the fake
hypervisor's download: whole, sparse, from the first byte again when libvirt sends it again,
bounded."""
from __future__ import annotations

import pytest

from app.errors import HypervisorError, InsufficientStorage
from app.virt import volume_files
from tests.unit.fakes import FakeHypervisor

DATA = b"head" + bytes(3 * volume_files.ZERO_BLOCK) + b"tail" + bytes(100)


@pytest.fixture
def hypervisor():
    fake = FakeHypervisor()
    fake.volumes[("rds-vms", "rds-1.qcow2")] = DATA
    return fake


@pytest.mark.parametrize("attempts", [1, 3])
def test_the_whole_volume_lands_in_the_file_with_holes(hypervisor, tmp_path, attempts):
    hypervisor.stream_attempts = attempts
    target = tmp_path / "disk.qcow2"
    size = volume_files.download_to_file(hypervisor, "rds-vms", "rds-1.qcow2", target,
                                         timeout=5, max_bytes=len(DATA))
    assert size == len(DATA) and target.read_bytes() == DATA
    assert target.stat().st_blocks * 512 < len(DATA)  # the zero blocks are holes


def test_a_volume_larger_than_allowed_is_refused(hypervisor, tmp_path):
    with pytest.raises(HypervisorError, match="larger than 100 bytes"):
        volume_files.download_to_file(hypervisor, "rds-vms", "rds-1.qcow2",
                                      tmp_path / "disk.qcow2", timeout=5, max_bytes=100)


def test_a_missing_volume_is_an_error(hypervisor, tmp_path):
    with pytest.raises(HypervisorError, match="no volume"):
        volume_files.download_to_file(hypervisor, "rds-vms", "rds-2.qcow2",
                                      tmp_path / "disk.qcow2", timeout=5, max_bytes=1 << 20)


def test_a_full_filesystem_is_507(hypervisor, tmp_path, monkeypatch):
    def full(_handle, _data):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(volume_files, "_write_sparse", full)
    with pytest.raises(InsufficientStorage, match="storage is full"):
        volume_files.download_to_file(hypervisor, "rds-vms", "rds-1.qcow2",
                                      tmp_path / "disk.qcow2", timeout=5, max_bytes=1 << 20)
