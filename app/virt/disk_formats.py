"""What an uploaded disk image is, read from its first bytes (pure: no qemu-img, no libvirt).

An uploaded file is never handed to qemu-img to *guess* its format: a file that looks like a
qcow2 header can name a backing file or an external data file, any path on the host, which
QEMU would then open (a host file read). So the format is decided here, from the header, and
every later qemu-img call is told it (``-f raw`` / ``-f qcow2``):

- ``qcow2`` when the file starts with its magic, and only when the header names no backing
  file and no external data file, is not encrypted and not marked corrupt;
- refused when it starts with the magic of another format QEMU knows (VMDK, VHDX, VHD, VDI,
  QED, LUKS, ...): only raw and qcow2 are accepted;
- ``raw`` otherwise, and then it must hold an ext4 filesystem from its first byte (the guest
  boots it as ``/dev/vda``, without a partition table).
"""
from __future__ import annotations

import struct

QCOW2_MAGIC = b"QFI\xfb"
EXT4_MAGIC_OFFSET = 1024 + 0x38  # the superblock's s_magic
EXT4_MAGIC = b"\x53\xef"
HEADER_BYTES = 2 * 1024 * 1024  # the qcow2 header and its extensions lie in the first cluster
OTHER_FORMATS = (  # (offset, magic, name)
    (0, b"KDMV", "vmdk"), (0, b"COWD", "vmdk"), (0, b"# Disk DescriptorFile", "vmdk"),
    (0, b"vhdxfile", "vhdx"), (0, b"conectix", "vpc (VHD)"), (0x40, b"\x7f\x10\xda\xbe", "vdi"),
    (0, b"QED\x00", "qed"), (0, b"LUKS\xba\xbe", "luks"), (0, b"OOOM", "qcow (version 1)"),
    (0, b"WithoutFreeSpace", "parallels"), (0, b"WithouFreSpacExt", "parallels"),
    (0, b"cloop", "cloop"), (0, b"\x00\x00\x00\x00cloop", "cloop"),
    (0, b"\xe0\xf5\xe1\xe2", "dmg"), (0, b"Bochs Virtual HD Image", "bochs"),
)
# qcow2 header fields (big-endian), version 2 and 3
_V2 = struct.Struct(">4sIQIIQIIQQIIQ")  # up to snapshots_offset: 72 bytes
_V3 = struct.Struct(">QQQII")  # incompatible, compatible, autoclear, refcount_order, length
INCOMPATIBLE_CORRUPT = 1 << 1
INCOMPATIBLE_DATA_FILE = 1 << 2
EXT_END, EXT_DATA_FILE, EXT_ENCRYPTION = 0, 0x44415441, 0x0537BE77


class UnsafeImage(ValueError):
    """The upload is not a disk image the service accepts; the message says why."""


def detect_format(header: bytes) -> str:
    """``"qcow2"`` or ``"raw"`` for the first :data:`HEADER_BYTES` (or fewer) of a file.

    :raises UnsafeImage: another format, or a qcow2 that names another file, is encrypted or
        corrupt, or a raw file without an ext4 filesystem at its start.
    """
    if header.startswith(QCOW2_MAGIC):
        check_qcow2_header(header)
        return "qcow2"
    for offset, magic, name in OTHER_FORMATS:
        if header[offset:offset + len(magic)] == magic:
            raise UnsafeImage(f"the disk is a {name} image: only raw and qcow2 are accepted")
    if header[EXT4_MAGIC_OFFSET:EXT4_MAGIC_OFFSET + 2] != EXT4_MAGIC:
        raise UnsafeImage("a raw disk must hold an ext4 filesystem from its first byte (the "
                          "guest mounts /dev/vda; no partition table)")
    return "raw"


def check_qcow2_header(header: bytes) -> None:
    """:raises UnsafeImage: a backing file, an external data file, encryption, corruption, or
    a header that cannot be read."""
    if len(header) < _V2.size:
        raise UnsafeImage("the qcow2 header is cut short")
    (_magic, version, backing_offset, backing_size, cluster_bits, _size, crypt_method,
     *_rest) = _V2.unpack_from(header)
    if version not in (2, 3):
        raise UnsafeImage(f"qcow2 version {version} is not supported")
    if backing_offset or backing_size:
        raise UnsafeImage("the qcow2 image names a backing file: upload a standalone image "
                          "(qemu-img convert -O qcow2 ...)")
    if crypt_method:
        raise UnsafeImage("the qcow2 image is encrypted")
    if not 9 <= cluster_bits <= 21:
        raise UnsafeImage(f"qcow2 cluster_bits {cluster_bits} is out of range")
    extensions_at = _V2.size
    if version == 3:
        if len(header) < _V2.size + _V3.size:
            raise UnsafeImage("the qcow2 header is cut short")
        incompatible, _compatible, _autoclear, _refcount, length = _V3.unpack_from(
            header, _V2.size)
        if incompatible & INCOMPATIBLE_DATA_FILE:
            raise UnsafeImage("the qcow2 image keeps its data in an external file")
        if incompatible & INCOMPATIBLE_CORRUPT:
            raise UnsafeImage("the qcow2 image is marked corrupt")
        extensions_at = length
    _check_extensions(header, extensions_at)


def _check_extensions(header: bytes, offset: int) -> None:
    """Walk the header extensions: none may name a data file or hold an encryption header."""
    while True:
        if offset + 8 > len(header):
            raise UnsafeImage("the qcow2 header extensions run past the first cluster")
        kind, length = struct.unpack_from(">II", header, offset)
        if kind == EXT_END:
            return
        if kind == EXT_DATA_FILE:
            raise UnsafeImage("the qcow2 image names an external data file")
        if kind == EXT_ENCRYPTION:
            raise UnsafeImage("the qcow2 image is encrypted")
        offset += 8 + (length + 7) // 8 * 8


def check_info(info: dict, image_format: str, max_virtual_bytes: int) -> int:
    """Check what ``qemu-img info`` says about an upload read as ``image_format`` (a second
    opinion after :func:`detect_format`); returns its virtual size in bytes.

    :raises UnsafeImage: another format, a backing or data file, encryption, or too large.
    """
    if info.get("format") != image_format:
        raise UnsafeImage(f"qemu-img reads the disk as {info.get('format')!r}, not "
                          f"{image_format}")
    if info.get("backing-filename") or info.get("full-backing-filename"):
        raise UnsafeImage("the disk names a backing file")
    specific = (info.get("format-specific") or {}).get("data") or {}
    if specific.get("data-file") or specific.get("data-file-raw"):
        raise UnsafeImage("the disk names an external data file")
    if info.get("encrypted") or specific.get("encrypt"):
        raise UnsafeImage("the disk is encrypted")
    size = int(info.get("virtual-size") or 0)
    if size <= 0:
        raise UnsafeImage("the disk is empty")
    if size > max_virtual_bytes:
        raise UnsafeImage(f"the disk's virtual size ({size // (1024 * 1024)} MiB) is above "
                          f"MAX_DISK_SIZE_MB ({max_virtual_bytes // (1024 * 1024)} MiB)")
    return size


def check_overlay_info(info: dict, backing: str) -> None:
    """Check what ``qemu-img info`` says about a qcow2 overlay copied from another host (a
    remote VM's disk, before it is rebased onto the local image): a qcow2 whose backing file
    is ``backing`` (a qcow2 too), and no external data file, no encryption.

    :raises UnsafeImage: anything else.
    """
    if info.get("format") != "qcow2":
        raise UnsafeImage(f"qemu-img reads the disk as {info.get('format')!r}, not qcow2")
    named = info.get("backing-filename")
    if named != backing:
        raise UnsafeImage(f"the disk's backing file is {named!r}, not {backing!r}")
    if info.get("backing-filename-format", "qcow2") != "qcow2":
        raise UnsafeImage(f"the disk's backing file format is "
                          f"{info.get('backing-filename-format')!r}, not qcow2")
    specific = (info.get("format-specific") or {}).get("data") or {}
    if specific.get("data-file") or specific.get("data-file-raw"):
        raise UnsafeImage("the disk names an external data file")
    if info.get("encrypted") or specific.get("encrypt"):
        raise UnsafeImage("the disk is encrypted")
