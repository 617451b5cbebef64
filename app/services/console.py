"""A VM's serial console (kernel and init output), as virtlogd writes it.

The domain's serial port logs to ``vms/<name>/console.log`` through virtlogd (``<log file=…>``
in the domain XML), which rotates it (``console.log.0``…, by virtlogd's ``max_size``) and which
goes with the VM's directory. The guest writes what it likes there, so the tail is read with
bounds: at most :data:`MAX_READ_BYTES` from the end, lines cut at :data:`MAX_LINE_CHARS`,
bytes that are not UTF-8 replaced.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import os
from pathlib import Path

from app.config import Settings
from app.services.records import VmRecords
from app.services.vm_files import CONSOLE_LOG

MAX_READ_BYTES = 1024 * 1024
MAX_LINE_CHARS = 4096


@dataclasses.dataclass(frozen=True)
class ConsoleTail:
    lines: list[str]
    truncated: bool  # older lines exist that are not in ``lines``
    updated_at: str | None  # when the guest last wrote to it; None before any output
    type: str = "console"


class ConsoleLogs:
    def __init__(self, settings: Settings, records: VmRecords) -> None:
        self.settings = settings
        self.records = records

    def tail(self, vm_id: str, lines: int) -> ConsoleTail:
        """The last ``lines`` lines of the VM's console.

        :raises VmNotFound: unknown VM.
        """
        record, _info = self.records.lookup(vm_id)
        return read_tail(self.settings.vms_dir / record.name / CONSOLE_LOG, lines)


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
    text = data.decode("utf-8", errors="replace").replace("\r\n", "\n")
    found = text.split("\n")
    if found and found[-1] == "":
        found.pop()  # the newline that ends the last line
    if start > 0 and found:
        found.pop(0)  # cut in the middle
    rotated = path.with_name(path.name + ".0").exists()
    truncated = len(found) > count or start > 0 or rotated
    shown = [line.rstrip("\r")[:MAX_LINE_CHARS] for line in found[-count:]] if count else []
    when = dt.datetime.fromtimestamp(modified, dt.timezone.utc)
    return ConsoleTail(shown, truncated,
                       when.isoformat(timespec="milliseconds").replace("+00:00", "Z"))
