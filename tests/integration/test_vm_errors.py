"""Errors against the real service: auth, validation, unknown ids, quota, failure half-way,
and a VM undefined by hand with virsh."""
from __future__ import annotations

import pytest

from app import create_app
from app.errors import HypervisorError
from tests.integration.conftest import API_KEY, HEADERS, SEED_BODY, virsh
from tests.integration.conftest import rds_state as _rds_state


def test_v1_needs_credentials(api):
    for path in ("/v1/vms", "/v1/vms/00000000-0000-0000-0000-000000000000"):
        response = api.client.get(path)
        assert response.status_code == 401 and response.json == {"message": "Unauthorized"}
    wrong = api.client.get("/v1/vms", headers={"X-API-Key": API_KEY + "x"})
    assert wrong.status_code == 401


@pytest.mark.parametrize("body, needle", [
    ({"memMb": 256}, "cpu"),
    ({"cpu": "1", "memMb": 256}, "cpu"),
    ({"cpu": 1, "memMb": 64}, "memMb"),
    ({"cpu": 99, "memMb": 256}, "cpu"),
    ({"cpu": 1, "memMb": 999999}, "memMb"),
    ({"cpu": 1, "memMb": 256, "allowIps": ["nope"]}, "nope"),
    ({"cpu": 1, "memMb": 256, "bogus": 1}, "bogus"),
    ({"cpu": 1, "memMb": 256, "imageId": "no-such-template"}, "no-such-template"),
    ({"cpu": 1, "memMb": 256, "diskSizeMb": 10}, "diskSizeMb"),
])
def test_invalid_bodies_are_400_with_a_useful_message(api, body, needle):
    before = _rds_state()
    response = api.request("POST", "/v1/vms", json=body)
    assert response.status_code == 400, response.json
    assert needle in response.json["message"]
    assert _rds_state() == before


def test_non_json_body_is_400(api):
    response = api.request("POST", "/v1/vms", data="cpu=1", content_type="text/plain")
    assert response.status_code == 400 and "message" in response.json


@pytest.mark.parametrize("path", ["/v1/vms/00000000-0000-4000-8000-000000000000",
                                  "/v1/vms/not-a-uuid"])
def test_unknown_vm_is_404(api, path):
    for method, suffix in (("GET", ""), ("DELETE", ""), ("POST", "/stop"), ("POST", "/start")):
        response = api.request(method, path + suffix)
        assert response.status_code == 404 and "not found" in response.json["message"]


def test_failure_half_way_leaves_nothing(services, monkeypatch):
    """A restore that fails after the domain runs falls back to a boot, which times out:
    both attempts are unwound (domain, binding, tap, filter, files)."""
    impatient = create_app({"TESTING": True, "API_KEY": API_KEY, "BOOT_TIMEOUT_S": 0.5})

    def guest_silent(*_args, **_kwargs):
        raise HypervisorError("injected: the guest does not take its identity")

    monkeypatch.setattr("app.virt.identity.send_identity", guest_silent)
    before = _rds_state()
    dirs_before = set(services.settings.vms_dir.iterdir())
    response = impatient.test_client().post("/v1/vms", json=SEED_BODY, headers=HEADERS)
    if response.status_code == 201:  # a failing test must not leave its VM behind
        services.vms.delete(response.json["id"])
    assert response.status_code == 504 and "did not become ready" in response.json["message"]
    assert _rds_state() == before
    assert set(services.settings.vms_dir.iterdir()) == dirs_before
    impatient.extensions["rds"].close()


@pytest.fixture(scope="module")
def vm(api):
    created = api.create_vm(SEED_BODY)
    yield created
    api.delete_vm(created["id"])


def test_quota_is_429(vm, services):
    existing = len(services.vms.list())
    limited = create_app({"TESTING": True, "API_KEY": API_KEY, "MAX_VMS": existing})
    before = _rds_state()
    response = limited.test_client().post("/v1/vms", json=SEED_BODY, headers=HEADERS)
    assert response.status_code == 429 and "quota" in response.json["message"]
    assert _rds_state() == before
    limited.extensions["rds"].close()


def test_vm_undefined_by_hand_is_gone_not_a_crash(api, vm, services):
    assert virsh("destroy", vm["name"]).returncode == 0
    assert virsh("undefine", vm["name"]).returncode == 0
    assert api.request("GET", f"/v1/vms/{vm['id']}").status_code == 404
    listed = api.request("GET", "/v1/vms")
    assert listed.status_code == 200 and vm["id"] not in [v["id"] for v in listed.json]
    assert api.request("DELETE", f"/v1/vms/{vm['id']}").status_code == 404
    # Its filter, binding, tap and disk are orphans now; the start-up sweep removes them.
    assert services.vms.remove_orphans() == []  # too fresh: might be a create in flight
    removed = services.vms.remove_orphans(min_age_s=0)
    for item in ("nwfilter", "nwfilter binding", "tap"):
        assert f"{item} {vm['name']}" in removed
    assert not (services.settings.vms_dir / vm["name"]).exists()
    assert all(vm["name"] not in names for names in _rds_state())
