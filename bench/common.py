"""Shared bits of the benchmark scripts: timing stats, the machine description, the app's
services beside a live server, and raw paramiko clients to a VM's guest (the manager's key,
the VM's pinned host key)."""
from __future__ import annotations

import io
import logging
import os
import pathlib
import platform
import socket
import statistics
import subprocess

import paramiko

from app import create_app
from app.guestssh import parse_public_key
from app.services.container import Services



CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _host_cpu_ticks() -> list[int]:
    """/proc/stat's first line: the machine's CPU time so far, all cores, per kind (user, nice,
    system, idle, iowait, irq, softirq, steal, ...), in clock ticks."""
    return [int(value) for value in
            pathlib.Path("/proc/stat").read_text().split("\n")[0].split()[1:]]


def host_busy_s() -> float:
    """The machine's non-idle CPU seconds so far (without idle and iowait), all cores."""
    ticks = _host_cpu_ticks()
    return (sum(ticks) - ticks[3] - ticks[4]) / CLOCK_TICKS


def steal_s() -> float:
    """CPU seconds the hypervisor under this machine gave to others so far (``steal``), all
    cores; 0.0 where the kernel does not count it."""
    ticks = _host_cpu_ticks()
    return ticks[7] / CLOCK_TICKS if len(ticks) > 7 else 0.0


def stats(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p95_index = max(0, min(len(ordered) - 1, round(0.95 * (len(ordered) - 1))))
    return {"n": len(ordered), "median": statistics.median(ordered), "p95": ordered[p95_index],
            "min": ordered[0], "max": ordered[-1]}


def fmt(value: float, unit: str = "s") -> str:
    return f"{value * 1000:.0f} ms" if unit == "ms" else f"{value:.2f} s"


def machine() -> str:
    cores = os.cpu_count()
    with open("/proc/meminfo") as handle:
        mem_kb = int(handle.readline().split()[1])
    model = "unknown CPU"
    with open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    qemu = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True,
                          timeout=10).stdout.splitlines()[0]
    return (f"{platform.node()}: {model}, {cores} cores, {mem_kb / 1024 / 1024:.0f} GiB, "
            f"{platform.system()} {platform.release()}, {qemu}")


def live_server_services(key: str, **config: object) -> Services:
    """The app's services in this process, for a bench that drives a live server
    (:func:`bench.loadgen.serve`) and looks at the host: the memory snapshot of the 1 vCPU,
    256 MiB shape the server's creates restore from is saved before anything is timed.
    ``config``: more settings, as the server's (``HOSTS``, say)."""
    services = create_app({"API_KEY": key, **config}).extensions["rds"]
    # The app's logging set-up would log each of this process's client calls (httpx, INFO):
    # CPU on the API side of a comparison only, on a host whose cores the load fills.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    services.seeds.ensure(1, 256)
    return services


def raw_client(services, vm: dict, **connect: object) -> paramiko.SSHClient:
    record, _info = services.vms.parts.records.lookup(vm["id"])
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    pinned = parse_public_key(record.host_key)
    client.get_host_keys().add(vm["guestIp"], pinned.get_name(), pinned)
    key = paramiko.Ed25519Key.from_private_key(io.StringIO(
        services.vms.manager_key().private_openssh))
    client.connect(vm["guestIp"], username="user", pkey=key, timeout=10, look_for_keys=False,
                   allow_agent=False, sock=socket.create_connection((vm["guestIp"], 22), 10),
                   **connect)
    return client


def raw_run(client: paramiko.SSHClient, command: str) -> bytes:
    _stdin, stdout, _stderr = client.exec_command(command, timeout=120)
    data = stdout.read()
    assert stdout.channel.recv_exit_status() == 0
    return data
