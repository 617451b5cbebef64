"""The SDK against the real app (its schemas, error handler and services) over the unit tests'
fake adapters, through ``httpx.WSGITransport``: no server, no VM, no network.

The hand-written answers of the other modules say what the SDK makes of the contract; these
say that the app takes what the SDK sends and answers what the SDK reads, so neither side can
rename a field alone. The real-VM version is tests/integration/test_sdk.py.
"""
from __future__ import annotations

import typing as t
from pathlib import Path

import httpx
import pytest

from app import create_app
from rds_client import BadRequest, Client, NotFound, Sandbox, Unauthorized
from tests.unit.fakes import API_KEY, World

URL = "http://app.test"


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> t.Iterator[World]:
    made = World(tmp_path / "root", monkeypatch)
    yield made
    made.services.close()


class SizedBodies(httpx.BaseTransport):
    """Sends each body with a Content-Length: WSGITransport cannot tell the app that a chunked
    body (an upload) ends, as gunicorn does (``wsgi.input_terminated``), so werkzeug would read
    it as empty."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        body = request.read()
        headers = [(k, v) for k, v in request.headers.items() if k != "transfer-encoding"]
        return self.inner.handle_request(httpx.Request(
            request.method, request.url, headers=headers, content=body,
            extensions=request.extensions))


@pytest.fixture
def transport(world: World) -> httpx.BaseTransport:
    app = create_app({"TESTING": True}, services=world.services)
    return SizedBodies(httpx.WSGITransport(app=app))


@pytest.fixture
def client(transport: httpx.BaseTransport) -> t.Iterator[Client]:
    with Client(URL, API_KEY, transport=transport, retries=0) as sdk_client:
        yield sdk_client


def test_the_app_takes_every_body_the_sdk_sends(client: Client, world: World,
                                                tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.txt").write_text("hello")
    with Sandbox.create(client=client, cpu=1, mem_mb=256, allow_ips=["172.16.0.1/32"],
                        outbound_internet=True, image_id="default",
                        provision_mode="boot") as sb:
        vm = sb.vm
        assert (vm.state, vm.cpu, vm.mem_mb, vm.allow_ips) == ("RUNNING", 1, 256,
                                                               ("172.16.0.1/32",))
        assert vm.outbound_internet and vm.guest_ip and vm.created_at and vm.name
        assert vm.provision_mode == "boot" and vm.image_id == "default"
        assert [found.id for found in client.list_vms()] == [vm.id]
        assert client.get_vm(vm.id) == vm

        result = sb.exec("echo hi", cwd="/workspace", env={"A": "1"}, timeout_ms=5000)
        assert result.exit_code == 0 and result.duration_ms is not None
        assert sb.run_ts("result.set(1)", args=["x"], env={"K": "V"}, deno_flags=["--seed=1"],
                         timeout_ms=5000).exit_code == 0
        assert sb.run_js(path="/workspace/main.js", node_flags=[]).exit_code == 0
        events = list(sb.stream("echo hi", timeout_ms=5000))
        assert events[-1].exit_code == 0

        sb.upload(tmp_path / "src", "/workspace/src")
        with pytest.raises(NotFound, match="not found in the VM"):
            sb.download("/workspace/missing", tmp_path / "out")
        vm_id = vm.id
    with pytest.raises(NotFound):
        client.get_vm(vm_id)
    assert client.delete_vm(vm_id, missing_ok=True) is False


def test_the_apps_errors_become_the_sdks(client: Client,
                                         transport: httpx.BaseTransport) -> None:
    with pytest.raises(BadRequest) as bad:
        client.create_vm(cpu=0)
    assert bad.value.body["errors"] and bad.value.request_id
    with pytest.raises(NotFound, match="not found"):
        client.exec("no-such-vm", "true")
    with Client(URL, "wrong", transport=transport) as stranger, \
            pytest.raises(Unauthorized, match="Unauthorized"):
        stranger.list_vms()
