#!/usr/bin/env python3
"""create and exec on a remote libvirt host vs the local one, through one live manager (issue 17).

    .venv/bin/python bench/bench_remote.py --rounds 3 --exec-calls 30 --concurrency 8 --seconds 15

Starts the two-host rig (tests/integration/two_host_rig.py: a second libvirtd in its own
namespaces, reached over a veth pair), ships the image there (untimed), serves the API as
``make run`` does (gunicorn, :func:`bench.loadgen.serve`) with ``HOSTS`` naming the rig's host
``h2``, and measures in one run, alternating so that machine drift hits every path alike:

- **create**: ``POST /v1/vms`` cold booted (``provisionMode: boot``) and restored from the
  memory snapshot (``provisionMode: snapshot``), here and on h2 (``placement: {"host":
  "h2"}``; shipping made h2's snapshot there); each round runs every path once,
  in a rotated order; time to the 201 and to the first ``exec`` of ``true`` answering, then
  ``DELETE ?wait=true`` (timed too) before the next;
- **exec**: one VM here (the default path: the snapshot) and one on h2; ``true`` sequentially,
  alternating between them (p50/p95), then at ``--concurrency`` threads for ``--seconds``
  on each (throughput, latencies).

Everything it made is deleted, also on failure or SIGTERM; then the rig's inventory must be
empty and the rig is removed. Only loopback, the rig's veth and the guest bridges are used.
Prints markdown tables; ``--json PATH`` writes the samples. Exit status 1 on any error or
leftover. Run it under the VM lock: ``flock -o /tmp/rds-vm.lock`` (``make bench-remote``).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import signal
import subprocess
import sys
import time
import typing as t

import httpx

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from bench import loadgen
from bench.common import live_server_services, machine
from tests.integration.two_host_rig import SecondHost
from tests.leak_inventory import remote_inventory

KEY = "bench-remote-key"
HOST = "h2"
SHAPE = {"cpu": 1, "memMb": 256}
# The create paths, in the order of the first round (later rounds rotate it).
PATHS: dict[str, dict] = {
    "local cold boot": {**SHAPE, "provisionMode": "boot", "placement": {"host": "local"}},
    "local memory snapshot": {**SHAPE, "provisionMode": "snapshot",
                              "placement": {"host": "local"}},
    f"remote ({HOST}) cold boot": {**SHAPE, "provisionMode": "boot",
                                   "placement": {"host": HOST}},
    f"remote ({HOST}) memory snapshot": {**SHAPE, "provisionMode": "snapshot",
                                         "placement": {"host": HOST}},
}
EXEC_VMS: dict[str, dict] = {"local": {**SHAPE, "placement": {"host": "local"}},
                             f"remote ({HOST})": {**SHAPE, "placement": {"host": HOST}}}
WARMUP_S = 3.0


# Pure helpers (tests/unit/test_bench_remote.py) ###########################################

def summarize(samples: t.Sequence[float]) -> dict[str, float]:
    """n, p50, p95 (nearest rank, :func:`bench.loadgen.percentile`), min and max."""
    return {"n": len(samples), "p50": loadgen.percentile(samples, 50),
            "p95": loadgen.percentile(samples, 95), "min": min(samples, default=0.0),
            "max": max(samples, default=0.0)}


def rotated(items: t.Sequence[str], turn: int) -> list[str]:
    """``items`` started at ``turn`` (modulo their number): round ``turn``'s order."""
    if not items:
        return []
    start = turn % len(items)
    return [*items[start:], *items[:start]]


def duration(seconds: float) -> str:
    """Milliseconds below a second, else seconds with two decimals."""
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def markdown_table(header: t.Sequence[str], rows: t.Iterable[t.Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def create_table(creates: dict[str, dict[str, list[float]]]) -> str:
    """One row per create path: its 201, first exec and delete times."""
    rows = []
    for path, samples in creates.items():
        made, ready = summarize(samples["created"]), summarize(samples["ready"])
        rows.append((path, made["n"], duration(made["p50"]), duration(made["p95"]),
                     duration(made["min"]), duration(made["max"]), duration(ready["p50"]),
                     duration(ready["p95"]), duration(summarize(samples["deleted"])["p50"])))
    return markdown_table(("path", "n", "→ 201 p50", "→ 201 p95", "min", "max",
                           "→ first exec p50", "→ first exec p95", "delete p50"), rows)


def exec_table(execs: dict[str, dict], concurrency: int, seconds: float) -> str:
    """One row per VM: sequential latency, then throughput and latency under load."""
    rows = []
    for where, found in execs.items():
        alone, loaded = summarize(found["sequential"]), summarize(found["loaded"])
        rate = found["calls"] / found["window_s"] if found["window_s"] else 0.0
        rows.append((where, alone["n"], duration(alone["p50"]), duration(alone["p95"]),
                     duration(alone["max"]), f"{rate:.1f}/s", duration(loaded["p50"]),
                     duration(loaded["p95"]), found["errors"]))
    return markdown_table(("VM", "sequential n", "p50", "p95", "max",
                           f"throughput ({concurrency} threads, {seconds:.0f} s)",
                           "p50 under load", "p95 under load", "errors"), rows)


# The run ##################################################################################

class Made:
    """The VMs this run made and has not deleted yet (what the cleanup deletes), and the
    deletes that failed (the run goes on: the figures of the others still count)."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.errors: list[str] = []

    def create(self, http: httpx.Client, body: dict) -> tuple[dict, float]:
        started = time.monotonic()
        response = http.post("/v1/vms", json=body)
        took = time.monotonic() - started
        if response.status_code != 201:
            raise RuntimeError(f"create {body}: {response.status_code} {response.text[:500]}")
        vm = response.json()
        self.ids.append(vm["id"])
        expected = (body.get("placement") or {}).get("host", "local")
        if vm["host"] != expected or vm["provisionMode"] != body.get("provisionMode",
                                                                     vm["provisionMode"]):
            raise RuntimeError(f"asked {body}, made {vm['host']} {vm['provisionMode']}")
        return vm, took

    def delete(self, http: httpx.Client, vm_id: str) -> float | None:
        """DELETE ?wait=true; its seconds, or None when it failed (noted in ``errors``; sent
        once more, as a delete that failed half-way is finished by the next)."""
        started = time.monotonic()
        response = http.delete(f"/v1/vms/{vm_id}?wait=true")
        took = time.monotonic() - started
        if response.status_code == 204:
            self.ids.remove(vm_id)
            return took
        self.errors.append(f"delete {vm_id}: {response.status_code} {response.text[:300]}")
        if http.delete(f"/v1/vms/{vm_id}?wait=true").status_code in (204, 404):
            self.ids.remove(vm_id)
        return None


def exec_true(http: httpx.Client, vm_id: str) -> None:
    response = http.post(f"/v1/vms/{vm_id}/exec", json={"cmd": "true"})
    if response.status_code != 200 or response.json()["exitCode"] != 0:
        raise RuntimeError(f"exec on {vm_id}: {response.status_code} {response.text[:300]}")


def timed(call: t.Callable[[], object]) -> float:
    started = time.monotonic()
    call()
    return time.monotonic() - started


def measure_creates(http: httpx.Client, made: Made, rounds: int,
                    creates: dict[str, dict[str, list[float]]]) -> None:
    """``rounds`` creates per path into ``creates`` (filled as they come: a failure keeps
    what was measured)."""
    creates.update({path: {"created": [], "ready": [], "deleted": []} for path in PATHS})
    for turn in range(rounds):
        for path in rotated(list(PATHS), turn):
            started = time.monotonic()
            vm, took = made.create(http, PATHS[path])
            exec_true(http, vm["id"])
            creates[path]["ready"].append(time.monotonic() - started)
            creates[path]["created"].append(took)
            deleted = made.delete(http, vm["id"])
            if deleted is not None:
                creates[path]["deleted"].append(deleted)
        print(f"round {turn + 1}: " + ", ".join(
            f"{path} {samples['created'][-1]:.2f} s" for path, samples in creates.items()),
              flush=True)


def measure_execs(base: str, http: httpx.Client, made: Made, calls: int, concurrency: int,
                  seconds: float, execs: dict[str, dict]) -> None:
    """Sequential and concurrent execs on a VM of each host into ``execs``."""
    vms = {where: made.create(http, body)[0] for where, body in EXEC_VMS.items()}
    execs.update({where: {"vm": {key: vm[key] for key in (
        "id", "host", "provisionMode", "guestIp")}, "sequential": [], "calls": 0,
        "window_s": 0.0, "loaded": [], "errors": 0} for where, vm in vms.items()})
    for vm in vms.values():  # the first calls open each worker's SSH connection to the guest
        for _ in range(4):
            exec_true(http, vm["id"])
    for _ in range(calls):
        for where, vm in vms.items():
            execs[where]["sequential"].append(timed(lambda vm=vm: exec_true(http, vm["id"])))
    print("sequential exec: done", flush=True)
    clients = [loadgen.client(base, KEY) for _ in range(concurrency)]
    try:
        for where, vm in vms.items():
            def call(index: int, vm_id: str = vm["id"]) -> None:
                exec_true(clients[index], vm_id)
            loadgen.throughput(call, concurrency, WARMUP_S)  # untimed: threads, connections
            count, latencies, errors = loadgen.throughput(call, concurrency, seconds)
            execs[where].update(calls=count, window_s=seconds, loaded=latencies,
                                errors=len(errors), error_samples=errors[:5])
            print(f"exec throughput on {where}: {count / seconds:.1f}/s, "
                  f"{len(errors)} errors", flush=True)
    finally:
        for each in clients:
            each.close()
    for vm in vms.values():
        made.delete(http, vm["id"])


def commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, timeout=10,
                              cwd=loadgen.REPO).stdout.strip()
    return git("rev-parse", "--short", "HEAD") + (" (dirty)" if git("status", "--porcelain",
                                                                      "--untracked-files=no")
                                                  else "")


def leftovers(http: httpx.Client, before: set[str], made: Made) -> list[str]:
    """Delete what is left of this run: its VMs not deleted yet, and any VM listed now that
    was not before it started (a create whose answer was lost); returns the failures."""
    listed = {vm["id"] for vm in http.get("/v1/vms").json()}
    ids = sorted(set(made.ids) | (listed - before))
    return loadgen.delete_vms(http, ids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="creates per path")
    parser.add_argument("--exec-calls", type=int, default=30,
                        help="sequential execs of `true` per VM")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=15.0,
                        help="throughput window per VM")
    parser.add_argument("--json", help="write the samples and figures here")
    args = parser.parse_args()
    # SIGTERM (a timeout, an operator) runs the finally blocks: nothing is left behind.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    report: dict[str, t.Any] = {"machine": machine(), "commit": commit(), "args": vars(args)}
    failures: list[str] = []
    with SecondHost() as rig:
        started = time.monotonic()
        services = live_server_services(KEY, HOSTS=rig.hosts_setting(HOST))
        try:
            report["accelerator"] = "KVM" if services.domain_type == "kvm" else "TCG"
            shipment = services.shipper.ship(HOST, "default")
            if shipment.memory_snapshot_error:
                raise RuntimeError(f"no memory snapshot on {HOST}: "
                                   f"{shipment.memory_snapshot_error}")
            print(f"rig up, local snapshot ready, image shipped to {HOST} and its memory "
                  f"snapshot made there in {shipment.seconds:.1f} s "
                  f"({time.monotonic() - started:.0f} s in all)", flush=True)
        finally:
            services.close()
        env = {**loadgen.server_env(KEY, 8), "HOSTS": rig.hosts_setting(HOST)}
        with loadgen.serve(env, loadgen.server_log("bench-remote-")) as (base, _server), \
                loadgen.client(base, KEY) as http:
            hosts = {host["name"]: host for host in http.get("/v1/hosts").json()}
            report["hosts"] = {name: {key: host.get(key) for key in ("state", "uri", "cpus")}
                               for name, host in hosts.items()}
            if hosts.get(HOST, {}).get("state") != "UP":
                raise SystemExit(f"{HOST} is not UP: {hosts.get(HOST)}")
            before = {vm["id"] for vm in http.get("/v1/vms").json()}
            made = Made()
            try:
                measure_creates(http, made, args.rounds, report.setdefault("create", {}))
                measure_execs(base, http, made, args.exec_calls, args.concurrency,
                              args.seconds, report.setdefault("exec", {}))
            except (RuntimeError, httpx.HTTPError) as exc:
                failures.append(f"{type(exc).__name__}: {exc}")
            finally:
                failures += made.errors + leftovers(http, before, made)
        time.sleep(2)  # a delete's last steps on the rig (its console log volume)
        left = {kind: sorted(items) for kind, items in remote_inventory(rig.uri).items()
                if items}
        if left:
            failures.append(f"left on the rig: {left}")
    report["failures"] = failures
    print(f"\nmachine: {report['machine']}\naccelerator: {report.get('accelerator')}\n"
          f"commit: {report['commit']}\n")
    if report.get("create"):
        print(create_table(report["create"]) + "\n")
    if report.get("exec"):
        print(exec_table(report["exec"], args.concurrency, args.seconds))
        for where, found in report["exec"].items():
            for sample in found.get("error_samples", []):
                print(f"  {where}: {sample}")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    print("\nRESULT: " + ("PASS" if not failures else "FAIL\n  " + "\n  ".join(failures)))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
