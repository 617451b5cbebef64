#!/usr/bin/env python3
"""delete: DELETE /v1/vms/{id} (answers once the VM is off) vs ?wait=true (answers once
everything is removed, as every delete did before) vs a raw `virsh destroy` + `virsh undefine`.

Each round creates three VMs from the memory snapshot (untimed) and deletes one each way, so
machine drift hits all alike. For the default delete, the time until its cleanup has finished
in the background (the domain undefined last) is reported too. The raw path leaves the VM's
filter, tap, sets and disk behind; the orphan sweep removes them, untimed.

    .venv/bin/python bench/bench_delete.py --rounds 10
"""
from __future__ import annotations

import argparse
import pathlib
import subprocess
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from app import create_app
from app.errors import VmNotFound
from bench.common import fmt, machine, stats

KEY = "bench-key"
BODY = {"cpu": 1, "memMb": 256, "allowIps": ["172.16.0.1/32"], "outboundInternet": True}


def virsh(*args: str) -> None:
    subprocess.run(["virsh", "-c", "qemu:///system", *args], capture_output=True, timeout=60,
                   check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    app = create_app({"TESTING": True, "API_KEY": KEY})
    services = app.extensions["rds"]
    client = app.test_client()
    headers = {"X-API-Key": KEY}
    services.seeds.ensure(BODY["cpu"], BODY["memMb"])

    def create() -> dict:
        response = client.post("/v1/vms", json=BODY, headers=headers)
        assert response.status_code == 201, response.get_json()
        return response.get_json()

    def gone(vm_id: str) -> bool:
        try:
            services.hypervisor.get_domain(vm_id)
            return False
        except VmNotFound:
            return True

    samples: dict[str, list[float]] = {"answer": [], "finished": [], "wait": [], "raw": []}
    try:
        for number in range(1, args.rounds + 1):
            fast, waited, raw = create(), create(), create()
            started = time.perf_counter()
            assert client.delete(f"/v1/vms/{fast['id']}", headers=headers).status_code == 204
            samples["answer"].append(time.perf_counter() - started)
            while not gone(fast["id"]):
                time.sleep(0.01)
            samples["finished"].append(time.perf_counter() - started)

            started = time.perf_counter()
            response = client.delete(f"/v1/vms/{waited['id']}?wait=true", headers=headers)
            assert response.status_code == 204
            samples["wait"].append(time.perf_counter() - started)

            started = time.perf_counter()
            virsh("destroy", raw["name"])
            virsh("undefine", raw["name"])
            samples["raw"].append(time.perf_counter() - started)
            services.remove_orphans(min_age_s=0)
            print(f"round {number}: answer {fmt(samples['answer'][-1], 'ms')}, finished "
                  f"{fmt(samples['finished'][-1], 'ms')}, wait=true "
                  f"{fmt(samples['wait'][-1], 'ms')}, raw virsh {fmt(samples['raw'][-1], 'ms')}",
                  flush=True)
    finally:
        services.vms.purge_all()
        services.remove_orphans(min_age_s=0)
        services.close()

    raw_median = stats(samples["raw"])["median"]
    print(f"\n{machine()}\n")
    print("| path | n | median | p95 | min | max | median / raw |")
    print("|---|---|---|---|---|---|---|")
    for key, label in (("answer", "`DELETE` → 204 (VM off)"),
                       ("finished", "`DELETE` → everything removed (background)"),
                       ("wait", "`DELETE ?wait=true` → 204"),
                       ("raw", "raw `virsh destroy` + `virsh undefine`")):
        row = stats(samples[key])
        print(f"| {label} | {row['n']} | {fmt(row['median'], 'ms')} | {fmt(row['p95'], 'ms')} | "
              f"{fmt(row['min'], 'ms')} | {fmt(row['max'], 'ms')} | "
              f"{row['median'] / raw_median:.2f} |")


if __name__ == "__main__":
    main()
