"""The Python SDK (client/, ``rds_client``) against the real server: a live gunicorn on
loopback, real VMs.

One VM is shared by the tests that only run things in it; the label, TTL and streaming tests
make their own. Every VM made here is deleted at the end, also after a failure.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import time
import typing as t
import uuid
from pathlib import Path

import httpx
import pytest

from rds_client import (BadRequest, Client, CommandFailed, CommandResult, Conflict, NotFound,
                        OutputChunk, RunResult, Sandbox, Unauthorized)
from tests.integration.conftest import BRIDGE_IP

SHAPE: dict[str, t.Any] = {"cpu": 1, "mem_mb": 256, "allow_ips": [f"{BRIDGE_IP}/32"],
                           "outbound_internet": True}


@pytest.fixture(scope="module")
def client(rds_server: tuple[str, str]) -> t.Iterator[Client]:
    url, key = rds_server
    with Client(url, key) as sdk_client:
        yield sdk_client


@pytest.fixture(scope="module")
def made(client: Client) -> t.Iterator[list[str]]:
    """Ids of the VMs this module made: deleted at the end whatever happened."""
    ids: list[str] = []
    yield ids
    for vm_id in ids:
        client.delete_vm(vm_id, missing_ok=True)
    left = {vm.id for vm in client.list_vms()} & set(ids)
    assert not left, f"VMs left behind: {left}"


@pytest.fixture(scope="module")
def sandbox(client: Client, made: list[str]) -> t.Iterator[Sandbox]:
    with Sandbox.create(client=client, **SHAPE) as sb:
        made.append(sb.id)
        yield sb


@pytest.fixture
def run_label() -> dict[str, str]:
    return {"sdk.test": uuid.uuid4().hex[:12]}


def test_create_exec_run_ts_upload_download_snapshot_delete(client: Client, made: list[str],
                                                            tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / "pkg").mkdir(parents=True)
    (project / "pkg" / "mod.py").write_text("print('hi')\n")
    (project / "data.bin").write_bytes(bytes(range(256)) * 512)
    (project / "link").symlink_to("pkg/mod.py")
    with Sandbox.create(client=client, **SHAPE) as sb:
        made.append(sb.id)
        assert sb.vm.state == "RUNNING" and sb.vm.cpu == 1 and sb.vm.mem_mb == 256
        assert sb.exec("id -u").stdout == "1000\n"

        ts = sb.run_ts("result.set({sum: 1 + 2, args: Deno.args})", args=["a"])
        assert ts.exit_code == 0 and ts.result == {"sum": 3, "args": ["a"]}

        sb.upload(project, "/workspace/project")
        listing = sb.exec("cd project && find . | sort && readlink link && sha256sum data.bin",
                          check=True).stdout
        assert "./pkg/mod.py" in listing and "pkg/mod.py\n" in listing
        assert hashlib.sha256((project / "data.bin").read_bytes()).hexdigest() in listing

        sb.exec("mkdir -p out && echo built > out/result.txt && cp project/data.bin out/",
                check=True)
        written = sb.download("/workspace/out", tmp_path / "dl")
        assert (tmp_path / "dl" / "result.txt").read_text() == "built\n"
        assert (tmp_path / "dl" / "data.bin").read_bytes() == (project / "data.bin").read_bytes()
        assert tmp_path / "dl" / "result.txt" in written
        sb.download("/workspace/project/pkg/mod.py", tmp_path / "single")
        assert (tmp_path / "single" / "mod.py").read_text() == "print('hi')\n"

        snapshot = sb.snapshot()
        try:
            assert snapshot.source_vm_id == sb.id
            assert client.get_snapshot(snapshot.id).id == snapshot.id
        finally:
            sb.delete()
            client.delete_snapshot(snapshot.id)
        vm_id = sb.id
    with pytest.raises(NotFound):
        client.get_vm(vm_id)


def test_the_with_block_deletes_the_vm_on_an_exception(client: Client,
                                                       made: list[str]) -> None:
    with pytest.raises(RuntimeError, match="the job failed"), \
            Sandbox.create(client=client, **SHAPE) as sb:
        made.append(sb.id)
        raise RuntimeError("the job failed")
    with pytest.raises(NotFound):
        client.get_vm(sb.id)


def test_exit_codes_timeouts_and_checks(sandbox: Sandbox) -> None:
    result = sandbox.exec("echo out; echo err >&2; exit 3")
    assert (result.exit_code, result.stdout, result.stderr) == (3, "out\n", "err\n")
    assert not result.ok and not result.timed_out
    with pytest.raises(CommandFailed) as caught:
        sandbox.exec("exit 5", check=True)
    assert caught.value.result.exit_code == 5
    slow = sandbox.exec("sleep 10", timeout_ms=1000)
    assert slow.timed_out and slow.exit_code == -1
    env = sandbox.exec('printf %s "$GREETING" && pwd', env={"GREETING": "hi"}, cwd="/workspace")
    assert env.stdout == "hi/workspace\n"


def test_run_ts_env_error_and_run_js(sandbox: Sandbox, tmp_path: Path) -> None:
    got = sandbox.run_ts('result.set(Deno.env.get("K"))', env={"K": "V"})
    assert got.result == "V"
    failed = sandbox.run_ts('result.error(new Error("nope"))')
    assert failed.exit_code != 0 and failed.error["message"] == "nope"
    (tmp_path / "main.ts").write_text("console.log('from a file')")
    assert sandbox.run_ts(tmp_path / "main.ts").stdout == "from a file\n"
    js = sandbox.run_js("result.set(typeof process.version)")
    assert isinstance(js, RunResult) and js.result == "string"


def test_errors_carry_the_servers_message(client: Client, rds_server: tuple[str, str],
                                          sandbox: Sandbox, tmp_path: Path) -> None:
    with pytest.raises(NotFound) as caught:
        client.get_vm(str(uuid.uuid4()))
    assert caught.value.status == 404 and "not found" in caught.value.message.lower()
    with pytest.raises(BadRequest) as bad:
        client.create_vm(cpu=0)
    assert bad.value.status == 400 and bad.value.message
    with Client(rds_server[0], "wrong-key") as stranger, pytest.raises(Unauthorized) as denied:
        stranger.list_vms()
    assert denied.value.message == "Unauthorized"
    with pytest.raises(BadRequest):
        sandbox.exec("true", timeout_ms=10_000_000)
    with pytest.raises(NotFound):
        sandbox.download("/workspace/does-not-exist", tmp_path / "never")
    assert not (tmp_path / "never").exists()


def test_stop_start_and_connect(client: Client, sandbox: Sandbox) -> None:
    sandbox.exec("echo kept > kept.txt", check=True)
    sandbox.stop()
    assert sandbox.vm.state == "STOPPED"
    with pytest.raises(Conflict):
        sandbox.exec("true")
    sandbox.start()
    assert sandbox.vm.state == "RUNNING"
    with Sandbox.connect(vm_id=sandbox.id, client=client) as again:
        assert again.exec("cat kept.txt").stdout == "kept\n"
    assert client.get_vm(sandbox.id).state == "RUNNING"  # connect kept it


def test_list_finds_the_vm(client: Client, sandbox: Sandbox) -> None:
    assert sandbox.id in {vm.id for vm in client.list_vms()}
    assert sandbox.id in {vm.id for vm in client.iter_vms(page_size=1)}


# ---- issue 13 server features: labels, TTL, keepalive, PATCH, filters, paging, delete by
# ---- label, streaming ---------------------------------------------------------------------------

def test_labels_ttl_keepalive_and_filters(client: Client, made: list[str],
                                          run_label: dict[str, str],
                                          rds_server: tuple[str, str]) -> None:
    with Sandbox.create(client=client, labels={**run_label, "ci.job": "42"}, ttl_seconds=600,
                        **SHAPE) as sb:
        made.append(sb.id)
        assert sb.vm.labels == {**run_label, "ci.job": "42"}
        now = dt.datetime.now(dt.timezone.utc)
        assert sb.vm.expires_at is not None
        assert 540 < (sb.vm.expires_at - now).total_seconds() <= 600
        before = sb.vm.expires_at
        assert sb.keepalive(1200).expires_at is not None
        assert sb.vm.expires_at is not None and sb.vm.expires_at > before + dt.timedelta(
            seconds=500)
        assert sb.set_labels({**run_label, "stage": "test"}).labels == {**run_label,
                                                                        "stage": "test"}
        assert sb.refresh().labels["stage"] == "test"

        with Sandbox.create(client=client, labels=run_label, **SHAPE) as other:
            made.append(other.id)
            assert other.vm.expires_at is None or other.vm.expires_at > now
            both = {vm.id for vm in client.list_vms(labels=run_label)}
            assert both == {sb.id, other.id}
            assert [vm.id for vm in client.list_vms(labels={**run_label, "stage": "test"})] \
                == [sb.id]
            assert {vm.id for vm in client.list_vms(labels=run_label, state="RUNNING")} == both
            assert client.list_vms(labels=run_label, state="STOPPED") == []
            # The server pages (the client only follows): a page of one says where to go on.
            url, key = rds_server
            first = httpx.get(f"{url}/v1/vms", params={"label": _label(run_label), "limit": 1},
                              headers={"X-API-Key": key}, timeout=30)
            assert len(first.json()) == 1 and first.headers.get("X-Next-Cursor")
            assert {vm.id for vm in client.iter_vms(labels=run_label, page_size=1)} == both


def test_delete_by_label(client: Client, made: list[str], run_label: dict[str, str]) -> None:
    ids = []
    for _ in range(2):
        vm = client.create_vm(labels=run_label, ttl_seconds=600, **SHAPE)
        made.append(vm.id)
        ids.append(vm.id)
    assert sorted(client.delete_by_label(run_label)) == sorted(ids)
    assert client.list_vms(labels=run_label) == []
    assert client.delete_by_label(run_label) == []


def test_stream_delivers_output_as_it_happens(sandbox: Sandbox) -> None:
    arrivals: list[tuple[float, OutputChunk | CommandResult]] = []
    started = time.monotonic()
    with sandbox.stream("echo first; sleep 4; echo second; printf '\\377\\376' >&2; exit 4",
                        timeout_ms=30_000) as stream:
        for item in stream:
            arrivals.append((time.monotonic() - started, item))
    chunks = [(at, item) for at, item in arrivals if isinstance(item, OutputChunk)]
    end, result = arrivals[-1]
    assert isinstance(result, CommandResult) and result.exit_code == 4
    first_at = next(at for at, chunk in chunks if b"first" in chunk.data)
    assert end - first_at >= 3, f"'first' came {end - first_at:.1f} s before the end"
    assert b"".join(c.data for _, c in chunks if c.stream == "stderr") == b"\xff\xfe"
    assert result.stdout == "first\nsecond\n"


def _label(labels: dict[str, str]) -> list[str]:
    return [f"{key}={value}" for key, value in labels.items()]
