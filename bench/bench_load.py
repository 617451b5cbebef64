#!/usr/bin/env python3
"""Load: a live server (gunicorn, as `make run` serves it), several VMs, many client threads.

    .venv/bin/python bench/bench_load.py --duration 180

1. Mixed load for ``--duration`` seconds: per VM two threads exec (a command echoing a token),
   one run-ts, one upload + download of a 256 KiB file (compared); p50/p99 per operation,
   throughput, zero errors required. The gunicorn workers' fds, threads and RSS (/proc) are
   sampled after a warm-up and after the load, both times idle: growth beyond a small
   tolerance fails the run. /healthz is polled 4 times a second all along: p99 < 200 ms.
2. exec throughput at ``--concurrency`` (16) concurrent `true`: the API against raw paramiko
   (one open connection per VM, the VM's pinned host key and the manager's key, as
   bench_commands.py does), in alternating windows on the same VMs: API ≥ 0.9× raw. The
   windows follow the Thue-Morse order (raw api api raw api raw raw api ...): every round
   has one window of each side, a machine that slows down or speeds up through the
   comparison (steadily, or faster and faster) favours neither side, and the first and the
   last window are not both the same side's (the last often ran fastest). Many
   short windows (6 rounds of 12 s, each after 3 s not counted while the threads' first calls
   settle) rather than a few long ones: this host's speed moves from one half-minute to the
   next, and a pair of windows close together sees the same machine. Each window says how
   much CPU the hypervisor under this machine stole meanwhile.
3. Burst create: ``--burst`` (20) POST /v1/vms at once (warm pool off, memory snapshot): all
   must answer 201 from the snapshot; time to the last 201 and creates/s. A 429 with
   Retry-After (the worker the connection landed on runs its maximum of long calls) is retried
   after the time it names, as the SDK does, and counted. Next to it, with the
   server stopped, a raw loop over the same save image: per VM an overlay, a copy of the image
   carrying its own domain XML (as the service makes it, NIC on the libvirt network, no
   filter) and `virsh restore` (the guest is not waited for: a lower bound).

The exit status is 1 when any requirement is missed; the figures are printed either way.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time
import typing as t
import uuid

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from app.models import ProvisionMode, VmRecord
from app.sshkeys import generate_keypair
from app.virt import disks, save_image
from app.virt.qemu_access import prepare_vm_dir, share_with_qemu
from bench import loadgen
from bench.bench_create import plain_libvirt_nic
from bench.common import live_server_services, machine, raw_client, raw_run, steal_s
from bench.host_cpu import sample as cpu_sample

KEY = "bench-load-key"
CORES = os.cpu_count() or 1
HEALTHZ_P99_S = 0.200
MIN_RATIO = 0.9


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def window_order(rounds: int) -> list[str]:
    """The sides of the exec comparison, window by window, in the Thue-Morse order (window
    ``i`` is "api" when ``i`` has an odd number of 1 bits): each round (windows 2k, 2k+1)
    holds one window per side, and over 2^n windows a drift of the machine's speed that is a
    polynomial of degree below n weighs on both sides alike (a straight one over 4, a
    curved one over 8). With 6 rounds the first window is raw's and the last the API's."""
    return ["api" if bin(index).count("1") % 2 else "raw" for index in range(2 * rounds)]


def exec_compare(services, base: str, vms: list[dict], concurrency: int, seconds: float,
                 rounds: int, settle: float = 0.0, workers: list[int] | None = None) -> dict:
    """The exec comparison: ``rounds`` pairs of windows (:func:`window_order`), each counted
    for ``seconds`` after ``settle`` (:func:`bench.loadgen.throughput`). Each window also
    records the share of the machine's CPU its hypervisor stole meanwhile: a neighbour that
    comes and goes shows there. With the gunicorn ``workers``' pids, each side also gets the
    CPU per call of each part of the host (bench/host_cpu.py): where a gap comes from."""
    raws = [raw_client(services, vm) for vm in vms]
    apis = [loadgen.client(base, KEY) for _ in range(concurrency)]

    def raw_call(index: int) -> None:
        raw_run(raws[index % len(raws)], "true")

    def api_call(index: int) -> None:
        response = apis[index].post(f"/v1/vms/{vms[index % len(vms)]['id']}/exec",
                                    json={"cmd": "true"})
        assert response.status_code == 200 and response.json()["exitCode"] == 0, response.text

    try:
        return alternate({"raw": raw_call, "api": api_call}, concurrency, seconds, rounds,
                         settle, (lambda: cpu_sample(workers)) if workers else None)
    finally:
        for raw in raws:
            raw.close()
        for api in apis:
            api.close()


def alternate(calls: dict, concurrency: int, seconds: float, rounds: int,
              settle: float = 0.0, cpu: t.Callable[[], dict] | None = None) -> dict:
    """The windows of a comparison: ``calls`` holds the "raw" and the "api" side (the same
    call on both for an A/A run, bench/compare_noise.py), in :func:`window_order`. Per side
    the calls, latencies, errors and calls per second; the API/raw ratio; the windows. With a
    ``cpu`` sampler (CPU seconds so far per part of the host), per side the CPU ms per call of
    each part (``cpu_ms``; the settle's calls are not counted, their CPU is: a small excess)."""
    out: dict = {"raw": {"done": 0, "lat": [], "errors": [], "cpu_s": {}},
                 "api": {"done": 0, "lat": [], "errors": [], "cpu_s": {}}, "windows": []}
    for name in window_order(rounds):
        stolen, started = steal_s(), time.monotonic()
        before = cpu() if cpu else {}
        done, latencies, errors = loadgen.throughput(calls[name], concurrency, seconds, settle)
        after = cpu() if cpu else {}
        for part in after:
            out[name]["cpu_s"][part] = out[name]["cpu_s"].get(part, 0.0) + after[part] - \
                before[part]
        steal = (steal_s() - stolen) / ((time.monotonic() - started) * CORES)
        out[name]["done"] += done
        out[name]["lat"] += latencies
        out[name]["errors"] += errors
        out["windows"].append([name, round(done / seconds, 2), round(steal, 3)])
        print(f"  exec x{concurrency} {name}: {done / seconds:.1f}/s (steal "
              f"{100 * steal:.0f} %)", flush=True)
    for name in ("raw", "api"):
        out[name]["per_s"] = out[name]["done"] / (seconds * rounds)
        out[name]["cpu_ms"] = {part: round(1000 * spent / max(1, out[name]["done"]), 2)
                               for part, spent in out[name].pop("cpu_s").items()}
    out["ratio"] = out["api"]["per_s"] / out["raw"]["per_s"] if out["raw"]["per_s"] else 0.0
    return out


def raw_restore_loop(services, count: int) -> tuple[list[float], float]:
    """``count`` restores of the shape's save image, one after the other; returns seconds per
    restore (overlay + image copy + `virsh restore`) and the total."""
    seed = services.seeds.ensure(1, 256)
    template = services.templates.get(None)
    build = services.templates.current_build(template)
    files = services.vms.parts.files
    saved_xml = save_image.read_header(seed.state).xml
    names: list[str] = []
    times: list[float] = []
    with tempfile.TemporaryDirectory(dir=services.settings.storage_root) as tmp:
        workdir = pathlib.Path(tmp)
        share_with_qemu(workdir)
        try:
            started = time.monotonic()
            for index in range(count):
                begin = time.monotonic()
                vm_dir = workdir / f"r{index}"
                vm_dir.mkdir()
                prepare_vm_dir(vm_dir)
                host_key = generate_keypair()
                files.write_keys(vm_dir, host_key)
                record = VmRecord(
                    id=str(uuid.uuid4()), name=f"bench-restore-{index:02d}", cpu=1, mem_mb=256,
                    guest_ip="", mac=f"52:54:00:10:01:{index:02x}", allow_ips=(),
                    outbound_internet=False, image_id=template.id, image_path=str(build.path),
                    disk_size_mb=seed.disk_size_mb, created_at="",
                    provision_mode=ProvisionMode.SNAPSHOT, host_key=host_key.public_openssh)
                xml = files.domain_xml(record, saved_xml, build, vm_dir,
                                       genid=str(uuid.uuid4()), template=template)
                xml = plain_libvirt_nic(xml, services.settings.network_name, None)
                disks.create_overlay(seed.disk, vm_dir / "disk.qcow2", seed.disk_size_mb)
                save_image.write_clone(seed.state, vm_dir / "restore.sav", xml)
                subprocess.run(["virsh", "-q", "restore", str(vm_dir / "restore.sav")],
                               check=True, timeout=120, capture_output=True)
                names.append(record.name)
                times.append(time.monotonic() - begin)
            total = time.monotonic() - started
        finally:
            for name in names:
                subprocess.run(["virsh", "-q", "destroy", name], timeout=60,
                               capture_output=True)
    return times, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=180.0, help="mixed load, seconds")
    parser.add_argument("--warmup", type=float, default=30.0)
    parser.add_argument("--vms", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--compare-seconds", type=float, default=12.0,
                        help="exec comparison: seconds counted per window")
    parser.add_argument("--compare-settle", type=float, default=3.0,
                        help="exec comparison: seconds of each window not counted first")
    parser.add_argument("--compare-rounds", type=int, default=6)
    parser.add_argument("--burst", type=int, default=20)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()

    services = live_server_services(KEY)
    failures: list[str] = []
    report: dict = {"machine": machine(), "args": vars(args)}
    log_path = loadgen.server_log("bench-load-")
    env = loadgen.server_env(KEY, max(args.vms, args.burst) + 4)
    with loadgen.serve(env, log_path) as (base, server):
        http = loadgen.client(base, KEY)
        vms: list[dict] = []
        try:
            vms = loadgen.create_vms(http, args.vms)
            ids = [vm["id"] for vm in vms]
            print(f"{len(vms)} VMs; warm-up {args.warmup:.0f} s", flush=True)
            with loadgen.HealthProbe(base):  # the same connections as the measured part
                warm = loadgen.mixed_load(base, KEY, ids, args.warmup)
            loadgen.saturate(base, KEY, ids)
            time.sleep(7)  # idle: keep-alive connections (5 s) closed
            before = loadgen.sample_workers(server.pid)
            print(f"before: {loadgen.describe(before)}", flush=True)
            with loadgen.HealthProbe(base) as health:
                started = time.monotonic()
                load = loadgen.mixed_load(base, KEY, ids, args.duration)
                elapsed = time.monotonic() - started
                time.sleep(7)
                after = loadgen.sample_workers(server.pid)
                print(f"after:  {loadgen.describe(after)}", flush=True)
                compare = exec_compare(services, base, vms, args.concurrency,
                                       args.compare_seconds, args.compare_rounds,
                                       args.compare_settle, loadgen.worker_pids(server.pid))
            errors = warm.errors + load.errors
            failures += errors[:20]
            growth = loadgen.growth_problems(before, after)
            failures += growth
            healthz_p99 = loadgen.percentile(health.latencies, 99)
            failures += health.failures[:5]
            if healthz_p99 >= HEALTHZ_P99_S:
                failures.append(f"/healthz p99 {ms(healthz_p99)} >= {ms(HEALTHZ_P99_S)}")
            failures += (compare["api"]["errors"] + compare["raw"]["errors"])[:10]
            if compare["ratio"] < MIN_RATIO:
                failures.append(f"API exec throughput {compare['ratio']:.2f}x raw < "
                                f"{MIN_RATIO}x")
            report["load"] = {
                "seconds": elapsed, "errors": len(errors),
                "ops": {op: {"n": len(lat), "p50": loadgen.percentile(lat, 50),
                             "p99": loadgen.percentile(lat, 99), "per_s": len(lat) / elapsed}
                        for op, lat in sorted(load.latencies.items())},
                "healthz": {"n": len(health.latencies),
                            "p50": loadgen.percentile(health.latencies, 50),
                            "p99": healthz_p99, "max": max(health.latencies, default=0)},
                "workers_before": {pid: vars(s) for pid, s in before.items()},
                "workers_after": {pid: vars(s) for pid, s in after.items()}}
            report["exec_compare"] = {
                side: {"per_s": compare[side]["per_s"],
                       "p50": loadgen.percentile(compare[side]["lat"], 50),
                       "p99": loadgen.percentile(compare[side]["lat"], 99)}
                for side in ("api", "raw")} | {"ratio": compare["ratio"],
                                                "cpu_ms_per_call": {
                                                    side: compare[side]["cpu_ms"]
                                                    for side in ("api", "raw")},
                                                "windows": compare["windows"]}
        finally:
            failures += loadgen.delete_vms(http, [vm["id"] for vm in vms])
        if args.burst:
            print(f"burst: {args.burst} creates at once", flush=True)
            results, last, retried = loadgen.burst_create(base, KEY, args.burst)
            made = [body["id"] for _s, status, body in results if status == 201]
            bad = [f"{status} {body.get('message', body)}" for _s, status, body in results
                   if status != 201 or body.get("provisionMode") != "snapshot"]
            failures += [f"burst create: {item}" for item in bad]
            failures += loadgen.delete_vms(http, made)
            report["burst"] = {"n": args.burst, "ok": len(made), "last_s": last,
                               "first_s": results[0][0], "per_s": len(made) / last,
                               "retried_429": retried,
                               "p50_s": loadgen.percentile([r[0] for r in results], 50)}
        http.close()
    if args.burst:
        times, total = raw_restore_loop(services, args.burst)
        report["raw_restore"] = {"n": len(times), "total_s": total,
                                 "p50_s": loadgen.percentile(times, 50),
                                 "per_s": len(times) / total}
    services.close()
    print_report(report, failures)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    shutil.rmtree(log_path.parent, ignore_errors=True) if not failures else None
    sys.exit(1 if failures else 0)


def print_report(report: dict, failures: list[str]) -> None:
    print(f"\nmachine: {report['machine']}")
    load = report.get("load")
    if load:
        print(f"\nmixed load, {load['seconds']:.0f} s, {len(report['args'])} args "
              f"{report['args']}: {load['errors']} errors")
        print("| operation | n | p50 | p99 | per second |\n|---|---|---|---|---|")
        for op, figures in load["ops"].items():
            print(f"| {op} | {figures['n']} | {ms(figures['p50'])} | {ms(figures['p99'])} | "
                  f"{figures['per_s']:.2f} |")
        total = sum(f["n"] for f in load["ops"].values())
        print(f"| all | {total} | | | {total / load['seconds']:.2f} |")
        health = load["healthz"]
        print(f"\n/healthz during the load: n {health['n']}, p50 {ms(health['p50'])}, "
              f"p99 {ms(health['p99'])}, max {ms(health['max'])}")
        for pid, before in load["workers_before"].items():
            after = load["workers_after"].get(pid, {})
            print(f"worker {pid}: fds {before['fds']} -> {after.get('fds')}, threads "
                  f"{before['threads']} -> {after.get('threads')}, RSS "
                  f"{before['rss_mib']:.0f} -> {after.get('rss_mib', 0):.0f} MiB")
    compare = report.get("exec_compare")
    if compare:
        print(f"\nexec `true` x{report['args']['concurrency']}: API "
              f"{compare['api']['per_s']:.1f}/s "
              f"(p50 {ms(compare['api']['p50'])}, p99 {ms(compare['api']['p99'])}), raw "
              f"{compare['raw']['per_s']:.1f}/s (p50 {ms(compare['raw']['p50'])}, p99 "
              f"{ms(compare['raw']['p99'])}): API/raw {compare['ratio']:.2f}x")
        print("windows (per second, steal): " + ", ".join(
            f"{name} {rate:.1f} ({100 * steal:.0f} %)" for name, rate, steal
            in compare["windows"]))
        for side, parts in compare.get("cpu_ms_per_call", {}).items():
            if parts:
                print(f"{side} CPU ms per call: " + ", ".join(
                    f"{part} {value:.2f}" for part, value in parts.items()))
    burst = report.get("burst")
    if burst:
        print(f"\nburst: {burst['ok']}/{burst['n']} created; first 201 after "
              f"{burst['first_s']:.1f} s, median {burst['p50_s']:.1f} s, last "
              f"{burst['last_s']:.1f} s = {burst['per_s']:.2f} creates/s; "
              f"{burst['retried_429']} answers 429 (a worker's long-call slots full) retried "
              f"after Retry-After")
    raw = report.get("raw_restore")
    if raw:
        print(f"raw `virsh restore` loop: {raw['n']} in {raw['total_s']:.1f} s (median "
              f"{raw['p50_s']:.2f} s each) = {raw['per_s']:.2f} restores/s")
    print("\nRESULT: " + ("PASS" if not failures else "FAIL\n  " + "\n  ".join(failures)))


if __name__ == "__main__":
    main()
