"""What the SDK sends for each call, and what it makes of the answers."""
from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path

import httpx
import pytest

from rds_client import (Client, CommandFailed, NotFound, RunResult, Sandbox, Timeout,
                        TransportError)
from rds_client.client import exec_timeout_s
from tests.client.fakeapi import API_KEY, VM_ID, FakeApi, error, result_json, vm_json

VM_PATH = f"/v1/vms/{VM_ID}"


def tar_gz(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_every_request_carries_the_key(api: FakeApi, client: Client) -> None:
    api.on("GET", VM_PATH, httpx.Response(200, json=vm_json()))
    client.get_vm(VM_ID)
    assert api.requests[0].headers["X-API-Key"] == API_KEY
    assert api.requests[0].headers["User-Agent"].startswith("rds-client/")


def test_url_and_key_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RDS_URL", "http://from-env:3000/")
    monkeypatch.setenv("RDS_API_KEY", "env-key")
    with Client() as client:
        assert client.url == "http://from-env:3000"
    with Client("http://explicit") as client:
        assert client.url == "http://explicit"
    with pytest.raises(ValueError, match="must start with http"):
        Client("127.0.0.1:3000")
    monkeypatch.delenv("RDS_URL")
    with pytest.raises(ValueError, match="RDS_URL"):
        Client()
    monkeypatch.delenv("RDS_API_KEY")
    with pytest.raises(ValueError, match="RDS_API_KEY"):
        Client("http://x")


def test_create_sends_only_what_was_given(api: FakeApi, client: Client) -> None:
    api.on("POST", "/v1/vms", httpx.Response(201, json=vm_json()))
    client.create_vm()
    assert api.body() == {"cpu": 1, "memMb": 256, "allowIps": [], "outboundInternet": False}
    client.create_vm(cpu=2, mem_mb=512, allow_ips=["1.2.3.4/32"], outbound_internet=True,
                     labels={"ci.job": "42"}, ttl_seconds=600, idle_stop_seconds=0,
                     image_id="default", snapshot_id="snap", disk_size_mb=2048,
                     provision_mode="boot")
    assert api.body() == {"cpu": 2, "memMb": 512, "allowIps": ["1.2.3.4/32"],
                          "outboundInternet": True, "labels": {"ci.job": "42"},
                          "ttlSeconds": 600, "idleStopSeconds": 0, "imageId": "default",
                          "snapshotId": "snap", "diskSizeMb": 2048, "provisionMode": "boot"}


def test_create_waits_long_and_exec_waits_for_its_timeout(api: FakeApi) -> None:
    api.on("POST", "/v1/vms", httpx.Response(201, json=vm_json()))
    api.on("POST", f"{VM_PATH}/exec", httpx.Response(200, json=result_json()))
    with api.client(create_timeout=123) as client:
        client.create_vm()
        client.exec(VM_ID, "true", timeout_ms=90_000)
        client.exec(VM_ID, "true")
    timeouts = [request.extensions["timeout"] for request in api.requests]
    assert timeouts[0]["read"] == 123
    assert timeouts[1]["read"] == 90 + 30
    assert timeouts[2]["read"] == exec_timeout_s(None) == 120 + 30  # the server's maximum
    assert all(timeout["connect"] == 10 for timeout in timeouts)


def test_exec_body_and_result(api: FakeApi, client: Client) -> None:
    api.on("POST", f"{VM_PATH}/exec", httpx.Response(200, json=result_json(
        2, "out", "err", stdoutTruncated=True)))
    result = client.exec(VM_ID, "make", cwd="src", env=["A=1", "B=x=y"], timeout_ms=5000)
    assert api.body() == {"cmd": "make", "cwd": "src", "env": {"A": "1", "B": "x=y"},
                          "timeoutMs": 5000}
    assert (result.exit_code, result.stdout, result.stderr) == (2, "out", "err")
    assert result.stdout_truncated and not result.stderr_truncated and not result.ok
    assert result.duration_ms == 12


def test_a_non_zero_exit_raises_only_when_checked(api: FakeApi, client: Client) -> None:
    api.on("POST", f"{VM_PATH}/exec", httpx.Response(200, json=result_json(
        1, stderr="first\nmake: *** [all] Error 1\n")))
    assert client.exec(VM_ID, "make").exit_code == 1
    with pytest.raises(CommandFailed, match=r"exited with 1: make: \*\*\* \[all\]") as caught:
        client.exec(VM_ID, "make", check=True)
    assert caught.value.result.exit_code == 1


def test_a_timed_out_command_is_a_result_not_an_exception(api: FakeApi,
                                                          client: Client) -> None:
    api.on("POST", f"{VM_PATH}/exec", httpx.Response(200, json=result_json(
        -1, stderr="timed out after 1000 ms", timedOut=True)))
    result = client.exec(VM_ID, "sleep 5", timeout_ms=1000)
    assert result.timed_out and result.exit_code == -1
    with pytest.raises(CommandFailed, match="timed out"):
        client.exec(VM_ID, "sleep 5", timeout_ms=1000, check=True)


def test_run_ts_body_from_code_path_and_local_file(api: FakeApi, client: Client,
                                                   tmp_path: Path) -> None:
    route = f"{VM_PATH}/run-ts"
    api.on("POST", route, httpx.Response(200, json=result_json(0, result={"sum": 3})))
    result = client.run_ts(VM_ID, "result.set({sum: 1+2})", env={"K": "V"}, args=["a"],
                           deno_flags=["--seed=1"], timeout_ms=9000)
    assert isinstance(result, RunResult) and result.result == {"sum": 3} and result.has_result
    assert api.body() == {"code": "result.set({sum: 1+2})", "env": ["K=V"], "args": ["a"],
                          "denoFlags": ["--seed=1"], "timeoutMs": 9000}
    client.run_ts(VM_ID, path="/workspace/main.ts")
    assert api.body() == {"path": "/workspace/main.ts", "env": [], "args": [], "denoFlags": []}
    (tmp_path / "local.ts").write_text("console.log(1)")
    client.run_ts(VM_ID, tmp_path / "local.ts")
    assert api.body()["code"] == "console.log(1)"
    with pytest.raises(ValueError, match="exactly one"):
        client.run_ts(VM_ID)
    with pytest.raises(ValueError, match="exactly one"):
        client.run_ts(VM_ID, "x", path="y")


def test_run_js_uses_node_flags(api: FakeApi, client: Client) -> None:
    api.on("POST", f"{VM_PATH}/run-js", httpx.Response(200, json=result_json(
        1, error={"name": "Error", "message": "nope"})))
    result = client.run_js(VM_ID, "throw new Error('nope')", node_flags=["--no-warnings"])
    assert api.body()["nodeFlags"] == ["--no-warnings"]
    assert result.error == {"name": "Error", "message": "nope"} and not result.has_result


def test_upload_streams_a_gzip_into_dest(api: FakeApi, client: Client, tmp_path: Path) -> None:
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "a.txt").write_text("hello")
    api.on("POST", f"{VM_PATH}/files/upload", httpx.Response(204))
    seen: list[int] = []
    client.upload(VM_ID, tmp_path / "proj", "/workspace/proj", progress=seen.append)
    request = api.requests[0]
    assert request.url.params["dest"] == "/workspace/proj"
    assert request.headers["Content-Type"] == "application/gzip"
    assert request.headers.get("Transfer-Encoding") == "chunked"
    with tarfile.open(fileobj=io.BytesIO(request.content), mode="r:gz") as tar:
        assert tar.getnames() == ["a.txt"]
    assert seen and seen[-1] == len(request.content)


def test_upload_refuses_what_it_cannot_send_before_sending(api: FakeApi, client: Client,
                                                           tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        client.upload(VM_ID, tmp_path / "missing", "/workspace")
    import os
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(ValueError, match="not a regular file"):
        client.upload(VM_ID, tmp_path, "/workspace")
    assert api.requests == []


def test_download_extracts_into_the_directory(api: FakeApi, client: Client,
                                              tmp_path: Path) -> None:
    api.on("GET", f"{VM_PATH}/files/download", httpx.Response(
        200, content=tar_gz({"out/result.txt": b"42"}),
        headers={"Content-Type": "application/gzip"}))
    seen: list[int] = []
    written = client.download(VM_ID, "/workspace/out", tmp_path / "dl", progress=seen.append)
    assert (tmp_path / "dl" / "out" / "result.txt").read_bytes() == b"42"
    assert tmp_path / "dl" / "out" / "result.txt" in written
    assert api.requests[0].url.params["path"] == "/workspace/out"
    assert seen


def test_download_errors_before_the_body(api: FakeApi, client: Client, tmp_path: Path) -> None:
    api.on("GET", f"{VM_PATH}/files/download", error(404, "no such path: /workspace/x"))
    with pytest.raises(NotFound, match="no such path"):
        client.download(VM_ID, "/workspace/x", tmp_path)


def test_a_download_cut_off_midway_is_a_transport_error(api: FakeApi, client: Client,
                                                        tmp_path: Path) -> None:
    data = tar_gz({"big.bin": bytes(range(256)) * 4000})

    class Cut(httpx.SyncByteStream):
        def __iter__(self):
            yield data[: len(data) // 2]
            raise httpx.RemoteProtocolError("peer closed connection")

    api.on("GET", f"{VM_PATH}/files/download",
           lambda request: httpx.Response(200, stream=Cut()))
    with pytest.raises(TransportError, match="peer closed"):
        client.download(VM_ID, "/workspace", tmp_path)


def test_a_download_that_stalls_is_a_timeout(api: FakeApi, client: Client,
                                             tmp_path: Path) -> None:
    class Stall(httpx.SyncByteStream):
        def __iter__(self):
            yield gzip.compress(b"")[:5]
            raise httpx.ReadTimeout("no data")

    api.on("GET", f"{VM_PATH}/files/download",
           lambda request: httpx.Response(200, stream=Stall()))
    with pytest.raises(Timeout):
        client.download(VM_ID, "/workspace", tmp_path)


def test_keepalive_labels_snapshot_stop_start(api: FakeApi, client: Client) -> None:
    api.on("POST", f"{VM_PATH}/keepalive", httpx.Response(200, json=vm_json(
        expiresAt="2025-01-01T13:00:00Z")))
    api.on("PATCH", VM_PATH, httpx.Response(200, json=vm_json(labels={"a": "b"})))
    api.on("POST", f"{VM_PATH}/snapshots", httpx.Response(201, json={
        "id": "snap-1", "kind": "user_overlay", "createdAt": "2025-01-01T12:00:00Z",
        "cpu": 1, "memMb": 256, "imageId": "default", "sourceVmId": VM_ID,
        "hasOverlay": True}))
    api.on("POST", f"{VM_PATH}/stop", httpx.Response(204))
    api.on("POST", f"{VM_PATH}/start", httpx.Response(204))
    assert client.keepalive(VM_ID, 300).expires_at is not None
    assert api.body() == {"ttlSeconds": 300}
    client.keepalive(VM_ID)
    assert api.body() == {}
    assert client.set_labels(VM_ID, {"a": "b"}).labels == {"a": "b"}
    assert api.body() == {"labels": {"a": "b"}}
    snapshot = client.snapshot(VM_ID)
    assert snapshot.id == "snap-1" and snapshot.source_vm_id == VM_ID
    client.stop_vm(VM_ID)
    client.start_vm(VM_ID)
    assert [r.url.path for r in api.requests[-2:]] == [f"{VM_PATH}/stop", f"{VM_PATH}/start"]


def test_ids_stay_one_path_segment(api: FakeApi, client: Client) -> None:
    api.on("GET", "/v1/vms/..%2Fsnapshots", error(404, "VM not found"))
    with pytest.raises(NotFound):
        client.get_vm("../snapshots")
    assert api.requests[0].url.raw_path == b"/v1/vms/..%2Fsnapshots"


def test_delete_missing_ok(api: FakeApi, client: Client) -> None:
    api.on("DELETE", VM_PATH, error(404, "VM not found"))
    assert client.delete_vm(VM_ID, missing_ok=True) is False
    with pytest.raises(NotFound):
        client.delete_vm(VM_ID)


# ---- Sandbox ---------------------------------------------------------------------------------

def sandbox_api(api: FakeApi) -> FakeApi:
    return (api.on("POST", "/v1/vms", httpx.Response(201, json=vm_json()))
            .on("GET", VM_PATH, httpx.Response(200, json=vm_json()))
            .on("DELETE", VM_PATH, httpx.Response(204))
            .on("POST", f"{VM_PATH}/exec", httpx.Response(200, json=result_json(0, "hi\n"))))


def test_sandbox_deletes_its_vm_at_the_end_of_the_block(api: FakeApi) -> None:
    sandbox_api(api)
    with api.client() as client, Sandbox.create(client=client, labels={"ci": "1"},
                                                ttl_seconds=600) as sb:
        assert sb.id == VM_ID and sb.exec("echo hi").stdout == "hi\n"
    assert api.body(0)["labels"] == {"ci": "1"} and api.body(0)["ttlSeconds"] == 600
    assert len(api.sent("DELETE", VM_PATH)) == 1


def test_sandbox_deletes_its_vm_on_an_exception_too(api: FakeApi) -> None:
    sandbox_api(api)
    with api.client() as client, pytest.raises(RuntimeError, match="job failed"), \
            Sandbox.create(client=client):
        raise RuntimeError("job failed")
    assert len(api.sent("DELETE", VM_PATH)) == 1


def test_sandbox_exit_does_not_mind_a_vm_already_gone(api: FakeApi) -> None:
    sandbox_api(api).on("DELETE", VM_PATH, error(404, "VM not found"))
    with api.client() as client, Sandbox.create(client=client) as sb:
        sb.delete()
    assert len(api.sent("DELETE", VM_PATH)) == 1  # delete() did it; the exit did nothing more


def test_connect_keeps_the_vm_unless_told(api: FakeApi) -> None:
    sandbox_api(api)
    with api.client() as client:
        with Sandbox.connect(vm_id=VM_ID, client=client) as sb:
            assert sb.vm.state == "RUNNING"
        assert api.sent("DELETE", VM_PATH) == []
        with Sandbox.connect(vm_id=VM_ID, client=client, delete_on_exit=True):
            pass
        assert len(api.sent("DELETE", VM_PATH)) == 1


def test_sandbox_create_with_url_owns_and_closes_its_client(monkeypatch: pytest.MonkeyPatch,
                                                           api: FakeApi) -> None:
    sandbox_api(api)
    monkeypatch.setenv("RDS_URL", "http://rds.test")
    monkeypatch.setenv("RDS_API_KEY", "k")
    transport = httpx.MockTransport(api.handle)
    with Sandbox.create(transport=transport) as sb:
        sb.exec("true")
    assert sb.client.http._client.is_closed
    assert json.loads(api.requests[0].content)["cpu"] == 1


def test_the_package_imports_only_the_stdlib_and_httpx() -> None:
    """``pip install ./client`` alone must be enough: no app, flask or other dependency."""
    import ast
    import sys

    import rds_client
    allowed = set(sys.stdlib_module_names) | {"httpx", "rds_client", "__future__"}
    for path in Path(rds_client.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) \
                else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                assert name.split(".")[0] in allowed, f"{path.name} imports {name}"
