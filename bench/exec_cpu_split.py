#!/usr/bin/env python3
"""Where an exec's CPU goes: API `POST /exec` against raw paramiko, in alternating windows.

    flock -o /tmp/rds-vm.lock .venv/bin/python bench/exec_cpu_split.py --seconds 15 --rounds 3

A live server (gunicorn, as `make run` serves it) and 4 VMs; ``--concurrency`` (16) threads
run `true` through the API, then through raw paramiko connections to the same guests (one per
VM, as bench_load.py's comparison does), ``--rounds`` times. Per window it prints the calls per
second and the CPU each part of the host spent per call, read from /proc: the gunicorn workers
(``workers_sys``: their kernel time; ``workers_cs``: their threads' context switches per call,
a count), the guests' QEMU processes, this client process, libvirtd and the whole host
(non-idle time).
The last line is the API/raw throughput ratio over all windows. The host must be otherwise
quiet: everything else running shows up in "host".
"""
from __future__ import annotations

import argparse
import os
import pathlib
import subprocess
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from bench import loadgen
from bench.common import (CLOCK_TICKS, host_busy_s, live_server_services, raw_client,
                          raw_run)

KEY = "bench-load-key"


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    services = live_server_services(KEY)
    with loadgen.vms_on_a_live_server(KEY, 4, "exec-split-") as (base, server, vms):
        raws = [raw_client(services, vm) for vm in vms]
        apis = [loadgen.client(base, KEY) for _ in range(args.concurrency)]
        try:
            workers = loadgen.worker_pids(server.pid)

            def raw_call(index: int) -> None:
                raw_run(raws[index % len(raws)], "true")

            def api_call(index: int) -> None:
                answer = apis[index].post(f"/v1/vms/{vms[index % len(vms)]['id']}/exec",
                                          json={"cmd": "true"})
                assert answer.status_code == 200, answer.text

            for call in (api_call, raw_call):  # warm both paths up
                loadgen.throughput(call, args.concurrency, 5)
            done = {"raw": 0, "api": 0}
            for name, call in [("raw", raw_call), ("api", api_call)] * args.rounds:
                before = sample(workers)
                calls, _latencies, errors = loadgen.throughput(call, args.concurrency,
                                                               args.seconds)
                after = sample(workers)
                done[name] += calls
                split = " ".join(f"{part} {1000 * (after[part] - before[part]) / calls:.2f}"
                                 for part in before)
                print(f"{name}: {calls / args.seconds:.1f}/s; CPU ms per call: {split}; "
                      f"errors {len(errors)}", flush=True)
            print(f"API/raw {done['api'] / done['raw']:.3f}")
        finally:
            for client in (*raws, *apis):
                client.close()
    services.close()


if __name__ == "__main__":
    main()
