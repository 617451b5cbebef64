"""Egress policy seen from inside real guests, against a listener this test starts on the
host bridge (172.16.0.1). Never probes any address that is not on this machine."""
from __future__ import annotations

import http.server
import threading

import pytest

BRIDGE_IP = "172.16.0.1"
NO_EGRESS = {"cpu": 1, "memMb": 256}


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server API
        body = b"hello from the bridge"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args):
        pass


@pytest.fixture(scope="module")
def bridge_listener():
    server = http.server.ThreadingHTTPServer((BRIDGE_IP, 0), _Hello)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def closed_vm(api):
    created = api.create_vm(NO_EGRESS)
    yield created
    api.delete_vm(created["id"])


def _connects(api, vm, host: str, port: int) -> bool:
    response = api.request("POST", f"/v1/vms/{vm['id']}/exec", json={
        "cmd": f"timeout 4 bash -c 'exec 3<>/dev/tcp/{host}/{port}' && echo OPEN || echo SHUT"})
    assert response.status_code == 200, response.json
    return response.json["stdout"].strip() == "OPEN"


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
