"""Building tar.gz uploads block by block, hostile ones included (for the archive tests).

``tarfile`` writes the headers; the helpers only put them together in ways a well-behaved
writer would not (a second gzip member, a header bomb, a chain of extended headers, ...).
"""
from __future__ import annotations

import gzip
import tarfile
import typing as t
import zlib

BLOCK = tarfile.BLOCKSIZE
END = bytes(2 * BLOCK)  # the end-of-archive marker
MIB = 1024 * 1024


def padded(data: bytes) -> bytes:
    return data + bytes(-len(data) % BLOCK)


def header(name: str, kind: bytes = tarfile.REGTYPE, size: int = 0, link: str = "",
           mode: int = 0o644, fmt: int = tarfile.GNU_FORMAT, mtime: float = 0,
           pax: dict[str, str] | None = None) -> bytes:
    """One entry's header block(s) as ``tarfile`` writes them (long names included)."""
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = size
    info.linkname = link
    info.mode = mode
    info.mtime = mtime
    if pax:
        info.pax_headers = dict(pax)
    return info.tobuf(fmt, "utf-8", "surrogateescape")


def member(name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, link: str = "",
           **extra: t.Any) -> bytes:
    """A whole entry: header(s), then the data padded to a block."""
    size = len(data) if kind in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE) else 0
    return header(name, kind, size, link, **extra) + (padded(data) if size else b"")


def extended(kind: bytes, payload: bytes, declared: int | None = None) -> bytes:
    """An extended header ('x', 'g', 'L', 'K') carrying ``payload``."""
    size = len(payload) if declared is None else declared
    return header("././@ext", kind, size, fmt=tarfile.USTAR_FORMAT) + padded(payload)


def pax_record(keyword: str, value: str | bytes) -> bytes:
    """``"<length> keyword=value\\n"``, the length counting itself."""
    body = b" " + keyword.encode() + b"=" + (value if isinstance(value, bytes)
                                            else value.encode()) + b"\n"
    length = len(body) + 1
    while len(str(length)) + len(body) != length:
        length += 1
    return str(length).encode() + body


def targz(*parts: bytes, end: bool = True) -> bytes:
    return gzip.compress(b"".join(parts) + (END if end else b""), compresslevel=1)


def gzip_pieces(pieces: t.Iterable[bytes], level: int = 6) -> bytes:
    """One gzip member of the concatenated pieces, compressed as they come (never all of
    them in memory)."""
    deflate = zlib.compressobj(level, zlib.DEFLATED, 31)
    return b"".join([*(deflate.compress(piece) for piece in pieces), deflate.flush()])


def zeros(count: int, chunk: int = MIB) -> t.Iterator[bytes]:
    block = bytes(chunk)
    while count > 0:
        yield block[:min(chunk, count)]
        count -= chunk


class ZeroStream:
    """A request body of ``size`` zero bytes, made up as it is read; remembers how much was."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.consumed = 0

    def read(self, count: int = -1) -> bytes:
        left = self.size - self.consumed
        count = left if count is None or count < 0 else min(count, left)
        self.consumed += count
        return bytes(count)

    def readline(self, limit: int = -1) -> bytes:
        return self.read(limit)
