"""Storage full (RELIABILITY.md, "Fault injection"): a live server whose STORAGE_ROOT is a small
loop-mounted ext4 filesystem that the test fills up.

The images, memory snapshots, manager key and build cache stay where the host keeps them
(symlinks into the host's storage root: they are read, not written); the VMs' directories,
disk snapshots and the state database are on the small filesystem. ``DISK_BUDGET_MB`` is set
far above its size, so the disk budget lets every request through and the writes themselves
meet the full disk (as when something else filled the filesystem after the budget's check).
Create and snapshot must then fail with a JSON message that says so, and leave nothing
half-made.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import typing as t
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import SEED_BODY, live_server, no_upkeep_config, rds_state
from tests.integration.test_faults_host import timed

KEY = "faults-storage-test-key"
HEADERS = {"X-API-Key": KEY}
SIZE_MB = 128
SHARED = ("images", "seeds", "keys", "cache")  # read from the host's own storage root


def run(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def small_root(services) -> t.Iterator[Path]:
    """A fresh ext4 filesystem of SIZE_MB mounted as a storage root; unmounted afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="rds-faults-storage-"))
    folder.chmod(0o755)  # QEMU (libvirt-qemu) must reach the VMs' files below it
    image, root = folder / "fs.img", folder / "root"
    root.mkdir()
    run("truncate", "-s", f"{SIZE_MB}M", str(image))
    run("mkfs.ext4", "-q", "-m", "0", str(image))
    run("mount", "-o", "loop", str(image), str(root))
    try:
        host_root = Path(services.settings.storage_root)
        for name in SHARED:
            (root / name).symlink_to(host_root / name)
        yield root
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            run("umount", str(root))
        loops = subprocess.run(["losetup", "-j", str(image)], capture_output=True, text=True,
                               timeout=30).stdout
        for line in loops.splitlines():  # mount -o loop detaches on umount; just in case
            subprocess.run(["losetup", "-d", line.split(":")[0]], timeout=30, check=False)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def server(small_root: Path) -> t.Iterator[str]:
    env = {"API_KEY": KEY, "STORAGE_ROOT": str(small_root), "WEB_WORKERS": "1",
           "DISK_BUDGET_MB": "1000000", "SNAPSHOT_AUTO_BUILD": "false",
           "MAX_UPLOAD_BYTES": str(64 * 1024 * 1024)}
    log_path = small_root.parent / "server.log"
    with log_path.open("w") as log, live_server(env, "-c", str(no_upkeep_config(
            small_root.parent)), output=log) as (base, _process):
        yield base
    print(log_path.read_text()[-3000:])


def free_mb(root: Path) -> float:
    stats = os.statvfs(root)
    return stats.f_bavail * stats.f_frsize / 2**20


@contextlib.contextmanager
def filled(root: Path, leave_mb: int = 0) -> t.Iterator[None]:
    """The filesystem full while the body runs: to the last block, or but ``leave_mb``."""
    filler, tail_path = root / "filler", root / "filler-tail"
    run("fallocate", "-l", f"{int(free_mb(root) - 2 - leave_mb) * 2**20}", str(filler))
    # The blocks fallocate left, written until the disk says no (or ``leave_mb`` is left).
    with open(tail_path, "wb") as tail, contextlib.suppress(OSError):
        while free_mb(root) > leave_mb + 0.1:
            tail.write(b"\0" * 4096)
            tail.flush()
    assert free_mb(root) < leave_mb + 0.1
    try:
        yield
    finally:
        filler.unlink()
        tail_path.unlink()


def made(root: Path) -> set[str]:
    """VM and snapshot things of the small root's service on the host."""
    domains, filters, bindings, taps = rds_state()
    found = {f"domain {n}" for n in domains} | {f"nwfilter {n}" for n in filters}
    found |= {f"binding {n}" for n in bindings} | {f"tap {n}" for n in taps}
    for sub in ("vms", "snapshots"):
        if (root / sub).is_dir():
            found |= {f"{sub} {p.name}" for p in (root / sub).iterdir()}
    return found


def full_message(response: httpx.Response) -> str:
    assert response.status_code == 507, response.text
    message = response.json()["message"]
    assert "storage is full" in message or "disk" in message, message
    return message


def test_a_full_storage_filesystem_fails_cleanly(server, small_root):
    client = httpx.Client(base_url=server, headers=HEADERS, timeout=180)
    created = client.post("/v1/vms", json=SEED_BODY)
    assert created.status_code == 201, created.text
    vm = created.json()
    try:
        before = made(small_root)
        with filled(small_root):
            response, took = timed(lambda: client.post("/v1/vms", json=SEED_BODY))
            print(f"create on a full disk: {response.status_code} in {took:.1f}s: "
                  f"{full_message(response)}")
            assert made(small_root) == before
            # The service keeps answering (a worker writing a new metrics series on the full
            # disk used to die of SIGBUS).
            for _ in range(3):
                assert client.get(f"/v1/vms/{vm['id']}").json()["state"] == "RUNNING"
                assert client.get("/metrics").status_code == 200
        # The snapshot copies the VM's overlay: make it 24 MiB, and leave the guest 4 MiB of
        # room for what its filesystem freeze flushes (a guest write that finds the host's disk
        # full pauses the VM: RELIABILITY.md, known limits), not enough for the copy.
        grow = client.post(f"/v1/vms/{vm['id']}/exec", json={
            "cmd": "head -c 24M /dev/urandom > /workspace/grow && sync", "timeoutMs": 60000})
        assert grow.status_code == 200 and grow.json()["exitCode"] == 0, grow.text
        with filled(small_root, leave_mb=4):
            response, took = timed(lambda: client.post(f"/v1/vms/{vm['id']}/snapshots",
                                                       json={}))
            print(f"snapshot on a full disk: {response.status_code} in {took:.1f}s: "
                  f"{full_message(response)}")
            assert made(small_root) == before
            assert client.get("/v1/snapshots").json() == []
            assert client.get(f"/v1/vms/{vm['id']}").json()["state"] == "RUNNING"
        # Room again: the VM goes on, and is deleted with nothing left.
        assert client.post(f"/v1/vms/{vm['id']}/exec", json={"cmd": "true"}).status_code == 200
        response = client.delete(f"/v1/vms/{vm['id']}", params={"wait": "true"})
        assert response.status_code == 204, response.text
        vm = None
        assert made(small_root) - before == set()
    finally:
        if vm is not None:
            client.delete(f"/v1/vms/{vm['id']}", params={"wait": "true"})
        client.close()
