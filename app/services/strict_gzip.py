"""Inflating an upload strictly: one gzip member, nothing after it, a bounded output.

``tarfile``'s ``r|gz`` reads only the first gzip member while ``gzip.GzipFile`` and GNU tar
read them all, so a second member would reach a guest unchecked. This reader inflates the
first member only and refuses whatever follows it, and it stops once the inflated bytes pass
a budget: nothing an upload carries goes unread by the check, and nothing unbounded is read.
"""
from __future__ import annotations

import typing as t
import zlib

from app.errors import InvalidRequest, PayloadTooLarge

GZIP_WBITS = 31  # zlib: gzip header and trailer (the trailer's CRC-32 and length are checked)
READ_CHUNK = 64 * 1024
TRAILING_DATA = ("upload has data after the end of its gzip stream (a second gzip member or "
                 "trailing bytes); send one gzip stream")


class StrictGzipReader:
    """The inflated bytes of ``raw``'s single gzip member, as a read-only file.

    :param raw: the compressed upload, read in chunks.
    :param max_output: how many inflated bytes may come out in all.
    """

    def __init__(self, raw: t.BinaryIO, max_output: int) -> None:
        self._raw = raw
        self._max_output = max_output
        self._inflate = zlib.decompressobj(GZIP_WBITS)
        self._pending = bytearray()
        self.output_bytes = 0

    def read(self, size: int) -> bytes:
        """Up to ``size`` inflated bytes; ``b""`` only at the end of the gzip member.

        :raises InvalidRequest: not gzip, corrupt, truncated, or data after the member.
        :raises PayloadTooLarge: more than ``max_output`` inflated bytes.
        """
        while len(self._pending) < size and not self._inflate.eof:
            self._pending += self._inflate_some(size - len(self._pending))
        data = bytes(self._pending[:size])
        del self._pending[:size]
        return data

    def _inflate_some(self, wanted: int) -> bytes:
        compressed = self._inflate.unconsumed_tail or self._raw.read(READ_CHUNK)
        try:
            # max_length keeps one call's output (and so memory) to what was asked for.
            out = self._inflate.decompress(compressed, wanted)
        except zlib.error as exc:
            raise InvalidRequest(f"body is not a valid gzip stream: {exc}") from None
        if not compressed and not out and not self._inflate.eof:
            raise InvalidRequest("upload ends in the middle of its gzip stream (truncated)")
        self.output_bytes += len(out)
        if self.output_bytes > self._max_output:
            raise PayloadTooLarge(f"archive expands to more than {self._max_output} bytes "
                                  f"(data, headers and padding)")
        if self._inflate.eof and (self._inflate.unused_data or self._raw.read(1)):
            raise InvalidRequest(TRAILING_DATA)
        return out
