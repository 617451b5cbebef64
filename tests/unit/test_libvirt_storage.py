"""The Hypervisor's storage pool and volume calls (app/virt/libvirt_storage.py) against
libvirt's own test driver: a missing pool or volume is "none", not an error, where the call
says so. Needs libvirt-python; without it these tests are skipped, not passed."""
from __future__ import annotations

import pytest

pytest.importorskip("libvirt", reason="libvirt-python is not installed here")

from app.errors import HypervisorError
from app.virt.connection import Hypervisor
from app.virt.pool_xml import build_pool_xml, build_volume_xml
from tests.unit.test_libvirt_adapter import NODE

POOL = "rds-vms"


@pytest.fixture
def hypervisor(tmp_path) -> Hypervisor:
    (tmp_path / "node.xml").write_text(NODE)
    return Hypervisor(f"test://{tmp_path / 'node.xml'}", timeout=5)


@pytest.fixture
def pool(hypervisor, tmp_path):
    assert hypervisor.ensure_storage_pool(POOL, build_pool_xml(POOL, str(tmp_path / "pool")))
    return POOL


def test_a_pool_is_defined_once_and_kept_running(hypervisor, tmp_path):
    xml = build_pool_xml(POOL, str(tmp_path / "pool"))
    assert hypervisor.ensure_storage_pool(POOL, xml) is True
    assert hypervisor.ensure_storage_pool(POOL, xml) is False
    hypervisor.refresh_storage_pool(POOL)
    hypervisor.refresh_storage_pool("no-such-pool")  # left alone


def test_a_missing_pool_has_no_volumes_and_takes_none(hypervisor):
    assert hypervisor.list_volumes("no-such-pool") == []
    assert hypervisor.volume_path("no-such-pool", "a.qcow2") is None
    hypervisor.delete_volume("no-such-pool", "a.qcow2")  # nothing to delete
    with pytest.raises(HypervisorError, match="storage pool 'no-such-pool' is not defined"):
        hypervisor.create_volume("no-such-pool", build_volume_xml("a.qcow2", 1024))


def test_a_volume_is_created_found_and_deleted(hypervisor, pool):
    assert hypervisor.list_volumes(pool) == []
    assert hypervisor.volume_path(pool, "a.raw") is None
    path = hypervisor.create_volume(pool, build_volume_xml("a.raw", 1024))
    assert path.endswith("/a.raw")
    assert hypervisor.list_volumes(pool) == ["a.raw"]
    assert hypervisor.volume_path(pool, "a.raw") == path
    hypervisor.delete_volume(pool, "a.raw")
    hypervisor.delete_volume(pool, "a.raw")  # already gone: fine
    assert hypervisor.list_volumes(pool) == [] and hypervisor.volume_path(pool, "a.raw") is None


def test_a_volume_missing_for_download_is_an_error(hypervisor, pool):
    with pytest.raises(HypervisorError, match="no volume 'b.raw' in storage pool 'rds-vms'"):
        hypervisor.download_volume(pool, "b.raw", lambda: lambda data: None, timeout=5)


def test_a_volume_deleted_by_another_client_between_lookup_and_delete_is_fine(
        hypervisor, pool, monkeypatch):
    """Two deletes of one remote VM at once (two managers, or a delete and the reaper): the
    second finds the volume, the first deletes it, the second's delete must not fail."""
    from app.virt import libvirt_storage

    hypervisor.create_volume(pool, build_volume_xml("a.raw", 1024))
    found = libvirt_storage._volume

    def found_then_deleted_elsewhere(conn, pool_name, name):
        volume = found(conn, pool_name, name)
        if volume is not None:
            conn.storagePoolLookupByName(pool_name).storageVolLookupByName(name).delete(0)
        return volume
    monkeypatch.setattr(libvirt_storage, "_volume", found_then_deleted_elsewhere)
    hypervisor.delete_volume(pool, "a.raw")
    monkeypatch.undo()
    assert hypervisor.list_volumes(pool) == []
