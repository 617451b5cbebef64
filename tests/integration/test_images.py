"""Custom images with real VMs: a setup script that installs an uploaded file and a Debian
package from a package mirror this test serves itself on the host bridge (never the
internet), a VM of the new image restored from its memory snapshot, a failing setup script,
an uploaded qcow2 that names a host file, and a delete that waits until nothing uses the image.

One image is built per module (a build cold-boots a VM, installs, flattens ~1 GiB and saves a
memory snapshot: a minute or two under TCG) and shared by the tests that only read it.
"""
from __future__ import annotations

import functools
import hashlib
import http.server
import io
import json
import subprocess
import tarfile
import threading
import time
import typing as t
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from app.models import VmRole
from tests.integration.conftest import API_KEY, BRIDGE_IP, exec_ok, kill_service, live_server, virsh

PACKAGE = "rds-test-hello"
GREETING = "greetings from an uploaded file\n"


def make_deb(folder: Path) -> Path:
    """A tiny Debian package: /usr/local/bin/rds-test-hello prints a line."""
    root = folder / "pkg"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "usr/local/bin").mkdir(parents=True)
    (root / "DEBIAN/control").write_text(
        f"Package: {PACKAGE}\nVersion: 1.0\nArchitecture: all\nMaintainer: tests <t@t>\n"
        f"Description: run-dat-sheesh image build test package\n")
    tool = root / "usr/local/bin" / PACKAGE
    tool.write_text("#!/bin/sh\necho hello from the local mirror\n")
    tool.chmod(0o755)
    deb = folder / "repo" / f"{PACKAGE}_1.0_all.deb"
    deb.parent.mkdir()
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(root), str(deb)], check=True,
                   capture_output=True, timeout=60)
    return deb


def write_flat_repo(deb: Path) -> None:
    """``Packages`` and ``Release`` of a flat apt repository holding ``deb``."""
    control = subprocess.run(["dpkg-deb", "-f", str(deb)], check=True, capture_output=True,
                             text=True, timeout=30).stdout.strip()
    data = deb.read_bytes()
    packages = (f"{control}\nFilename: ./{deb.name}\nSize: {len(data)}\n"
                f"SHA256: {hashlib.sha256(data).hexdigest()}\n\n").encode()
    (deb.parent / "Packages").write_bytes(packages)
    release = (f"Origin: rds-test\nLabel: rds-test\nDate: "
               f"{time.strftime('%a, %d %b %Y %H:%M:%S UTC', time.gmtime())}\nSHA256:\n "
               f"{hashlib.sha256(packages).hexdigest()} {len(packages)} Packages\n")
    (deb.parent / "Release").write_text(release)


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    """A flat apt repository served over HTTP on the host bridge; yields its URL."""
    folder = tmp_path_factory.mktemp("mirror")
    write_flat_repo(make_deb(folder))
    handler = functools.partial(_Quiet, directory=str(folder / "repo"))
    server = http.server.ThreadingHTTPServer((BRIDGE_IP, 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://{BRIDGE_IP}:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *_args):
        pass


def targz(files: dict[str, str]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as archive:
        for name, text in files.items():
            info = tarfile.TarInfo(name)
            data = text.encode()
            info.size, info.mode = len(data), 0o644
            archive.addfile(info, io.BytesIO(data))
    return raw.getvalue()


def setup_script(mirror_url: str) -> str:
    sources = "/etc/apt/sources.list.d/rds-test.list"
    return f"""set -x
install -m 0644 greeting.txt /etc/rds-test-greeting
echo 'deb [trusted=yes] {mirror_url} ./' > {sources}
apt-get -q update -o Dir::Etc::sourcelist={sources} -o Dir::Etc::sourceparts=-
apt-get -q install -y --no-install-recommends {PACKAGE}
rm {sources}
"""


class Images:
    """The image routes, remembering what they created (deleted at the end)."""

    def __init__(self, api, services) -> None:
        self.api = api
        self.services = services
        self.created: list[str] = []

    def create(self, body: dict, expect: int = 202) -> dict:
        name = f"itest-{uuid.uuid4().hex[:8]}"
        response = self.api.request("POST", "/v1/images", json={"name": name, **body})
        assert response.status_code == expect, response.json
        self.created.append(name)
        return response.json

    def get(self, name: str) -> dict:
        response = self.api.request("GET", f"/v1/images/{name}")
        assert response.status_code == 200, response.json
        return response.json

    def build(self, name: str) -> dict:
        """Run the builder (the maintaining process does this in the service) until the
        image has left the queue."""
        self.services.image_builder.run_pending()
        return self.get(name)

    def cleanup(self) -> None:
        for name in self.created:
            response = self.api.request("DELETE", f"/v1/images/{name}")
            if response.status_code not in (204, 404):
                print(f"cleanup of image {name} failed: {response.json}")


@pytest.fixture(scope="module")
def images(api, services):
    helper = Images(api, services)
    yield helper
    helper.cleanup()


@pytest.fixture(scope="module")
def built(images, api, mirror):
    """The module's image: the setup installs the uploaded file and the mirror's package."""
    image = images.create({"from": "default", "description": "integration test image",
                           "setup": setup_script(mirror), "files": True,
                           "allowIps": [f"{BRIDGE_IP}/32"], "outboundInternet": True,
                           "timeoutSeconds": 600})
    assert (image["state"], image["awaiting"]) == ("PENDING", ["files"])
    response = api.request("PUT", f"/v1/images/{image['id']}/files",
                           data=targz({"greeting.txt": GREETING}),
                           headers={"Content-Type": "application/gzip"})
    assert response.status_code == 202, response.json
    started = time.monotonic()
    image = images.build(image["id"])
    log = api.request("GET", f"/v1/images/{image['id']}/build-log?tail=400").json
    assert image["state"] == "READY", (image, "\n".join(log["lines"]))
    return image | {"buildSeconds": time.monotonic() - started, "log": log["lines"]}


def test_the_build_ran_the_setup_with_the_mirror_and_is_ready_with_a_snapshot(built):
    assert built["snapshotReady"] is True and built["builtIn"] is False
    assert built["base"] == "default" and built["sizeMb"] > 0
    log = "\n".join(built["log"])
    assert f"Setting up {PACKAGE}" in log  # apt's own output, streamed from the guest
    assert "the setup script exited with 0" in log and "READY" in log


def test_a_vm_of_the_image_is_restored_fast_and_has_the_file_and_the_package(built, api):
    vm = api.create_vm({"cpu": 1, "memMb": 256, "imageId": built["id"]})
    try:
        assert (vm["imageId"], vm["provisionMode"]) == (built["id"], "snapshot")
        assert exec_ok(api, vm["id"], "cat /etc/rds-test-greeting")["stdout"] == GREETING
        assert exec_ok(api, vm["id"], PACKAGE)["stdout"] == "hello from the local mirror\n"
        status = exec_ok(api, vm["id"], f"dpkg-query -W -f='${{Status}}' {PACKAGE}")
        assert status["stdout"] == "install ok installed"
        # The seal: no build files, no setuid file, no stale host key, no mirror left.
        checks = exec_ok(api, vm["id"], "test ! -e /run/rds-build && echo clean; "
                                        "find / -xdev -perm /6000 -type f | wc -l; "
                                        "ls /etc/apt/sources.list.d/")
        assert checks["stdout"].split("\n")[:2] == ["clean", "0"]
        assert "rds-test" not in checks["stdout"]
    finally:
        api.delete_vm(vm["id"])


def test_virsh_lists_the_image_in_the_images_pool(built):
    listed = virsh("vol-list", "rds-images").stdout
    assert f"{built['id']}.qcow2" in listed and "default.qcow2" in listed


def test_the_image_can_be_the_default_and_is_deleted_only_when_unused(built, api, services):
    assert api.request("POST", f"/v1/images/{built['id']}/set-default").status_code == 200
    try:
        assert api.request("DELETE", f"/v1/images/{built['id']}").status_code == 409
    finally:
        assert api.request("POST", "/v1/images/default/set-default").status_code == 200
    vm = api.create_vm({"cpu": 1, "memMb": 256, "imageId": built["id"]})
    response = api.request("DELETE", f"/v1/images/{built['id']}")
    assert response.status_code == 409 and vm["id"] in response.json["message"]
    api.delete_vm(vm["id"])
    assert api.request("DELETE", f"/v1/images/{built['id']}").status_code == 204
    assert api.request("GET", f"/v1/images/{built['id']}").status_code == 404
    assert not [seed for seed in services.seeds.store.all() if seed.template_id == built["id"]]
    assert f"{built['id']}.qcow2" not in virsh("vol-list", "rds-images").stdout


def test_a_failing_setup_script_ends_failed_with_its_log(images, api, services):
    image = images.create({"setup": "echo about to fail\nexit 7\n"})
    image = images.build(image["id"])
    assert image["state"] == "FAILED"
    assert image["reason"] == "the setup script exited with 7"
    lines = api.request("GET", f"/v1/images/{image['id']}/build-log").json["lines"]
    assert "about to fail" in lines
    assert any("FAILED: the setup script exited with 7" in line for line in lines)
    # Nothing of the build is left: no build VM, no disk, no link.
    assert not [record for record, _info in services.vms.records()
                if record.role is VmRole.BUILD]
    folder = services.settings.custom_images_dir / image["id"]
    assert [p.name for p in folder.iterdir() if p.is_dir()] == []
    followed = api.request("GET", f"/v1/images/{image['id']}/build-log?follow=true")
    assert followed.status_code == 200 and b"about to fail" in followed.data


def test_a_qcow2_naming_a_host_file_is_refused(images, api, tmp_path):
    image = images.create({"disk": True})
    evil = tmp_path / "evil.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b",
                    "/etc/shadow", str(evil), "64M"], check=True, timeout=30)
    response = api.request("PUT", f"/v1/images/{image['id']}/disk", data=evil.read_bytes(),
                           headers={"Content-Type": "application/octet-stream"})
    assert response.status_code == 400 and "backing file" in response.json["message"]
    assert images.get(image["id"])["state"] == "PENDING"
    folder = api.app.extensions["rds"].settings.custom_images_dir / image["id"]
    assert not [p for p in folder.iterdir() if "upload" in p.name]


def call(base: str, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(
        base + path, method=method, data=json.dumps(body).encode() if body else None,
        headers={"X-API-Key": API_KEY, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def wait_for(what: str, check: t.Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f} s"
        time.sleep(1)


def test_the_service_builds_in_the_background_and_a_restart_does_not_lose_the_build(
        images, api):
    """Under gunicorn nobody calls the builder: the maintaining worker does. Killed in the
    middle of the setup script (the master with SIGKILL, so its workers die with it), the
    service starts the build again after its restart, and the image ends READY."""
    env = {"API_KEY": API_KEY, "WEB_WORKERS": "2"}
    name = f"itest-{uuid.uuid4().hex[:8]}"
    images.created.append(name)
    with live_server(env) as (base, process):
        status, image = call(base, "POST", "/v1/images", {
            "name": name, "setup": "echo sleeping; sleep 25; echo woke > /etc/rds-woke"})
        assert status == 202, image
        wait_for("the setup script started", lambda: "running the setup script" in "\n".join(
            call(base, "GET", f"/v1/images/{name}/build-log")[1]["lines"]), 180)
        kill_service(process)
    assert images.get(name)["state"] == "BUILDING"
    with live_server(env) as (base, _process):
        wait_for("READY", lambda: call(base, "GET", f"/v1/images/{name}")[1]["state"]
                 not in ("PENDING", "BUILDING"), 420)
        image = call(base, "GET", f"/v1/images/{name}")[1]
        log = "\n".join(call(base, "GET", f"/v1/images/{name}/build-log?tail=1000")[1]["lines"])
    assert image["state"] == "READY", log
    assert "interrupted" in log and f"build 2 of image {name}" in log
    vm = api.create_vm({"cpu": 1, "memMb": 256, "imageId": name})
    try:
        assert exec_ok(api, vm["id"], "cat /etc/rds-woke")["stdout"] == "woke\n"
    finally:
        api.delete_vm(vm["id"])
