"""FileService: tar.gz uploads into, and downloads out of, a VM's workspace.

An upload is spooled to a temporary file (never more than one body in memory) and checked
entry by entry on the host (app.services.archives); only then is it re-packed a second time,
from the same spool, straight into the in-guest helper ``untar``, which extracts into a staging
directory first: all or nothing. The guest gets a tar that Python's tarfile wrote, with the
entries that passed the check, never the upload itself. A download streams ``pack``'s tar from
the guest to the client. (De)compression runs on the host: on an emulated guest it would
dominate the transfer.
"""
from __future__ import annotations

import logging
import shlex
import tempfile
import typing as t
import zlib

from app import metrics
from app.config import Settings
from app.errors import (CommandTimeout, GuestCommandFailed, InvalidRequest, PayloadTooLarge,
                        PathNotFound)
from app.services.archives import ArchiveLimits, Sink, repack_archive, validate_archive
from app.services.vms import VmService
from app.services.workspace import GUEST_HELPERS as HELPERS, workspace_path

log = logging.getLogger(__name__)
SPOOL_IN_MEMORY = 1024 * 1024
TRANSFER_TIMEOUT = 300.0
COPY_CHUNK = 256 * 1024
GZIP_LEVEL = 6


class FileService:
    def __init__(self, settings: Settings, vms: VmService) -> None:
        self.settings = settings
        self.vms = vms

    def upload(self, vm_id: str, dest: str | None, body: t.BinaryIO,
               declared_size: int | None = None) -> int:
        """Extract the tar.gz ``body`` into ``dest``; returns the number of entries.

        Too large wins over a missing or stopped VM: a declared size (Content-Length) is
        checked at once, an undeclared one (chunked) by reading the body before the lookup.

        :param declared_size: the body's Content-Length, if the client sent one.
        :raises InvalidRequest: bad dest or unsafe/corrupt archive (nothing is written).
        :raises PayloadTooLarge: body, uncompressed size or entry count over the limits.
        :raises VmNotFound: no such VM.
        :raises VmStateConflict: the VM is not RUNNING.
        """
        if dest is None:
            raise InvalidRequest("query parameter 'dest' is required")
        target = workspace_path(dest, "dest")
        if declared_size is not None and declared_size > self.settings.max_upload_bytes:
            raise PayloadTooLarge(
                f"upload body is larger than {self.settings.max_upload_bytes} bytes")
        limits = ArchiveLimits(self.settings.max_upload_uncompressed_bytes,
                               self.settings.max_upload_entries)
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY) as spool:
            self._spool(body, spool)
            guest = self.vms.guest(vm_id)
            spool.seek(0)
            summary = validate_archive(spool, limits)
            # Only now, and from the same bytes: the guest gets exactly what passed the check.
            result = guest.run(shlex.join([f"{HELPERS}/untar", target]),
                               timeout=TRANSFER_TIMEOUT, stdin=_repacked(spool, limits),
                               max_output=65536)
        if result.timed_out or result.exit_code != 0:
            message = result.stderr.decode(errors="replace").strip() or "extraction failed"
            message = message.removeprefix("rds-untar: ")
            raise InvalidRequest(f"upload to {target} failed: {message}")
        log.info("upload done vm=%s dest=%s entries=%s bytes=%s", vm_id, target,
                 summary.entries, summary.uncompressed_bytes)
        metrics.TRANSFER_BYTES.labels("upload").inc(summary.uncompressed_bytes)
        return summary.entries

    def _spool(self, body: t.BinaryIO, spool: t.BinaryIO) -> None:
        limit = self.settings.max_upload_bytes
        size = 0
        while True:
            chunk = body.read(COPY_CHUNK)
            if not chunk:
                break
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"upload body is larger than {limit} bytes")
            spool.write(chunk)
        if size == 0:
            raise InvalidRequest("upload body is empty; send a tar.gz archive")

    def download(self, vm_id: str, path: str | None) -> t.Iterator[bytes]:
        """A tar.gz of ``path`` (a directory's contents or one file), as chunks.

        The whole transfer has a deadline (``TRANSFER_TIMEOUT``), and the guest's ``pack``
        must exit 0: a pack that fails or is cut off once the body has started ends the body
        without the gzip trailer and the response is aborted (the client sees a broken
        transfer, never a complete-looking short archive).

        :raises PathNotFound: when the path does not exist (404).
        :raises InvalidRequest: outside the workspace.
        :raises PayloadTooLarge: larger than ``MAX_DOWNLOAD_BYTES``.
        :raises GuestCommandFailed: packing failed before the first byte (502).
        :raises CommandTimeout: no output before the deadline (504).
        """
        if path is None:
            raise InvalidRequest("query parameter 'path' is required")
        source = workspace_path(path, "path")
        guest = self.vms.guest(vm_id)
        stream = guest.open_stream(
            shlex.join([f"{HELPERS}/pack", source, str(self.settings.max_download_bytes)]),
            timeout=TRANSFER_TIMEOUT)
        first = stream.first_chunk()
        if not first:
            status = stream.exit_status()
            message = stream.stderr.decode(errors="replace").strip().removeprefix("rds-pack: ")
            stream.close()
            if status == 212:
                raise PathNotFound(f"path {source} not found in the VM")
            if status == 214:
                raise PayloadTooLarge(message)
            if status == 211:
                raise InvalidRequest(message)
            raise GuestCommandFailed(f"packing {source} failed (exit {status}): "
                                     f"{message or 'no message'}")

        def chunks() -> t.Iterator[bytes]:
            # The guest sends a plain tar; it is gzipped here, on the host's native CPU.
            deflate = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)
            moved = metrics.TRANSFER_BYTES.labels("download")
            try:
                moved.inc(len(first))
                yield deflate.compress(first)
                for chunk in stream.chunks():
                    moved.inc(len(chunk))
                    packed = deflate.compress(chunk)
                    if packed:
                        yield packed
                status = stream.wait_exit()
                if status != 0:
                    message = stream.stderr.decode(errors="replace").strip()[:500]
                    log.error("download aborted vm=%s path=%s exit=%s stderr=%s", vm_id,
                              source, status, message)
                    raise GuestCommandFailed(f"packing {source} failed part-way (exit "
                                             f"{status}): {message}")
                yield deflate.flush()
            except CommandTimeout:
                log.error("download aborted vm=%s path=%s: deadline of %.0fs passed", vm_id,
                          source, TRANSFER_TIMEOUT)
                raise
            finally:
                stream.close()
        return chunks()


def _repacked(spool: t.BinaryIO, limits: ArchiveLimits) -> t.Callable[[Sink], None]:
    """The guest's stdin: the checked upload re-packed into it as it is sent (the tar is
    inflated here, on the host's native CPU; the guest only unpacks it)."""

    def write(sink: Sink) -> None:
        spool.seek(0)
        repack_archive(spool, limits, sink)
    return write
