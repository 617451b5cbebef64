"""/v1/vms through the test client on the real services over fakes: contract fields,
statuses, errors."""
from __future__ import annotations

import re

import pytest

from app.errors import GuestUnreachable, HypervisorError

VALID = {"cpu": 1, "memMb": 256}
VM_FIELDS = {"id", "state", "cpu", "memMb", "guestIp", "outboundInternet", "allowIps",
             "createdAt", "imageId", "provisionMode"}


def create(client, auth, **body):
    return client.post("/v1/vms", json={**VALID, **body}, headers=auth)


def test_create_returns_201_with_the_contract_fields(client, auth, services):
    response = create(client, auth, cpu=2, memMb=512, allowIps=["1.1.1.1"],
                      outboundInternet=True)
    assert response.status_code == 201
    vm = response.get_json()
    assert set(vm) >= VM_FIELDS
    assert services.vms.get(vm["id"]).cpu == 2
    assert (vm["state"], vm["cpu"], vm["memMb"]) == ("RUNNING", 2, 512)
    assert vm["outboundInternet"] is True
    assert vm["allowIps"] == ["1.1.1.1/32"]
    assert (vm["imageId"], vm["provisionMode"]) == ("default", "boot")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT[\d:.]+Z", vm["createdAt"])


def test_create_applies_defaults(client, auth, specs):
    assert create(client, auth).status_code == 201
    spec = specs[-1]
    assert (spec.allow_ips, spec.outbound_internet, spec.image_id, spec.disk_size_mb) == (
        (), False, None, None)


def test_allow_ips_are_normalised(client, auth, services):
    response = create(client, auth, allowIps=["10.0.0.5/8", "10.1.2.3/8", "2001:db8::1/32",
                                              " 192.168.1.1 "])
    assert response.status_code == 201
    assert response.get_json()["allowIps"] == ["10.0.0.0/8", "2001:db8::/32", "192.168.1.1/32"]


@pytest.mark.parametrize(("body", "named"), [
    ({"memMb": 256}, "cpu"),
    ({"cpu": "1", "memMb": 256}, "cpu"),
    ({"cpu": 1.5, "memMb": 256}, "cpu"),
    ({"cpu": 0, "memMb": 256}, "cpu"),
    ({"cpu": 1, "memMb": 64}, "memMb"),
    ({"cpu": 1, "memMb": 256, "gpu": 1}, "gpu"),
    ({"cpu": 1, "memMb": 256, "allowIps": ["1.1.1.1", "not-an-ip"]}, "'not-an-ip'"),
    ({"cpu": 1, "memMb": 256, "allowIps": "1.1.1.1"}, "allowIps"),
    ({"cpu": 1, "memMb": 256, "outboundInternet": "maybe"}, "outboundInternet"),
    ({"cpu": 1, "memMb": 256, "provisionMode": "teleport"}, "provisionMode"),
    ({"cpu": 1, "memMb": 256, "provisionMode": 1}, "provisionMode"),
])
def test_invalid_bodies_are_400_naming_the_problem(client, auth, services, specs, body,
                                                   named):
    response = client.post("/v1/vms", json=body, headers=auth)
    assert response.status_code == 400
    assert named in response.get_json()["message"]
    assert specs == [] and services.vms.list() == []


def test_provision_mode_reaches_the_service(client, auth, specs):
    assert create(client, auth, provisionMode="pool").status_code == 201
    assert create(client, auth).status_code == 201
    assert [spec.provision_mode.value for spec in specs] == ["pool", "auto"]


def test_bad_allow_ips_entry_is_named_with_its_index(client, auth):
    response = create(client, auth, allowIps=["1.1.1.1", "not-an-ip"])
    assert "allowIps[1] 'not-an-ip'" in response.get_json()["message"]


def test_non_json_body_is_400(client, auth):
    response = client.post("/v1/vms", data="{cpu: 1", headers=auth,
                           content_type="application/json")
    assert response.status_code == 400
    assert "JSON" in response.get_json()["message"]


def test_service_validation_error_is_400(client, auth):
    response = create(client, auth, imageId="nope")
    assert response.status_code == 400
    assert "nope" in response.get_json()["message"]


def test_list_get_and_delete(client, auth):
    first = create(client, auth).get_json()
    second = create(client, auth, cpu=2).get_json()
    assert [vm["id"] for vm in client.get("/v1/vms", headers=auth).get_json()] == [
        first["id"], second["id"]]
    assert client.get(f"/v1/vms/{second['id']}", headers=auth).get_json() == second

    response = client.delete(f"/v1/vms/{first['id']}", headers=auth)
    assert (response.status_code, response.data) == (204, b"")
    assert [vm["id"] for vm in client.get("/v1/vms", headers=auth).get_json()] == [second["id"]]
    assert client.delete(f"/v1/vms/{first['id']}", headers=auth).status_code == 404


@pytest.mark.parametrize(("method", "suffix"), [
    ("get", ""), ("delete", ""), ("post", "/stop"), ("post", "/start")])
def test_unknown_id_is_404(client, auth, method, suffix):
    response = getattr(client, method)(f"/v1/vms/no-such-vm{suffix}", headers=auth)
    assert response.status_code == 404
    assert "no-such-vm" in response.get_json()["message"]


def test_stop_and_start_with_state_conflicts(client, auth):
    vm_id = create(client, auth).get_json()["id"]
    assert client.post(f"/v1/vms/{vm_id}/start", headers=auth).status_code == 409
    assert client.post(f"/v1/vms/{vm_id}/stop", headers=auth).status_code == 204
    assert client.get(f"/v1/vms/{vm_id}", headers=auth).get_json()["state"] == "STOPPED"
    conflict = client.post(f"/v1/vms/{vm_id}/stop", headers=auth)
    assert conflict.status_code == 409
    assert "STOPPED" in conflict.get_json()["message"]
    assert client.post(f"/v1/vms/{vm_id}/start", headers=auth).status_code == 204


def test_quota_is_429(client, auth, services):
    for _ in range(services.settings.max_vms):
        assert create(client, auth).status_code == 201
    response = create(client, auth)
    assert response.status_code == 429
    assert "quota" in response.get_json()["message"]


@pytest.mark.parametrize(("error", "status"), [
    (HypervisorError("libvirt: connection refused"), 503),
    (GuestUnreachable("guest did not answer"), 504)])
def test_app_errors_keep_their_status_and_message(client, auth, services, fakes, error,
                                                  status):
    fakes.hypervisor.fail["start"] = error
    response = create(client, auth)
    assert response.status_code == status
    assert response.get_json()["message"] == error.message
    assert services.vms.list() == [] and fakes.hypervisor.domains == {}  # nothing half-made


def test_unexpected_exception_is_a_bare_500(client, auth, fakes):
    fakes.hypervisor.fail["define"] = RuntimeError("secret detail in /etc/passwd")
    response = create(client, auth)
    assert response.status_code == 500
    body = response.get_json()
    assert body["message"] == "Internal server error"
    assert body["requestId"] == response.headers["X-Request-Id"]
    assert "Traceback" not in response.text
    assert "secret detail" not in response.text


def test_a_full_disk_is_507_and_leaves_nothing(client, auth, services, fakes):
    """A write that finds the storage filesystem full (past the disk budget's estimate) is the
    507 the budget would have answered, not a 500, and the create is undone."""
    import errno
    fakes.hypervisor.fail["define"] = OSError(errno.ENOSPC, "No space left on device")
    response = create(client, auth)
    assert response.status_code == 507, response.get_json()
    assert "storage is full (No space left on device)" in response.get_json()["message"]
    assert services.vms.list() == [] and fakes.hypervisor.domains == {}
    assert not list(services.settings.vms_dir.iterdir())


def test_oversized_body_is_413(client, auth):
    response = create(client, auth, allowIps=["1.1.1.1"] * 200_000)
    assert response.status_code == 413
    assert response.get_json()["message"]


def test_request_id_is_echoed(client):
    response = client.get("/v1/vms", headers={"X-Request-Id": "trace-123"})
    assert response.headers["X-Request-Id"] == "trace-123"


@pytest.mark.parametrize("given", [None, "x" * 65, "bad\tid"])
def test_request_id_is_generated_when_missing_or_unusable(client, given):
    headers = {} if given is None else {"X-Request-Id": given}
    response = client.get("/healthz", headers=headers)
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["X-Request-Id"])


def test_errors_keyed_by_index_and_by_name_are_a_400(client, auth):
    """A list field's errors (keyed 1) beside a validator's ("_schema") once broke jsonify."""
    response = client.put("/v1/vms/x/network", json={"allowIps": ["", None]}, headers=auth)
    assert response.status_code == 400
    body = response.get_json()
    assert "allowIps" in body["message"]
    assert set(body["errors"]["json"]["allowIps"]) == {"1", "_schema"}


def test_deleting_a_vm_retires_its_ssh_client(client, auth, fakes):
    """A call of the worker still connecting to the VM then fails at once
    (GuestSSH.retire), rather than retrying until its deadline."""
    vm = create(client, auth).get_json()
    assert client.post(f"/v1/vms/{vm['id']}/exec", json={"cmd": "true"},
                       headers=auth).status_code == 200
    guest = fakes.guests.by_host[vm["guestIp"]]
    assert client.delete(f"/v1/vms/{vm['id']}?wait=true", headers=auth).status_code == 204
    assert getattr(guest, "retired", False)
