"""CPU seconds spent so far by each part of this host, read from /proc: the gunicorn workers
(user+system, system alone, their threads' context switches), the guests' QEMU processes, this
process (the load generator), libvirtd and the whole host. Two samples around a window of
calls give each part's CPU per call (bench/exec_cpu_split.py, bench/bench_load.py)."""
from __future__ import annotations

import os
import pathlib
import subprocess

from bench.common import CLOCK_TICKS, host_busy_s


def _process_ticks(pid: int) -> tuple[int, int]:
    """User and kernel CPU of ``pid`` so far, in clock ticks; (0, 0) once it is gone."""
    try:
        fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0, 0
    return int(fields[11]), int(fields[12])


def cpu_s(pid: int) -> float:
    return sum(_process_ticks(pid)) / CLOCK_TICKS


def system_s(pid: int) -> float:
    """The kernel's share of :func:`cpu_s`."""
    return _process_ticks(pid)[1] / CLOCK_TICKS


def libvirtd_pid() -> int:
    try:
        return int(pathlib.Path("/run/libvirtd.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def qemu_pids() -> list[int]:
    found = subprocess.run(["pgrep", "-f", "qemu-system"], capture_output=True, text=True,
                           timeout=10).stdout.split()
    return [int(pid) for pid in found]


def context_switches(pid: int) -> int:
    """Voluntary and involuntary context switches of all of ``pid``'s threads: a thread
    that wakes up to poll shows here."""
    total = 0
    for task in pathlib.Path(f"/proc/{pid}/task").glob("*"):
        try:
            status = (task / "status").read_text()
        except OSError:
            continue
        total += sum(int(line.split()[1]) for line in status.splitlines()
                     if line.split(":")[0] in ("voluntary_ctxt_switches",
                                               "nonvoluntary_ctxt_switches"))
    return total


def sample(workers: list[int]) -> dict[str, float]:
    """CPU seconds so far per part (and the workers' context switches, ``workers_cs``,
    reported per call as a count, not in ms)."""
    return {"workers": sum(cpu_s(pid) for pid in workers),
            "workers_sys": sum(system_s(pid) for pid in workers),
            "workers_cs": sum(context_switches(pid) for pid in workers) / 1000,
            "qemu": sum(cpu_s(pid) for pid in qemu_pids()), "client": cpu_s(os.getpid()),
            "libvirtd": cpu_s(libvirtd_pid()), "host": host_busy_s()}
