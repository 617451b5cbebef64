"""The ``rds`` command line: argument parsing, output, and exit codes."""
from __future__ import annotations

import io
import json
import tarfile
import typing as t
from pathlib import Path

import httpx
import pytest

from rds_client import OutputChunk
from rds_client.cli import main as cli
from rds_client.cli.progress import Spinner, human_bytes
from tests.client.fakeapi import VM_ID, FakeApi, error, ndjson, result_json, vm_json

VM_PATH = f"/v1/vms/{VM_ID}"


@pytest.fixture
def rds(api: FakeApi, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> t.Callable[..., tuple[int, str, str]]:
    """Run ``rds ARGS`` against the fake API; returns (exit code, stdout, stderr)."""
    made: list[tuple[str, str]] = []

    def client(url: str, api_key: str, **_options: t.Any):
        made.append((url, api_key))
        return api.client()

    monkeypatch.setattr(cli, "Client", client)
    monkeypatch.setenv("RDS_URL", "http://env.test")
    monkeypatch.setenv("RDS_API_KEY", "env-key")

    def run(*argv: str) -> tuple[int, str, str]:
        try:
            code = cli.main(list(argv))
        except SystemExit as exc:  # argparse's own exits (usage, --help)
            code = int(exc.code or 0)
        out, err = capsys.readouterr()
        return code, out, err

    run.made = made  # type: ignore[attr-defined]
    return run


def test_vm_create_prints_the_id_and_sends_the_flags(api: FakeApi, rds) -> None:
    api.on("POST", "/v1/vms", httpx.Response(201, json=vm_json()))
    code, out, _err = rds("vm", "create", "--cpu", "2", "--mem", "512", "--allow",
                          "1.2.3.4/32", "--allow", "172.16.0.1/32", "--internet", "--label",
                          "ci.job=42", "--label", "team=a=b", "--ttl", "600")
    assert (code, out) == (0, f"{VM_ID}\n")
    assert api.body() == {"cpu": 2, "memMb": 512, "allowIps": ["1.2.3.4/32", "172.16.0.1/32"],
                          "outboundInternet": True, "labels": {"ci.job": "42", "team": "a=b"},
                          "ttlSeconds": 600}


def test_vm_create_json_output(api: FakeApi, rds) -> None:
    api.on("POST", "/v1/vms", httpx.Response(201, json=vm_json()))
    code, out, _err = rds("vm", "create", "-o", "json")
    assert code == 0 and json.loads(out)["id"] == VM_ID
    assert api.body() == {"cpu": 1, "memMb": 256, "allowIps": [], "outboundInternet": False}


def test_flags_override_the_environment(api: FakeApi, rds) -> None:
    api.on("GET", VM_PATH, httpx.Response(200, json=vm_json()))
    rds("vm", "get", VM_ID)
    rds("--url", "http://flag.test", "vm", "get", "--api-key", "flag-key", VM_ID)
    assert rds.made == [("http://env.test", "env-key"), ("http://flag.test", "flag-key")]


def test_missing_configuration_is_a_usage_error(rds, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RDS_URL")
    code, _out, err = rds("vm", "ls")
    assert code == 2 and "RDS_URL" in err


def test_vm_ls_table_and_json(api: FakeApi, rds) -> None:
    api.on("GET", "/v1/vms", httpx.Response(200, json=[
        vm_json(labels={"ci.job": "42"}, expiresAt="2025-01-01T12:10:00Z"),
        vm_json("other", labels={"ci.job": "43"})]))
    code, out, _err = rds("vm", "ls", "--label", "ci.job=42", "--state", "RUNNING")
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["ID", "STATE", "CPU", "MEM", "IP", "CREATED",
                                              "EXPIRES", "LABELS"]
    assert len(lines) == 2 and VM_ID in lines[1] and "ci.job=42" in lines[1]
    assert "2025-01-01 12:10:00Z" in lines[1]
    query = api.requests[0].url.params
    assert query.get_list("label") == ["ci.job=42"] and query["state"] == "RUNNING"
    code, out, _err = rds("vm", "ls", "-o", "json")
    assert [vm["id"] for vm in json.loads(out)] == [VM_ID, "other"]


def test_vm_get_and_its_404(api: FakeApi, rds) -> None:
    api.on("GET", VM_PATH, httpx.Response(200, json=vm_json()))
    code, out, _err = rds("vm", "get", VM_ID)
    assert code == 0 and json.loads(out)["guestIp"] == "172.16.0.2"
    code, out, _err = rds("vm", "get", VM_ID, "-o", "table")
    assert "state:   RUNNING" in out
    api.on("GET", "/v1/vms/nope", error(404, "VM nope not found"))
    code, out, err = rds("vm", "get", "nope")
    assert (code, out) == (1, "") and "404 VM nope not found" in err


def test_vm_rm_by_id_and_by_label(api: FakeApi, rds) -> None:
    api.on("DELETE", VM_PATH, httpx.Response(204))
    api.on("DELETE", "/v1/vms", httpx.Response(200, json={"deleted": ["a", "b"]}))
    assert rds("vm", "rm", VM_ID)[:2] == (0, f"{VM_ID}\n")
    assert rds("vm", "rm", "--label", "ci.job=42")[:2] == (0, "a\nb\n")
    assert api.requests[-1].url.params.get_list("label") == ["ci.job=42"]


@pytest.mark.parametrize("argv", [
    ["vm", "rm"], ["vm", "rm", VM_ID, "--label", "a=b"], ["vm", "create", "--label", "novalue"],
    ["vm", "create", "--cpu", "two"], ["exec", VM_ID], ["exec", VM_ID, "--"],
    ["cp", "./a", "./b"], ["cp", f"{VM_ID}:/a", f"{VM_ID}:/b"], [], ["vm"], ["bogus"],
    ["vm", "ls", "--", "x"], ["run-ts", VM_ID, "--deno-flag", "--seed=1", "f.ts"],
])
def test_usage_errors_exit_2(api: FakeApi, rds, argv: list[str]) -> None:
    code, _out, err = rds(*argv)
    assert code == 2, err
    assert api.requests == []


def test_vm_keepalive(api: FakeApi, rds) -> None:
    api.on("POST", f"{VM_PATH}/keepalive", httpx.Response(200, json=vm_json(
        expiresAt="2025-01-01T13:00:00Z")))
    code, out, _err = rds("vm", "keepalive", VM_ID, "--ttl", "900")
    assert (code, out) == (0, "2025-01-01T13:00:00+00:00\n")
    assert api.body() == {"ttlSeconds": 900}


@pytest.mark.parametrize(("argv", "cmd"), [
    (["--", "ls", "-la", "my file"], "ls -la 'my file'"),
    (["--", "make test && echo $HOME"], "make test && echo $HOME"),
    (["echo", "hi"], "echo hi"),
])
def test_exec_turns_argv_into_one_command(api: FakeApi, rds, argv: list[str],
                                          cmd: str) -> None:
    api.on("POST", f"{VM_PATH}/exec", ndjson({"type": "result", **result_json(0)}))
    assert rds("exec", VM_ID, *argv)[0] == 0
    assert api.body()["cmd"] == cmd


def test_options_of_the_command_stay_the_commands(api: FakeApi, rds) -> None:
    api.on("POST", f"{VM_PATH}/exec", ndjson({"type": "result", **result_json(0)}))
    assert rds("exec", VM_ID, "--", "ls", "--cwd", "-la", "--", "x")[0] == 0
    assert api.body() == {"cmd": "ls --cwd -la -- x", "env": {}}


def test_exec_streams_output_and_passes_the_exit_code_through(api: FakeApi, rds) -> None:
    api.on("POST", f"{VM_PATH}/exec", ndjson(
        {"type": "output", "stream": "stdout", "data": "building\n"},
        {"type": "output", "stream": "stderr", "data": "warning\n"},
        {"type": "output", "stream": "stdout", "encoding": "base64", "data": "ZG9uZQo="},
        {"type": "result", **result_json(3)}))
    code, out, err = rds("exec", VM_ID, "--env", "A=1", "--cwd", "src", "--timeout", "5000",
                         "--", "make")
    assert code == 3
    assert out == "building\ndone\n" and err == "warning\n"
    assert api.body() == {"cmd": "make", "cwd": "src", "env": {"A": "1"}, "timeoutMs": 5000}


def test_binary_output_is_written_as_bytes() -> None:
    raw = io.BytesIO()
    out = io.TextIOWrapper(raw, encoding="utf-8")
    out.write("text first, ")
    cli.write_through(out, OutputChunk("stdout", b"\xff\x00binary"))
    assert raw.getvalue() == b"text first, \xff\x00binary"
    replaced = io.StringIO()  # a stream without a byte buffer gets text
    cli.write_through(replaced, OutputChunk("stdout", b"\xffx"))
    assert replaced.getvalue() == "\ufffdx"


@pytest.mark.parametrize(("result", "code"), [
    (result_json(-1, timedOut=True), 124), (result_json(0), 0), (result_json(255), 255),
    (result_json(-1), 1),
])
def test_exec_exit_codes(api: FakeApi, rds, result: dict, code: int) -> None:
    api.on("POST", f"{VM_PATH}/exec", ndjson({"type": "result", **result}))
    assert rds("exec", VM_ID, "--", "x")[0] == code


def test_exec_reports_truncation_and_server_errors(api: FakeApi, rds) -> None:
    api.on("POST", f"{VM_PATH}/exec", ndjson({"type": "result", **result_json(
        0, stdoutTruncated=True)}))
    assert "stdout was cut" in rds("exec", VM_ID, "--", "yes")[2]
    api.on("POST", f"{VM_PATH}/exec", error(409, "VM is STOPPED"))
    code, _out, err = rds("exec", VM_ID, "--", "true")
    assert code == 1 and "409 VM is STOPPED" in err
    api.on("POST", f"{VM_PATH}/exec", ndjson({"type": "error", "message": "guest lost"}))
    code, _out, err = rds("exec", VM_ID, "--", "true")
    assert code == 1 and "guest lost" in err


def test_run_ts_sends_the_local_file(api: FakeApi, rds, tmp_path: Path) -> None:
    (tmp_path / "main.ts").write_text("result.set(Deno.args)")
    api.on("POST", f"{VM_PATH}/run-ts", ndjson(
        {"type": "result", **result_json(0), "result": ["a", "b"]}))
    code, out, _err = rds("run-ts", VM_ID, str(tmp_path / "main.ts"), "--env", "K=V",
                          "--deno-flag=--seed=1", "--", "a", "b")
    assert code == 0 and json.loads(out) == ["a", "b"]
    assert api.body() == {"code": "result.set(Deno.args)", "args": ["a", "b"],
                          "env": ["K=V"], "denoFlags": ["--seed=1"]}


def test_run_ts_script_error_and_in_vm_path(api: FakeApi, rds) -> None:
    api.on("POST", f"{VM_PATH}/run-ts", ndjson({"type": "result", **result_json(1),
                                                "error": {"message": "boom"}}))
    code, _out, err = rds("run-ts", VM_ID, "/workspace/main.ts", "--in-vm")
    assert code == 1 and "boom" in err
    assert api.body()["path"] == "/workspace/main.ts" and "code" not in api.body()


def test_run_ts_missing_local_file(api: FakeApi, rds, tmp_path: Path) -> None:
    code, _out, err = rds("run-ts", VM_ID, str(tmp_path / "nope.ts"))
    assert code == 1 and "nope.ts" in err and api.requests == []


def test_run_js_uses_its_route(api: FakeApi, rds, tmp_path: Path) -> None:
    (tmp_path / "m.js").write_text("1")
    api.on("POST", f"{VM_PATH}/run-js", ndjson({"type": "result", **result_json(0)}))
    assert rds("run-js", VM_ID, str(tmp_path / "m.js"), "--node-flag=--no-warnings")[0] == 0
    assert api.body()["nodeFlags"] == ["--no-warnings"]


def test_cp_both_ways(api: FakeApi, rds, tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.txt").write_text("hi")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("a.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    api.on("POST", f"{VM_PATH}/files/upload", httpx.Response(204))
    api.on("GET", f"{VM_PATH}/files/download", httpx.Response(200, content=buffer.getvalue()))
    assert rds("cp", str(tmp_path / "src"), f"{VM_ID}:/workspace/x")[0] == 0
    assert api.requests[-1].url.params["dest"] == "/workspace/x"
    assert rds("cp", f"{VM_ID}:/workspace/x", str(tmp_path / "out"))[0] == 0
    assert api.requests[-1].url.params["path"] == "/workspace/x"
    assert (tmp_path / "out" / "a.txt").read_text() == "hi"


def test_cp_upload_too_large(api: FakeApi, rds, tmp_path: Path) -> None:
    api.on("POST", f"{VM_PATH}/files/upload", error(413, "upload over 10485760 bytes"))
    code, _out, err = rds("cp", str(tmp_path), f"{VM_ID}:/workspace")
    assert code == 1 and "413 upload over" in err


@pytest.mark.parametrize(("text", "parsed"), [
    (f"{VM_ID}:/workspace/x", (VM_ID, "/workspace/x")), ("abc:rel/dir", ("abc", "rel/dir")),
    ("abc:", ("abc", "/workspace")), ("./a:b", None), ("/tmp/a:b", None), ("plain", None),
    (":x", None), ("../x:y", None),
])
def test_remote_paths(text: str, parsed: tuple[str, str] | None) -> None:
    assert cli.remote_path(text) == parsed


def test_snapshot_prints_the_id(api: FakeApi, rds) -> None:
    api.on("POST", f"{VM_PATH}/snapshots", httpx.Response(201, json={"id": "snap-1"}))
    assert rds("snapshot", VM_ID)[:2] == (0, "snap-1\n")


def test_version_and_help(rds) -> None:
    code, out, _err = rds("--version")
    assert code == 0 and out.startswith("rds ")
    code, out, _err = rds("exec", "--help")
    assert code == 0 and "CMD" in out


# ---- the spinner -------------------------------------------------------------------------------

class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_spinner_stays_silent_off_a_terminal() -> None:
    stream = io.StringIO()
    with Spinner("creating VM", stream=stream, delay=0, interval=0.01):
        import time
        time.sleep(0.05)
    assert stream.getvalue() == ""


def test_the_spinner_waits_for_its_delay_on_a_terminal() -> None:
    stream = Tty()
    with Spinner("creating VM", stream=stream, delay=5):
        pass
    assert stream.getvalue() == ""


def test_the_spinner_draws_and_erases_itself_on_a_terminal() -> None:
    import time
    stream = Tty()
    with Spinner("uploading", stream=stream, delay=0, interval=0.01) as spinner:
        spinner.bytes_done(3 * 1024 * 1024)
        time.sleep(0.05)
    text = stream.getvalue()
    assert "uploading 3.0 MiB" in text and text.endswith("\r\033[K")


def test_human_bytes() -> None:
    assert [human_bytes(n) for n in (0, 1023, 1024, 5 * 1024 ** 3)] == [
        "0 B", "1023 B", "1.0 KiB", "5.0 GiB"]
