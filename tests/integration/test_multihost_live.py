"""The service with HOSTS naming the two-host rig's second libvirtd (tests/integration/
two_host_rig.py), as ``make run`` starts it: the second host is listed UP with its real
capacity, DOWN within seconds once its libvirtd stops (calls on this host unaffected), UP again
once it is back; an image shipped there arrives intact in its own storage pool."""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from app import create_app
from tests.integration.conftest import live_server, no_upkeep_config
from tests.integration.two_host_rig import SecondHost

API_KEY = "multihost-test-key"
PROBE_S = 3.0
IMAGES_DIR = "/var/lib/libvirt/images/rds-images"  # the default imagesDir, on the rig


@pytest.fixture(scope="module")
def rig():
    with SecondHost() as host:
        yield host


@pytest.fixture(scope="module")
def server(rig, tmp_path_factory):
    directory = tmp_path_factory.mktemp("multihost")
    log_path = directory / "server.log"
    print(f"server log: {log_path}")
    with log_path.open("w") as log, live_server(
            {"API_KEY": API_KEY, "HOSTS": rig.hosts_setting(),
             "HOST_PROBE_TIMEOUT_S": str(PROBE_S), "WEB_WORKERS": "1"},
            "-c", str(no_upkeep_config(directory)), output=log) as (base, _process):
        yield base


def call(base: str, method: str, path: str, timeout: float = 600) -> tuple[int, object]:
    request = urllib.request.Request(base + path, method=method,
                                     headers={"X-API-Key": API_KEY})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
            status = response.status
    except urllib.error.HTTPError as error:
        body, status = error.read(), error.code
    text = body.decode()
    return status, (json.loads(text) if text.startswith(("{", "[")) else text)


def remote_virsh(rig: SecondHost, *args: str) -> str:
    return subprocess.run(["virsh", "-c", rig.uri, *args], capture_output=True, text=True,
                          timeout=60, check=True).stdout


def timed_hosts(base: str) -> tuple[float, dict[str, dict]]:
    started = time.monotonic()
    status, hosts = call(base, "GET", "/v1/hosts", timeout=30)
    assert status == 200, hosts
    return time.monotonic() - started, {host["name"]: host for host in hosts}


def test_the_second_host_is_listed_up_with_its_real_capacity(rig, server):
    _took, hosts = timed_hosts(server)
    assert list(hosts) == ["local", "h2"]
    second = hosts["h2"]
    assert (second["state"], second["reason"], second["uri"]) == ("UP", None, rig.uri)
    assert second["guestCidr"] == rig.guest_cidr and second["vms"] == 0
    nodeinfo = remote_virsh(rig, "nodeinfo")
    assert second["cpus"] == int(re.search(r"CPU\(s\):\s+(\d+)", nodeinfo).group(1))
    assert second["hostname"] == remote_virsh(rig, "hostname").strip()
    meminfo = Path("/proc/meminfo").read_text()  # the rig runs on this kernel
    total_mb = int(re.search(r"MemTotal:\s+(\d+) kB", meminfo).group(1)) // 1024
    assert second["memoryMb"] == total_mb
    assert 0 < second["freeMemoryMb"] <= total_mb
    assert hosts["local"]["state"] == "UP"
    status, metrics = call(server, "GET", "/metrics")
    assert status == 200
    assert 'rds_host_up{host="h2"} 1.0' in metrics
    assert f'rds_host_cpus{{host="h2"}} {second["cpus"]}.0' in metrics


def test_a_stopped_libvirtd_is_down_within_seconds_and_up_again_once_back(rig, server):
    rig.stop_libvirtd()
    try:
        took, hosts = timed_hosts(server)
        assert hosts["h2"]["state"] == "DOWN", hosts["h2"]
        assert hosts["h2"]["reason"] and hosts["h2"]["cpus"] is None
        assert took < PROBE_S + 2, took
        assert hosts["local"]["state"] == "UP"  # this host is unaffected ...
        status, vms = call(server, "GET", "/v1/vms", timeout=30)
        assert status == 200 and isinstance(vms, list)  # ... and so are calls on it
        status, metrics = call(server, "GET", "/metrics", timeout=30)
        assert 'rds_host_up{host="h2"} 0.0' in metrics and 'rds_host_up{host="local"} 1.0' \
            in metrics
        status, images = call(server, "GET", "/v1/images", timeout=30)
        assert status == 200
        default = next(image for image in images if image["id"] == "default")
        assert {"name": "h2", "ready": False, "snapshotReady": False} in default["hosts"]
    finally:
        rig.start_libvirtd()
    deadline = time.monotonic() + 30
    while True:
        _took, hosts = timed_hosts(server)
        if hosts["h2"]["state"] == "UP":
            break
        assert time.monotonic() < deadline, f"the second host stayed DOWN: {hosts['h2']}"
        time.sleep(0.5)
    assert hosts["h2"]["cpus"] and hosts["h2"]["reason"] is None


def test_a_libvirtd_that_hangs_is_down_within_the_probe_timeout(rig, server):
    """Its connection is open and its socket accepts, but nothing answers: every listing
    still answers within HOST_PROBE_TIMEOUT_S, and the host is UP again once it answers."""
    assert timed_hosts(server)[1]["h2"]["state"] == "UP"
    rig.freeze_libvirtd()
    try:
        for _ in range(3):  # no call piles up behind the hung one
            took, hosts = timed_hosts(server)
            assert hosts["h2"]["state"] == "DOWN", hosts["h2"]
            # Either this call's wait ran out, or libvirt's keepalive (2 s x 2) closed the
            # connection of the call before, which then ended with that reason.
            reason = hosts["h2"]["reason"]
            assert reason == f"libvirt did not answer within {PROBE_S:g}s" or \
                "keepalive timeout" in reason, reason
            assert took < PROBE_S + 2, took
            assert hosts["local"]["state"] == "UP"
        status, _vms = call(server, "GET", "/v1/vms", timeout=30)
        assert status == 200
    finally:
        rig.freeze_libvirtd(frozen=False)
    deadline = time.monotonic() + 30
    while timed_hosts(server)[1]["h2"]["state"] != "UP":
        assert time.monotonic() < deadline, "the second host stayed DOWN after it answered"
        time.sleep(0.5)


def test_an_image_shipped_to_the_second_host_arrives_intact(rig, server):
    local = Path(os.path.realpath("/var/lib/run-dat-sheesh/images/volumes/default.qcow2"))
    status, shipment = call(server, "PUT", "/v1/hosts/h2/images/default")
    assert status == 200, shipment
    expected = hashlib.sha256(local.read_bytes()).hexdigest()
    assert shipment["volumes"]["default.qcow2"] == {"sha256": expected,
                                                    "bytes": local.stat().st_size}
    # What the second host's libvirt lists, and the bytes on its disk (the rig's
    # /var/lib/libvirt is a directory of this machine's), checked here independently.
    volumes = remote_virsh(rig, "vol-list", "rds-images")
    for name in ("default.qcow2", "default.vmlinuz", "default.initrd.img",
                 "default.manifest.json"):
        assert f" {name} " in volumes or f" {name}\n" in volumes, volumes
    on_rig = rig.path_here(f"{IMAGES_DIR}/default.qcow2")
    assert hashlib.sha256(on_rig.read_bytes()).hexdigest() == expected
    for name in ("vmlinuz", "initrd.img"):
        assert (on_rig.parent / f"default.{name}").read_bytes() == \
            (local.parent / name).read_bytes()
    assert "rds-images" in remote_virsh(rig, "pool-list", "--name").split()
    status, images = call(server, "GET", "/v1/images", timeout=30)
    default = next(image for image in images if image["id"] == "default")
    # Shipping made the image's memory snapshot on h2 too (test_remote_vms_live.py uses it).
    assert default["hosts"] == [
        {"name": "local", "ready": True, "snapshotReady": default["snapshotReady"]},
        {"name": "h2", "ready": True, "snapshotReady": True}]
    _took, hosts = timed_hosts(server)
    assert {"id": "default", "snapshotReady": True} in hosts["h2"]["images"]


def test_what_the_second_host_lacks_is_shipped_by_the_maintainers_round(rig, server):
    """The maintainer's round (ImageShipper.ship_missing, run here in-process on services
    built with the same HOSTS) ships the image again once the host lost it."""
    remote_virsh(rig, "vol-delete", "--pool", "rds-images", "default.manifest.json")
    status, images = call(server, "GET", "/v1/images", timeout=30)
    default = next(image for image in images if image["id"] == "default")
    assert {"name": "h2", "ready": False, "snapshotReady": False} in default["hosts"]
    app = create_app({"TESTING": True, "API_KEY": API_KEY, "HOST_PROBE_TIMEOUT_S": PROBE_S,
                      "HOSTS": rig.hosts_setting()})
    services = app.extensions["rds"]
    try:
        assert services.maintainer.ship == services.shipper.ship_missing
        assert services.shipper.ship_missing() == ["image default to h2"]
        assert services.shipper.ship_missing() == []  # nothing lacking any more
    finally:
        services.close()
    status, images = call(server, "GET", "/v1/images", timeout=30)
    default = next(image for image in images if image["id"] == "default")
    assert {"name": "h2", "ready": True, "snapshotReady": True} in default["hosts"]
