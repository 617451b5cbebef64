"""Fault injection on the host side, with real VMs and real daemons (RELIABILITY.md, "Fault
injection"): a VM's QEMU killed, libvirtd restarted while idle and in the middle of a create,
and a gunicorn worker SIGKILLed in the middle of a create and of an upload.

Each fault is followed by the checks a caller and an operator would make: the API reports the
real state within seconds, calls fail fast and cleanly (a JSON 4xx/5xx, never a hang), the
service recovers without a restart of its own, and nothing of a VM (domain, overlay, filter,
binding, ipsets, tap; its address is its domain's) is left behind once it is deleted or the
orphan sweep ran. The sweep is called with ``min_age_s=0`` where the service would run it
within ten minutes (ORPHAN_MIN_AGE_S), which a test cannot wait for.

libvirtd is restarted with deploy/libvirt-daemons.sh, as host-setup starts it; whatever
happens, the module leaves it running (everyone on the host needs it).
"""
from __future__ import annotations

import gzip
import io
import os
import re
import signal
import subprocess
import tarfile
import threading
import time
import typing as t
from pathlib import Path

import httpx
import pytest

from app.virt.domain_xml import port_name
from tests.integration.conftest import (REPO, SEED_BODY, live_server, no_upkeep_config,
                                        rds_state, virsh)

LIBVIRT_DAEMONS = REPO / "deploy" / "libvirt-daemons.sh"
SERVER_KEY = "faults-host-test-key"
SERVER_HEADERS = {"X-API-Key": SERVER_KEY}


# Helpers ##################################################################################

def host_objects(services: t.Any) -> set[str]:
    """Everything of this service's VMs on the host, as "kind name" strings."""
    domains, filters, bindings, taps = rds_state()
    found = {f"domain {n}" for n in domains} | {f"nwfilter {n}" for n in filters}
    found |= {f"binding {n}" for n in bindings} | {f"tap {n}" for n in taps}
    found |= {f"ipsets {n}" for n in services.vms.ipsets.vm_names()}
    vms_dir = services.settings.vms_dir
    found |= {f"files {d.name}" for d in vms_dir.iterdir()} if vms_dir.is_dir() else set()
    return found


def of_vm(objects: set[str], name: str) -> set[str]:
    """The objects of the VM ``name`` (its tap may carry a digest of the name)."""
    return {item for item in objects if item.split()[1] in (name, port_name(name))}


def qemu_pid(name: str) -> int:
    return int(Path(f"/run/libvirt/qemu/{name}.pid").read_text().strip())


def libvirt_daemons(action: str) -> float:
    """``deploy/libvirt-daemons.sh start|restart``; returns the seconds it took."""
    started = time.monotonic()
    done = subprocess.run([str(LIBVIRT_DAEMONS), action], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return time.monotonic() - started


def wait_for(predicate: t.Callable[[], t.Any], timeout: float, what: str,
             interval: float = 0.05) -> float:
    """Poll until ``predicate()`` is true; returns the seconds it took."""
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < timeout, f"{what} within {timeout}s"
        time.sleep(interval)
    return time.monotonic() - started


def timed(call: t.Callable[[], t.Any]) -> tuple[t.Any, float]:
    started = time.monotonic()
    result = call()
    return result, time.monotonic() - started


@pytest.fixture
def libvirtd_kept_running():
    """Whatever the test did to libvirtd, it runs (and answers) afterwards."""
    yield
    libvirt_daemons("start")


# A VM's QEMU killed #######################################################################

def test_a_killed_qemu_is_reported_stopped_and_deleted_cleanly(api, services):
    vm = api.create_vm(SEED_BODY)
    os.kill(qemu_pid(vm["name"]), signal.SIGKILL)
    seen = wait_for(lambda: api.request("GET", f"/v1/vms/{vm['id']}").json["state"] == "STOPPED",
                    5, "GET reports the killed VM STOPPED")
    print(f"killed qemu: STOPPED after {seen:.2f}s")
    assert "crashed" in virsh("domstate", "--reason", vm["name"]).stdout
    response, took = timed(lambda: api.request("POST", f"/v1/vms/{vm['id']}/exec",
                                               json={"cmd": "true", "timeoutMs": 20000}))
    assert response.status_code == 409 and "STOPPED" in response.json["message"]
    assert took < 1, f"exec on a dead VM took {took:.1f}s"
    assert of_vm(host_objects(services), vm["name"])  # still there until deleted
    api.delete_vm(vm["id"])
    assert of_vm(host_objects(services), vm["name"]) == set()


# libvirtd restarted #######################################################################

def test_libvirtd_restarted_while_idle_is_reconnected(api, services, libvirtd_kept_running):
    vm = api.create_vm(SEED_BODY)
    took = libvirt_daemons("restart")
    response, first = timed(lambda: api.request("POST", f"/v1/vms/{vm['id']}/exec",
                                                json={"cmd": "echo alive"}))
    print(f"libvirtd restart took {took:.1f}s; first exec after it {first:.2f}s")
    assert response.status_code == 200 and response.json["stdout"] == "alive\n"
    assert api.request("GET", f"/v1/vms/{vm['id']}").json["state"] == "RUNNING"
    assert api.request("GET", "/healthz").status_code == 200
    api.delete_vm(vm["id"])
    assert of_vm(host_objects(services), vm["name"]) == set()


@pytest.mark.parametrize("delay_s", [0.2, 0.8])
def test_libvirtd_restarted_mid_create_completes_or_leaves_nothing(api, services, delay_s,
                                                                  libvirtd_kept_running):
    """The create either succeeds (a working VM) or answers a JSON error, and then nothing of
    it is left, without waiting for the sweep: its undo waits for libvirtd to come back."""
    before = host_objects(services)
    answer: dict[str, t.Any] = {}

    def create() -> None:
        answer["response"], answer["seconds"] = timed(
            lambda: api.request("POST", "/v1/vms", json=SEED_BODY))

    thread = threading.Thread(target=create)
    thread.start()
    time.sleep(delay_s)
    libvirt_daemons("restart")
    thread.join(300)
    assert not thread.is_alive(), "the create hung"
    response = answer["response"]
    print(f"create with libvirtd restarted after {delay_s}s: {response.status_code} in "
          f"{answer['seconds']:.1f}s")
    if response.status_code == 201:
        api.created.append(response.json["id"])
        exec_answer = api.request("POST", f"/v1/vms/{response.json['id']}/exec",
                                  json={"cmd": "echo made"})
        assert exec_answer.status_code == 200 and exec_answer.json["stdout"] == "made\n"
        api.delete_vm(response.json["id"])
    else:
        assert response.status_code in (503, 504), response.json
        assert response.json["message"]
    assert host_objects(services) - before == set()


# A gunicorn worker killed #################################################################

@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> t.Iterator[tuple[str, int]]:
    """A live gunicorn with two workers (no upkeep hooks: it must not sweep or build for the
    rest of this libvirtd); yields its base URL and master pid."""
    folder = tmp_path_factory.mktemp("faults-server")
    log_path = folder / "server.log"
    print(f"faults server log: {log_path}")
    with log_path.open("w") as log, live_server(
            {"API_KEY": SERVER_KEY, "WEB_WORKERS": "2"}, "-c",
            str(no_upkeep_config(folder)), output=log) as (base, process):
        yield base, process.pid


def workers(master: int) -> set[int]:
    out = subprocess.run(["pgrep", "-P", str(master)], capture_output=True, text=True,
                         timeout=10).stdout
    return {int(pid) for pid in out.split()}


def worker_serving(base: str, master: int) -> int:
    """The worker that holds the one established client connection to the server."""
    port = base.rsplit(":", 1)[1]
    out = subprocess.run(["ss", "-Htnp", "state", "established", f"( sport = :{port} )"],
                         capture_output=True, text=True, timeout=10).stdout
    pids = {int(pid) for pid in re.findall(r"pid=(\d+)", out)} & workers(master)
    assert len(pids) == 1, out
    return pids.pop()


def still_serving(base: str, master: int, killed: int) -> None:
    """The other worker answers at once; gunicorn replaces the killed one."""
    for _ in range(6):
        response, took = timed(lambda: httpx.get(f"{base}/healthz", timeout=10))
        assert response.status_code == 200 and took < 2, (response.status_code, took)
        listed = httpx.get(f"{base}/v1/vms", headers=SERVER_HEADERS, timeout=10)
        assert listed.status_code == 200
    wait_for(lambda: len(workers(master) - {killed}) == 2, 60, "gunicorn replaced the worker",
             interval=0.2)


def test_a_worker_killed_mid_create_leaks_nothing_after_the_sweep(server, services):
    base, master = server
    before = host_objects(services)
    known = {d.name for d in services.settings.vms_dir.iterdir()}
    failure: dict[str, BaseException] = {}

    def create() -> None:
        try:
            httpx.post(f"{base}/v1/vms", headers=SERVER_HEADERS, json=SEED_BODY, timeout=120)
        except httpx.HTTPError as exc:
            failure["error"] = exc

    thread = threading.Thread(target=create)
    thread.start()
    wait_for(lambda: {d.name for d in services.settings.vms_dir.iterdir()} - known, 30,
             "the create made its VM directory", interval=0.01)
    killed = worker_serving(base, master)
    os.kill(killed, signal.SIGKILL)
    thread.join(60)
    assert isinstance(failure.get("error"), httpx.HTTPError), "the create was not cut off"
    still_serving(base, master, killed)
    left = host_objects(services) - before
    assert left, "the kill landed too late to leave anything: the test proves nothing"
    print(f"worker killed mid-create left {sorted(left)}")
    removed = services.remove_orphans(min_age_s=0)
    print(f"the sweep removed {removed}")
    assert host_objects(services) - before == set()


def slow_tar_gz(size: int, chunk: int, pause_s: float) -> tuple[t.Iterator[bytes], list[int]]:
    """A tar.gz of one ``size``-byte file, sent ``chunk`` bytes at a time; the list counts the
    chunks sent."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        member = tarfile.TarInfo("payload/big.bin")
        member.size = size
        tar.addfile(member, io.BytesIO(os.urandom(size)))
    body = gzip.compress(buffer.getvalue(), compresslevel=1)
    sent: list[int] = []

    def chunks() -> t.Iterator[bytes]:
        for start in range(0, len(body), chunk):
            sent.append(start)
            yield body[start:start + chunk]
            time.sleep(pause_s)
    return chunks(), sent


def test_a_worker_killed_mid_upload_keeps_the_vm_whole(server, services):
    base, master = server
    before = host_objects(services)
    client = httpx.Client(base_url=base, headers=SERVER_HEADERS, timeout=120)
    created = client.post("/v1/vms", json=SEED_BODY)
    assert created.status_code == 201, created.text
    vm = created.json()
    client.close()  # no idle keep-alive connection: the upload's is the only one
    try:
        body, sent = slow_tar_gz(8 * 1024 * 1024, 256 * 1024, 0.1)
        failure: dict[str, BaseException] = {}

        def upload() -> None:
            try:
                httpx.post(f"{base}/v1/vms/{vm['id']}/files/upload", params={"dest": "up"},
                           headers={**SERVER_HEADERS, "Content-Type": "application/gzip"},
                           content=body, timeout=120)
            except httpx.HTTPError as exc:
                failure["error"] = exc

        thread = threading.Thread(target=upload)
        thread.start()
        wait_for(lambda: len(sent) >= 4, 30, "the upload started")
        killed = worker_serving(base, master)
        os.kill(killed, signal.SIGKILL)
        thread.join(60)
        assert isinstance(failure.get("error"), httpx.HTTPError), "the upload was not cut off"
        still_serving(base, master, killed)
        # The VM is fine, and the upload is all or nothing: nothing of it in the workspace.
        listing = httpx.post(f"{base}/v1/vms/{vm['id']}/exec", headers=SERVER_HEADERS,
                             timeout=60, json={"cmd": "ls -A /workspace; echo end"})
        assert listing.status_code == 200, listing.text
        assert listing.json()["stdout"] == "end\n", listing.json()
    finally:
        deleted = httpx.delete(f"{base}/v1/vms/{vm['id']}", params={"wait": "true"},
                               headers=SERVER_HEADERS, timeout=120)
    assert deleted.status_code == 204, deleted.text
    assert host_objects(services) - before == set()
