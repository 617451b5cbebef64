"""/v1/images on the real services over fakes: create, uploads, set-default, delete and the
build log; bad input is a 4xx with a message, never a 5xx."""
from __future__ import annotations

import gzip
import io
import struct
import tarfile

import pytest

from app.models import VmSpec
from tests.unit.fakes import World

IMAGE_FIELDS = {"id", "name", "description", "state", "reason", "builtIn", "isDefault", "base",
                "snapshotReady", "sizeMb", "diskSizeMb", "createdAt", "buildStartedAt",
                "buildFinishedAt", "awaiting", "allowIps", "outboundInternet", "timeoutSeconds",
                "hosts"}
BODY = {"name": "node", "setup": "echo hi > /etc/hi"}


class NoPort:
    def __init__(self, socket_path, sink):
        pass

    def start(self, timeout):
        pass

    def stop(self, quiet_s=0.5, timeout=5.0):
        pass


@pytest.fixture
def world(tmp_path, monkeypatch, clock) -> World:
    monkeypatch.setattr("app.services.build_guest.PortReader", NoPort)
    return World(tmp_path, monkeypatch, clock, SNAPSHOT_AUTO_BUILD="false", MAX_IMAGES=3)


def create(client, auth, **body):
    return client.post("/v1/images", json={**BODY, **body}, headers=auth)


def built(client, auth, services, **body) -> dict:
    assert create(client, auth, **body).status_code == 202
    services.image_builder.run_pending()
    return client.get(f"/v1/images/{body.get('name', 'node')}", headers=auth).get_json()


def targz(files: dict[str, bytes]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return raw.getvalue()


def qcow2(size: int = 64 << 20, backing: bytes = b"", data_file: bool = False) -> bytes:
    """A qcow2 header (version 3), optionally naming a backing file or an external data
    file."""
    header = struct.pack(">4sIQIIQIIQQIIQ", b"QFI\xfb", 3, 112 if backing else 0, len(backing),
                         16, size, 0, 0, 0, 0, 0, 0, 0)
    header += struct.pack(">QQQII", 4 if data_file else 0, 0, 0, 4, 104)
    extension = struct.pack(">II", 0x44415441, 8) + b"data.raw" if data_file else b""
    header = header[:104] + extension + struct.pack(">II", 0, 0)
    return (header + backing).ljust(4096, b"\0")


def ext4(size: int = 1 << 20) -> bytes:
    data = bytearray(size)
    data[1080:1082] = b"\x53\xef"
    return bytes(data)


# Listing and reading #####################################################################

def test_the_built_in_image_is_listed_ready_and_default(client, auth):
    images = client.get("/v1/images", headers=auth).get_json()
    assert [image["id"] for image in images] == ["default"]
    default = images[0]
    assert set(default) == IMAGE_FIELDS
    assert (default["state"], default["builtIn"], default["isDefault"]) == ("READY", True, True)
    assert default["hosts"] == [{"name": "local", "ready": True,  # no HOSTS: this host
                                 "snapshotReady": default["snapshotReady"]}]
    assert default["diskSizeMb"] == 4096 and default["base"] is None


def test_create_answers_202_building_and_the_build_makes_it_ready(client, auth, services):
    response = create(client, auth, description="Node CI", allowIps=["172.16.0.1"],
                      outboundInternet=True, timeoutSeconds=60)
    assert response.status_code == 202
    image = response.get_json()
    assert (image["state"], image["name"], image["base"]) == ("BUILDING", "node", "default")
    assert (image["allowIps"], image["timeoutSeconds"]) == (["172.16.0.1/32"], 60)
    services.image_builder.run_pending()
    image = client.get("/v1/images/node", headers=auth).get_json()
    assert (image["state"], image["builtIn"], image["isDefault"]) == ("READY", False, False)
    assert image["sizeMb"] is not None and image["snapshotReady"] is False


@pytest.mark.parametrize("image_id", ["nope", "%00", "%ED%A0%80", "x" * 10_000, "..%2F..",
                                      "UPPER", ".hidden"])
@pytest.mark.parametrize(("method", "suffix"), [
    ("get", ""), ("delete", ""), ("post", "/set-default"), ("get", "/build-log"),
    ("put", "/files"), ("put", "/disk")])
def test_odd_and_unknown_ids_are_404(client, auth, image_id, method, suffix):
    headers = {**auth, "Content-Type": "application/octet-stream" if suffix == "/disk" else
               "application/gzip"}
    response = getattr(client, method)(f"/v1/images/{image_id}{suffix}", headers=headers,
                                       data=b"x" if method == "put" else None)
    assert response.status_code == 404, response.text
    assert response.get_json()["message"]


# Create: bad input ########################################################################

@pytest.mark.parametrize(("body", "words"), [
    ({"name": "Bad Name"}, ["name"]), ({"name": ""}, ["name"]), ({"name": "-x"}, ["name"]),
    ({"name": "a" * 64}, ["name"]), ({"name": 5}, ["name"]), ({"setup": ""}, ["nothing"]),
    ({"setup": "   "}, ["nothing"]), ({"setup": "x" * (256 * 1024 + 1)}, ["setup"]),
    ({"setup": "a\0b"}, ["setup", "NUL"]), ({"from": "nope"}, ["from", "nope"]),
    ({"from": "../default"}, ["from"]), ({"timeoutSeconds": 0}, ["timeoutSeconds"]),
    ({"timeoutSeconds": 3601}, ["timeoutSeconds", "3600"]), ({"timeoutSeconds": "9"}, []),
    ({"cpu": 99}, ["cpu"]), ({"memMb": 64}, ["memMb"]), ({"memMb": 4096}, ["memMb"]),
    ({"diskSizeMb": 1024}, ["diskSizeMb", "4096"]), ({"diskSizeMb": 10**6}, ["diskSizeMb"]),
    ({"allowIps": ["nope"]}, ["allowIps"]), ({"allowIps": "1.1.1.1"}, ["allowIps"]),
    ({"files": "maybe"}, ["files"]), ({"unknown": 1}, ["unknown"]),
    ({"description": "x" * 1001}, ["description"]),
])
def test_bad_create_bodies_are_400(client, auth, services, body, words):
    response = create(client, auth, **body)
    assert response.status_code == 400, response.text
    for word in words:
        assert word in response.get_json()["message"], response.get_json()
    assert services.images.store.all() == []


@pytest.mark.parametrize("name", ["default", "node"])
def test_a_taken_name_is_409(client, auth, name):
    assert create(client, auth).status_code == 202
    response = create(client, auth, name=name)
    assert response.status_code == 409 and "exists" in response.get_json()["message"]


def test_over_max_images_is_429(client, auth):
    for name in ("a", "b", "c"):
        assert create(client, auth, name=name).status_code == 202
    response = create(client, auth, name="d")
    assert response.status_code == 429 and "MAX_IMAGES" in response.get_json()["message"]


def test_from_an_image_that_is_not_ready_is_409(client, auth):
    assert create(client, auth).status_code == 202
    response = create(client, auth, name="other", **{"from": "node"})
    assert response.status_code == 409 and "BUILDING" in response.get_json()["message"]


def test_a_vm_of_an_image_that_is_not_ready_is_409(client, auth):
    assert create(client, auth).status_code == 202
    response = client.post("/v1/vms", json={"cpu": 1, "memMb": 256, "imageId": "node"},
                           headers=auth)
    assert response.status_code == 409 and "not READY" in response.get_json()["message"]


# Uploads #################################################################################

def test_files_turn_a_pending_image_into_a_queued_one(client, auth, services):
    image = create(client, auth, files=True).get_json()
    assert (image["state"], image["awaiting"]) == ("PENDING", ["files"])
    assert services.image_builder.run_pending() == []  # nothing to build yet
    response = client.put("/v1/images/node/files", data=targz({"hello.deb": b"deb"}),
                          headers={**auth, "Content-Type": "application/gzip"})
    assert response.status_code == 202
    assert (response.get_json()["state"], response.get_json()["awaiting"]) == ("BUILDING", [])
    files = services.images.store.path("node", "files.tar")
    with tarfile.open(files) as archive:
        assert archive.getnames() == ["hello.deb"]
    assert services.image_builder.run_pending() == ["node"]
    assert client.get("/v1/images/node", headers=auth).get_json()["state"] == "READY"


def test_files_nobody_announced_are_409(client, auth):
    assert create(client, auth).status_code == 202
    response = client.put("/v1/images/node/files", data=targz({"a": b"a"}),
                          headers={**auth, "Content-Type": "application/gzip"})
    assert response.status_code == 409 and "awaits no files" in response.get_json()["message"]


@pytest.mark.parametrize(("data", "status", "words"), [
    (b"not gzip", 400, ["gzip"]), (b"", 400, ["empty"]),
    (targz({"../escape": b"x"}), 400, [".."]), (targz({"/etc/passwd": b"x"}), 400, ["absolute"]),
    (b"\x1f\x8b" + b"\0" * (11 * 1024 * 1024), 413, ["larger"])])
def test_unsafe_or_large_files_are_refused_and_leave_nothing(client, auth, services, data,
                                                             status, words):
    assert create(client, auth, files=True).status_code == 202
    response = client.put("/v1/images/node/files", data=data,
                          headers={**auth, "Content-Type": "application/gzip"})
    assert response.status_code == status, response.text
    for word in words:
        assert word in response.get_json()["message"]
    folder = services.images.store.folder("node")
    assert not [p.name for p in folder.iterdir() if "files" in p.name]
    assert services.images.get("node").awaiting == ("files",)


def test_a_qcow2_disk_is_accepted_and_built_from(client, auth, services, world):
    assert create(client, auth, disk=True, setup="").get_json()["awaiting"] == ["disk"]
    response = client.put("/v1/images/node/disk", data=qcow2(size=6 << 30),
                          headers={**auth, "Content-Type": "application/octet-stream"})
    assert response.status_code == 202, response.text
    assert (response.get_json()["state"], response.get_json()["diskSizeMb"]) == ("BUILDING",
                                                                                 6144)
    services.image_builder.run_pending()
    assert services.images.get("node").state.value == "READY"
    converted = [c for c in world.disks.calls if c[0] == "convert"]
    assert converted[0][2] == "qcow2" and converted[0][1].name == "upload.img"


@pytest.mark.parametrize(("data", "words"), [
    (qcow2(backing=b"/etc/shadow"), ["backing file"]),
    (qcow2(data_file=True), ["external"]),
    (b"KDMV" + b"\0" * 4096, ["vmdk", "raw and qcow2"]),
    (b"conectix" + b"\0" * 4096, ["vpc"]),
    (b"\0" * 4096, ["ext4"]),
    (qcow2(size=200 << 30), ["virtual size", "MAX_DISK_SIZE_MB"]),
])
def test_refused_disks_are_400_and_leave_nothing(client, auth, services, data, words):
    assert create(client, auth, disk=True).status_code == 202
    response = client.put("/v1/images/node/disk", data=data,
                          headers={**auth, "Content-Type": "application/octet-stream"})
    assert response.status_code == 400, response.text
    for word in words:
        assert word in response.get_json()["message"]
    folder = services.images.store.folder("node")
    assert not [p.name for p in folder.iterdir() if "upload" in p.name]
    assert services.images.get("node").state.value == "PENDING"


def test_a_raw_ext4_disk_is_accepted(client, auth):
    assert create(client, auth, disk=True).status_code == 202
    response = client.put("/v1/images/node/disk", data=ext4(),
                          headers={**auth, "Content-Type": "application/octet-stream"})
    assert response.status_code == 202, response.text


def test_a_disk_over_the_upload_cap_is_413(tmp_path, monkeypatch, clock, auth):
    from app import create_app
    world = World(tmp_path, monkeypatch, clock, MAX_IMAGE_UPLOAD_MB=1)
    client = create_app({"TESTING": True}, services=world.services).test_client()
    assert create(client, auth, disk=True).status_code == 202
    response = client.put("/v1/images/node/disk", data=ext4(2 << 20),
                          headers={**auth, "Content-Type": "application/octet-stream"})
    assert response.status_code == 413 and "larger" in response.get_json()["message"]


def test_a_disk_with_the_wrong_content_type_is_400(client, auth):
    assert create(client, auth, disk=True).status_code == 202
    response = client.put("/v1/images/node/disk", data=ext4(),
                          headers={**auth, "Content-Type": "application/json"})
    assert response.status_code == 400


# Default, delete ##########################################################################

def test_set_default_changes_what_creates_get(client, auth, services):
    built(client, auth, services)
    response = client.post("/v1/images/node/set-default", headers=auth)
    assert response.status_code == 200 and response.get_json()["isDefault"] is True
    listed = {i["id"]: i["isDefault"] for i in client.get("/v1/images", headers=auth).get_json()}
    assert listed == {"default": False, "node": True}
    assert services.vms.create(VmSpec(cpu=1, mem_mb=256)).image_id == "node"
    assert client.post("/v1/images/default/set-default", headers=auth).status_code == 200
    assert services.vms.create(VmSpec(cpu=1, mem_mb=256)).image_id == "default"


def test_set_default_of_an_image_that_is_not_ready_is_409(client, auth):
    assert create(client, auth).status_code == 202
    assert client.post("/v1/images/node/set-default", headers=auth).status_code == 409


def test_delete_removes_the_image(client, auth, services):
    built(client, auth, services)
    assert client.delete("/v1/images/node", headers=auth).status_code == 204
    assert client.get("/v1/images/node", headers=auth).status_code == 404
    assert not services.images.store.folder("node").exists()
    assert not (services.settings.image_volumes_dir / "node.qcow2").exists()
    assert client.delete("/v1/images/node", headers=auth).status_code == 404
    assert create(client, auth).status_code == 202  # the name is free again


@pytest.mark.parametrize("why", ["built in", "default", "building", "vm", "snapshot", "base"])
def test_delete_while_in_use_is_409(client, auth, services, why):
    image_id = "default" if why == "built in" else "node"
    if why == "building":
        assert create(client, auth).status_code == 202
    else:
        built(client, auth, services)
    if why == "default":
        client.post("/v1/images/node/set-default", headers=auth)
    if why in ("vm", "snapshot"):
        vm = services.vms.create(VmSpec(cpu=1, mem_mb=256, image_id="node"))
        if why == "snapshot":
            services.snapshots.take(vm.id)
            services.vms.delete(vm.id, wait=True)
    if why == "base":
        assert create(client, auth, name="child", **{"from": "node"}).status_code == 202
    response = client.delete(f"/v1/images/{image_id}", headers=auth)
    assert response.status_code == 409, response.text
    assert response.get_json()["message"]


def test_delete_removes_idle_pool_vms_and_memory_snapshots_of_it(client, auth, services,
                                                                 world):
    from app.models import VmRole
    built(client, auth, services)
    pool_vm = world.add_vm(5, role=VmRole.POOL, image_id="node")
    seed_dir = services.settings.seeds_dir / "node-1c-256m-abc"
    seed_dir.mkdir(parents=True)
    (seed_dir / "seed.json").write_text('{"templateId": "node", "cpu": 1, "memMb": 256, '
                                        '"diskSizeMb": 4096, "imagePath": "x"}')
    for name in ("state.sav", "disk.qcow2"):
        (seed_dir / name).write_text("x")
    assert client.delete("/v1/images/node", headers=auth).status_code == 204
    assert pool_vm.id not in world.hypervisor.domains
    assert not seed_dir.exists()


# Build log ###############################################################################

def test_build_log_tail_and_follow(client, auth, services):
    built(client, auth, services)
    response = client.get("/v1/images/node/build-log?tail=2", headers=auth)
    assert response.status_code == 200
    body = response.get_json()
    assert (body["type"], body["imageId"], body["state"]) == ("build", "node", "READY")
    assert len(body["lines"]) == 2 and body["truncated"] is True
    assert "READY" in body["lines"][-1]
    streamed = client.get("/v1/images/node/build-log?follow=true&tail=1000", headers=auth)
    assert streamed.status_code == 200 and streamed.mimetype == "text/plain"
    assert "queued for building" in streamed.text and "READY" in streamed.text


@pytest.mark.parametrize("query", ["tail=-1", "tail=10001", "tail=x", "follow=maybe"])
def test_bad_build_log_queries_are_400(client, auth, services, query):
    assert create(client, auth).status_code == 202
    response = client.get(f"/v1/images/node/build-log?{query}", headers=auth)
    assert response.status_code == 400 and response.get_json()["message"]


def test_a_built_in_image_has_no_build_log_here(client, auth):
    assert client.get("/v1/images/default/build-log", headers=auth).status_code == 404


def test_routes_need_credentials(client):
    for method, path in (("get", "/v1/images"), ("post", "/v1/images"),
                         ("get", "/v1/images/default"), ("delete", "/v1/images/x"),
                         ("put", "/v1/images/x/files"), ("get", "/v1/images/x/build-log")):
        assert getattr(client, method)(path).status_code == 401


def test_gzip_is_sent_uncompressed_in_the_builder():
    """targz() above is a real tar.gz (a sanity check of the helper)."""
    assert gzip.decompress(targz({"a": b"b"}))[:1] == b"a"


def test_an_upload_that_lost_a_race_is_409_and_leaves_no_part_file(client, auth, services,
                                                                   monkeypatch):
    import dataclasses

    from app.services import images as images_module
    real = images_module.accept_files

    def accept_and_lose(*args):
        checked = real(*args)
        store = services.images.store  # another upload of the files finished meanwhile
        store.save(dataclasses.replace(store.get("node"), awaiting=()))
        return checked
    monkeypatch.setattr(images_module, "accept_files", accept_and_lose)
    assert create(client, auth, files=True).status_code == 202
    response = client.put("/v1/images/node/files", data=targz({"a": b"a"}),
                          headers={**auth, "Content-Type": "application/gzip"})
    assert response.status_code == 409
    assert [p.name for p in services.images.store.folder("node").iterdir()
            if p.name.endswith(".part") or p.name == "files.tar"] == []


def test_an_upload_to_an_image_deleted_meanwhile_is_404(client, auth, services, monkeypatch):
    from app.services import images as images_module
    real = images_module.accept_files

    def delete_then_accept(settings, body, target):
        services.images.delete("node")
        return real(settings, body, target)
    monkeypatch.setattr(images_module, "accept_files", delete_then_accept)
    assert create(client, auth, files=True).status_code == 202
    response = client.put("/v1/images/node/files", data=targz({"a": b"a"}),
                          headers={**auth, "Content-Type": "application/gzip"})
    assert response.status_code == 404 and "deleted" in response.get_json()["message"]
