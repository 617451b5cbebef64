"""A whole storage volume of a remote host copied into a local file (issue 17: the disk of a
VM of a remote host, for a snapshot), through :meth:`Hypervisor.download_volume`
(``virStorageVolDownload``), chunk by chunk: never the whole volume in memory. No libvirt here:
the connection's mixin streams, this writes.
"""
from __future__ import annotations

import typing as t
from pathlib import Path

from app.errors import DISK_FULL_MESSAGES, HypervisorError, disk_full

if t.TYPE_CHECKING:
    from app.virt.connection import Hypervisor

ZERO_BLOCK = 64 * 1024  # a chunk's all-zero runs of this size are left as holes
_ZEROS = bytes(ZERO_BLOCK)


def download_to_file(hypervisor: Hypervisor, pool: str, name: str, target: Path,
                     timeout: float, max_bytes: int) -> int:
    """Copy volume ``name`` of ``pool`` into ``target`` (made or truncated; sparse: zero
    blocks become holes); returns its size in bytes.

    :raises InsufficientStorage: the local filesystem is full.
    :raises HypervisorError: no such volume, libvirt failed, the copy took more than
        ``timeout`` or the volume is larger than ``max_bytes`` (``target`` is then partial:
        the caller removes it).
    """
    with target.open("wb") as handle:
        written = [0]

        def write(data: bytes) -> None:
            if written[0] + len(data) > max_bytes:
                raise HypervisorError(f"volume {name} is larger than {max_bytes} bytes")
            try:
                _write_sparse(handle, data)
            except OSError as exc:
                for full in DISK_FULL_MESSAGES:
                    if full in str(exc):
                        raise disk_full(full) from None
                raise HypervisorError(f"writing {target} failed: {exc}") from exc
            written[0] += len(data)

        def sink() -> t.Callable[[bytes], None]:
            handle.seek(0)  # sent again on a new connection: from the first byte again
            handle.truncate()
            written[0] = 0
            return write
        hypervisor.download_volume(pool, name, sink, timeout=timeout)
        handle.truncate(written[0])  # a trailing hole
    return written[0]


def _write_sparse(handle: t.BinaryIO, data: bytes) -> None:
    view = memoryview(data)
    for start in range(0, len(view), ZERO_BLOCK):
        block = view[start:start + ZERO_BLOCK]
        if block == _ZEROS[:len(block)]:
            handle.seek(len(block), 1)
        else:
            handle.write(block)
