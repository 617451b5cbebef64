"""libvirt's QEMU save-image format: read the embedded domain XML, write per-clone copies.

A save image (``virDomainSave``) is a small header, the domain XML and a migration cookie
(zero-padded so the XML can be rewritten in place), then QEMU's migration stream. libvirt will
not restore one image under another name, UUID or MAC, nor restore the same image twice while a
domain from it runs. A memory-snapshot clone therefore gets its own copy of the image whose
embedded XML is the clone's own domain XML; the migration stream is copied unchanged.

Layout (libvirt ``src/qemu/qemu_saveimage.h``, native byte order)::

    char     magic[16]      "LibvirtQemudSave"
    uint32_t version        2
    uint32_t data_len       XML + NUL + cookie + NUL + zero padding
    uint32_t was_running
    uint32_t compressed     0 = raw (the only format handled here)
    uint32_t cookieOffset   offset of the cookie inside the data (= XML length + 1)
    uint32_t unused[14]
"""
from __future__ import annotations

import dataclasses
import errno
import os
import shutil
import struct
import typing as t
from pathlib import Path

MAGIC = b"LibvirtQemudSave"
VERSION = 2
_FIELDS = struct.Struct("=16s5I56s")
HEADER_SIZE = _FIELDS.size  # 92
MAX_DATA_LEN = 16 * 1024 * 1024  # the XML and cookie: kilobytes, padded


class SaveImageError(ValueError):
    """The file is no usable libvirt save image, or the new XML does not fit."""


@dataclasses.dataclass(frozen=True)
class SaveImageHeader:
    version: int
    data_len: int
    was_running: int
    compressed: int
    xml: str
    cookie: bytes  # without its terminating NUL
    unused: bytes

    @property
    def stream_offset(self) -> int:
        """Where QEMU's migration stream starts."""
        return HEADER_SIZE + self.data_len


def read_header(path: Path) -> SaveImageHeader:
    """:raises SaveImageError: not a raw (uncompressed) version-2 save image."""
    with open(path, "rb") as image:
        raw = image.read(HEADER_SIZE)
        raw += image.read(data_length(raw, str(path)))
    return parse_header(raw, str(path))


def data_length(raw: bytes, where: str) -> int:
    """How many bytes of data follow the first ``HEADER_SIZE`` bytes ``raw`` of a save image.

    :raises SaveImageError: not a raw (uncompressed) version-2 save image.
    """
    if len(raw) < HEADER_SIZE:
        raise SaveImageError(f"{where}: too short for a save image")
    magic, version, data_len, _running, compressed, _cookie, _unused = \
        _FIELDS.unpack(raw[:HEADER_SIZE])
    if magic != MAGIC:
        raise SaveImageError(f"{where}: not a libvirt save image (complete ones start "
                             f"with {MAGIC.decode()})")
    if version != VERSION or compressed != 0:
        raise SaveImageError(f"{where}: unsupported save image (version {version}, "
                             f"compression {compressed})")
    if data_len > MAX_DATA_LEN:
        raise SaveImageError(f"{where}: a {data_len}-byte header is not a save image's")
    return data_len


def parse_header(raw: bytes, where: str) -> SaveImageHeader:
    """The header of a save image from its first ``HEADER_SIZE + data_len`` bytes (read from
    a file here, or from a remote host's volume).

    :raises SaveImageError: not a raw version-2 save image, or ``raw`` is cut short.
    """
    data_len = data_length(raw, where)
    _magic, version, _len, was_running, compressed, cookie_offset, unused = \
        _FIELDS.unpack(raw[:HEADER_SIZE])
    data = raw[HEADER_SIZE:HEADER_SIZE + data_len]
    if len(data) < data_len or not 0 < cookie_offset <= data_len:
        raise SaveImageError(f"{where}: truncated save image header")
    xml = data[:cookie_offset].split(b"\0", 1)[0].decode()
    cookie = data[cookie_offset:].split(b"\0", 1)[0]
    return SaveImageHeader(version=version, data_len=data_len, was_running=was_running,
                           compressed=compressed, xml=xml, cookie=cookie, unused=unused)


def encode_header(header: SaveImageHeader, xml: str) -> bytes:
    """Header + data with ``xml`` in place of the original, padded to the same length.

    :raises SaveImageError: when the new XML does not fit into the original data area.
    """
    xml_bytes = xml.encode() + b"\0"
    data = xml_bytes + header.cookie + b"\0"
    if len(data) > header.data_len:
        raise SaveImageError(f"domain XML of {len(xml_bytes)} bytes does not fit the save "
                             f"image's {header.data_len}-byte data area")
    data += b"\0" * (header.data_len - len(data))
    fields = _FIELDS.pack(MAGIC, header.version, header.data_len, header.was_running,
                          header.compressed, len(xml_bytes), header.unused)
    return fields + data


def write_clone(source: Path, target: Path, xml: str) -> None:
    """Write ``target``: ``source``'s migration stream under a header carrying ``xml``.

    The stream is copied inside the kernel (``copy_file_range``), so a ~100 MiB image costs
    well under a second when it is in the page cache. Where the kernel cannot copy between the
    two files (the seeds and the VMs on different filesystems: EXDEV), it is read and written.
    """
    header = read_header(source)
    head = encode_header(header, xml)
    size = source.stat().st_size
    fd_out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with open(source, "rb") as src:
            os.write(fd_out, head)
            _copy_stream(src, fd_out, header.stream_offset, size, source)
    except BaseException:
        os.close(fd_out)
        target.unlink(missing_ok=True)
        raise
    os.close(fd_out)


# copy_file_range cannot copy between these two files: fall back to read + write.
_NO_KERNEL_COPY = (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL)


def _copy_stream(src: t.BinaryIO, fd_out: int, offset: int, size: int, source: Path) -> None:
    """Copy ``src`` from ``offset`` to ``size`` to the end of ``fd_out``."""
    try:
        while offset < size:
            copied = os.copy_file_range(src.fileno(), fd_out, size - offset, offset)
            if copied == 0:
                raise SaveImageError(f"{source}: shorter than expected while copying")
            offset += copied
        return
    except OSError as exc:
        if exc.errno not in _NO_KERNEL_COPY:
            raise
    src.seek(offset)
    with os.fdopen(os.dup(fd_out), "wb", closefd=True) as out:
        out.seek(0, os.SEEK_END)
        shutil.copyfileobj(src, out, 1024 * 1024)
    if os.fstat(fd_out).st_size != size:
        raise SaveImageError(f"{source}: shorter than expected while copying")
