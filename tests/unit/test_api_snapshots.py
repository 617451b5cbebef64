"""/v1/vms/{id}/snapshots, /v1/snapshots and snapshotId on create, on the real services over
fakes."""
from __future__ import annotations

import pytest

from app.models import VmPhase

SNAPSHOT_FIELDS = {"id", "kind", "createdAt", "cpu", "memMb", "imageId", "sourceVmId",
                   "hasOverlay"}
UNKNOWN = "00000000-0000-4000-8000-00000000dead"


def create_vm(client, auth, **body):
    return client.post("/v1/vms", json={"cpu": 1, "memMb": 256, **body}, headers=auth)


def snapshot_of(client, auth, vm_id):
    return client.post(f"/v1/vms/{vm_id}/snapshots", headers=auth)


@pytest.fixture
def snapshot(client, auth):
    vm = create_vm(client, auth, cpu=2, memMb=512).get_json()
    response = snapshot_of(client, auth, vm["id"])
    assert response.status_code == 201
    return response.get_json() | {"vm": vm}


def test_snapshot_of_a_running_vm_is_201_with_the_fields(snapshot):
    assert set(snapshot) - {"vm"} == SNAPSHOT_FIELDS
    assert (snapshot["kind"], snapshot["hasOverlay"]) == ("user_overlay", True)
    assert (snapshot["cpu"], snapshot["memMb"], snapshot["imageId"]) == (2, 512, "default")
    assert snapshot["sourceVmId"] == snapshot["vm"]["id"]


def test_snapshot_of_a_stopped_vm_is_201(client, auth):
    vm_id = create_vm(client, auth).get_json()["id"]
    assert client.post(f"/v1/vms/{vm_id}/stop", headers=auth).status_code == 204
    assert snapshot_of(client, auth, vm_id).status_code == 201


def test_snapshot_of_a_vm_in_another_state_is_409(client, auth, services):
    vm_id = create_vm(client, auth).get_json()["id"]
    records = services.vms.parts.records
    records.set_phase(records.lookup(vm_id)[0], VmPhase.STARTING)
    response = snapshot_of(client, auth, vm_id)
    assert response.status_code == 409 and "STARTING" in response.get_json()["message"]


@pytest.mark.parametrize("vm_id", [UNKNOWN, "not-a-uuid"])
def test_snapshot_of_an_unknown_vm_is_404(client, auth, vm_id):
    response = snapshot_of(client, auth, vm_id)
    assert response.status_code == 404 and vm_id in response.get_json()["message"]


def test_list_and_get(client, auth, snapshot):
    listed = client.get("/v1/snapshots", headers=auth)
    assert listed.status_code == 200
    assert [item["id"] for item in listed.get_json()] == [snapshot["id"]]
    got = client.get(f"/v1/snapshots/{snapshot['id']}", headers=auth)
    assert got.status_code == 200 and got.get_json() == listed.get_json()[0]


@pytest.mark.parametrize("snapshot_id", [UNKNOWN, "not-a-uuid"])
@pytest.mark.parametrize("method", ["get", "delete"])
def test_unknown_snapshot_is_404(client, auth, method, snapshot_id):
    response = getattr(client, method)(f"/v1/snapshots/{snapshot_id}", headers=auth)
    assert response.status_code == 404
    assert snapshot_id in response.get_json()["message"]


def test_create_from_snapshot_records_it(client, auth, services, specs, snapshot):
    response = create_vm(client, auth, snapshotId=snapshot["id"])
    assert response.status_code == 201
    assert response.get_json()["snapshotId"] == snapshot["id"]
    assert specs[-1].snapshot_id == snapshot["id"]
    assert services.vms.get(response.get_json()["id"]).snapshot_id == snapshot["id"]


def test_plain_create_has_no_snapshot(client, auth, specs):
    assert create_vm(client, auth).get_json()["snapshotId"] is None
    assert specs[-1].snapshot_id is None


@pytest.mark.parametrize("body", [
    {"userOverlaySnapshotId": "SNAP"},
    {"snapshotId": "SNAP", "userOverlaySnapshotId": "SNAP"},
])
def test_alias_loads_as_snapshot_id(client, auth, specs, snapshot, body):
    body = {key: snapshot["id"] for key in body}
    assert create_vm(client, auth, **body).status_code == 201
    assert specs[-1].snapshot_id == snapshot["id"]


def test_alias_and_field_naming_different_snapshots_is_400(client, auth, specs, snapshot):
    created = len(specs)
    response = create_vm(client, auth, snapshotId=snapshot["id"], userOverlaySnapshotId=UNKNOWN)
    assert response.status_code == 400
    assert "userOverlaySnapshotId" in response.get_json()["message"]
    assert len(specs) == created


@pytest.mark.parametrize("value", ["", 5])
def test_bad_snapshot_id_type_is_400(client, auth, value):
    response = create_vm(client, auth, snapshotId=value)
    assert response.status_code == 400 and "snapshotId" in response.get_json()["message"]


@pytest.mark.parametrize("field", ["snapshotId", "userOverlaySnapshotId"])
def test_create_from_unknown_snapshot_is_404(client, auth, services, field):
    response = create_vm(client, auth, **{field: UNKNOWN})
    assert response.status_code == 404
    assert f"snapshot {UNKNOWN} not found" in response.get_json()["message"]
    assert services.vms.list() == []


def test_delete_is_409_while_a_vm_from_it_exists(client, auth, snapshot):
    vm_ids = [create_vm(client, auth, snapshotId=snapshot["id"]).get_json()["id"]
              for _ in range(2)]
    assert client.post(f"/v1/vms/{vm_ids[0]}/stop", headers=auth).status_code == 204
    for vm_id in vm_ids:
        response = client.delete(f"/v1/snapshots/{snapshot['id']}", headers=auth)
        assert response.status_code == 409 and response.get_json()["message"]
        assert client.delete(f"/v1/vms/{vm_id}", headers=auth).status_code == 204
    response = client.delete(f"/v1/snapshots/{snapshot['id']}", headers=auth)
    assert (response.status_code, response.data) == (204, b"")
    assert client.get(f"/v1/snapshots/{snapshot['id']}", headers=auth).status_code == 404


def test_the_source_vm_does_not_hold_its_snapshot(client, auth, snapshot):
    response = client.delete(f"/v1/snapshots/{snapshot['id']}", headers=auth)
    assert response.status_code == 204


@pytest.mark.parametrize(("method", "path"), [
    ("get", "/v1/snapshots"), ("get", f"/v1/snapshots/{UNKNOWN}"),
    ("delete", f"/v1/snapshots/{UNKNOWN}"), ("post", f"/v1/vms/{UNKNOWN}/snapshots")])
def test_snapshot_routes_need_credentials(client, method, path):
    response = getattr(client, method)(path)
    assert response.status_code == 401 and response.get_json() == {"message": "Unauthorized"}
