"""Egress policy seen from inside real guests, against a listener this test starts on the
host bridge (172.16.0.1). Never probes any address that is not on this machine."""
from __future__ import annotations

import pytest

from tests.integration.conftest import BRIDGE_IP, connects as _connects

NO_EGRESS = {"cpu": 1, "memMb": 256}


@pytest.fixture(scope="module")
def closed_vm(api):
    created = api.create_vm(NO_EGRESS)
    yield created
    api.delete_vm(created["id"])


def _fetch(api, vm, port: int) -> dict:
    response = api.request("POST", f"/v1/vms/{vm['id']}/run-ts", json={
        "code": f"const r = await fetch('http://{BRIDGE_IP}:{port}/'); "
                f"result.set(await r.text())", "timeoutMs": 20000})
    assert response.status_code == 200, response.json
    return response.json


def test_allowed_bridge_is_reachable(api, shared_vm, bridge_listener):
    assert _connects(api, shared_vm, BRIDGE_IP, bridge_listener)
    assert _fetch(api, shared_vm, bridge_listener)["result"] == "hello from the bridge"


def test_default_policy_blocks_egress_and_deno_net(api, closed_vm, bridge_listener):
    assert closed_vm["outboundInternet"] is False and closed_vm["allowIps"] == []
    assert not _connects(api, closed_vm, BRIDGE_IP, bridge_listener)
    body = _fetch(api, closed_vm, bridge_listener)
    assert body["exitCode"] != 0 and body["error"]["name"] == "NotCapable"


def test_guests_cannot_reach_each_other(api, shared_vm, closed_vm):
    assert not _connects(api, shared_vm, closed_vm["guestIp"], 22)
    assert not _connects(api, closed_vm, shared_vm["guestIp"], 22)


def _put_policy(api, vm, allow_ips, outbound) -> dict:
    response = api.request("PUT", f"/v1/vms/{vm['id']}/network",
                           json={"allowIps": allow_ips, "outboundInternet": outbound})
    assert response.status_code == 200, response.json
    return response.json


def _eventually(check, expected: bool, seconds: float = 15.0) -> bool:
    """Filter changes apply to a running VM within a few seconds."""
    import time
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if value == expected or time.monotonic() > deadline:
            return value
        time.sleep(1)


@pytest.mark.parametrize("allow_ips, outbound, bridge_open", [
    (["172.16.0.1/32"], False, False),   # allow-listed, but outbound is off
    (["172.16.0.77/32"], True, False),   # outbound on, but the bridge is not listed
    (["172.16.0.1/32"], True, True),     # the seed's policy
    (["0.0.0.0/0"], True, True),         # everything (still no other guest, see below)
    ([], False, False),                  # back to the default
])
def test_live_policy_changes(api, closed_vm, shared_vm, bridge_listener, allow_ips, outbound,
                             bridge_open):
    vm = _put_policy(api, closed_vm, allow_ips, outbound)
    assert vm["allowIps"] == allow_ips and vm["outboundInternet"] is outbound
    assert api.request("GET", f"/v1/vms/{closed_vm['id']}").json["allowIps"] == allow_ips
    assert _eventually(lambda: _connects(api, closed_vm, BRIDGE_IP, bridge_listener),
                       bridge_open) is bridge_open
    fetched = _fetch(api, closed_vm, bridge_listener)
    if bridge_open:
        assert fetched["result"] == "hello from the bridge"
    else:
        assert fetched["exitCode"] != 0
    assert not _connects(api, closed_vm, shared_vm["guestIp"], 22)


def test_spoofed_ip_or_mac_gets_nothing_through(api, services, closed_vm, bridge_listener):
    """Root in the guest (via the guest agent) changes eth0's address or MAC: blocked."""
    _put_policy(api, closed_vm, ["172.16.0.1/32"], True)
    assert _eventually(lambda: _connects(api, closed_vm, BRIDGE_IP, bridge_listener), True)
    ip = closed_vm["guestIp"]
    probe = f"timeout 4 bash -c 'exec 3<>/dev/tcp/{BRIDGE_IP}/{bridge_listener}'"
    scripts = {
        "ip": (f"ip addr add 172.16.0.199/24 dev eth0 && ip addr del {ip}/24 dev eth0; "
               f"{probe}; status=$?; ip addr add {ip}/24 dev eth0; "
               f"ip addr del 172.16.0.199/24 dev eth0; "
               f"ip route replace default via {BRIDGE_IP}; exit $status"),
        "mac": ("old=$(cat /sys/class/net/eth0/address); ip link set eth0 down; "
                "ip link set eth0 address 52:54:00:de:ad:01; ip link set eth0 up; "
                f"{probe}; status=$?; ip link set eth0 down; ip link set eth0 address $old; "
                f"ip link set eth0 up; ip route replace default via {BRIDGE_IP}; exit $status"),
    }
    for kind, script in scripts.items():
        code = services.hypervisor.guest_agent_exec(closed_vm["id"], "/bin/bash",
                                                    ["-c", script], 30)
        assert code != 0, f"spoofed {kind} reached the bridge"
        # The real identity works again afterwards (and the manager still reaches the VM).
        assert _eventually(lambda: _connects(api, closed_vm, BRIDGE_IP, bridge_listener), True)
    _put_policy(api, closed_vm, [], False)


@pytest.mark.parametrize("body, needle", [
    ({"allowIps": ["10.0.0.0/33"], "outboundInternet": True}, "10.0.0.0/33"),
    ({"allowIps": [f"10.0.{i}.0/24" for i in range(65)], "outboundInternet": True},
     "10.0.64.0/24"),
    ({"allowIps": [], "outboundInternet": "maybe"}, "outboundInternet"),
    ({"allowIps": [], "extra": 1}, "extra"),
])
def test_invalid_policy_is_400(api, closed_vm, body, needle):
    response = api.request("PUT", f"/v1/vms/{closed_vm['id']}/network", json=body)
    assert response.status_code == 400 and needle in response.json["message"]


def test_policy_of_unknown_vm_is_404(api):
    response = api.request("PUT", "/v1/vms/00000000-0000-4000-8000-000000000000/network",
                           json={"allowIps": [], "outboundInternet": False})
    assert response.status_code == 404


def test_dns_port_on_the_bridge_follows_outbound_internet(api, closed_vm, bridge_listener):
    """Only a TCP connect to the bridge's resolver: no query is sent anywhere."""
    _put_policy(api, closed_vm, ["172.16.0.77/32"], True)
    assert _eventually(lambda: _connects(api, closed_vm, BRIDGE_IP, 53), True)
    assert not _connects(api, closed_vm, BRIDGE_IP, bridge_listener)
    _put_policy(api, closed_vm, ["172.16.0.77/32"], False)
    assert _eventually(lambda: _connects(api, closed_vm, BRIDGE_IP, 53), False) is False
