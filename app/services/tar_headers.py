"""tarfile's header parsing, bounded, for hostile uploads (used by :mod:`app.services.archives`).

tarfile reads a pax or GNU long-name header whole into memory, lets one such header follow
another (recursively) before the entry it describes, and reads GNU sparse maps of any size.
Here each extended header is capped, their chain is capped, global pax headers are capped in
all, sparse files are refused, and a damaged header is an error instead of "end of archive".
"""
from __future__ import annotations

import tarfile
import typing as t

from app.errors import InvalidRequest, PayloadTooLarge

MAX_EXTENDED_HEADER_BYTES = 64 * 1024  # one pax or GNU long-name/long-link header
MAX_EXTENDED_CHAIN = 8  # extended headers in front of one entry
MAX_GLOBAL_HEADER_BYTES = 64 * 1024  # all pax global headers together
EXTENDED_TYPES = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE,
                  tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE)


def shown(text: str) -> str:
    """A name as it appears in an error message: quoted, and cut at 200 characters."""
    return repr(text) if len(text) <= 200 else f"{text[:200]!r}..."


class CheckedTarFile(tarfile.TarFile):
    """A reading TarFile that counts extended headers (see :class:`CheckedInfo`)."""

    def __init__(self, *args: t.Any, **kwargs: t.Any) -> None:
        self.extended_depth = 0
        self.global_header_bytes = 0
        super().__init__(*args, **kwargs)


class CheckedInfo(tarfile.TarInfo):
    """tarfile's header parsing, bounded: it reads an extended header whole into memory, and
    each one may be followed by another (recursively) before the entry it describes."""

    @classmethod
    def frombuf(cls, buf: bytes, encoding: str, errors: str) -> tarfile.TarInfo:
        try:
            return super().frombuf(buf, encoding, errors)
        except (tarfile.EOFHeaderError, tarfile.EmptyHeaderError):
            raise  # the end of the archive: what follows is checked by archives._check_end
        except tarfile.HeaderError as exc:
            # After the first entry tarfile would take a damaged header for the end.
            raise InvalidRequest(f"body is not a valid tar.gz archive: {exc}") from None

    def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        if self.size < 0:
            raise InvalidRequest(f"archive entry {shown(self.name)} has a negative size")
        if self.type == tarfile.GNUTYPE_SPARSE:  # its extension blocks would be read unbounded
            raise InvalidRequest(f"archive entry {shown(self.name)} is a GNU sparse file "
                                 f"(not allowed)")
        if self.type not in EXTENDED_TYPES:
            return super()._proc_member(tarfile_)
        assert isinstance(tarfile_, CheckedTarFile)
        if self.size > MAX_EXTENDED_HEADER_BYTES:
            raise PayloadTooLarge(f"archive has an extended header of {self.size} bytes (at "
                                  f"most {MAX_EXTENDED_HEADER_BYTES})")
        if self.type == tarfile.XGLTYPE:
            tarfile_.global_header_bytes += self.size
            if tarfile_.global_header_bytes > MAX_GLOBAL_HEADER_BYTES:
                raise PayloadTooLarge(f"archive's global pax headers are larger than "
                                      f"{MAX_GLOBAL_HEADER_BYTES} bytes in all")
        tarfile_.extended_depth += 1
        try:
            if tarfile_.extended_depth > MAX_EXTENDED_CHAIN:
                raise InvalidRequest(f"archive has more than {MAX_EXTENDED_CHAIN} extended "
                                     f"headers in front of one entry")
            return super()._proc_member(tarfile_)
        finally:
            tarfile_.extended_depth -= 1

    def _refuse_sparse(self, entry: tarfile.TarInfo, *_args: t.Any) -> None:
        """tarfile's pax sparse handlers (formats 0.0, 0.1, 1.0) read maps of any size."""
        raise InvalidRequest(f"archive entry {shown(entry.name)} is a GNU sparse file "
                             f"(not allowed)")

    _proc_gnusparse_00 = _proc_gnusparse_01 = _proc_gnusparse_10 = _refuse_sparse
