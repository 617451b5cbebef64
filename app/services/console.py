"""A VM's serial console (kernel and init output), as virtlogd writes it.

The domain's serial port logs to ``vms/<name>/console.log`` through virtlogd (``<log file=…>``
in the domain XML), which rotates it (``console.log.0``…, by virtlogd's ``max_size``) and which
goes with the VM's directory. The guest writes what it likes there, so the tail is read with
bounds: at most :data:`MAX_READ_BYTES` from the end, lines cut at :data:`MAX_LINE_CHARS`,
bytes that are not UTF-8 replaced.

A remote host's VM (``HOSTS``, issue 17) logs to the volume ``<name>.console.log`` of that
host's ``rds-vms`` pool (:mod:`app.services.remote_vms`); its tail is read through that host's
libvirt (``virStorageVolDownload`` of the last :data:`MAX_READ_BYTES`), with the same bounds.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import os
import typing as t
from pathlib import Path

from app.config import Settings
from app.errors import VmNotFound
from app.services.records import VmRecords
from app.services.remote_domains import VMS_POOL
from app.services.vm_files import CONSOLE_LOG

if t.TYPE_CHECKING:
    from app.services.remote_vms import RemoteVms

MAX_READ_BYTES = 1024 * 1024
MAX_LINE_CHARS = 4096


@dataclasses.dataclass(frozen=True)
class ConsoleTail:
    lines: list[str]
    truncated: bool  # older lines exist that are not in ``lines``
    updated_at: str | None  # when the guest last wrote to it; None before any output
    type: str = "console"


class ConsoleLogs:
    def __init__(self, settings: Settings, records: VmRecords,
                 remote: RemoteVms | None = None) -> None:
        """:param remote: the remote hosts' VMs (``HOSTS``), or None."""
        self.settings = settings
        self.records = records
        self.remote = remote

    def tail(self, vm_id: str, lines: int) -> ConsoleTail:
        """The last ``lines`` lines of the VM's console.

        :raises VmNotFound: unknown VM.
        :raises HypervisorError: not here, and the host it is on (or may be on) is DOWN; or
            that host's libvirt failed the read.
        """
        try:
            record, _info = self.records.lookup(vm_id)
        except VmNotFound:
            if self.remote is None:
                raise
            return self._remote_tail(vm_id, lines)
        return read_tail(self.settings.vms_dir / record.name / CONSOLE_LOG, lines)

    def _remote_tail(self, vm_id: str, lines: int) -> ConsoleTail:
        found = self.remote.find(vm_id)
        hypervisor = found.hypervisor
        log_name = f"{found.record.name}.{CONSOLE_LOG}"
        read = hypervisor.volume_tail(VMS_POOL, log_name, MAX_READ_BYTES,
                                      timeout=hypervisor.timeout)
        if read is None:
            return ConsoleTail([], False, None)
        # virtlogd's rotated file (listed: the read refreshed the pool).
        rotated = hypervisor.volume_path(VMS_POOL, log_name + ".0") is not None
        return parse_tail(read.data, read.start, lines, rotated, read.modified)


def read_tail(path: Path, count: int) -> ConsoleTail:
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            start = max(0, size - MAX_READ_BYTES)
            handle.seek(start)
            data = handle.read(MAX_READ_BYTES)
            modified = os.fstat(handle.fileno()).st_mtime
    except FileNotFoundError:
        return ConsoleTail([], False, None)
    rotated = path.with_name(path.name + ".0").exists()
    return parse_tail(data, start, count, rotated, modified)


def parse_tail(data: bytes, start: int, count: int, rotated: bool,
               modified: float | None) -> ConsoleTail:
    """The last ``count`` lines of ``data``, the end of a console log from its byte ``start``
    (its first line cut when ``start`` > 0); ``rotated``: older output was rotated away."""
    text = data.decode("utf-8", errors="replace").replace("\r\n", "\n")
    found = text.split("\n")
    if found and found[-1] == "":
        found.pop()  # the newline that ends the last line
    if start > 0 and found:
        found.pop(0)  # cut in the middle
    truncated = len(found) > count or start > 0 or rotated
    shown = [line.rstrip("\r")[:MAX_LINE_CHARS] for line in found[-count:]] if count else []
    if modified is None:
        return ConsoleTail(shown, truncated, None)
    when = dt.datetime.fromtimestamp(modified, dt.timezone.utc)
    return ConsoleTail(shown, truncated,
                       when.isoformat(timespec="milliseconds").replace("+00:00", "Z"))
