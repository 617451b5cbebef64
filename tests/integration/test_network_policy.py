"""Egress policy seen from inside real guests, against listeners this test starts on the host
bridge (172.16.0.1) and on addresses of a dummy interface it adds to this host. Never probes
any address that is not on this machine."""
from __future__ import annotations

import functools
import http.server
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.integration.conftest import BRIDGE_IP, _Hello, connects as _connects

# Addresses the test gives this host (a veth pair of its own): "another host address" and the
# cloud metadata address, which must stay closed whatever a policy says.
HOST_ADDRESS = "198.51.100.7"  # TEST-NET-2, never routed anywhere
METADATA_ADDRESS = "169.254.169.254"
DUMMY = "rds-test-host"

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
    (["0.0.0.0/0"], True, False),        # everything but the host itself (and no guest)
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


@pytest.fixture(scope="module")
def host_listeners(services):
    """HTTP listeners on two more addresses of this host (on a veth pair the test adds and
    removes); yields {address: port}. The host-wide sets learn the new address as the
    maintaining process would."""
    subprocess.run(["ip", "link", "del", DUMMY], capture_output=True, timeout=30, check=False)
    for args in (["link", "add", DUMMY, "type", "veth", "peer", "name", DUMMY + "-p"],
                 ["addr", "add", f"{HOST_ADDRESS}/32", "dev", DUMMY],
                 ["addr", "add", f"{METADATA_ADDRESS}/32", "dev", DUMMY],
                 ["link", "set", DUMMY, "up"]):
        subprocess.run(["ip", *args], check=True, timeout=30)
    services.vms.ipsets.refresh_host_sets()
    servers = {}
    for address in (HOST_ADDRESS, METADATA_ADDRESS):
        server = http.server.ThreadingHTTPServer((address, 0), _Hello)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers[address] = server
    yield {address: server.server_address[1] for address, server in servers.items()}
    for server in servers.values():
        server.shutdown()
        server.server_close()
    subprocess.run(["ip", "link", "del", DUMMY], capture_output=True, timeout=30, check=False)
    services.vms.ipsets.refresh_host_sets()


@pytest.mark.parametrize("allow_ips, opened", [
    (["0.0.0.0/0"], set()),  # all of IPv4 contains the host: it never opens through it
    (["198.51.100.0/24"], set()),  # nor through any range wider than one address
    (["169.254.0.0/16"], set()),  # link-local: never
    ([f"{HOST_ADDRESS}/32", f"{METADATA_ADDRESS}/32"], {HOST_ADDRESS}),  # named exactly
    ([f"{BRIDGE_IP}/32"], {BRIDGE_IP}),
])
def test_wide_ranges_never_open_the_host_or_link_local(api, closed_vm, bridge_listener,
                                                      host_listeners, allow_ips, opened):
    vm = _put_policy(api, closed_vm, allow_ips, True)
    assert vm["allowIps"] == allow_ips
    targets = {BRIDGE_IP: bridge_listener, **host_listeners}
    for address, port in targets.items():
        expected = address in opened
        assert _eventually(functools.partial(_connects, api, closed_vm, address, port),
                           expected) is expected, (allow_ips, address)
    _put_policy(api, closed_vm, [], False)


def test_dns_stays_open_with_full_internet(api, closed_vm):
    _put_policy(api, closed_vm, ["0.0.0.0/0"], True)
    assert _eventually(lambda: _connects(api, closed_vm, BRIDGE_IP, 53), True)
    _put_policy(api, closed_vm, [], False)


def test_healthz_is_unhealthy_while_bridge_netfilter_is_off(api):
    """Without bridge netfilter the guests' IP rules are skipped: /healthz must say so."""
    sysctl = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")
    assert sysctl.read_text().strip() == "1", "host setup must turn bridge netfilter on"
    assert api.request("GET", "/healthz").status_code == 200
    try:
        sysctl.write_text("0\n")
        response = api.request("GET", "/healthz")
    finally:
        sysctl.write_text("1\n")
    assert response.status_code == 503, response.json
    assert response.json["status"] == "unhealthy"
    assert "not enforced" in response.json["networkPolicy"]
    assert api.request("GET", "/healthz").status_code == 200


def _slow_first_call(monkeypatch, target, name: str, entered: threading.Event) -> None:
    real = getattr(target, name)
    calls = []

    def slow(*args, **kwargs):
        calls.append(args)
        if len(calls) == 1:
            entered.set()
            time.sleep(2)
        return real(*args, **kwargs)

    monkeypatch.setattr(target, name, slow)


def test_a_network_change_racing_a_delete_recreates_nothing(api, app, services, monkeypatch):
    """PUT /network has read the VM and is filling its sets when a DELETE comes: the delete
    waits for it (one lock per VM, host-wide), and nothing of the VM is left afterwards."""
    vm = api.create_vm(NO_EGRESS)
    name = vm["name"]
    entered = threading.Event()
    _slow_first_call(monkeypatch, services.vms.ipsets, "apply", entered)
    answers = []

    def put():
        answers.append(app.test_client().put(
            f"/v1/vms/{vm['id']}/network", headers={"X-API-Key": api_key(api)},
            json={"allowIps": ["10.0.0.0/8"], "outboundInternet": True}).status_code)

    worker = threading.Thread(target=put)
    worker.start()
    assert entered.wait(30)
    assert api.request("DELETE", f"/v1/vms/{vm['id']}?wait=true").status_code == 204
    worker.join(30)
    assert answers and answers[0] in (200, 404)
    assert name not in services.vms.ipsets.vm_names(), "the PUT re-created the VM's sets"
    assert api.request("PUT", f"/v1/vms/{vm['id']}/network",
                       json={"allowIps": [], "outboundInternet": False}).status_code == 404
    assert name not in services.vms.ipsets.vm_names()


def test_concurrent_network_changes_leave_the_sets_as_the_api_reports(api, app, services,
                                                                     closed_vm, monkeypatch):
    """Two PUTs race; the one that read first is slow to record its policy. Whatever order
    they end in, the kernel's sets hold the policy GET reports."""
    entered = threading.Event()
    _slow_first_call(monkeypatch, services.hypervisor, "set_metadata", entered)
    first = threading.Thread(target=lambda: app.test_client().put(
        f"/v1/vms/{closed_vm['id']}/network", headers={"X-API-Key": api_key(api)},
        json={"allowIps": ["10.1.0.0/16"], "outboundInternet": True}))
    first.start()
    assert entered.wait(30)
    _put_policy(api, closed_vm, ["10.2.0.0/16"], True)
    first.join(30)
    reported = api.request("GET", f"/v1/vms/{closed_vm['id']}").json["allowIps"]
    enforced = services.vms.ipsets.members(f"{closed_vm['name']}-allow")
    assert enforced == reported, (enforced, reported)
    _put_policy(api, closed_vm, [], False)


def api_key(api) -> str:
    from tests.integration.conftest import API_KEY
    return API_KEY
