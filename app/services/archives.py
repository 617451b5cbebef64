"""Checking an uploaded tar.gz on the host before any byte of it reaches a guest.

The archive is read as a stream (``r|gz``), so a zip bomb is stopped by its headers' declared
sizes and the entry count long before it is inflated. Refused: absolute names, ``..``,
symlinks that point outside the archive root, hard links, devices, fifos and anything else
that is not a plain file, directory or safe symlink.
"""
from __future__ import annotations

import dataclasses
import posixpath
import tarfile
import typing as t
import zlib

from app.errors import InvalidRequest, PayloadTooLarge


@dataclasses.dataclass(frozen=True)
class ArchiveLimits:
    max_uncompressed_bytes: int
    max_entries: int


@dataclasses.dataclass(frozen=True)
class ArchiveSummary:
    entries: int
    uncompressed_bytes: int


def validate_archive(fileobj: t.BinaryIO, limits: ArchiveLimits) -> ArchiveSummary:
    """Read the whole archive once and refuse anything unsafe.

    :raises InvalidRequest: naming the first bad entry, or for a corrupt archive.
    :raises PayloadTooLarge: when the uncompressed size or entry count is over the limit.
    """
    entries = 0
    total = 0
    symlinks: set[str] = set()
    try:
        with tarfile.open(fileobj=fileobj, mode="r|gz") as archive:
            for member in archive:
                entries += 1
                if entries > limits.max_entries:
                    raise PayloadTooLarge(f"archive has more than {limits.max_entries} entries")
                total += max(member.size, 0)
                if total > limits.max_uncompressed_bytes:
                    raise PayloadTooLarge(
                        f"archive expands to more than {limits.max_uncompressed_bytes} bytes")
                check_member(member)
                _check_not_through_symlink(member.name, symlinks)
                if member.issym():
                    symlinks.add(posixpath.normpath(member.name))
    except (tarfile.TarError, zlib.error, EOFError, OSError) as exc:
        raise InvalidRequest(f"body is not a valid tar.gz archive: {exc}") from None
    if entries == 0:
        raise InvalidRequest("archive is empty")
    return ArchiveSummary(entries=entries, uncompressed_bytes=total)


def check_member(member: tarfile.TarInfo) -> None:
    """:raises InvalidRequest: when this entry may not be extracted."""
    name = member.name
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise InvalidRequest(f"archive entry {name!r} has an absolute path")
    parts = name.replace("\\", "/").split("/")
    if ".." in parts:
        raise InvalidRequest(f"archive entry {name!r} contains '..'")
    if "\0" in name or "\n" in name:
        raise InvalidRequest(f"archive entry {name!r} has control characters in its name")
    if member.islnk():
        raise InvalidRequest(f"archive entry {name!r} is a hard link (not allowed)")
    if member.issym():
        _check_symlink(member)
        return
    if member.isdev() or member.isfifo():
        kind = "fifo" if member.isfifo() else "device node"
        raise InvalidRequest(f"archive entry {name!r} is a {kind} (not allowed)")
    if not (member.isfile() or member.isdir()):
        raise InvalidRequest(f"archive entry {name!r} has an unsupported type")


def _check_not_through_symlink(name: str, symlinks: set[str]) -> None:
    """An entry below an earlier symlink would be written through it: refused, so that no
    chain of links can lead an extraction out of the destination."""
    path = posixpath.normpath(name)
    parent = posixpath.dirname(path)
    while parent not in ("", ".", "/"):
        if parent in symlinks:
            raise InvalidRequest(f"archive entry {name!r} lies below the symlink {parent!r}")
        parent = posixpath.dirname(parent)
    if path in symlinks:
        raise InvalidRequest(f"archive entry {name!r} would replace a symlink of the archive")


def _check_symlink(member: tarfile.TarInfo) -> None:
    target = member.linkname
    if target.startswith("/"):
        raise InvalidRequest(
            f"archive entry {member.name!r} is a symlink to an absolute path {target!r}")
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(member.name), target))
    if resolved == ".." or resolved.startswith("../") or resolved.startswith("/"):
        raise InvalidRequest(
            f"archive entry {member.name!r} is a symlink pointing outside the archive "
            f"({target!r})")
