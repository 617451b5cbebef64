"""Operators' view with real VMs and a real gunicorn: the console log shows the guest's boot,
stats move when the guest works, /metrics counts creates and adds up every worker's series,
and LOG_FORMAT=json writes one JSON object per line."""
from __future__ import annotations

import json
import os
import time
import urllib.request
from pathlib import Path

from app import create_app
from tests.integration.conftest import API_KEY, SEED_BODY, exec_ok, live_server
from tests.unit.test_observe import sample

REPO = Path(__file__).resolve().parents[2]
CONFIG = f"""
exec(compile(open({str(REPO / "deploy" / "gunicorn.conf.py")!r}).read(), "gunicorn.conf.py",
             "exec"))
# No orphan sweep, no maintainer, no warm-pool drain: this server must not touch libvirt state.
del on_starting, post_worker_init, on_exit
"""


def test_the_console_log_shows_the_guest_booting(api):
    vm = api.create_vm({**SEED_BODY, "provisionMode": "boot"})
    body = api.request("GET", f"/v1/vms/{vm['id']}/logs?tail=2000").json
    assert body["type"] == "console" and body["updatedAt"]
    text = "\n".join(body["lines"])
    assert "rds-boot: Linux version" in text and "rds-boot: hostname " + vm["name"] in text, \
        text[-2000:]
    assert len(api.request("GET", f"/v1/vms/{vm['id']}/logs?tail=3").json["lines"]) == 3
    api.delete_vm(vm["id"])
    assert api.request("GET", f"/v1/vms/{vm['id']}/logs").status_code == 404


def test_stats_move_when_the_guest_works(api, shared_vm):
    url = f"/v1/vms/{shared_vm['id']}/stats"
    before = api.request("GET", url).json
    assert before["state"] == "RUNNING" and before["uptimeSeconds"] >= 0
    assert before["memory"]["assignedMb"] == SEED_BODY["memMb"]
    assert before["memory"]["rssMb"] > 0
    exec_ok(api, shared_vm["id"], "dd if=/dev/urandom of=/workspace/stats.bin bs=1M count=8 "
                                  "status=none && sync && rm /workspace/stats.bin")
    after = api.request("GET", url).json
    assert after["cpu"]["timeNs"] > before["cpu"]["timeNs"]
    assert after["disk"]["writeBytes"] >= before["disk"]["writeBytes"] + 8 * 1024 * 1024
    # The exec itself went over the VM's network interface (SSH).
    assert after["network"]["rxBytes"] > before["network"]["rxBytes"]
    assert after["network"]["txBytes"] > before["network"]["txBytes"]
    assert after["uptimeSeconds"] > before["uptimeSeconds"]


def test_metrics_count_creates(api):
    def scrape() -> str:
        response = api.request("GET", "/metrics")
        assert response.status_code == 200
        return response.get_data(as_text=True)

    before = scrape()
    vm = api.create_vm(SEED_BODY)
    after = scrape()
    mode = vm["provisionMode"]
    assert sample(after, "rds_vm_create_duration_seconds_count", provision_mode=mode) == \
        sample(before, "rds_vm_create_duration_seconds_count", provision_mode=mode) + 1
    assert sample(after, "rds_vms", state="RUNNING") >= 1
    assert sample(after, "rds_host_up", host="local") == 1
    assert sample(after, "rds_host_vms", host="local") >= 1
    assert sample(after, "rds_host_cpus", host="local") == os.cpu_count()
    assert sample(after, "rds_host_memory_available_bytes", host="local") > 0
    api.delete_vm(vm["id"])


def test_a_live_server_adds_up_its_workers_and_logs_json(tmp_path):
    config = tmp_path / "gunicorn.conf.py"
    config.write_text(CONFIG)
    log_file = tmp_path / "server.log"
    env = {"API_KEY": API_KEY, "WEB_WORKERS": "2", "SNAPSHOT_AUTO_BUILD": "false",
           "ENABLE_WARM_POOL": "false", "LOG_FORMAT": "json"}
    headers = {"X-API-Key": API_KEY, "X-Request-Id": "observe-test-1"}
    with open(log_file, "w") as output, live_server(env, "-c", str(config),
                                                    output=output) as (base, _process):
        def get(path: str) -> str:
            request = urllib.request.Request(base + path, headers=headers)
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.read().decode()

        calls = 12
        for _ in range(calls):
            get("/v1/vms")
        # Each scrape is answered by whichever worker accepts it; every one must see all.
        for _ in range(4):
            counted = sample(get("/metrics"), "rds_http_requests_total", method="GET",
                             route="/v1/vms", status="200")
            assert counted == calls
        time.sleep(0.5)
    lines = [json.loads(line) for line in log_file.read_text().splitlines()
             if line.startswith("{")]
    done = [line for line in lines if line.get("request_id") == "observe-test-1"
            and line["message"].startswith("request done")]
    assert len(done) >= calls
    assert {line["route"] for line in done} == {"/v1/vms"}  # scrapes are logged at DEBUG
    assert all(line["status"] == 200 and line["level"] == "INFO" for line in done
               if line["route"] == "/v1/vms")


def test_exec_logs_list_the_last_calls_and_survive_a_restart(api, shared_vm):
    vm_id = shared_vm["id"]
    exec_ok(api, vm_id, "echo first")
    exec_ok(api, vm_id, "echo second >&2")
    ran = api.request("POST", f"/v1/vms/{vm_id}/run-ts", json={"code": "console.log(6*7)"})
    assert ran.status_code == 200 and ran.json["stdout"] == "42\n"
    entries = api.request("GET", f"/v1/vms/{vm_id}/exec-logs?limit=3").json
    assert [(entry["type"], entry["command"]) for entry in entries] == [
        ("run-ts", "console.log(6*7)"), ("exec", "echo second >&2"), ("exec", "echo first")]
    assert entries[0]["stdoutPreview"] == "42\n" and entries[1]["stderrPreview"] == "second\n"
    assert all(entry["exitCode"] == 0 and entry["actor"] == "api-key" for entry in entries)
    # Another instance of the service (a restart) reads the same history.
    restarted = create_app({"TESTING": True, "API_KEY": API_KEY})
    try:
        again = restarted.test_client().get(f"/v1/vms/{vm_id}/exec-logs?limit=3",
                                            headers={"X-API-Key": API_KEY})
        assert again.status_code == 200 and again.json == entries
    finally:
        restarted.extensions["rds"].close()


def test_the_hosts_view_is_what_libvirt_and_the_machine_say(api, shared_vm, services):
    [host] = api.request("GET", "/v1/hosts").json
    assert host["name"] == "local" and host["state"] == "UP" and host["reason"] is None
    assert host["uri"] == services.settings.libvirt_uri
    assert host["cpus"] == os.cpu_count()
    meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    total_mb = int(meminfo["MemTotal"].split()[0]) // 1024
    assert abs(host["memoryMb"] - total_mb) <= total_mb * 0.05
    assert 0 < host["freeMemoryMb"] <= host["memoryMb"]
    callers = [vm for vm in api.request("GET", "/v1/vms").json if vm["state"] != "DELETING"]
    assert host["vms"] == len(callers) >= 1  # shared_vm at least
    assert {"id": "default", "snapshotReady": True} in host["images"]  # the suite's seed
    assert api.request("GET", "/v1/hosts/local").json["hostname"] == host["hostname"]
