"""tar.gz in both directions: a streamed archive of local files for upload, and a safe
extraction of a downloaded one.

Upload: :func:`tar_gz_chunks` writes the tar headers itself and reads each file in pieces, so
neither the archive nor any file is held in memory whole. The server takes the archive apart
into the destination directory; a directory's *contents* land there, a file under its own name.

Download: :func:`extract_tar_gz` reads the archive as it arrives and refuses (raises
:class:`UnsafeArchive`) any entry that is absolute, contains ``..``, would be written through a
symlink leading out of the target, is a link pointing out of it, or is a device or fifo. Entries
before the refused one stay extracted.
"""
from __future__ import annotations

import io
import os
import stat
import tarfile
import typing as t
import zlib
from pathlib import Path, PurePosixPath

from rds_client.errors import TransportError, UnsafeArchive

BLOCK = 512
READ_CHUNK = 256 * 1024
FLUSH_AT = 64 * 1024
Progress = t.Callable[[int], None]


# ---- upload: local files -> tar.gz chunks ---------------------------------------------------

def tar_gz_chunks(source: Path, *, level: int = 6) -> t.Iterator[bytes]:
    """The tar.gz of ``source`` as byte chunks: a directory's contents (not the directory
    itself), or a single file under its own name. Symlinks are archived as links.

    :raises ValueError: a file that cannot go into the archive (socket, fifo, device, a name
        that is not UTF-8).
    :raises FileNotFoundError: ``source`` does not exist.
    """
    source = Path(source)
    compressor = zlib.compressobj(level, zlib.DEFLATED, 31)  # wbits 31: gzip framing
    pending = bytearray()
    for piece in _tar_pieces(source):
        pending += compressor.compress(piece)
        if len(pending) >= FLUSH_AT:
            yield bytes(pending)
            pending.clear()
    pending += compressor.flush()
    yield bytes(pending)


def check_uploadable(source: Path) -> None:
    """Walk ``source`` once before sending, so that a file the archive cannot hold fails the
    call before any byte goes out. :raises ValueError, FileNotFoundError: as tar_gz_chunks."""
    if not source.exists():
        raise FileNotFoundError(f"{source}: no such file or directory")
    for path, name in _entries(source):
        _tarinfo(path, name)


def _tar_pieces(source: Path) -> t.Iterator[bytes]:
    """The uncompressed tar stream, header by header and file piece by piece."""
    for path, name in _entries(source):
        info, size = _tarinfo(path, name)
        yield info.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8")
        if size:
            yield from _file_data(path, size)
    yield bytes(2 * BLOCK)  # end of archive


def _entries(source: Path) -> t.Iterator[tuple[Path, str]]:
    """(path, name in the archive) of every entry; a link given as ``source`` itself is
    followed, links inside a directory are archived as links."""
    if not source.is_dir():
        yield source.resolve(), source.name
        return
    for top, dirs, files in os.walk(source):
        dirs.sort()
        here = Path(top)
        for entry in sorted(dirs) + sorted(files):
            path = here / entry
            yield path, path.relative_to(source).as_posix()


def _tarinfo(path: Path, name: str) -> tuple[tarfile.TarInfo, int]:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{path}: the file name is not UTF-8, which the server refuses") \
            from None
    st = path.lstat()
    info = tarfile.TarInfo(name)
    info.mode = stat.S_IMODE(st.st_mode) & 0o777
    info.mtime = int(st.st_mtime)
    info.uname = info.gname = ""
    if stat.S_ISDIR(st.st_mode):
        info.type = tarfile.DIRTYPE
    elif stat.S_ISLNK(st.st_mode):
        info.type = tarfile.SYMTYPE
        info.linkname = os.readlink(path)
    elif stat.S_ISREG(st.st_mode):
        info.size = st.st_size
    else:
        raise ValueError(f"{path}: not a regular file, directory or symlink; the server "
                         f"accepts only those")
    return info, info.size


def _file_data(path: Path, size: int) -> t.Iterator[bytes]:
    """``size`` bytes of the file (zero-padded if it shrank meanwhile, cut if it grew), then
    the padding to a whole block."""
    left = size
    with path.open("rb") as file:
        while left > 0:
            data = file.read(min(READ_CHUNK, left))
            if not data:
                break
            left -= len(data)
            yield data
    while left > 0:
        zeros = min(READ_CHUNK, left)
        left -= zeros
        yield bytes(zeros)
    if size % BLOCK:
        yield bytes(BLOCK - size % BLOCK)


def counted(chunks: t.Iterable[bytes], progress: Progress | None) -> t.Iterator[bytes]:
    """``chunks`` unchanged, telling ``progress`` the running byte total."""
    total = 0
    for chunk in chunks:
        total += len(chunk)
        if progress is not None:
            progress(total)
        yield chunk


# ---- download: tar.gz stream -> files under a directory -------------------------------------

class ChunkReader(io.RawIOBase):
    """A readable file over an iterator of byte chunks (an HTTP body as it arrives)."""

    def __init__(self, chunks: t.Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._buffer = b""

    def readable(self) -> bool:
        return True

    def readinto(self, target: t.Any) -> int:
        while not self._buffer:
            try:
                self._buffer = next(self._chunks)
            except StopIteration:
                return 0
        size = min(len(target), len(self._buffer))
        target[:size] = self._buffer[:size]
        self._buffer = self._buffer[size:]
        return size


class GunzipReader(io.RawIOBase):
    """The decompressed bytes of a gzip stream, checking that it really ends: a stream cut
    short (no gzip trailer, or a CRC that does not match) raises instead of reading as a
    shorter archive. tarfile alone stops at the first empty block and never notices."""

    def __init__(self, compressed: t.BinaryIO | io.RawIOBase) -> None:
        self._compressed = compressed
        self._inflate = zlib.decompressobj(wbits=31)
        self._pending = b""  # compressed bytes read past the end of a gzip member
        self._buffer = b""

    def readable(self) -> bool:
        return True

    def _next_compressed(self) -> bytes:
        data, self._pending = self._pending, b""
        return data or self._compressed.read(READ_CHUNK) or b""

    def readinto(self, target: t.Any) -> int:
        while not self._buffer:
            data = self._next_compressed()
            if self._inflate.eof:
                if not data:
                    return 0
                if not data.strip(b"\0"):
                    continue  # zero padding after the last member, which gzip allows
                self._inflate = zlib.decompressobj(wbits=31)  # a further member
            elif not data:
                raise TransportError("the downloaded archive is truncated (no gzip end)")
            self._buffer = self._inflate.decompress(data)
            if self._inflate.eof:
                self._pending = self._inflate.unused_data
        size = min(len(target), len(self._buffer))
        target[:size] = self._buffer[:size]
        self._buffer = self._buffer[size:]
        return size

    def drain(self) -> None:
        """Read to the end (tar's zero padding), which checks the gzip trailer."""
        while self.read(READ_CHUNK):
            pass


def extract_tar_gz(stream: t.BinaryIO | io.RawIOBase, target: Path) -> list[Path]:
    """Extract a tar.gz read from ``stream`` under ``target`` (created if missing); returns the
    paths written, in archive order.

    :raises UnsafeArchive: an entry that would land outside ``target`` or is no regular file,
        directory or link.
    :raises TransportError: the archive is truncated or corrupt.
    """
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    root = Path(os.path.realpath(target))
    written: list[Path] = []
    gunzip = GunzipReader(stream)
    try:
        with tarfile.open(fileobj=t.cast(t.IO[bytes], gunzip), mode="r|") as tar:
            for member in tar:
                path = _extract_member(tar, member, root)
                if path is not None:
                    written.append(path)
        gunzip.drain()
    except (tarfile.ReadError, tarfile.StreamError, EOFError, zlib.error) as exc:
        raise TransportError(f"the downloaded archive is truncated or corrupt ({exc})") \
            from exc
    return written


def _extract_member(tar: tarfile.TarFile, member: tarfile.TarInfo, root: Path) -> Path | None:
    if not (member.isdir() or member.isreg() or member.issym() or member.islnk()):
        raise UnsafeArchive(f"{member.name!r}: devices, fifos and other special files are "
                            f"refused")
    dest = safe_destination(root, member.name)
    if dest is None:
        return None  # "." or "./": the target itself
    # Archives may leave out directory entries; the parent resolved inside root (checked).
    dest.parent.mkdir(parents=True, exist_ok=True)
    if member.isdir():
        if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
            raise UnsafeArchive(f"{member.name!r}: a directory entry over an existing "
                                f"non-directory")
        if not dest.exists():
            dest.mkdir(mode=(member.mode & 0o777) | 0o700)
        return dest
    if member.isreg():  # (also a contiguous file, tar's CONTTYPE)
        _make_room(dest, member.name)
        source = tar.extractfile(member)
        assert source is not None  # a regular member always has data
        _write_file(source, dest, (member.mode & 0o777) | 0o600)
        os.utime(dest, (member.mtime, member.mtime))
        return dest
    if member.issym():
        check_link_target(root, dest, member.linkname, member.name)
        _make_room(dest, member.name)
        os.symlink(member.linkname, dest)
        return dest
    original = safe_destination(root, member.linkname)  # a hard link
    if original is None or original.is_symlink() or not original.is_file():
        raise UnsafeArchive(f"{member.name!r}: a hard link to {member.linkname!r}, which is "
                            f"not a file extracted before it")
    _make_room(dest, member.name)
    os.link(original, dest)
    return dest


def safe_destination(root: Path, name: str) -> Path | None:
    """Where entry ``name`` goes under ``root`` (a resolved path), or ``None`` for the root.

    :raises UnsafeArchive: an absolute name, a ``..`` component, NUL, or a parent directory
        that resolves (through symlinks) outside ``root``.
    """
    if "\x00" in name:
        raise UnsafeArchive(f"{name!r}: NUL in an entry name")
    pure = PurePosixPath(name)
    if pure.is_absolute() or name.startswith("/"):
        raise UnsafeArchive(f"{name!r}: absolute path")
    parts = [part for part in pure.parts if part != "."]
    if ".." in parts:
        raise UnsafeArchive(f"{name!r}: '..' in an entry name")
    if not parts:
        return None
    dest = root.joinpath(*parts)
    if not _inside(root, os.path.realpath(dest.parent)):
        raise UnsafeArchive(f"{name!r}: would be written through a link leading out of "
                            f"{root}")
    return dest


def check_link_target(root: Path, dest: Path, linkname: str, name: str) -> None:
    """:raises UnsafeArchive: the symlink at ``dest`` would point outside ``root``."""
    if not linkname or "\x00" in linkname or os.path.isabs(linkname):
        raise UnsafeArchive(f"{name!r}: symlink to {linkname!r} (absolute or empty)")
    resolved = os.path.realpath(os.path.join(os.path.realpath(dest.parent), linkname))
    if not _inside(root, resolved):
        raise UnsafeArchive(f"{name!r}: symlink to {linkname!r} points outside {root}")


def _inside(root: Path, path: str) -> bool:
    return path == str(root) or path.startswith(str(root).rstrip("/") + "/")


def _make_room(dest: Path, name: str) -> None:
    """Remove a file or link in the way of an entry (never following a link); a directory in
    the way stays and the entry is refused."""
    if dest.is_symlink() or dest.is_file():
        dest.unlink()
    elif dest.exists():
        raise UnsafeArchive(f"{name!r}: would replace an existing directory or special file")


def _write_file(source: t.IO[bytes], dest: Path, mode: int) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(dest, flags, mode)
    with os.fdopen(fd, "wb") as out:
        while data := source.read(READ_CHUNK):
            out.write(data)
    os.chmod(dest, mode)
