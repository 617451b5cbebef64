"""/v1/hosts over the fakes: the one local host, read live; DOWN with the reason when libvirt
does not answer; admin scope only; unknown names 404."""
from __future__ import annotations

from app.errors import HypervisorError

VALID = {"cpu": 1, "memMb": 256}


def test_the_local_host_is_listed_with_what_libvirt_says(client, auth, services):
    created = client.post("/v1/vms", json=VALID, headers=auth)
    assert created.status_code == 201, created.text
    answer = client.get("/v1/hosts", headers=auth)
    assert answer.status_code == 200, answer.text
    [host] = answer.get_json()
    assert host == {
        "name": "local", "uri": services.settings.libvirt_uri, "state": "UP", "reason": None,
        "guestCidr": services.settings.network_cidr, "maxVms": services.settings.max_vms,
        "hostAddresses": [], "hostname": "fake-host", "hypervisorVersion": "7.2.0", "cpus": 2,
        "memoryMb": 24000, "freeMemoryMb": 20000, "vms": 1, "images": host["images"]}
    assert {"id": "default", "snapshotReady": False} in host["images"]
    assert client.get("/v1/hosts/local", headers=auth).get_json() == host


def test_vms_being_deleted_do_not_count(client, auth):
    created = client.post("/v1/vms", json=VALID, headers=auth).get_json()
    assert client.delete(f"/v1/vms/{created['id']}", headers=auth).status_code == 204
    assert client.get("/v1/hosts/local", headers=auth).get_json()["vms"] == 0


def test_a_host_whose_libvirt_does_not_answer_is_down_with_the_reason(client, auth, fakes):
    fakes.hypervisor.down = HypervisorError("libvirt: cannot connect")
    answer = client.get("/v1/hosts", headers=auth)
    assert answer.status_code == 200
    [host] = answer.get_json()
    assert host["state"] == "DOWN" and "cannot connect" in host["reason"]
    assert host["cpus"] is None and host["vms"] is None and host["images"] == []


def test_an_unknown_host_is_404(client, auth):
    answer = client.get("/v1/hosts/elsewhere", headers=auth)
    assert answer.status_code == 404
    assert "elsewhere" in answer.get_json()["message"]


def test_hosts_need_the_admin_scope(client, auth):
    key = client.post("/v1/admin/api-keys", json={"name": "ci", "scopes": ["vms"]},
                      headers=auth).get_json()["key"]
    for path in ("/v1/hosts", "/v1/hosts/local"):
        assert client.get(path, headers={"X-API-Key": key}).status_code == 403
        assert client.get(path).status_code == 401
