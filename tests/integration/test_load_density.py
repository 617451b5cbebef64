"""Load and density, bounded (issue 16; `make load` and `make density` run the long versions):
a live server (gunicorn, as `make run` serves it) under a short mixed load with zero errors,
no growth of its workers' fds and threads, and /healthz answering quickly all along; and 20 VMs
created at once through its API, all restored from the memory snapshot, all answering, all
deleted with nothing left on the host.
"""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from bench import loadgen
from bench.bench_density import leftovers
from tests.integration.conftest import live_server, virsh

KEY = "load-density-test-key"
LOAD_S = 40.0
BURST = 20


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A live server with room for the burst (MAX_VMS, and a disk budget that overcommits:
    the VMs write a few MiB of their 4 GiB); yields its base URL, master process and log."""
    log_path = tmp_path_factory.mktemp("load-server") / "server.log"
    print(f"server log: {log_path}")
    env = {**loadgen.server_env(KEY, BURST + 20), "WEB_WORKERS": "2"}
    with log_path.open("w") as log, live_server(env, output=log) as (base, process):
        yield base, process, log_path


@pytest.fixture()
def http(server):
    with loadgen.client(server[0], KEY) as client:
        yield client


def test_a_short_mixed_load_has_no_errors_and_the_workers_do_not_grow(server, http):
    base, process, _log = server
    vms = loadgen.create_vms(http, 2)
    try:
        ids = [vm["id"] for vm in vms]
        assert {vm["provisionMode"] for vm in vms} == {"snapshot"}
        with loadgen.HealthProbe(base):  # warm-up: the same load, the same connections
            warm = loadgen.mixed_load(base, KEY, ids, 20)
        loadgen.saturate(base, KEY, ids)
        time.sleep(7)  # idle: the keep-alive connections (5 s) are closed
        before = loadgen.sample_workers(process.pid)
        with loadgen.HealthProbe(base) as health:
            load = loadgen.mixed_load(base, KEY, ids, LOAD_S)
        time.sleep(7)
        after = loadgen.sample_workers(process.pid)
        assert warm.errors + load.errors == []
        assert set(load.latencies) == {"exec", "run-ts", "upload", "download"}, load.latencies
        problems = loadgen.growth_problems(before, after)
        assert not problems, (problems, loadgen.describe(before), loadgen.describe(after))
        assert health.failures == []
        assert loadgen.percentile(health.latencies, 99) < 0.2, sorted(health.latencies)[-5:]
    finally:
        assert loadgen.delete_vms(http, [vm["id"] for vm in vms]) == []


def qemu_rss_mib(name: str) -> float:
    pid = Path(f"/run/libvirt/qemu/{name}.pid").read_text().strip()
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) / 1024


def test_guests_report_free_pages_to_the_host(server, http):
    """The domain carries a virtio balloon with free page reporting, the guest restored from
    the memory snapshot runs its driver, and memory the guest used and freed goes back to the
    host (QEMU's RSS falls again)."""
    vm = loadgen.create_vms(http, 1)[0]
    name = "rds-" + vm["id"].split("-")[0]
    try:
        xml = virsh("dumpxml", name).stdout
        assert "<memballoon model='virtio' freePageReporting='on'>" in xml, xml
        ran = http.post(f"/v1/vms/{vm['id']}/exec",
                        json={"cmd": "grep -c '^virtio_balloon ' /proc/modules"}).json()
        assert ran["exitCode"] == 0 and ran["stdout"].strip() == "1", ran
        idle = qemu_rss_mib(name)
        ran = http.post(f"/v1/vms/{vm['id']}/exec", json={
            "cmd": "head -c 100M /dev/urandom > /dev/shm/fill && sync"}).json()
        assert ran["exitCode"] == 0, ran
        used = qemu_rss_mib(name)
        assert used > idle + 80, (idle, used)
        ran = http.post(f"/v1/vms/{vm['id']}/exec", json={"cmd": "rm /dev/shm/fill"}).json()
        assert ran["exitCode"] == 0, ran
        deadline = time.monotonic() + 30
        while qemu_rss_mib(name) > idle + 30:  # reported after ~2 s, then discarded
            assert time.monotonic() < deadline, (idle, used, qemu_rss_mib(name))
            time.sleep(1)
    finally:
        assert loadgen.delete_vms(http, [vm["id"]]) == []


def test_twenty_creates_at_once_all_answer_and_leave_nothing(server, http, services):
    results, last, retried = loadgen.burst_create(server[0], KEY, BURST)
    made = [body for _s, status, body in results if status == 201]
    names = {"rds-" + vm["id"].split("-")[0] for vm in made}
    try:
        print(f"{BURST} creates at once: last 201 after {last:.1f} s, {retried} 429s retried")
        assert [(status, body.get("message")) for _s, status, body in results
                if status != 201] == []
        fallbacks = [line for line in server[2].read_text().splitlines()
                     if "falling back to a cold boot" in line]
        assert {vm["provisionMode"] for vm in made} == {"snapshot"}, fallbacks
        assert loadgen.exec_each(server[0], KEY, [vm["id"] for vm in made]).errors == []
    finally:
        assert loadgen.delete_vms(http, [vm["id"] for vm in made]) == []
    # Only the burst's VMs: the session's shared VMs (other modules') may be listed too.
    assert {vm["id"] for vm in http.get("/v1/vms").json()} & {vm["id"] for vm in made} == set()
    assert leftovers(services, names) == []
