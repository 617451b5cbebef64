"""Checking an uploaded tar.gz on the host, and re-packing it for the guest.

The upload is read once as a stream, strictly (:mod:`app.services.strict_gzip`: one gzip
member, a bounded inflated size), so a zip bomb is stopped by its headers' declared sizes and
the entry count long before it is inflated, and extended headers (pax, GNU long names) are
bounded before tarfile reads them into memory. Refused: absolute names, ``..``, names that are
not UTF-8, longer than 4096 bytes or with NUL/newline, symlinks that point outside the archive
root (or go back up through another link: ``a/..``), entries below a symlink of the archive,
hard links, devices, fifos, sparse files and anything else that is not a plain file, directory
or safe symlink, and anything but zeros after the end of the archive.

Every accepted entry is then written afresh, as a PAX entry with nothing but its name, type,
permission bits, mtime, size, link target and data (:func:`repack_archive`). The same function
checks (with a sink that drops the output) and then, only when that passed, produces what the
guest's GNU tar extracts: the guest never parses a byte that Python's tarfile did not write,
so the two parsers cannot disagree about what was checked.
"""
from __future__ import annotations

import contextlib
import dataclasses
import posixpath
import tarfile
import typing as t

from app.errors import InvalidRequest, PayloadTooLarge
from app.services.strict_gzip import StrictGzipReader
from app.services.tar_headers import CheckedInfo, CheckedTarFile, shown

ENCODING = "utf-8"
MAX_NAME_BYTES = 4096  # PATH_MAX
HEADER_ROOM_PER_ENTRY = 4 * 1024  # inflated bytes allowed besides data: headers, padding
HEADER_ROOM = 1024 * 1024  # ... and the end-of-archive blocks and record padding
MAX_MTIME = 8 ** 11 - 1  # what a ustar header holds (no pax record needed)
STREAM_BUFSIZE = 64 * 1024
FILE_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE)
NOT_A_HEADER = b"\xff" * tarfile.BLOCKSIZE


@dataclasses.dataclass(frozen=True)
class ArchiveLimits:
    max_uncompressed_bytes: int
    max_entries: int

    @property
    def max_inflated_bytes(self) -> int:
        """Everything the gzip stream may inflate to: the entries' data, and room for their
        headers and padding."""
        return (self.max_uncompressed_bytes + self.max_entries * HEADER_ROOM_PER_ENTRY
                + HEADER_ROOM)


@dataclasses.dataclass(frozen=True)
class ArchiveSummary:
    entries: int
    uncompressed_bytes: int


class Sink(t.Protocol):
    def write(self, data: bytes, /) -> t.Any: ...


class _NullSink:
    """Where the checking pass writes: nowhere."""

    def write(self, data: bytes) -> int:
        return len(data)


def validate_archive(fileobj: t.BinaryIO, limits: ArchiveLimits) -> ArchiveSummary:
    """Read the whole archive once and refuse anything unsafe; nothing is written anywhere.

    :raises InvalidRequest: naming the first bad entry, or for a corrupt archive.
    :raises PayloadTooLarge: when the uncompressed size or entry count is over the limit.
    """
    return repack_archive(fileobj, limits, _NullSink())


def repack_archive(fileobj: t.BinaryIO, limits: ArchiveLimits, sink: Sink) -> ArchiveSummary:
    """Check the tar.gz ``fileobj`` entry by entry and write every accepted entry afresh to
    ``sink``, as an uncompressed PAX tar.

    The output depends on the input bytes only: a pass into a null sink followed by one into
    the guest sends exactly what the first one checked. An output that stops half-way (a
    refusal, or any error) cannot be extracted as a complete archive (see
    :meth:`_Output.spoil`).

    :param sink: anything with ``write(bytes)``, written in ``STREAM_BUFSIZE`` pieces.
    :raises InvalidRequest: naming the first bad entry, or for a corrupt archive.
    :raises PayloadTooLarge: over the uncompressed size or entry count, or a header bomb.
    """
    ledger = _Ledger(limits)
    output = _Output(sink)
    try:
        try:
            _repack(StrictGzipReader(fileobj, limits.max_inflated_bytes), ledger, output)
        except BaseException:
            output.spoil()
            raise
    except tarfile.TarError as exc:
        raise InvalidRequest(f"body is not a valid tar.gz archive: {exc}") from None
    except RecursionError:
        raise InvalidRequest("archive has too deeply nested headers") from None
    if ledger.entries == 0:
        raise InvalidRequest("archive is empty")
    return ArchiveSummary(entries=ledger.entries, uncompressed_bytes=ledger.total)


def _repack(source: StrictGzipReader, ledger: _Ledger, output: _Output) -> None:
    with CheckedTarFile.open(fileobj=source, mode="r|", tarinfo=CheckedInfo,
                              encoding=ENCODING, errors="surrogateescape",
                              bufsize=STREAM_BUFSIZE) as archive, \
            tarfile.open(fileobj=output, mode="w|", format=tarfile.PAX_FORMAT,
                         encoding=ENCODING, bufsize=STREAM_BUFSIZE) as out:
        while (member := archive.next()) is not None:
            archive.members.clear()  # a stream keeps every member it read otherwise
            info = _clean_info(member, ledger.admit(member))
            output.entry_end += (len(info.tobuf(tarfile.PAX_FORMAT, ENCODING))
                                 + info.size + (-info.size % tarfile.BLOCKSIZE))
            out.addfile(info, archive.extractfile(member) if info.isreg() else None)
        _check_end(archive)


class _Output:
    """The re-packed tar on its way to the sink: counts what left, and where the entry being
    written ends."""

    def __init__(self, sink: Sink) -> None:
        self._sink = sink
        self.written = 0
        self.entry_end = 0

    def write(self, data: bytes) -> int:
        self._sink.write(data)
        self.written += len(data)
        return len(data)

    def spoil(self) -> None:
        """Make an output that stopped half-way fail to extract, all or nothing: GNU tar takes
        a tar that ends between two entries (no end-of-archive blocks) for a complete one.
        Ending inside an entry, it fails on its own ("Unexpected EOF"); ending between two,
        a block that is no header (not even its checksum is a number) is where the next
        header belongs. Called once the tar writer flushed what it had."""
        if self.written == self.entry_end:
            with contextlib.suppress(Exception):  # the sink itself may be what failed
                self._sink.write(NOT_A_HEADER)


def check_member(member: tarfile.TarInfo) -> None:
    """:raises InvalidRequest: when this entry may not be extracted."""
    name = member.name
    _check_text(name, "name", name)
    if not name:
        raise InvalidRequest("archive has an entry with an empty name")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise InvalidRequest(f"archive entry {shown(name)} has an absolute path")
    if ".." in name.replace("\\", "/").split("/"):
        raise InvalidRequest(f"archive entry {shown(name)} contains '..'")
    if any(key.startswith("GNU.sparse.") for key in member.pax_headers):
        raise InvalidRequest(f"archive entry {shown(name)} is a GNU sparse file (not allowed)")
    if member.type == tarfile.LNKTYPE:
        raise InvalidRequest(f"archive entry {shown(name)} is a hard link (not allowed)")
    if member.type == tarfile.SYMTYPE:
        _check_symlink(member)
    elif member.type in (tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE):
        kind = "fifo" if member.type == tarfile.FIFOTYPE else "device node"
        raise InvalidRequest(f"archive entry {shown(name)} is a {kind} (not allowed)")
    elif member.type not in (*FILE_TYPES, tarfile.DIRTYPE):
        raise InvalidRequest(f"archive entry {shown(name)} has an unsupported type "
                             f"{member.type!r} (only files, directories and symlinks)")
    if posixpath.normpath(name) == "." and member.type != tarfile.DIRTYPE:
        raise InvalidRequest(f"archive entry {shown(name)} names the root, not as a directory")


def _check_symlink(member: tarfile.TarInfo) -> None:
    name, target = member.name, member.linkname
    _check_text(name, "symlink target", target)
    if not target:
        raise InvalidRequest(f"archive entry {shown(name)} is a symlink to nothing")
    if target.startswith("/"):
        raise InvalidRequest(
            f"archive entry {shown(name)} is a symlink to an absolute path {shown(target)}")
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(name), target))
    if resolved == ".." or resolved.startswith("../") or resolved.startswith("/"):
        raise InvalidRequest(f"archive entry {shown(name)} is a symlink pointing outside the "
                             f"archive ({shown(target)})")
    # 'a/..' only looks like '.': when 'a' is a symlink it leads wherever 'a' does, plus one
    # level up. Leading '..' climb through the link's own directories, which are real ones
    # (nothing is extracted below a symlink of the archive).
    down = False
    for part in target.split("/"):
        if part == ".." and down:
            raise InvalidRequest(f"archive entry {shown(name)} is a symlink that goes back up "
                                 f"after going down ({shown(target)}); only leading '..' "
                                 f"are allowed")
        down = down or part not in ("", ".", "..")


def _check_text(name: str, what: str, value: str) -> None:
    """Names arrive decoded with ``surrogateescape``: a surrogate is a byte that is not UTF-8."""
    try:
        size = len(value.encode(ENCODING))
    except UnicodeEncodeError:
        raise InvalidRequest(f"archive entry {shown(name)} has a {what} that is not valid "
                             f"UTF-8") from None
    if size > MAX_NAME_BYTES:
        raise InvalidRequest(f"archive entry {shown(name)} has a {what} longer than "
                             f"{MAX_NAME_BYTES} bytes")
    if "\0" in value or "\n" in value:
        raise InvalidRequest(f"archive entry {shown(name)} has a control character (NUL or "
                             f"newline) in its {what}")


def _clean_info(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo:
    """A new header with only what extraction needs: no owner, no setuid/setgid/sticky bit,
    no pax records of the upload."""
    info = tarfile.TarInfo(path)
    info.mode = member.mode & 0o777
    info.mtime = _clamp_mtime(member.mtime)
    if member.type == tarfile.DIRTYPE:
        info.type = tarfile.DIRTYPE
    elif member.type == tarfile.SYMTYPE:
        info.type = tarfile.SYMTYPE
        info.linkname = member.linkname
    else:
        info.type = tarfile.REGTYPE
        info.size = member.size
    return info


def _clamp_mtime(value: float) -> int:
    try:
        seconds = int(value)
    except (ValueError, OverflowError):  # a pax mtime of nan or inf
        return 0
    return min(max(seconds, 0), MAX_MTIME)


def _check_end(archive: tarfile.TarFile) -> None:
    """Only zeros may follow the end-of-archive block (GNU tar pads to its record size).
    Anything else is content that a tar reading on (GNU tar ``-i``) would see and the check
    would not: refused, rather than dropped without a word."""
    while chunk := archive.fileobj.read(STREAM_BUFSIZE):
        if chunk.count(0) != len(chunk):
            raise InvalidRequest("archive has data after its end (only zero padding may follow "
                                 "the end-of-archive blocks)")


class _Ledger:
    """What the check remembers between entries: counts and one 8-byte key per symlink of
    the archive, never the entries themselves."""

    def __init__(self, limits: ArchiveLimits) -> None:
        self.limits = limits
        self.entries = 0
        self.total = 0
        self._symlinks: set[int] = set()

    def admit(self, member: tarfile.TarInfo) -> str:
        """Check one entry against the rules and limits; returns its normalised path.

        :raises InvalidRequest: for a bad entry.
        :raises PayloadTooLarge: over the entry count or uncompressed size.
        """
        self.entries += 1
        if self.entries > self.limits.max_entries:
            raise PayloadTooLarge(f"archive has more than {self.limits.max_entries} entries")
        if member.size < 0:
            raise InvalidRequest(f"archive entry {shown(member.name)} has a negative size")
        check_member(member)
        if member.type in FILE_TYPES:
            self.total += member.size
            if self.total > self.limits.max_uncompressed_bytes:
                raise PayloadTooLarge(f"archive expands to more than "
                                      f"{self.limits.max_uncompressed_bytes} bytes")
        path = posixpath.normpath(member.name)
        key = self._check_not_through_symlink(member.name, path)
        if member.type == tarfile.SYMTYPE:
            self._symlinks.add(key)
        return path

    def _check_not_through_symlink(self, name: str, path: str) -> int:
        """An entry below an earlier symlink would be written through it: refused, so that no
        chain of links can lead an extraction out of the destination. Returns the path's key.

        Each leading part of the path ('a', 'a/b', 'a/b/c') gets a key chained from the one
        before, so a deep path costs as much as its parts, not as all its prefixes. Equal
        paths always get equal keys; a collision of Python's (per-process keyed) hash could
        only refuse an archive, never let one through.
        """
        parts = path.split("/")
        key = 0
        for depth, part in enumerate(parts, start=1):
            key = hash((key, part))
            if key not in self._symlinks:
                continue
            if depth == len(parts):
                raise InvalidRequest(f"archive entry {shown(name)} would replace a symlink "
                                     f"of the archive")
            raise InvalidRequest(f"archive entry {shown(name)} lies below the symlink "
                                 f"{shown('/'.join(parts[:depth]))}")
        return key
