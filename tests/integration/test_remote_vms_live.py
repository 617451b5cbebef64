"""VMs on the two-host rig's second libvirtd (tests/integration/two_host_rig.py) through the API
with HOSTS naming it (issue 17): made there through its libvirt only, used (exec, run-ts, files)
through the route to its guest subnet, snapshotted (a local VM made from the snapshot),
labelled, stopped and started again there, its filter holding there, deleted leaving nothing
on the rig; calls on its VMs answer 503 fast while its libvirtd is down, the local host's VMs
are unaffected, and the VM is found again once it is back."""
from __future__ import annotations

import contextlib
import datetime
import io
import ipaddress
import json
import socket
import subprocess
import tarfile
import threading
import time
import typing as t
import urllib.error
import urllib.request

import pytest

import leak_inventory
from app import create_app
from tests.integration.conftest import (API_KEY, Api, connects, free_port, live_server,
                                       no_upkeep_config)
from tests.integration.two_host_rig import SecondHost

PROBE_S = 3.0
ON_RIG = {"cpu": 1, "memMb": 256, "provisionMode": "boot", "placement": {"host": "h2"}}
# Two more own addresses of the rig host, on another interface in its namespace (a range no
# other part of the rig uses): the first listed in its hostAddresses, the second not.
LISTED, UNLISTED = "10.210.9.1", "10.210.9.2"


@pytest.fixture(scope="module")
def rig():
    with SecondHost() as host:
        yield host


def manager_config(rig: SecondHost) -> dict:
    return {"TESTING": True, "API_KEY": API_KEY, "HOST_PROBE_TIMEOUT_S": PROBE_S,
            "HOSTS": rig.hosts_setting(hostAddresses=[LISTED])}


@pytest.fixture(scope="module")
def remote_api(rig):
    application = create_app(manager_config(rig))
    client = Api(application)
    shipped = client.request("PUT", "/v1/hosts/h2/images/default")
    assert shipped.status_code == 200, shipped.json
    yield client
    client.cleanup()
    application.extensions["rds"].close()


@pytest.fixture(scope="module")
def rig_vm(rig, remote_api):
    before = leak_inventory.remote_inventory(rig.uri)
    assert before == {"address reservations": set(), "domains": set(), "nwfilters": set(),
                      "vm volumes": set()}, before
    vm = remote_api.create_vm(ON_RIG)
    yield vm
    remote_api.delete_vm(vm["id"])


def rig_virsh(rig: SecondHost, *args: str) -> str:
    return subprocess.run(["virsh", "-c", rig.uri, *args], capture_output=True, text=True,
                          timeout=60, check=True).stdout


def exec_on(api: Api, vm_id: str, cmd: str):
    return api.request("POST", f"/v1/vms/{vm_id}/exec", json={"cmd": cmd})


@contextlib.contextmanager
def listener(address: str, in_namespace: list[str] | None = None):
    """A TCP listener on ``address`` (here, or inside the rig's namespace); yields its port."""
    if in_namespace is None:
        server = socket.create_server((address, 0))
        stop = threading.Event()

        def accept() -> None:
            server.settimeout(0.2)
            while not stop.is_set():
                with contextlib.suppress(OSError):
                    server.accept()[0].close()
        thread = threading.Thread(target=accept, daemon=True)
        thread.start()
        try:
            yield server.getsockname()[1]
        finally:
            stop.set()
            thread.join(timeout=5)
            server.close()
        return
    port = free_port()
    process = subprocess.Popen([*in_namespace, "python3", "-m", "http.server", "--bind",
                                address, str(port)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while subprocess.run([*in_namespace, "ss", "-Hltn", f"sport = :{port}"],
                             capture_output=True, text=True, timeout=10).stdout.strip() == "":
            assert time.monotonic() < deadline, "the rig's listener did not start"
            time.sleep(0.1)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_creates_without_a_host_are_spread_over_both_hosts(rig, remote_api):
    """PLACEMENT=spread, the rig allowed one VM (``maxVms``, none there yet: this test runs
    before the module's VM is made): of two creates naming no host, one lands on each host
    (whichever comes first, the rig is then full or the least full), both run commands."""
    before = leak_inventory.remote_inventory(rig.uri)
    assert before["domains"] == set(), before
    spread = create_app({**manager_config(rig), "PLACEMENT": "spread",
                         "HOSTS": rig.hosts_setting(maxVms=1)})
    api = Api(spread)
    try:
        vms = [api.create_vm({"cpu": 1, "memMb": 256}) for _ in range(2)]
        assert sorted(vm["host"] for vm in vms) == ["h2", "local"], vms
        for vm in vms:
            assert exec_on(api, vm["id"], "id -u").json["stdout"] == "1000\n"
    finally:
        api.cleanup()
        spread.extensions["rds"].close()
    assert leak_inventory.remote_inventory(rig.uri) == before


def test_a_vm_made_on_the_rig_runs_there_and_not_here(rig, remote_api, rig_vm):
    assert rig_vm["host"] == "h2" and rig_vm["state"] == "RUNNING"
    assert ipaddress.ip_address(rig_vm["guestIp"]) in ipaddress.ip_network(rig.guest_cidr)
    listed = rig_virsh(rig, "list", "--title")
    assert rig_vm["name"] in listed and "run-dat-sheesh default 1 vCPU 256 MiB" in listed
    here = subprocess.run(["virsh", "list", "--all", "--name"], capture_output=True, text=True,
                          timeout=60, check=True).stdout.split()
    assert rig_vm["name"] not in here
    assert leak_inventory.remote_inventory(rig.uri) == {
        "address reservations": {f"rds-net-h2 {rig_vm['name']} {rig_vm['guestIp']}"},
        "domains": {rig_vm["name"]}, "nwfilters": {rig_vm["name"]},
        "vm volumes": {f"{rig_vm['name']}.{suffix}" for suffix in
                       ("qcow2", "ssh_host_ed25519_key", "authorized_keys", "console.log")}}
    assert "rds-net-h2" in rig_virsh(rig, "net-list", "--name").split()
    got = remote_api.request("GET", f"/v1/vms/{rig_vm['id']}")
    assert got.status_code == 200 and got.json["host"] == "h2"
    listed = remote_api.request("GET", "/v1/vms").json
    assert rig_vm["id"] in [vm["id"] for vm in listed]


def test_exec_run_ts_and_files_on_the_rig_vm(remote_api, rig_vm):
    done = exec_on(remote_api, rig_vm["id"], "id -u; pwd")
    assert done.status_code == 200, done.json
    assert done.json["stdout"].split() == ["1000", "/workspace"], done.json
    ran = remote_api.request("POST", f"/v1/vms/{rig_vm['id']}/run-ts",
                             json={"code": "console.log(6 * 7)"})
    assert ran.status_code == 200 and ran.json["stdout"] == "42\n", ran.json
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        data = b"across hosts\n"
        info = tarfile.TarInfo("remote/a.txt")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    sent = remote_api.request("POST", f"/v1/vms/{rig_vm['id']}/files/upload?dest=/workspace",
                              data=buffer.getvalue(), content_type="application/gzip")
    assert sent.status_code == 204, sent.json
    got = remote_api.request("GET", f"/v1/vms/{rig_vm['id']}/files/download?path=remote/a.txt")
    assert got.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(got.data), mode="r:gz") as archive:
        assert archive.extractfile("a.txt").read() == b"across hosts\n"


def test_a_create_on_the_rig_restores_the_memory_snapshot_made_there(rig, remote_api):
    """Shipping the image (the module's fixture) made its memory snapshot on the rig, which
    ``GET /v1/images`` says; a create there restores it: the guest answers as this VM (its own
    name and address, its own host key pinned by the SSH client, the clock set), runs
    commands as uid 1000, and its delete leaves nothing there but the snapshot."""
    images = remote_api.request("GET", "/v1/images").json
    default = next(image for image in images if image["id"] == "default")
    assert {"name": "h2", "ready": True, "snapshotReady": True} in default["hosts"], default
    before = leak_inventory.remote_inventory(rig.uri)
    vm = remote_api.create_vm({"cpu": 1, "memMb": 256, "placement": {"host": "h2"}})
    try:
        assert vm["host"] == "h2" and vm["provisionMode"] == "snapshot", vm
        done = exec_on(remote_api, vm["id"], "hostname; ip -4 -o addr show dev eth0; "
                                             "date +%s; id -u")
        assert done.status_code == 200, done.json
        hostname, address, clock, uid = done.json["stdout"].splitlines()
        assert hostname == vm["name"] and uid == "1000", done.json
        assert f"inet {vm['guestIp']}/" in address, address
        assert abs(int(clock) - time.time()) < 30, clock
        ran = remote_api.request("POST", f"/v1/vms/{vm['id']}/run-ts",
                                 json={"code": "console.log(6 * 7)"})
        assert ran.status_code == 200 and ran.json["stdout"] == "42\n", ran.json
        assert f"{vm['name']}.restore.sav" not in rig_virsh(rig, "vol-list", "rds-vms")
    finally:
        remote_api.delete_vm(vm["id"])
    assert leak_inventory.remote_inventory(rig.uri) == before


def test_a_snapshot_of_the_rig_vm_starts_a_local_vm_that_has_its_files(rig, remote_api,
                                                                       rig_vm):
    """The rig VM's disk is copied to the manager while its guest is frozen there (a write
    it has not synced is in the snapshot; thawed after), rebased onto the local image; a VM
    made from the snapshot runs here and reads the file back."""
    marker = f"from the rig {time.monotonic()}"
    assert exec_on(remote_api, rig_vm["id"], f"echo '{marker}' > /workspace/rsnap.txt"
                   ).status_code == 200  # no sync: the freeze flushes it
    taken = remote_api.request("POST", f"/v1/vms/{rig_vm['id']}/snapshots")
    assert taken.status_code == 201, taken.json
    snapshot = taken.json
    try:
        assert snapshot["sourceVmId"] == rig_vm["id"] and snapshot["imageId"] == "default"
        status = rig_virsh(rig, "qemu-agent-command", rig_vm["name"],
                           '{"execute":"guest-fsfreeze-status"}')
        assert json.loads(status)["return"] == "thawed"
        settings = remote_api.app.extensions["rds"].settings
        folder = settings.snapshots_dir / snapshot["id"]
        meta = json.loads((folder / "snapshot.json").read_text())
        info = json.loads(subprocess.run(
            ["qemu-img", "info", "--output=json", "-U", str(folder / "disk.qcow2")],
            capture_output=True, text=True, timeout=60, check=True).stdout)
        assert info["full-backing-filename"] == meta["imagePath"]
        assert meta["imagePath"].startswith(str(settings.images_dir.resolve()))
        vm = remote_api.create_vm({"cpu": 1, "memMb": 256, "snapshotId": snapshot["id"]})
        try:
            assert vm["host"] == "local" and vm["snapshotId"] == snapshot["id"]
            read = exec_on(remote_api, vm["id"], "cat /workspace/rsnap.txt")
            assert read.status_code == 200 and read.json["stdout"] == marker + "\n", read.json
        finally:
            remote_api.delete_vm(vm["id"])
    finally:
        deleted = remote_api.request("DELETE", f"/v1/snapshots/{snapshot['id']}")
    assert deleted.status_code == 204, deleted.json
    assert exec_on(remote_api, rig_vm["id"], "cat /workspace/rsnap.txt").json["stdout"] == \
        marker + "\n"  # the rig VM runs on, untouched


def test_a_snapshot_of_a_restored_rig_vm_takes_its_memory_snapshots_disk_in(rig,
                                                                           remote_api):
    """A VM restored from the rig's memory snapshot has its disk on that snapshot's disk
    there: the snapshot copies both and rebases the VM's overlay onto the local image in
    qemu-img's safe mode; the local VM made from it reads the file back."""
    vm = remote_api.create_vm({"cpu": 1, "memMb": 256, "placement": {"host": "h2"}})
    snapshot = None
    try:
        assert vm["provisionMode"] == "snapshot", vm
        marker = f"restored on the rig {time.monotonic()}"
        assert exec_on(remote_api, vm["id"], f"echo '{marker}' > /workspace/seeded.txt"
                       ).status_code == 200
        taken = remote_api.request("POST", f"/v1/vms/{vm['id']}/snapshots")
        assert taken.status_code == 201, taken.json
        snapshot = taken.json
        settings = remote_api.app.extensions["rds"].settings
        folder = settings.snapshots_dir / snapshot["id"]
        info = json.loads(subprocess.run(
            ["qemu-img", "info", "--output=json", "-U", str(folder / "disk.qcow2")],
            capture_output=True, text=True, timeout=60, check=True).stdout)
        assert info["full-backing-filename"] == json.loads(
            (folder / "snapshot.json").read_text())["imagePath"]
        assert not list(folder.parent.rglob(".rds-seed-*"))  # the copy of its disk is gone
        local = remote_api.create_vm({"cpu": 1, "memMb": 256, "snapshotId": snapshot["id"]})
        try:
            read = exec_on(remote_api, local["id"], "cat /workspace/seeded.txt")
            assert read.status_code == 200 and read.json["stdout"] == marker + "\n", read.json
        finally:
            remote_api.delete_vm(local["id"])
    finally:
        if snapshot is not None:
            remote_api.request("DELETE", f"/v1/snapshots/{snapshot['id']}")
        remote_api.delete_vm(vm["id"])


def test_keepalive_and_the_console_log_of_the_rig_vm(rig, remote_api, rig_vm):
    """Keepalive renews the expiry in its record there (read back through the API and in its
    domain XML on the rig); its console log, a volume of the rig's ``rds-vms`` pool read
    through the rig's libvirt, shows its guest booting."""
    base = f"/v1/vms/{rig_vm['id']}"
    kept = remote_api.request("POST", f"{base}/keepalive", json={"ttlSeconds": 3600})
    assert kept.status_code == 200, kept.json
    expires = kept.json["expiresAt"]
    left = (datetime.datetime.fromisoformat(expires)
            - datetime.datetime.now(datetime.timezone.utc)).total_seconds()
    assert 3500 < left <= 3600, expires
    assert remote_api.request("GET", base).json["expiresAt"] == expires
    assert "ttlSeconds>3600</" in rig_virsh(rig, "dumpxml", rig_vm["name"])  # its record there
    forever = remote_api.request("POST", f"{base}/keepalive", json={"ttlSeconds": 0})
    assert forever.status_code == 200 and forever.json["expiresAt"] is None, forever.json
    assert remote_api.request("GET", base).json["expiresAt"] is None
    body = remote_api.request("GET", f"{base}/logs?tail=2000").json
    assert body["type"] == "console" and body["updatedAt"], body
    text = "\n".join(body["lines"])
    assert "rds-boot: Linux version" in text and \
        "rds-boot: hostname " + rig_vm["name"] in text, text[-2000:]
    assert len(remote_api.request("GET", f"{base}/logs?tail=3").json["lines"]) == 3


def test_labels_stop_and_start_of_the_rig_vm(rig, remote_api, rig_vm):
    """Labels kept in its domain's record there and filtering the list; its stats from the
    rig's libvirt; stop leaves it STOPPED (exec refused), start boots it cold there again (one
    boot) and exec works."""
    vm_id, base = rig_vm["id"], f"/v1/vms/{rig_vm['id']}"
    labelled = remote_api.request("PATCH", base, json={"labels": {"rds.test": "remote-life"}})
    assert labelled.status_code == 200 and labelled.json["labels"] == \
        {"rds.test": "remote-life"}, labelled.json
    assert "remote-life" in rig_virsh(rig, "dumpxml", rig_vm["name"])  # its record there
    found = remote_api.request("GET", "/v1/vms?label=rds.test=remote-life").json
    assert [vm["id"] for vm in found] == [vm_id]
    assert remote_api.request("GET", "/v1/vms?label=rds.test=other").json == []
    stats = remote_api.request("GET", f"{base}/stats")  # read from the rig's libvirt
    assert stats.status_code == 200 and stats.json["state"] == "RUNNING", stats.json
    assert stats.json["cpu"]["timeNs"] > 0 and stats.json["memory"]["assignedMb"] == 256
    assert stats.json["network"]["rxBytes"] > 0, stats.json
    try:
        started = time.monotonic()
        stopped = remote_api.request("POST", f"{base}/stop")
        assert stopped.status_code == 204, stopped.json
        took = time.monotonic() - started
        assert remote_api.request("GET", base).json["state"] == "STOPPED"
        assert rig_virsh(rig, "domstate", rig_vm["name"]).strip() == "shut off"
        refused = exec_on(remote_api, vm_id, "true")
        assert refused.status_code == 409 and "STOPPED" in refused.json["message"], refused.json
        assert took < 25, f"the guest took {took:.1f} s to power off (forced?)"
    finally:
        again = remote_api.request("POST", f"{base}/start")
    assert again.status_code == 204, again.json
    got = remote_api.request("GET", base).json
    assert got["state"] == "RUNNING" and got["guestIp"] == rig_vm["guestIp"], got
    assert exec_on(remote_api, vm_id, "id -u").json["stdout"] == "1000\n"
    assert remote_api.request("PATCH", base, json={"labels": {}}).status_code == 200


def test_a_second_manager_serves_the_rig_vm_too(rig, rig_vm, tmp_path):
    """State is in libvirt: another manager process (gunicorn, as `make run`), started after
    the VM was made elsewhere, finds it on the rig and runs commands in it."""
    hosts = rig.hosts_setting()
    with (tmp_path / "server.log").open("w") as log, live_server(
            {"API_KEY": API_KEY, "HOSTS": hosts, "HOST_PROBE_TIMEOUT_S": str(PROBE_S),
             "WEB_WORKERS": "1"}, "-c", str(no_upkeep_config(tmp_path)),
            output=log) as (base, _process):
        def call(method: str, path: str, body: dict | None = None) -> tuple[int, t.Any]:
            request = urllib.request.Request(
                base + path, method=method, data=json.dumps(body).encode() if body else None,
                headers={"X-API-Key": API_KEY, "Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=120) as response:
                    return response.status, json.loads(response.read())
            except urllib.error.HTTPError as error:
                return error.code, json.loads(error.read())
        status, vm = call("GET", f"/v1/vms/{rig_vm['id']}")
        assert status == 200 and (vm["host"], vm["state"]) == ("h2", "RUNNING"), vm
        status, done = call("POST", f"/v1/vms/{rig_vm['id']}/exec", {"cmd": "id -u; hostname"})
        assert status == 200, done
        assert done["stdout"].split() == ["1000", rig_vm["name"]], done


def test_the_filter_holds_on_the_rig(rig, remote_api, rig_vm):
    """Without outboundInternet the guest reaches nothing: not this host's end of the veth
    (routed by the rig), not the rig's bridge; allowing 0.0.0.0/0 still not this (the
    manager's) host nor the rig host's own address; allowing this host's veth address exactly
    opens it alone, the bridge stays closed."""
    vm_id = rig_vm["id"]
    gateway = str(next(ipaddress.ip_network(rig.guest_cidr).hosts()))
    with listener(rig.host_address) as here, \
            listener(gateway, rig.in_namespace()) as bridge, \
            listener(rig.peer_address, rig.in_namespace()) as rig_own:
        assert not connects(remote_api, rig_vm, rig.host_address, here)
        assert not connects(remote_api, rig_vm, gateway, bridge)
        changed = remote_api.request("PUT", f"/v1/vms/{vm_id}/network", json={
            "allowIps": ["0.0.0.0/0"], "outboundInternet": True})
        assert changed.status_code == 200, changed.json
        assert not connects(remote_api, rig_vm, rig.host_address, here)
        assert not connects(remote_api, rig_vm, rig.peer_address, rig_own)
        assert not connects(remote_api, rig_vm, gateway, bridge)
        changed = remote_api.request("PUT", f"/v1/vms/{vm_id}/network", json={
            "allowIps": [f"{rig.host_address}/32"], "outboundInternet": True})
        assert changed.status_code == 200, changed.json
        try:
            assert connects(remote_api, rig_vm, rig.host_address, here)
            assert not connects(remote_api, rig_vm, gateway, bridge)
        finally:
            remote_api.request("PUT", f"/v1/vms/{vm_id}/network",
                               json={"allowIps": [], "outboundInternet": False})
        assert not connects(remote_api, rig_vm, rig.host_address, here)


@contextlib.contextmanager
def rig_addresses(rig: SecondHost, *addresses: str):
    """``addresses`` (/32) on one more interface of the rig host, as a real host's other NICs:
    a veth pair ``rds-h2-d``/``rds-h2-e`` with both ends in the rig's namespace (this kernel
    has no dummy interfaces: no modules), the addresses on ``rds-h2-d``; removed afterwards
    (both ends go with one)."""
    nic, peer = f"{rig.name}-d", f"{rig.name}-e"

    def ip(*args: str, check: bool = True) -> None:
        subprocess.run(rig.in_namespace("ip", *args), capture_output=True, text=True,
                       timeout=30, check=check)
    ip("link", "del", nic, check=False)  # a killed run's
    ip("link", "add", nic, "type", "veth", "peer", "name", peer)
    try:
        for address in addresses:
            ip("addr", "add", f"{address}/32", "dev", nic)
        for link in (peer, nic):
            ip("link", "set", link, "up")
        yield
    finally:
        ip("link", "del", nic)


def test_the_rig_hosts_listed_addresses_are_out_of_reach(rig, remote_api, rig_vm):
    """hostAddresses: with allowIps covering two more own addresses of the rig host, the one
    its HOSTS entry lists is unreachable while the other (the control: same host, interface
    and range, not listed) is reached; naming the listed one exactly opens it, so the filter's
    rule is what kept it shut."""
    vm_id = rig_vm["id"]
    [rig_host] = [host for host in remote_api.request("GET", "/v1/hosts").json
                  if host["name"] != "local"]
    assert rig_host["hostAddresses"] == [f"{LISTED}/32"], rig_host
    with rig_addresses(rig, LISTED, UNLISTED), \
            listener(LISTED, rig.in_namespace()) as listed, \
            listener(UNLISTED, rig.in_namespace()) as unlisted:
        try:
            changed = remote_api.request("PUT", f"/v1/vms/{vm_id}/network", json={
                "allowIps": ["10.210.9.0/24"], "outboundInternet": True})
            assert changed.status_code == 200, changed.json
            assert connects(remote_api, rig_vm, UNLISTED, unlisted)
            assert not connects(remote_api, rig_vm, LISTED, listed)
            changed = remote_api.request("PUT", f"/v1/vms/{vm_id}/network", json={
                "allowIps": [f"{LISTED}/32"], "outboundInternet": True})
            assert changed.status_code == 200, changed.json
            assert connects(remote_api, rig_vm, LISTED, listed)
        finally:
            remote_api.request("PUT", f"/v1/vms/{vm_id}/network",
                               json={"allowIps": [], "outboundInternet": False})
        assert not connects(remote_api, rig_vm, UNLISTED, unlisted)


def test_calls_on_a_vm_of_a_stopped_libvirtd_are_503_fast_and_local_vms_work(
        rig, remote_api, rig_vm):
    local = remote_api.create_vm({"cpu": 1, "memMb": 256})
    assert local["host"] == "local"
    rig.stop_libvirtd()
    try:
        for method, path, body in (("GET", "", None), ("POST", "/exec", {"cmd": "true"})):
            started = time.monotonic()
            answer = remote_api.request(method, f"/v1/vms/{rig_vm['id']}{path}", json=body)
            took = time.monotonic() - started
            assert answer.status_code == 503, answer.json
            assert answer.json["message"].startswith(
                f"VM {rig_vm['id']} is on host h2, which does not answer"), answer.json
            assert took < PROBE_S + 2, took
        listed = remote_api.request("GET", "/v1/vms")
        assert listed.status_code == 200
        ours = {rig_vm["id"], local["id"]}  # other modules' session VMs may be listed too
        assert [(vm["id"], vm["state"], vm["host"]) for vm in listed.json
                if vm["id"] in ours] == [
            (rig_vm["id"], "UNKNOWN", "h2"), (local["id"], "RUNNING", "local")]  # by age
        assert exec_on(remote_api, local["id"], "id -u").json["stdout"] == "1000\n"
        nothing = remote_api.request("POST", "/v1/vms", json=ON_RIG)
        assert nothing.status_code == 503 and "DOWN" in nothing.json["message"]
    finally:
        rig.start_libvirtd()
    deadline = time.monotonic() + 30
    while remote_api.request("GET", f"/v1/vms/{rig_vm['id']}").status_code != 200:
        assert time.monotonic() < deadline, "the VM was not found again"
        time.sleep(0.5)
    assert exec_on(remote_api, rig_vm["id"], "id -u").json["stdout"] == "1000\n"
    remote_api.delete_vm(local["id"])


def test_calls_on_a_vm_of_a_hung_libvirtd_are_503_within_the_probe_timeout(
        rig, remote_api, rig_vm):
    """Its socket accepts, nothing answers: every call on its VM still answers in time."""
    rig.freeze_libvirtd()
    try:
        for _ in range(2):  # no call piles up behind the hung one
            started = time.monotonic()
            answer = remote_api.request("GET", f"/v1/vms/{rig_vm['id']}")
            took = time.monotonic() - started
            assert answer.status_code == 503, answer.json
            assert "is on host h2, which does not answer" in answer.json["message"]
            assert took < PROBE_S + 2, took
        listed = remote_api.request("GET", "/v1/vms").json
        assert (rig_vm["id"], "UNKNOWN") in [(vm["id"], vm["state"]) for vm in listed]
    finally:
        rig.freeze_libvirtd(frozen=False)
    deadline = time.monotonic() + 30
    while remote_api.request("GET", f"/v1/vms/{rig_vm['id']}").status_code != 200:
        assert time.monotonic() < deadline, "the VM was not found again"
        time.sleep(0.5)


def sent_together(add: t.Callable[..., bool], together: threading.Barrier,
                  added: list[bool]) -> t.Callable[..., bool]:
    """A manager's ``add_dhcp_host`` whose first call waits for the other managers' first."""
    first = [True]

    def add_after_the_others(network: str, entry: t.Any) -> bool:
        if first:
            first.pop()
            together.wait(timeout=120)
        added.append(add(network, entry))
        return added[-1]
    return add_after_the_others


def test_two_managers_creating_on_the_rig_at_once_get_distinct_addresses(rig, remote_api,
                                                                        tmp_path):
    """Two managers (two app instances, each with its own libvirt connections; the second's
    allocation lock elsewhere, so no lock of this machine orders them, as with managers on two
    machines) each create two VMs on the rig at the same moment, their first reservations
    sent together once both have picked an address (the same one: libvirt refuses one of
    them, which takes the next): all four are made, with distinct addresses and names, each
    held by a reservation named after its VM in the rig's network, all reachable (exec,
    through the other manager); deleting them leaves nothing."""
    before = leak_inventory.remote_inventory(rig.uri)
    second = create_app(manager_config(rig))
    second.extensions["rds"].vms.parts.remote.lock_path = \
        lambda host_name: tmp_path / f"{host_name}.alloc.lock"
    managers = [remote_api.app, second]
    together, added = threading.Barrier(2), []
    for application in managers:
        hypervisor = application.extensions["rds"].vms.parts.remote.registry.hypervisor("h2")
        hypervisor.add_dhcp_host = sent_together(hypervisor.add_dhcp_host, together, added)
    start = threading.Barrier(4)
    answers: list[tuple[t.Any, t.Any]] = []

    def create_on(application: t.Any) -> None:
        api = Api(application)
        start.wait(timeout=60)
        answers.append((application, api.request("POST", "/v1/vms", json=ON_RIG)))
    threads = [threading.Thread(target=create_on, args=(application,))
               for application in managers for _ in range(2)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=600)
        made = [(application, answer.json) for application, answer in answers
                if answer.status_code == 201]
        assert [answer.status_code for _app, answer in answers] == [201] * 4, \
            [answer.json for _app, answer in answers]
        vms = [vm for _app, vm in made]
        assert added.count(False) >= 1 and added.count(True) == 4, added  # the race happened
        assert len({vm["guestIp"] for vm in vms}) == 4 and len({vm["name"] for vm in vms}) == 4
        assert all(ipaddress.ip_address(vm["guestIp"]) in ipaddress.ip_network(rig.guest_cidr)
                   for vm in vms)
        assert leak_inventory.new_since(before, leak_inventory.remote_inventory(rig.uri))[
            "address reservations"] == {f"rds-net-h2 {vm['name']} {vm['guestIp']}"
                                        for vm in vms}
        for application, vm in made:
            other = Api(second if application is remote_api.app else remote_api.app)
            done = exec_on(other, vm["id"], "hostname")  # reached at its address
            assert done.status_code == 200, done.json
            assert done.json["stdout"] == f"{vm['name']}\n", done.json
    finally:
        deleted = [Api(application).request("DELETE", f"/v1/vms/{answer.json['id']}")
                   for application, answer in answers if answer.status_code == 201]
        second.extensions["rds"].close()
        del remote_api.app.extensions["rds"].vms.parts.remote.registry.hypervisor(
            "h2").add_dhcp_host
    assert [answer.status_code for answer in deleted] == [204] * len(deleted)
    assert leak_inventory.remote_inventory(rig.uri) == before


def test_delete_leaves_nothing_on_the_rig(rig, remote_api):
    before = leak_inventory.remote_inventory(rig.uri)
    vm = remote_api.create_vm(ON_RIG)
    assert leak_inventory.new_since(before, leak_inventory.remote_inventory(rig.uri))
    assert remote_api.request("DELETE", f"/v1/vms/{vm['id']}").status_code == 204
    assert leak_inventory.remote_inventory(rig.uri) == before
    assert remote_api.request("GET", f"/v1/vms/{vm['id']}").status_code == 404
