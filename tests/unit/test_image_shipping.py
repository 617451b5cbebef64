"""Shipping images to a remote host (PUT /v1/hosts/{name}/images/{id}) over fakes: every
volume verified by reading it back, the manifest last; readiness in GET /v1/images and
/v1/hosts follows the current local build; a bad copy is refused and never ready."""
from __future__ import annotations

import dataclasses
import hashlib
import json

import pytest

from app.errors import HypervisorError
from app.services.locks import host_lock
from tests.unit.fakes import API_KEY, NEW_BUILD, OLD_BUILD
from tests.unit.remote_hosts import H2, hosts_settings

AUTH = {"X-API-Key": API_KEY}
POOL = "rds-images"


@pytest.fixture
def world_settings():
    return hosts_settings(H2)


@pytest.fixture
def h2(world, client):
    client.get("/v1/hosts", headers=AUTH)  # opens it
    return world.fakes.remotes["h2"]


def readiness(client, image_id="default"):
    [image] = [i for i in client.get("/v1/images", headers=AUTH).get_json()
               if i["id"] == image_id]
    return {host["name"]: host["ready"] for host in image["hosts"]}


def test_an_image_shipped_is_verified_and_ready_there(client, world, h2):
    assert readiness(client) == {"local": True, "h2": False}
    answer = client.put("/v1/hosts/h2/images/default", headers=AUTH)
    assert answer.status_code == 200, answer.text
    shipped = answer.get_json()
    build = world.build(NEW_BUILD)
    expected = {f"default.{suffix}": {"sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                                      "bytes": path.stat().st_size}
                for suffix, path in (("qcow2", build / "disk.qcow2"),
                                     ("vmlinuz", build / "vmlinuz"),
                                     ("initrd.img", build / "initrd.img"))}
    assert shipped["volumes"] == expected
    assert (shipped["imageId"], shipped["host"]) == ("default", "h2")
    assert shipped["build"] == f"debian-bookworm/{NEW_BUILD}"
    assert h2.volumes[(POOL, "default.qcow2")] == (build / "disk.qcow2").read_bytes()
    manifest = json.loads(h2.volumes[(POOL, "default.manifest.json")])
    assert manifest == {"image": "default", "build": f"debian-bookworm/{NEW_BUILD}",
                        "files": expected}
    assert h2.calls[:2] == ["ensure_storage_pool", "delete_volume"]  # the pool, the manifest
    assert readiness(client) == {"local": True, "h2": True}
    host = client.get("/v1/hosts/h2", headers=AUTH).get_json()
    # Shipping made the memory snapshot there too (tests/unit/test_remote_seeds.py).
    assert host["images"] == [{"id": "default", "snapshotReady": True}]


def test_a_new_local_build_is_not_ready_there_until_shipped_again(client, world, h2):
    assert client.put("/v1/hosts/h2/images/default", headers=AUTH).status_code == 200
    current = world.settings.images_dir / "debian-bookworm" / "current"
    current.unlink()
    current.symlink_to(OLD_BUILD)
    assert readiness(client) == {"local": True, "h2": False}
    assert client.get("/v1/hosts/h2", headers=AUTH).get_json()["images"] == []
    assert client.put("/v1/hosts/h2/images/default", headers=AUTH).status_code == 200
    assert readiness(client) == {"local": True, "h2": True}


def test_what_did_not_arrive_intact_is_refused_and_never_ready(client, h2):
    h2.corrupt.add("default.vmlinuz")
    answer = client.put("/v1/hosts/h2/images/default", headers=AUTH)
    assert answer.status_code == 503
    assert "default.vmlinuz did not arrive intact" in answer.get_json()["message"]
    assert (POOL, "default.vmlinuz") not in h2.volumes
    assert (POOL, "default.manifest.json") not in h2.volumes
    assert readiness(client) == {"local": True, "h2": False}


def test_a_transfer_sent_again_on_a_new_connection_starts_over(client, world, h2):
    """libvirt's connection broke mid-stream and the call was sent again (Hypervisor._run):
    the checksums are of the second transfer, from the first byte."""
    h2.stream_attempts = 2
    answer = client.put("/v1/hosts/h2/images/default", headers=AUTH)
    assert answer.status_code == 200, answer.text
    disk = world.build(NEW_BUILD) / "disk.qcow2"
    assert answer.get_json()["volumes"]["default.qcow2"] == {
        "sha256": hashlib.sha256(disk.read_bytes()).hexdigest(), "bytes": disk.stat().st_size}
    assert readiness(client) == {"local": True, "h2": True}


def test_shipping_again_is_not_ready_while_it_runs(client, h2):
    """The manifest goes first: a shipment that fails half-way leaves no ready image."""
    assert client.put("/v1/hosts/h2/images/default", headers=AUTH).status_code == 200
    h2.fail["upload_volume"] = HypervisorError("libvirt: Cannot write data: Broken pipe")
    assert client.put("/v1/hosts/h2/images/default", headers=AUTH).status_code == 503
    assert (POOL, "default.manifest.json") not in h2.volumes
    assert readiness(client) == {"local": True, "h2": False}


def test_a_host_that_is_down_has_nothing_ready_and_takes_nothing(client, h2):
    assert client.put("/v1/hosts/h2/images/default", headers=AUTH).status_code == 200
    h2.down = HypervisorError("libvirt: Connection refused")
    assert readiness(client) == {"local": True, "h2": False}
    answer = client.put("/v1/hosts/h2/images/default", headers=AUTH)
    assert answer.status_code == 503
    assert answer.get_json()["message"] == "host h2 is DOWN: libvirt: Connection refused"


@pytest.mark.parametrize(("path", "named"), [("/v1/hosts/h9/images/default", "h9"),
                                             ("/v1/hosts/local/images/default", "local"),
                                             ("/v1/hosts/h2/images/nope", "nope")])
def test_unknown_hosts_and_images_are_404(client, path, named):
    answer = client.put(path, headers=AUTH)
    assert answer.status_code == 404 and named in answer.get_json()["message"]


def test_the_same_shipment_twice_at_once_is_409(client, world):
    """Held by another worker (a flock: any process of this manager)."""
    path = world.services.shipper.lock_path("h2", "default")
    with host_lock(path, timeout=0, busy=AssertionError):
        answer = client.put("/v1/hosts/h2/images/default", headers=AUTH)
    assert answer.status_code == 409 and "being shipped" in answer.get_json()["message"]
    assert client.put("/v1/hosts/h2/images/default", headers=AUTH).status_code == 200


def test_the_maintainer_ships_what_an_up_host_lacks(client, world, h2):
    world.fakes.remotes["h3"] = h3 = type(h2)()
    h3.down = HypervisorError("libvirt: Connection refused")
    shipper = world.services.shipper
    shipper.registry._hypervisors["h3"] = h3  # a second host, down
    shipper.registry.hosts = (*shipper.registry.hosts,
                              dataclasses.replace(shipper.registry.hosts[0], name="h3"))
    assert shipper.ship_missing() == ["image default to h2"]
    assert readiness(client) == {"local": True, "h2": True, "h3": False}
    uploads = h2.calls.count("upload_volume")
    assert shipper.ship_missing() == []  # nothing missing: nothing sent again
    assert h2.calls.count("upload_volume") == uploads
    assert world.services.maintainer.ship == shipper.ship_missing


def test_shipping_needs_the_admin_scope(client):
    key = client.post("/v1/admin/api-keys", json={"name": "ci", "scopes": ["vms"]},
                      headers=AUTH).get_json()["key"]
    assert client.put("/v1/hosts/h2/images/default",
                      headers={"X-API-Key": key}).status_code == 403


@pytest.mark.parametrize("path", [
    "/v1/hosts/h2%00/images/default", "/v1/hosts/h2/images/default%00",
    "/v1/hosts/%ED%A0%80/images/default", "/v1/hosts/h2/images/%ED%A0%80",
    "/v1/hosts/" + "h" * 5000 + "/images/default", "/v1/hosts/h2/images/" + "d" * 5000,
    "/v1/hosts/h2/images/..%2F..%2Fetc%2Fpasswd", "/v1/hosts/..%2Flocal/images/default",
    "/v1/hosts/local/images/default",  # the manager's own host is not shipped to
])
def test_hostile_host_and_image_names_are_a_clear_4xx(client, h2, path):
    answer = client.put(path, headers=AUTH)
    assert 400 <= answer.status_code < 500, (answer.status_code, answer.data[:200])
    assert isinstance(answer.get_json()["message"], str)
    assert h2.volumes == {}  # nothing was sent anywhere


@pytest.mark.parametrize("body", [b"\x00" * 10, b'{"a": ' * 5000, b"[" * 100000, b"\xed\xa0\x80"])
def test_a_body_the_route_does_not_take_changes_nothing(client, h2, body):
    answer = client.put("/v1/hosts/h2/images/no-such-image", headers=AUTH, data=body,
                        content_type="application/json")
    assert 400 <= answer.status_code < 500 and answer.get_json()["message"]
    assert h2.volumes == {}


def test_the_other_methods_are_405_with_allow(client):
    answer = client.post("/v1/hosts/h2/images/default", headers=AUTH)
    assert answer.status_code == 405 and "PUT" in answer.headers["Allow"]
