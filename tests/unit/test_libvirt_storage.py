"""The Hypervisor's storage pool and volume calls (app/virt/libvirt_storage.py) against
libvirt's own test driver: a missing pool or volume is "none", not an error, where the call
says so. Needs libvirt-python; without it these tests are skipped, not passed."""
from __future__ import annotations

import pytest

pytest.importorskip("libvirt", reason="libvirt-python is not installed here")

import libvirt

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


def test_the_tail_of_a_missing_volume_or_pool_is_none(hypervisor, pool):
    assert hypervisor.volume_tail(pool, "rds-1.console.log", 1024, timeout=5) is None
    assert hypervisor.volume_tail("no-such-pool", "rds-1.console.log", 1024, timeout=5) is None


# The tail's download (libvirt's test driver has no volume streams) ########################

def _error(code: int, message: str) -> libvirt.libvirtError:
    error = libvirt.libvirtError(message)
    error.err = (code, libvirt.VIR_FROM_STORAGE, message, 2, message, None, None, 0, 0)
    return error


class _Stream:
    def __init__(self) -> None:
        self.volume: _Volume | None = None
        self.aborted = False

    def recvAll(self, handler, opaque):  # noqa: N802 - libvirt's name
        offset, length = self.volume.asked[-1]
        data = self.volume.data[offset:offset + length]
        for at in range(0, len(data), 1000):
            handler(self, data[at:at + 1000], opaque)

    def finish(self):
        pass

    def abort(self):
        self.aborted = True


class _Volume:
    def __init__(self, data: bytes, mtime: str | None = "1700000000.250000000") -> None:
        self.data, self.mtime = data, mtime
        self.asked: list[tuple[int, int]] = []
        self.gone = False

    def XMLDesc(self, _flags):  # noqa: N802
        times = f"<timestamps><mtime>{self.mtime}</mtime></timestamps>" if self.mtime else ""
        return (f"<volume type='file'><name>v</name><capacity unit='bytes'>{len(self.data)}"
                f"</capacity><target><path>/p/v</path>{times}</target></volume>")

    def download(self, stream, offset, length, _flags):
        if self.gone:  # deleted by another client since its lookup
            raise _error(libvirt.VIR_ERR_NO_STORAGE_VOL, "Storage volume not found")
        self.asked.append((offset, length))
        stream.volume = self


class _Pool:
    def __init__(self, volumes: dict[str, _Volume]) -> None:
        self.volumes = volumes
        self.refreshes = 0
        self.refusals: list[libvirt.libvirtError] = []

    def isActive(self):  # noqa: N802
        return True

    def refresh(self, _flags):
        if self.refusals:
            raise self.refusals.pop(0)
        self.refreshes += 1

    def storageVolLookupByName(self, name):  # noqa: N802
        if name not in self.volumes:
            raise _error(libvirt.VIR_ERR_NO_STORAGE_VOL, f"no storage vol with name {name}")
        return self.volumes[name]


class _Conn:
    def __init__(self, pool: _Pool) -> None:
        self.pool = pool
        self.streams: list[_Stream] = []

    def storagePoolLookupByName(self, _name):  # noqa: N802
        return self.pool

    def newStream(self, _flags):  # noqa: N802
        self.streams.append(_Stream())
        return self.streams[-1]


@pytest.fixture
def streamed(hypervisor, monkeypatch):
    """The hypervisor over a connection whose pool ``rds-vms`` holds volume ``log``."""
    conn = _Conn(_Pool({"log": _Volume(b"")}))
    monkeypatch.setattr(hypervisor, "_connection", lambda: conn)
    return conn


def test_the_tail_is_the_last_bytes_downloaded_after_a_refresh(hypervisor, streamed):
    log = streamed.pool.volumes["log"]
    log.data = bytes(range(256)) * 40  # 10240 bytes
    tail = hypervisor.volume_tail(POOL, "log", 4096, timeout=5)
    assert log.asked == [(10240 - 4096, 4096)] and streamed.pool.refreshes == 1
    assert (tail.data, tail.start, tail.modified) == (log.data[-4096:], 6144, 1700000000.25)
    log.data, log.mtime = b"short\n", None
    tail = hypervisor.volume_tail(POOL, "log", 4096, timeout=5)
    assert log.asked[-1] == (0, 6) and (tail.data, tail.start, tail.modified) == \
        (b"short\n", 0, None)
    log.data = b""  # nothing to read: no download (a length of 0 would read it all)
    assert hypervisor.volume_tail(POOL, "log", 4096, timeout=5).data == b""
    assert len(log.asked) == 2 and len(streamed.streams) == 2
    log.data, log.gone = b"x\n", True
    assert hypervisor.volume_tail(POOL, "log", 4096, timeout=5) is None
    assert streamed.streams[-1].aborted
    assert hypervisor.volume_tail(POOL, "other", 4096, timeout=5) is None


def test_a_refresh_refused_while_a_volume_is_made_is_retried(hypervisor, streamed, monkeypatch):
    from app.virt import libvirt_storage

    monkeypatch.setattr(libvirt_storage, "REFRESH_RETRY_S", 0.01)
    busy = "internal error: pool 'rds-vms' has asynchronous jobs running."
    streamed.pool.refusals = [_error(libvirt.VIR_ERR_INTERNAL_ERROR, busy)] * 2
    streamed.pool.volumes["log"].data = b"up\n"
    assert hypervisor.volume_tail(POOL, "log", 4096, timeout=5).data == b"up\n"
    streamed.pool.refusals = [_error(libvirt.VIR_ERR_INTERNAL_ERROR, busy)] * 1000
    with pytest.raises(HypervisorError, match="asynchronous jobs"):
        hypervisor.volume_tail(POOL, "log", 4096, timeout=0.2)
    streamed.pool.refusals = [_error(libvirt.VIR_ERR_OPERATION_FAILED, "cannot open dir")]
    with pytest.raises(HypervisorError, match="cannot open dir"):
        hypervisor.volume_tail(POOL, "log", 4096, timeout=5)
