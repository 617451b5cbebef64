"""Operators' view on the real services over fakes: /metrics, /readyz, console logs, VM stats
and JSON logs."""
from __future__ import annotations

import io
import json
import logging
import re

import pytest

from app.errors import HypervisorError
from app.logs import make_handler
from app.models import VmSpec
from app.services.console import MAX_LINE_CHARS
from app.services.vm_files import CONSOLE_LOG


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one series in Prometheus text (0 when absent)."""
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        found = re.fullmatch(r"([a-zA-Z_:][\w:]*)(?:\{(.*)\})?", series)
        if found and found.group(1) == name and \
                ",".join(sorted((found.group(2) or "").split(","))) == wanted:
            return float(value)
    return 0.0


def scrape(client, auth) -> str:
    response = client.get("/metrics", headers=auth)
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain; version=0.0.4")
    return response.get_data(as_text=True)


# /metrics ###############################################################################

def test_metrics_need_a_key_unless_public(client, tmp_path, monkeypatch):
    assert client.get("/metrics").status_code == 401
    from app import create_app
    from tests.unit.fakes import World
    world = World(tmp_path / "public", monkeypatch, METRICS_PUBLIC="true")
    public = create_app({"TESTING": True}, services=world.services).test_client()
    assert public.get("/metrics").status_code == 200
    world.services.close()


def test_metrics_move_when_vms_are_made_and_used(client, auth, services):
    before = scrape(client, auth)
    created = client.post("/v1/vms", json={"cpu": 1, "memMb": 256}, headers=auth)
    assert created.status_code == 201
    client.post("/v1/vms", json={"cpu": 99, "memMb": 256}, headers=auth)
    after = scrape(client, auth)
    assert sample(after, "rds_vms", state="RUNNING") == 1
    assert sample(after, "rds_libvirt_up") == 1
    assert sample(after, "rds_host_up", host="local") == 1
    assert sample(after, "rds_host_vms", host="local") == 1
    assert sample(after, "rds_host_cpus", host="local") == 2
    assert sample(after, "rds_host_memory_available_bytes", host="local") == 20000 * 1024 ** 2
    for text, delta in ((before, 0), (after, 1)):
        assert sample(text, "rds_vm_create_duration_seconds_count",
                      provision_mode="boot") - sample(before,
                                                      "rds_vm_create_duration_seconds_count",
                                                      provision_mode="boot") == delta
    requests = {"method": "POST", "route": "/v1/vms"}
    assert sample(after, "rds_http_requests_total", status="201", **requests) == \
        sample(before, "rds_http_requests_total", status="201", **requests) + 1
    assert sample(after, "rds_http_requests_total", status="400", **requests) == \
        sample(before, "rds_http_requests_total", status="400", **requests) + 1
    vm_id = created.get_json()["id"]
    client.delete(f"/v1/vms/{vm_id}", headers=auth)
    final = scrape(client, auth)
    assert sample(final, "rds_vms", state="RUNNING") == 0
    assert sample(final, "rds_vms_deleted_total", reason="api") == \
        sample(after, "rds_vms_deleted_total", reason="api") + 1


def test_metrics_answer_while_libvirt_is_down(client, auth, services):
    services.hypervisor.down = HypervisorError("libvirt is gone")
    text = scrape(client, auth)
    assert sample(text, "rds_libvirt_up") == 0
    assert "rds_host_up{host=\"local\"} 0.0" in text
    assert sample(text, "rds_host_vms", host="local") == 0
    assert "rds_http_requests_total" in text


# /readyz ################################################################################

def test_ready_when_everything_is_up(client):
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ready", "checks": {
        "libvirt": "ok", "network": "ok", "networkPolicy": "ok", "image": "ok"}}


@pytest.mark.parametrize("broken", ["libvirt", "network", "networkPolicy", "image"])
def test_not_ready_names_what_is_wrong(client, services, fakes, world, broken):
    if broken == "libvirt":
        services.hypervisor.down = HypervisorError("libvirt is gone")
    elif broken == "network":
        services.hypervisor.network_active = False
    elif broken == "networkPolicy":
        fakes.bridge_nf.write_text("0\n")
    else:
        for link in world.settings.images_dir.rglob("current"):
            link.unlink()
    response = client.get("/readyz")
    assert response.status_code == 503
    body = response.get_json()
    assert body["status"] == "not ready" and body["checks"][broken] != "ok"
    assert client.get("/healthz").status_code in (200, 503)  # liveness stays separate


# Console logs ###########################################################################

@pytest.fixture
def vm(services):
    return services.vms.create(VmSpec(cpu=1, mem_mb=256))


def console(services, vm):
    return services.settings.vms_dir / vm.name / CONSOLE_LOG


def test_logs_tail_the_serial_console(client, auth, services, vm):
    console(services, vm).write_bytes(b"[    0.000000] Linux version 6.1\r\nsecond\nthird\n")
    response = client.get(f"/v1/vms/{vm.id}/logs?tail=2", headers=auth)
    assert response.status_code == 200
    body = response.get_json()
    assert (body["type"], body["lines"], body["truncated"]) == ("console",
                                                                ["second", "third"], True)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT[\d:.]+Z", body["updatedAt"])
    everything = client.get(f"/v1/vms/{vm.id}/logs", headers=auth).get_json()
    assert everything["lines"][0].startswith("[    0.000000]")
    assert everything["truncated"] is False


def test_hostile_console_output_is_bounded(client, auth, services, vm):
    console(services, vm).write_bytes(b"\xff\xfe\x00bin\n" + b"x" * 100_000 + b"\n")
    body = client.get(f"/v1/vms/{vm.id}/logs", headers=auth).get_json()
    assert body["lines"][0] == "\ufffd\ufffd\x00bin"
    assert len(body["lines"][1]) == MAX_LINE_CHARS


def test_logs_of_a_vm_without_output_and_rotated_logs(client, auth, services, vm):
    body = client.get(f"/v1/vms/{vm.id}/logs", headers=auth).get_json()
    assert body == {"type": "console", "lines": [], "truncated": False, "updatedAt": None}
    console(services, vm).write_text("new\n")
    console(services, vm).with_name(CONSOLE_LOG + ".0").write_text("old\n")
    body = client.get(f"/v1/vms/{vm.id}/logs", headers=auth).get_json()
    assert (body["lines"], body["truncated"]) == (["new"], True)


@pytest.mark.parametrize("query", ["tail=-1", "tail=10001", "tail=x", "tail=1.5"])
def test_bad_tails_are_400(client, auth, vm, query):
    response = client.get(f"/v1/vms/{vm.id}/logs?{query}", headers=auth)
    assert response.status_code == 400 and "message" in response.get_json()


@pytest.mark.parametrize("route", ["logs", "stats"])
def test_unknown_vm_is_404(client, auth, route):
    response = client.get(f"/v1/vms/00000000-0000-4000-8000-00000000abcd/{route}",
                          headers=auth)
    assert response.status_code == 404
    assert client.get(f"/v1/vms/00000000-0000-4000-8000-00000000abcd/{route}").status_code \
        == 401


# Stats ##################################################################################

def test_stats_of_a_running_vm(client, auth, vm):
    body = client.get(f"/v1/vms/{vm.id}/stats", headers=auth).get_json()
    assert body["vmId"] == vm.id and body["state"] == "RUNNING"
    assert body["cpu"]["vcpus"] == 1 and body["cpu"]["timeNs"] == 200_000_000
    assert 10 < body["cpu"]["percent"] <= 40  # 0.1 s of CPU within a 0.25 s+ window
    assert body["memory"] == {"assignedMb": 256, "rssMb": 200.0}
    assert body["disk"] == {"readBytes": 4096, "writeBytes": 8192, "readOps": 1,
                            "writeOps": 2}
    assert body["network"] == {"rxBytes": 100, "txBytes": 200, "rxPackets": 3,
                               "txPackets": 4}
    assert 0 <= body["uptimeSeconds"] < 60


def test_stats_of_a_stopped_vm(client, auth, services, vm):
    services.hypervisor.destroy_domain(vm.id)
    body = client.get(f"/v1/vms/{vm.id}/stats", headers=auth).get_json()
    assert body["state"] == "STOPPED"
    assert body["cpu"]["percent"] is None and body["uptimeSeconds"] is None


# Logs ###################################################################################

def test_json_log_lines_carry_the_request(app, client, auth):
    stream = io.StringIO()
    handler = make_handler("json", stream)
    logging.getLogger().addHandler(handler)
    try:
        client.get("/v1/vms/00000000-0000-4000-8000-00000000abcd",
                   headers={**auth, "X-Request-Id": "req-123"})
    finally:
        logging.getLogger().removeHandler(handler)
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    done = [record for record in records if record["message"].startswith("request done")]
    assert done, records
    assert done[-1]["request_id"] == "req-123"
    assert done[-1]["vm_id"] == "00000000-0000-4000-8000-00000000abcd"
    assert (done[-1]["route"], done[-1]["status"], done[-1]["level"]) == (
        "/v1/vms/<vm_id>", 404, "INFO")
    assert isinstance(done[-1]["duration_ms"], float)
