"""Host capacity, worker capacity, crashed creates and broken downloads, against real VMs
(issue #11): nothing fills the host's disk, long calls never starve cheap ones, a worker
killed mid-create leaves nothing the periodic sweep does not remove, and a download whose
packing fails in the guest is never a complete-looking archive."""
from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import tarfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from app import create_app
from app.errors import GuestCommandFailed
from tests.integration.conftest import API_KEY, HEADERS, SEED_BODY, exec_ok, live_server

REPO = Path(__file__).resolve().parents[2]


def _app(**overrides):
    return create_app({"TESTING": True, "API_KEY": API_KEY, **overrides})


# Disk budget ##############################################################################

def test_a_create_over_the_disk_budget_is_507_and_leaves_nothing(api, services):
    small = _app(DISK_BUDGET_MB=1)
    before = {info.name for info in services.hypervisor.list_domains()}
    try:
        response = small.test_client().post("/v1/vms", json=SEED_BODY, headers=HEADERS)
        assert response.status_code == 507, response.json
        assert "DISK_BUDGET_MB" in response.json["message"]
    finally:
        small.extensions["rds"].close()
    assert {info.name for info in services.hypervisor.list_domains()} == before


def test_disk_size_above_the_configured_cap_is_400(api):
    capped = _app(MAX_DISK_SIZE_MB=5000)
    try:
        response = capped.test_client().post("/v1/vms", json={**SEED_BODY, "diskSizeMb": 6000},
                                             headers=HEADERS)
        assert response.status_code == 400 and "MAX_DISK_SIZE_MB" in response.json["message"]
    finally:
        capped.extensions["rds"].close()


def test_snapshots_over_quota_or_budget_are_refused(api, shared_vm):
    for overrides, status, needle in (({"MAX_SNAPSHOTS": 0}, 429, "MAX_SNAPSHOTS"),
                                      ({"DISK_BUDGET_MB": 1}, 507, "DISK_BUDGET_MB")):
        limited = _app(**overrides)
        try:
            response = limited.test_client().post(f"/v1/vms/{shared_vm['id']}/snapshots",
                                                  headers=HEADERS)
            assert response.status_code == status and needle in response.json["message"]
        finally:
            limited.extensions["rds"].close()


# A worker killed mid-create ###############################################################

CREATE_AND_WAIT = """
import sys
from app.config import load_settings
from app.models import VmSpec
from app.services.container import build_services
services = build_services(load_settings(overrides={"API_KEY": "x"}))
print("creating", flush=True)
services.vms.create(VmSpec(cpu=1, mem_mb=256))
"""


def test_a_create_killed_half_way_is_swept(api, services):
    """SIGKILL a process in the middle of a create: its domain (phase "creating") counts
    against MAX_VMS until the periodic sweep removes it with everything it owns."""
    before = {info.name for info in services.hypervisor.list_domains()}
    child = subprocess.Popen([sys.executable, "-c", CREATE_AND_WAIT], cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    new: set[str] = set()
    while time.monotonic() < deadline and not new:
        new = {info.name for info in services.hypervisor.list_domains()} - before
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait(30)
    assert new, "the child never defined its domain"
    name = new.pop()
    vm_id = next(info.uuid for info in services.hypervisor.list_domains() if info.name == name)
    assert api.request("GET", f"/v1/vms/{vm_id}").json["state"] == "STARTING"
    # The maintaining process sweeps every minute, with a 10-minute guard against creates in
    # flight; the guard is what a test cannot wait for.
    removed = services.vms.remove_orphans(min_age_s=0)
    assert any(name in item for item in removed), removed
    assert name not in {info.name for info in services.hypervisor.list_domains()}
    assert not (services.settings.vms_dir / name).exists()
    assert name not in services.vms.ipsets.vm_names()
    assert name not in services.vms.ports.taps.names()
    assert api.request("GET", f"/v1/vms/{vm_id}").status_code == 404


# Downloads whose packing fails ############################################################

def test_a_download_whose_pack_fails_part_way_is_aborted(api, app, shared_vm):
    """tar in the guest sends the readable files, then fails on one it cannot read: today's
    answer must not be a 200 with a shorter, complete-looking archive."""
    exec_ok(api, shared_vm["id"], "rm -rf part && mkdir part && head -c 200000 /dev/urandom > "
                                  "part/a && echo secret > part/z && chmod 000 part/z")
    client = app.test_client()
    response = client.get(f"/v1/vms/{shared_vm['id']}/files/download?path=part",
                          headers=HEADERS)
    assert response.status_code == 200  # the body had started when tar failed
    with pytest.raises(GuestCommandFailed):
        response.get_data()
    exec_ok(api, shared_vm["id"], "chmod 600 part/z")
    whole = client.get(f"/v1/vms/{shared_vm['id']}/files/download?path=part", headers=HEADERS)
    with tarfile.open(fileobj=io.BytesIO(whole.get_data()), mode="r:gz") as archive:
        assert sorted(archive.getnames()) == [".", "./a", "./z"]


def test_a_download_that_cannot_start_is_a_5xx_with_a_message(api, shared_vm):
    exec_ok(api, shared_vm["id"], "mkdir -p locked && chmod 000 locked")
    response = api.request("GET", f"/v1/vms/{shared_vm['id']}/files/download?path=locked")
    exec_ok(api, shared_vm["id"], "chmod 700 locked")
    assert response.status_code in (400, 502), response.status_code
    assert response.json["message"]


# Long calls never starve cheap ones (live gunicorn) #######################################

def _call(method: str, url: str, body: dict | None = None, timeout: float = 60):
    request = urllib.request.Request(url, method=method, headers={**HEADERS,
                                                                   "Content-Type":
                                                                       "application/json"},
                                     data=json.dumps(body).encode() if body else None)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null"), response.headers
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null"), error.headers


@pytest.fixture(scope="module")
def small_server():
    """gunicorn with one worker of 4 threads, 2 of which may run long calls."""
    env = {"API_KEY": API_KEY, "WEB_WORKERS": "1", "WEB_THREADS": "4", "LONG_CALL_SLOTS": "2",
           "SNAPSHOT_AUTO_BUILD": "false"}
    with live_server(env, output=subprocess.DEVNULL) as (base, _process):
        yield base


def test_health_and_reads_answer_while_every_long_slot_is_busy(small_server):
    base = small_server
    status, vm, _ = _call("POST", base + "/v1/vms", {"cpu": 1, "memMb": 256})
    assert status == 201, vm
    try:
        answers: list[int] = []

        def long_exec() -> None:
            answers.append(_call("POST", f"{base}/v1/vms/{vm['id']}/exec",
                                 {"cmd": "sleep 12", "timeoutMs": 30000})[0])

        workers = [threading.Thread(target=long_exec) for _ in range(2)]
        for worker in workers:
            worker.start()
        time.sleep(2)  # both execs hold their slots now
        status, body, headers = _call("POST", f"{base}/v1/vms/{vm['id']}/exec",
                                      {"cmd": "true"}, timeout=5)
        assert status == 429 and headers["Retry-After"] and "long calls" in body["message"]
        for path in ("/healthz", "/v1/vms", f"/v1/vms/{vm['id']}"):
            started = time.monotonic()
            assert _call("GET", base + path, timeout=5)[0] == 200
            assert time.monotonic() - started < 1.0, path
        for worker in workers:
            worker.join(30)
        assert answers == [200, 200]
    finally:
        _call("DELETE", f"{base}/v1/vms/{vm['id']}")
