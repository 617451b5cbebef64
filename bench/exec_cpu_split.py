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
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from bench import loadgen
from bench.common import live_server_services, raw_client, raw_run
from bench.host_cpu import sample

KEY = "bench-load-key"


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
