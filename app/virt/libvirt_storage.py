"""Storage pool calls of :class:`app.virt.connection.Hypervisor` (a mixin).

On the local host the images' pool is a read-only view of its images for ``virsh vol-list``
(:mod:`app.virt.pool_xml`). On a remote host (issue 17) images are shipped into that host's
pool as volumes, through libvirt's streams (``virStorageVolUpload``/``Download``): the volume
calls below. A stream call blocks, so each checks its own deadline between chunks.
"""
from __future__ import annotations

import logging
import time
import typing as t

import libvirt

from app.errors import HypervisorError
from app.models import VolumeTail
from app.virt.pool_xml import build_volume_xml, parse_volume_size

log = logging.getLogger(__name__)
REFRESH_RETRY_S = 0.2  # between refreshes refused while a volume is being made in the pool


class StoragePoolCalls:
    """Keep the images' pool defined, started and current. Needs the connection's ``_call``."""

    _call: t.Callable[..., t.Any]

    def ensure_storage_pool(self, name: str, xml: str, build: bool = False) -> bool:
        """Define (if missing), start and autostart a pool; True if it was defined now.

        :param build: have libvirt make the pool's directory when it defines the pool (a
            remote host's pool, whose directory this process cannot make).
        """
        def ensure(conn: t.Any) -> bool:
            created = False
            pool = _pool(conn, name)
            if pool is None:
                log.debug("defining storage pool xml=%s", xml)
                try:
                    pool = conn.storagePoolDefineXML(xml, 0)
                except libvirt.libvirtError:
                    # Another client (a manager on another machine) defined it meanwhile.
                    pool = conn.storagePoolLookupByName(name)
                else:
                    created = True
                    if build:
                        pool.build(0)
            if not pool.isActive():
                try:
                    pool.create(0)
                except libvirt.libvirtError:
                    if not pool.isActive():  # else another client started it meanwhile
                        raise
            if not pool.autostart():
                pool.setAutostart(1)
            return created
        return self._call("ensure storage pool", ensure)

    def refresh_storage_pool(self, name: str) -> None:
        """Re-read the pool's directory (after an image came or went); a missing or inactive
        pool is left alone."""
        def refresh(conn: t.Any) -> None:
            pool = _pool(conn, name)
            if pool is not None and pool.isActive():
                pool.refresh(0)
        self._call("refresh storage pool", refresh)

    # Volumes (a remote host's shipped images) ##############################################

    def list_volumes(self, pool: str) -> list[str]:
        """The pool's volume names (after a refresh); none when the pool is missing or
        inactive."""
        def names(conn: t.Any) -> list[str]:
            found = _pool(conn, pool)
            if found is None or not found.isActive():
                return []
            found.refresh(0)
            return sorted(volume.name() for volume in found.listAllVolumes(0))
        return self._call("list volumes", names)

    def create_volume(self, pool: str, xml: str) -> str:
        """Create a volume from its XML (an overlay disk whose ``backingStore`` is another
        volume there: libvirt runs qemu-img on that host); returns its path there."""
        def create(conn: t.Any) -> str:
            found = _defined_pool(conn, pool)
            log.debug("creating volume xml=%s", xml)
            return found.createXML(xml, 0).path()
        return self._call("create volume", create)

    def volume_path(self, pool: str, name: str) -> str | None:
        """Where a volume is on its host; None when there is no such volume (or pool)."""
        def path(conn: t.Any) -> str | None:
            volume = _volume(conn, pool, name)
            return None if volume is None else volume.path()
        return self._call("volume path", path)

    def delete_volume(self, pool: str, name: str) -> None:
        """Delete a volume; a missing one (or pool) is fine, also one that another client
        deleted between its lookup and its delete."""
        def delete(conn: t.Any) -> None:
            volume = _volume(conn, pool, name)
            if volume is not None:
                _lookup(libvirt.VIR_ERR_NO_STORAGE_VOL, lambda _name: volume.delete(0), name)
        self._call("delete volume", delete)

    def upload_volume(self, pool: str, name: str, size: int,
                      source: t.Callable[[], t.Callable[[int], bytes]], timeout: float) -> None:
        """(Re)create volume ``name`` of ``size`` bytes and stream ``read(n)``'s bytes into it
        until it returns b"" (``virStorageVolUpload``). On failure the volume is deleted.

        :param source: returns ``read``, reading from the first byte; called again when the
            call is sent again on a new connection (see ``Hypervisor._run``).

        :raises HypervisorError: libvirt failed, or the upload took more than ``timeout``.
        """
        deadline = time.monotonic() + timeout

        def upload(conn: t.Any) -> None:
            old = _volume(conn, pool, name)
            if old is not None:
                old.delete(0)
            volume = _defined_pool(conn, pool).createXML(build_volume_xml(name, size), 0)
            stream = conn.newStream(0)
            try:
                volume.upload(stream, 0, size, 0)
                read = source()
                stream.sendAll(lambda _stream, n, _opaque: _in_time(deadline, read, n), None)
                stream.finish()
            except BaseException:
                _quietly(stream.abort)
                _quietly(volume.delete, 0)
                raise
        self._call("upload volume", upload, timeout=timeout + 5)

    def download_volume(self, pool: str, name: str,
                        sink: t.Callable[[], t.Callable[[bytes], t.Any]],
                        timeout: float) -> None:
        """Stream the volume's bytes to ``write`` (``virStorageVolDownload``).

        :param sink: returns ``write``, taking the bytes from the first; called again when the
            call is sent again on a new connection.

        :raises HypervisorError: no such volume, libvirt failed, or it took more than
            ``timeout``.
        """
        deadline = time.monotonic() + timeout

        def download(conn: t.Any) -> None:
            volume = _required_volume(conn, pool, name)
            _receive(conn, volume, 0, 0, deadline, sink())
        self._call("download volume", download, timeout=timeout + 5)

    def read_volume_range(self, pool: str, name: str, offset: int, length: int,
                          timeout: float) -> bytes:
        """``length`` bytes of the volume from ``offset`` (fewer at its end).

        :raises HypervisorError: no such volume, libvirt failed, or it took more than
            ``timeout``.
        """
        deadline = time.monotonic() + timeout

        def read(conn: t.Any) -> bytes:
            volume = _required_volume(conn, pool, name)
            chunks: list[bytes] = []
            _receive(conn, volume, offset, length, deadline, chunks.append)
            return b"".join(chunks)[:length]
        return self._call("read volume range", read, timeout=timeout + 5)

    def write_volume_range(self, pool: str, name: str, offset: int, data: bytes,
                           timeout: float) -> None:
        """Overwrite ``len(data)`` bytes of an existing volume from ``offset`` in place
        (``virStorageVolUpload`` with an offset: the rest of the volume stays).

        :raises HypervisorError: no such volume, libvirt failed, or it took more than
            ``timeout``.
        """
        deadline = time.monotonic() + timeout

        def write(conn: t.Any) -> None:
            volume = _required_volume(conn, pool, name)
            stream = conn.newStream(0)
            try:
                volume.upload(stream, offset, len(data), 0)
                remaining = [data]

                def next_chunk(n: int) -> bytes:
                    chunk, remaining[0] = remaining[0][:n], remaining[0][n:]
                    return chunk
                stream.sendAll(lambda _stream, n, _opaque: _in_time(deadline, next_chunk, n),
                               None)
                stream.finish()
            except BaseException:
                _quietly(stream.abort)
                raise
        self._call("write volume range", write, timeout=timeout + 5)

    def clone_volume(self, pool: str, source: str, source_pool: str, name: str,
                     timeout: float) -> str:
        """A copy ``name`` in ``pool`` of the raw volume ``source`` of ``source_pool``, made
        by that host's libvirt (``virStorageVolCreateXMLFrom``); returns its path there. A
        volume of that name left over is replaced.

        :raises HypervisorError: no such volume, libvirt failed, or it took more than
            ``timeout``.
        """
        def clone(conn: t.Any) -> str:
            original = _volume(conn, source_pool, source)
            if original is None:
                raise HypervisorError(f"no volume {source!r} in storage pool {source_pool!r}")
            old = _volume(conn, pool, name)
            if old is not None:
                old.delete(0)
            size = original.info()[1]
            return _defined_pool(conn, pool).createXMLFrom(
                build_volume_xml(name, size), original, 0).path()
        return self._call("clone volume", clone, timeout=timeout)

    def volume_tail(self, pool: str, name: str, max_bytes: int,
                    timeout: float) -> VolumeTail | None:
        """At most the last ``max_bytes`` bytes of a volume that something on its host appends
        to (``virStorageVolDownload`` from ``size - max_bytes``), and its mtime. The pool is
        refreshed first: libvirt lists a file that another program made there (virtlogd's log,
        and the one it rotated away) only after a refresh.

        :returns: None when there is no such volume (or pool), also one deleted meanwhile.
        :raises HypervisorError: libvirt failed, or it took more than ``timeout``.
        """
        deadline = time.monotonic() + timeout

        def tail(conn: t.Any) -> VolumeTail | None:
            volume = _refreshed_volume(conn, pool, name, deadline)
            if volume is None:
                return None
            try:
                size, modified = parse_volume_size(volume.XMLDesc(0))
            except ValueError as exc:
                raise HypervisorError(f"volume {name!r}: {exc}") from None
            start = max(0, size - max_bytes)
            chunks: list[bytes] = []
            if size > start:  # a length of 0 would mean "to the end"
                _receive(conn, volume, start, size - start, deadline, chunks.append)
            return VolumeTail(b"".join(chunks)[:max_bytes], start, modified)

        def read(conn: t.Any) -> VolumeTail | None:
            return _lookup(libvirt.VIR_ERR_NO_STORAGE_VOL, lambda _name: tail(conn), name)
        return self._call("read volume tail", read, timeout=timeout + 5)


def _lookup(missing: int, lookup: t.Callable[[str], t.Any], name: str) -> t.Any:
    """``lookup(name)``; None when libvirt answers ``missing`` (no such object)."""
    try:
        return lookup(name)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == missing:
            return None
        raise


def _pool(conn: t.Any, name: str) -> t.Any:
    """The pool ``name``; None when it is not defined."""
    return _lookup(libvirt.VIR_ERR_NO_STORAGE_POOL, conn.storagePoolLookupByName, name)


def _defined_pool(conn: t.Any, name: str) -> t.Any:
    """:raises HypervisorError: when the pool ``name`` is not defined."""
    found = _pool(conn, name)
    if found is None:
        raise HypervisorError(f"storage pool {name!r} is not defined")
    return found


def _volume(conn: t.Any, pool: str, name: str) -> t.Any:
    """The volume ``name``; None when it, or an active pool ``pool``, is not there."""
    found = _pool(conn, pool)
    if found is None or not found.isActive():
        return None
    return _lookup(libvirt.VIR_ERR_NO_STORAGE_VOL, found.storageVolLookupByName, name)


def _required_volume(conn: t.Any, pool: str, name: str) -> t.Any:
    """:raises HypervisorError: no volume ``name`` in an active pool ``pool``."""
    volume = _volume(conn, pool, name)
    if volume is None:
        raise HypervisorError(f"no volume {name!r} in storage pool {pool!r}")
    return volume


def _refreshed_volume(conn: t.Any, pool: str, name: str, deadline: float) -> t.Any:
    """The volume ``name`` after a refresh of ``pool``; None when it, or an active pool, is not
    there. libvirt refuses a refresh while a volume is being made in the pool ("has
    asynchronous jobs running": another VM's create, a second or so): retried until
    ``deadline``."""
    found = _pool(conn, pool)
    if found is None or not found.isActive():
        return None
    while True:
        try:
            found.refresh(0)
            break
        except libvirt.libvirtError as exc:
            if "asynchronous jobs" not in (exc.get_error_message() or "") or \
                    time.monotonic() + REFRESH_RETRY_S > deadline:
                raise
            log.debug("pool refresh refused, retrying pool=%s: %s", pool,
                      exc.get_error_message())
            time.sleep(REFRESH_RETRY_S)
    return _lookup(libvirt.VIR_ERR_NO_STORAGE_VOL, found.storageVolLookupByName, name)


def _receive(conn: t.Any, volume: t.Any, offset: int, length: int, deadline: float,
             write: t.Callable[[bytes], t.Any]) -> None:
    """Stream ``length`` bytes of ``volume`` from ``offset`` (0: to its end) to ``write``
    (``virStorageVolDownload``), each chunk refused past ``deadline``."""
    stream = conn.newStream(0)
    try:
        volume.download(stream, offset, length, 0)
        stream.recvAll(lambda _stream, data, _opaque: _in_time(deadline, write, data), None)
        stream.finish()
    except BaseException:
        _quietly(stream.abort)
        raise


def _in_time(deadline: float, fn: t.Callable[[t.Any], t.Any], arg: t.Any) -> t.Any:
    """A stream handler's step, refused past the deadline (which aborts the stream)."""
    if time.monotonic() > deadline:
        raise HypervisorError("the volume transfer did not finish in time")
    return fn(arg)


def _quietly(fn: t.Callable[..., t.Any], *args: t.Any) -> None:
    try:
        fn(*args)
    except libvirt.libvirtError as exc:
        log.debug("ignored while cleaning up a stream: %s", exc)
