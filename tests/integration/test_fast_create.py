"""Fast create on real VMs: memory-snapshot restore (own identity, clock, entropy, concurrency,
fallback) and the warm pool (sealed, invisible, claimed once with the caller's policy enforced
from inside the guest, refilled, drained)."""
from __future__ import annotations

import concurrent.futures
import datetime as dt
import re
import subprocess
import time

import pytest

from app import create_app
from app.errors import HypervisorError
from app.models import VmRole
from app.virt.metadata_xml import parse_metadata
from tests.integration.conftest import (API_KEY, BRIDGE_IP, SEED_BODY, Api, connects, exec_ok,
                                        virsh)

IDENTITY = ("hostname; cat /sys/class/net/eth0/address; ip -4 -br addr show eth0; date +%s; "
            "cat /proc/sys/kernel/random/boot_id; cat /proc/sys/kernel/random/uuid")


def _identity(api: Api, vm: dict) -> dict:
    lines = exec_ok(api, vm["id"], IDENTITY)["stdout"].split("\n")
    return {"hostname": lines[0], "mac": lines[1], "addr": lines[2], "clock": int(lines[3]),
            "boot_id": lines[4], "random": lines[5]}


def _host_key(name: str) -> str:
    return re.search(r"<rds:hostKey>([^<]+)<", virsh("dumpxml", name).stdout).group(1)


def test_concurrent_restores_get_their_own_identity(api):
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        vms = list(pool.map(lambda _: api.create_vm(SEED_BODY), range(2)))
    try:
        assert [vm["provisionMode"] for vm in vms] == ["snapshot", "snapshot"]
        seen = [_identity(api, vm) for vm in vms]
        for vm, identity in zip(vms, seen, strict=True):
            assert identity["hostname"] == vm["name"]
            assert f" {vm['guestIp']}/" in identity["addr"]
            # The guest's clock was set on restore (the seed's stopped when it was saved).
            assert dt.datetime.fromtimestamp(identity["clock"]).year >= 2025
            assert abs(identity["clock"] - time.time()) < 30
        for key in ("hostname", "mac", "addr", "boot_id", "random"):
            assert seen[0][key] != seen[1][key], key
        keys = {_host_key(vm["name"]) for vm in vms}
        assert len(keys) == 2  # and SSH (which pins each key) reached both guests above
        # The identity helper is gone (nothing listens on its port any more) and sshd's
        # config is a plain file again (it was a fifo in the seed).
        leftovers = exec_ok(api, vms[0]["id"], "pgrep -f 'lib/rds/reidentif[y]' || echo none; "
                                               "test -p /etc/ssh/sshd_config || echo plain")
        assert leftovers["stdout"].split() == ["none", "plain"]
    finally:
        for vm in vms:
            api.delete_vm(vm["id"])


def test_boot_mode_still_cold_boots(api):
    vm = api.create_vm({**SEED_BODY, "provisionMode": "boot"})
    assert vm["provisionMode"] == "boot"
    assert exec_ok(api, vm["id"], "hostname")["stdout"].strip() == vm["name"]
    api.delete_vm(vm["id"])


def test_failed_restore_falls_back_to_a_cold_boot(api, services, monkeypatch):
    def broken_restore(*_args, **_kwargs):
        raise HypervisorError("injected restore failure")

    before = set(virsh("list", "--all", "--name").stdout.split())
    monkeypatch.setattr(services.hypervisor, "restore_domain", broken_restore)
    vm = api.create_vm({**SEED_BODY, "provisionMode": "snapshot"})
    assert vm["provisionMode"] == "boot"
    after = set(virsh("list", "--all", "--name").stdout.split())
    assert after - before == {vm["name"]}  # nothing left of the failed attempt
    api.delete_vm(vm["id"])


# Warm pool ################################################################################

@pytest.fixture(scope="module")
def pool_api():
    """A second service instance with the warm pool on (target 1), as a worker would run it."""
    app = create_app({"TESTING": True, "API_KEY": API_KEY, "ENABLE_WARM_POOL": "true",
                      "WARM_POOL_TARGET": 1, "WARM_POOL_MAX_VMS": 2,
                      "WARM_POOL_SHAPES": "1x256"})
    client = Api(app)
    yield client
    services = app.extensions["rds"]
    services.maintainer.drain()
    client.cleanup()
    services.close()


def _pool(pool_api: Api) -> list:
    return pool_api.app.extensions["rds"].vms.pool_records()


def test_pool_vm_is_sealed_and_invisible(pool_api):
    maintainer = pool_api.app.extensions["rds"].maintainer
    assert maintainer.refill_pool() == 1
    [(record, state)] = _pool(pool_api)
    assert state == "running" and record.role is VmRole.POOL
    assert record.id not in [vm["id"] for vm in pool_api.request("GET", "/v1/vms").json]
    assert pool_api.request("GET", f"/v1/vms/{record.id}").status_code == 404
    assert "pool" in virsh("list", "--title").stdout  # operators see what it is
    for suffix in ("allow", "dns"):  # sealed: its filter lets nothing out until claimed
        listing = subprocess.run(["ipset", "list", f"{record.name}-{suffix}"],
                                 capture_output=True, text=True, timeout=30, check=True).stdout
        assert "Number of entries: 0" in listing
    assert maintainer.refill_pool() == 0  # at target: nothing more


def test_pool_hit_gets_the_callers_policy(pool_api, bridge_listener):
    [(record, _state)] = _pool(pool_api)
    started = time.monotonic()
    vm = pool_api.create_vm({**SEED_BODY, "allowIps": [f"{BRIDGE_IP}/32"],
                             "outboundInternet": True})
    print(f"pool hit answered in {time.monotonic() - started:.3f}s")
    assert vm["provisionMode"] == "pool" and vm["id"] == record.id
    assert vm["allowIps"] == [f"{BRIDGE_IP}/32"] and vm["outboundInternet"] is True
    assert vm["id"] in [item["id"] for item in pool_api.request("GET", "/v1/vms").json]
    assert connects(pool_api, vm, BRIDGE_IP, bridge_listener)  # the policy, from inside
    assert _pool(pool_api) == []
    # Refilled; the next caller's policy is deny-all and the guest cannot reach the bridge.
    assert pool_api.app.extensions["rds"].maintainer.refill_pool() == 1
    closed = pool_api.create_vm({"cpu": 1, "memMb": 256, "provisionMode": "pool"})
    assert closed["provisionMode"] == "pool" and closed["outboundInternet"] is False
    assert not connects(pool_api, closed, BRIDGE_IP, bridge_listener)
    pool_api.delete_vm(vm["id"])
    pool_api.delete_vm(closed["id"])


def test_one_pool_vm_is_handed_out_once(pool_api):
    maintainer = pool_api.app.extensions["rds"].maintainer
    maintainer.refill_pool()
    assert len(_pool(pool_api)) == 1
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        vms = list(pool.map(lambda _: pool_api.create_vm({**SEED_BODY, "provisionMode": "pool"}),
                            range(2)))
    assert sorted(vm["provisionMode"] for vm in vms) == ["pool", "snapshot"]
    assert vms[0]["id"] != vms[1]["id"]
    for vm in vms:
        pool_api.delete_vm(vm["id"])


def test_a_new_owner_adopts_the_ready_pool(pool_api):
    """After the owning worker died, the next owner keeps the ready pool VMs (no new boots)."""
    pool_api.app.extensions["rds"].maintainer.refill_pool()
    [(record, _state)] = _pool(pool_api)
    successor = create_app({"TESTING": True, "API_KEY": API_KEY, "ENABLE_WARM_POOL": "true",
                            "WARM_POOL_TARGET": 1, "WARM_POOL_MAX_VMS": 2,
                            "WARM_POOL_SHAPES": "1x256"})
    try:
        assert successor.extensions["rds"].maintainer.refill_pool() == 0
        assert [r.id for r, _s in _pool(pool_api)] == [record.id]
    finally:
        successor.extensions["rds"].close()


def test_pool_drains_and_a_miss_falls_back(pool_api):
    maintainer = pool_api.app.extensions["rds"].maintainer
    maintainer.refill_pool()
    assert maintainer.drain() == 1
    assert _pool(pool_api) == []
    roles = [getattr(parse_metadata(info.xml), "role", None)
             for info in pool_api.app.extensions["rds"].hypervisor.list_domains()]
    assert VmRole.POOL not in roles
    vm = pool_api.create_vm({**SEED_BODY, "provisionMode": "pool"})
    assert vm["provisionMode"] == "snapshot"
    pool_api.delete_vm(vm["id"])
