"""Remote hosts (HOSTS) over fakes: each listed UP with what its libvirt says or DOWN with the
reason, within HOST_PROBE_TIMEOUT_S even when it hangs, without piling up calls on it; the
local host as before; /metrics per host."""
from __future__ import annotations

import threading
import time

import pytest

from app.errors import HypervisorError
from app.models import VmPhase, VmRole
from tests.unit import remote_hosts
from tests.unit.fakes import API_KEY, World, record
from tests.unit.test_observe import sample

H2 = {**remote_hosts.H2, "maxVms": 5}
H3 = {"name": "h3", "uri": "qemu+tcp://10.210.0.6/system", "guestCidr": "172.16.2.0/24"}
AUTH = {"X-API-Key": API_KEY}
PROBE_S = remote_hosts.PROBE_S


@pytest.fixture
def world_settings():
    return remote_hosts.hosts_settings(H2, H3)


def remote(world, name):
    return world.fakes.remotes[name]


def test_every_host_is_listed_local_first(client, world):
    h2 = remote(world, "h2")
    h2.add(record(1, guest_ip="172.16.1.9"))
    h2.add(record(2, guest_ip="172.16.1.10", phase=VmPhase.DELETING))  # going: not counted
    h2.add(record(3, guest_ip="172.16.1.11", role=VmRole.POOL))  # not a caller's
    answer = client.get("/v1/hosts", headers=AUTH)
    assert answer.status_code == 200, answer.text
    local, second, third = answer.get_json()
    assert local["name"] == "local" and local["state"] == "UP"
    assert second == {"name": "h2", "uri": H2["uri"], "state": "UP", "reason": None,
                      "guestCidr": "172.16.1.0/24", "maxVms": 5, "hostAddresses": [],
                      "hostname": "fake-host",
                      "hypervisorVersion": "7.2.0", "cpus": 2, "memoryMb": 24000,
                      "freeMemoryMb": 20000, "vms": 1, "images": []}
    assert third["name"] == "h3" and third["maxVms"] == world.settings.max_vms
    assert third["vms"] == 0
    assert client.get("/v1/hosts/h2", headers=AUTH).get_json() == second
    assert client.get("/v1/hosts/h4", headers=AUTH).status_code == 404


def test_a_host_that_fails_is_down_with_the_reason_and_the_others_are_not(client, world):
    remote(world, "h2").down = HypervisorError("libvirt: unable to connect to server at "
                                               "'10.210.0.2:16509': Connection refused")
    local, second, third = client.get("/v1/hosts", headers=AUTH).get_json()
    assert (local["state"], second["state"], third["state"]) == ("UP", "DOWN", "UP")
    assert "Connection refused" in second["reason"]
    assert second["cpus"] is None and second["vms"] is None and second["images"] == []
    # Calls on the local host are unaffected.
    assert client.post("/v1/vms", json={"cpu": 1, "memMb": 256},
                       headers=AUTH).status_code == 201


def test_a_host_that_hangs_is_down_within_the_probe_timeout(client, world):
    hung = remote(world, "h2")
    hung.hang = threading.Event()
    try:
        started = time.monotonic()
        second = client.get("/v1/hosts/h2", headers=AUTH).get_json()
        took = time.monotonic() - started
        assert second["state"] == "DOWN"
        assert second["reason"] == f"libvirt did not answer within {PROBE_S:g}s"
        assert PROBE_S <= took < PROBE_S + 1
        # Asked again while the first call still hangs: no second call is made on it.
        calls = world.services.registry._in_flight.copy()
        assert client.get("/v1/hosts/h2", headers=AUTH).get_json()["state"] == "DOWN"
        assert world.services.registry._in_flight == calls
    finally:
        hung.hang.set()
    time.sleep(0.1)
    hung.hang = None
    assert client.get("/v1/hosts/h2", headers=AUTH).get_json()["state"] == "UP"  # back


def test_metrics_have_every_host(client, world):
    remote(world, "h3").down = HypervisorError("libvirt: cannot connect")
    text = client.get("/metrics", headers=AUTH).get_data(as_text=True)
    assert sample(text, "rds_host_up", host="local") == 1
    assert sample(text, "rds_host_up", host="h2") == 1
    assert sample(text, "rds_host_cpus", host="h2") == 2
    assert sample(text, "rds_host_max_vms", host="h2") == 5
    assert sample(text, "rds_host_up", host="h3") == 0
    assert 'rds_host_cpus{host="h3"}' not in text


def test_without_hosts_there_is_the_local_host_alone(tmp_path, monkeypatch, clock):
    world = World(tmp_path, monkeypatch, clock)
    assert world.services.registry.names() == [] and world.fakes.remotes == {}
    assert [host.name for host in world.services.hosts.list()] == ["local"]
    assert world.services.maintainer.ship is None  # nothing to ship images to
