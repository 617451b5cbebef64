#!/usr/bin/env python3
"""Density: as many idle VMs as the host holds, created through the API of a live server.

    .venv/bin/python bench/bench_density.py --count 200

VMs of 1 vCPU and 256 MiB, restored from the memory snapshot (warm pool off), ``--parallel``
creates at a time, on a server with ``MAX_VMS`` raised (and the disk budget overcommitted:
idle VMs write a few MiB of their 4 GiB). Creating stops early, and says so, when the host's
MemAvailable would fall below ``--floor-mib`` (2 GiB): the host must never run out of memory.
With KSM on, the floor first pauses the creates, up to ``--ksm-wait-s`` in all, while KSM
merges the newest VMs' pages (it scans minutes behind creates made a second apart).

1. The first ``--ksm-at`` VMs (40) are made with KSM stopped: host memory per VM *without*
   KSM (MemAvailable before minus after, and the QEMU processes' PSS). Then KSM runs (as
   host-setup's ENABLE_KSM=1 sets it: pages_to_scan 1000, sleep_millisecs 20) until it has
   merged what it can: the same figures *with* KSM. ``--ksm off`` keeps it stopped throughout.
2. The rest are created; after a settle, every VM must answer `exec true` (exec p50/p99 under
   that load), host memory per VM is taken again, and idle CPU per VM over ``--idle-s`` from
   /proc/stat (the whole host) and from the QEMU processes.
3. All are deleted; no VM, filter binding, ipset, tap or VM directory of this run may be left.

KSM's settings are put back as they were at the end. Exit status 1 when a VM failed to
answer, a create failed for another reason than the memory floor, or something was left.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import threading
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from app.virt.domain_xml import port_name
from bench import loadgen
from bench.common import live_server_services, machine

KEY = "bench-density-key"
KSM = pathlib.Path("/sys/kernel/mm/ksm")
PAGE_MIB = 4096 / 2**20


def available_mib() -> float:
    return loadgen.meminfo()["MemAvailable"] / 1024


def ksm_read() -> dict[str, int]:
    return {name: int((KSM / name).read_text()) for name in
            ("run", "pages_to_scan", "sleep_millisecs", "pages_sharing", "pages_shared",
             "full_scans")}


def ksm_set(**values: int) -> None:
    for name, value in values.items():
        (KSM / name).write_text(str(value))


def ksm_settle(max_s: float = 240.0) -> float:
    """Wait until KSM completed two more full scans and its sharing grows by < 1 % per 10 s;
    returns the seconds waited."""
    started = time.monotonic()
    first = ksm_read()["full_scans"]
    last = ksm_read()["pages_sharing"]
    while time.monotonic() - started < max_s:
        time.sleep(10)
        now = ksm_read()
        if now["full_scans"] >= first + 2 and now["pages_sharing"] - last < 0.01 * max(last, 1):
            break
        last = now["pages_sharing"]
    return time.monotonic() - started


def qemu_pids() -> list[int]:
    pids = []
    for pidfile in pathlib.Path("/run/libvirt/qemu").glob("rds-*.pid"):
        try:
            pids.append(int(pidfile.read_text().strip()))
        except (OSError, ValueError):
            continue
    return pids


def pss_mib(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in pathlib.Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def cpu_jiffies(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except OSError:
            continue
    return total


def host_busy() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs from /proc/stat."""
    values = [int(v) for v in pathlib.Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


def memory_figures(base_available: float, count: int) -> dict[str, float]:
    pids = qemu_pids()
    return {"vms": count, "available_mib": available_mib(),
            "per_vm_mib": (base_available - available_mib()) / max(count, 1),
            "pss_per_vm_mib": pss_mib(pids) / max(len(pids), 1),
            "ksm_sharing_mib": ksm_read()["pages_sharing"] * PAGE_MIB}


def leftovers(services, names: set[str]) -> list[str]:
    """What of the VMs ``names`` (domain names) is still on the host."""
    found = [f"domain {info.name}" for info in services.hypervisor.list_domains()
             if info.name in names]
    ports = {port_name(name) for name in names}
    found += [f"ipset of {name}" for name in services.vms.ipsets.vm_names() & names]
    found += [f"tap {tap}" for tap in services.vms.ports.taps.names() & ports]
    found += [f"filter binding {port}" for port in
              set(services.hypervisor.filter_binding_ports()) & ports]
    found += [f"directory {name}" for name in names
              if (services.settings.vms_dir / name).exists()]
    return found


class Creator:
    """Creates VMs ``parallel`` at a time while the memory floor allows."""

    def __init__(self, base: str, parallel: int, floor_mib: float, reserve_mib: float) -> None:
        self.wait_s = 0.0  # how long to wait at the floor for KSM to merge the newest VMs
        self.waited_s = 0.0
        self._deadline = 0.0
        self._wait_lock = threading.Lock()  # one worker waits, the other waits for it
        self.base = base
        self.parallel = parallel
        self.floor_mib = floor_mib
        self.reserve_mib = reserve_mib  # per create in flight
        self.vms: list[dict] = []
        self.seconds: list[float] = []
        self.errors: list[str] = []
        self.stopped = ""
        self._lock = threading.Lock()
        self._in_flight = 0

    def run(self, target: int) -> None:
        def worker() -> None:
            with loadgen.client(self.base, KEY) as http:
                while True:
                    with self._lock:
                        if (len(self.vms) + self._in_flight >= target or self.errors
                                or self.stopped):
                            return
                        room = self._room()
                        if room:
                            self._in_flight += 1
                    if not room:
                        if self._wait_for_room():
                            continue
                        with self._lock:
                            self.stopped = self.stopped or (
                                f"stopped at {len(self.vms)} VMs: MemAvailable "
                                f"{available_mib():.0f} MiB, floor {self.floor_mib:.0f} MiB "
                                f"(waited {self.waited_s:.0f} s for KSM)")
                        return
                    started = time.monotonic()
                    try:
                        response = http.post("/v1/vms", json=loadgen.CREATE_BODY)
                        status, body = response.status_code, response.json()
                    except Exception as exc:  # noqa: BLE001 - recorded, the run fails
                        status, body = 0, {"message": repr(exc)}
                    with self._lock:
                        self._in_flight -= 1
                        if status == 201:
                            self.vms.append(body)
                            self.seconds.append(time.monotonic() - started)
                            if len(self.vms) % 10 == 0:
                                print(f"  {len(self.vms)} VMs, MemAvailable "
                                      f"{available_mib():.0f} MiB", flush=True)
                        else:
                            self.errors.append(f"create: {status} {body.get('message')}")

        threads = [threading.Thread(target=worker) for _ in range(self.parallel)]
        self._deadline = time.monotonic() + self.wait_s
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def _room(self) -> bool:
        """Another create fits above the floor (call with the lock held)."""
        return available_mib() - self.reserve_mib * (self._in_flight + 1) >= self.floor_mib

    def _wait_for_room(self) -> bool:
        """At the floor: KSM merges a new VM's pages minutes after its create (VMs are made
        faster than it scans), so wait, at most ``wait_s`` in all, for the memory it frees."""
        with self._wait_lock:
            while True:
                with self._lock:
                    if self.stopped or self.errors:
                        return False
                    if self._room():
                        return True
                if time.monotonic() >= self._deadline:
                    return False
                started = time.monotonic()
                time.sleep(5)
                self.waited_s += time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--floor-mib", type=float, default=2048)
    parser.add_argument("--ksm", choices=("on", "off"), default="on")
    parser.add_argument("--ksm-at", type=int, default=40,
                        help="VMs made before KSM is switched on (figures without KSM)")
    parser.add_argument("--ksm-wait-s", type=float, default=600.0,
                        help="at the memory floor with KSM on: wait this long in all for it")
    parser.add_argument("--idle-s", type=float, default=60.0)
    parser.add_argument("--settle-s", type=float, default=30.0)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()

    services = live_server_services(KEY)
    ksm_before = ksm_read()
    ksm_set(run=0)
    failures: list[str] = []
    report: dict = {"machine": machine(), "args": vars(args)}
    log_path = loadgen.server_log("bench-density-")
    creator = None
    try:
        with loadgen.serve(loadgen.server_env(KEY, args.count + 5), log_path) as (base, _server):
            time.sleep(5)
            base_available = available_mib()
            report["base_available_mib"] = base_available
            creator = Creator(base, args.parallel, args.floor_mib, reserve_mib=300)
            started = time.monotonic()
            first = min(args.ksm_at, args.count) if args.ksm == "on" else args.count
            creator.run(first)
            time.sleep(args.settle_s)
            report["without_ksm"] = memory_figures(base_available, len(creator.vms))
            print(f"without KSM: {report['without_ksm']}", flush=True)
            if args.ksm == "on":
                ksm_set(pages_to_scan=1000, sleep_millisecs=20, run=1)
                waited = ksm_settle()
                report["with_ksm_same"] = memory_figures(base_available, len(creator.vms))
                report["with_ksm_same"]["waited_s"] = waited
                print(f"with KSM:    {report['with_ksm_same']}", flush=True)
                creator.wait_s = args.ksm_wait_s
                creator.run(args.count)
            report["create"] = {"n": len(creator.vms), "seconds": time.monotonic() - started,
                                "p50_s": loadgen.percentile(creator.seconds, 50),
                                "p99_s": loadgen.percentile(creator.seconds, 99),
                                "stopped": creator.stopped,
                                "waited_for_ksm_s": creator.waited_s}
            failures += creator.errors[:10]
            print(f"created {len(creator.vms)} in {report['create']['seconds']:.0f} s; "
                  f"{creator.stopped or 'all made'}", flush=True)
            if args.ksm == "on":
                report["ksm_settle_s"] = ksm_settle()
            else:
                time.sleep(args.settle_s)
            report["final"] = memory_figures(base_available, len(creator.vms))
            print(f"final: {report['final']}", flush=True)
            # Idle CPU: nothing asked of the VMs for a while.
            pids = qemu_pids()
            busy0, total0 = host_busy()
            qemu0 = cpu_jiffies(pids)
            time.sleep(args.idle_s)
            busy1, total1 = host_busy()
            qemu1 = cpu_jiffies(pids)
            cores = total1 - total0
            ncpu = len([line for line in pathlib.Path("/proc/stat").read_text().splitlines()
                        if line[:3] == "cpu" and line[3:4].isdigit()])
            host_share = (busy1 - busy0) / cores * ncpu  # cores busy
            qemu_share = (qemu1 - qemu0) / (cores / ncpu)  # cores used by QEMU
            n = max(len(creator.vms), 1)
            report["idle_cpu"] = {"window_s": args.idle_s, "host_cores_busy": host_share,
                                  "qemu_cores": qemu_share,
                                  "host_pct_core_per_vm": 100 * host_share / n,
                                  "qemu_pct_core_per_vm": 100 * qemu_share / n,
                                  "ksm_run": ksm_read()["run"]}
            print(f"idle CPU: {report['idle_cpu']}", flush=True)
            # Every VM answers.
            recorder = loadgen.exec_each(base, KEY, [vm["id"] for vm in creator.vms])
            latencies = recorder.latencies.get("exec", [])
            report["exec"] = {"answered": len(latencies), "of": len(creator.vms),
                              "p50": loadgen.percentile(latencies, 50),
                              "p99": loadgen.percentile(latencies, 99)}
            print(f"exec: {report['exec']}", flush=True)
            failures += recorder.errors[:10]
            with loadgen.client(base, KEY) as http:
                delete_started = time.monotonic()
                failures += loadgen.delete_vms(http, [vm["id"] for vm in creator.vms])
                report["delete_s"] = time.monotonic() - delete_started
                left_listed = http.get("/v1/vms").json()
                if left_listed:
                    failures.append(f"GET /v1/vms still lists {len(left_listed)} VMs")
    finally:
        if creator is not None and creator.vms:
            time.sleep(2)
            names = {"rds-" + vm["id"].split("-")[0] for vm in creator.vms}
            left = leftovers(services, names)
            failures += left[:10]
            report["left"] = len(left)
        ksm_set(pages_to_scan=ksm_before["pages_to_scan"],
                sleep_millisecs=ksm_before["sleep_millisecs"], run=ksm_before["run"])
        services.close()
    report["failures"] = failures
    print(json.dumps(report, indent=2, default=str))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    print("\nRESULT: " + ("PASS" if not failures else "FAIL\n  " + "\n  ".join(failures)))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
