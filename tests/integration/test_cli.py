"""The ``rds`` command (client/, installed into the project's virtualenv as ``.venv/bin/rds``)
against the real server: a live gunicorn on loopback, real VMs.

The commands run as a CI job runs them: separate processes, configured by ``RDS_URL`` and
``RDS_API_KEY``. Every VM made here is deleted at the end, also after a failure.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import typing as t
import uuid
from pathlib import Path

import pytest

from rds_client import Client
from tests.integration.conftest import BRIDGE_IP

BIN = Path(sys.executable).parent
RDS = BIN / "rds"


@pytest.fixture(scope="module")
def env(rds_server: tuple[str, str]) -> dict[str, str]:
    assert RDS.is_file(), f"{RDS} is missing: the virtualenv must install ./client"
    url, key = rds_server
    return {**os.environ, "RDS_URL": url, "RDS_API_KEY": key,
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


@pytest.fixture(scope="module")
def made(rds_server: tuple[str, str]) -> t.Iterator[list[str]]:
    """Ids of the VMs this module made: deleted at the end whatever happened."""
    ids: list[str] = []
    yield ids
    with Client(*rds_server) as client:
        for vm_id in ids:
            client.delete_vm(vm_id, missing_ok=True)
        left = {vm.id for vm in client.list_vms()} & set(ids)
    assert not left, f"VMs left behind: {left}"


def rds(env: dict[str, str], *args: str, timeout: float = 300,
        cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(RDS), *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, check=False)


def create(env: dict[str, str], made: list[str], *flags: str) -> str:
    done = rds(env, "vm", "create", "--cpu", "1", "--mem", "256", "--allow",
               f"{BRIDGE_IP}/32", "--internet", *flags)
    assert done.returncode == 0, done.stderr
    vm_id = done.stdout.strip()
    made.append(vm_id)
    return vm_id


@pytest.fixture(scope="module")
def vm(env: dict[str, str], made: list[str]) -> str:
    return create(env, made)


def test_exec_passes_the_exit_code_through(env: dict[str, str], vm: str) -> None:
    done = rds(env, "exec", vm, "--", "echo out; echo err >&2; exit 7")
    assert (done.returncode, done.stdout, done.stderr) == (7, "out\n", "err\n")
    done = rds(env, "exec", vm, "--", "ls", "-d", "/workspace", "no such file")
    assert done.returncode == 2 and done.stdout == "/workspace\n"
    assert "no such file" in done.stderr
    done = rds(env, "exec", vm, "--cwd", "/workspace", "--env", "GREETING=hi", "--",
               'printf "%s in %s" "$GREETING" "$PWD"')
    assert (done.returncode, done.stdout) == (0, "hi in /workspace")
    done = rds(env, "exec", "--timeout", "1000", vm, "--", "sleep 10")
    assert done.returncode == 124 and "timed out" in done.stderr


def test_vm_get_ls_and_errors(env: dict[str, str], vm: str) -> None:
    done = rds(env, "vm", "get", vm)
    assert done.returncode == 0 and json.loads(done.stdout)["state"] == "RUNNING"
    done = rds(env, "vm", "ls")
    assert done.returncode == 0 and vm in done.stdout and done.stdout.startswith("ID ")
    done = rds(env, "vm", "ls", "-o", "json")
    assert vm in {item["id"] for item in json.loads(done.stdout)}
    missing = str(uuid.uuid4())
    done = rds(env, "vm", "get", missing)
    assert done.returncode == 1 and "404" in done.stderr and "not found" in done.stderr.lower()
    done = rds(env, "vm", "create", "--cpu", "0")
    assert done.returncode == 1 and "400" in done.stderr
    done = rds({**env, "RDS_API_KEY": "wrong"}, "vm", "ls")
    assert done.returncode == 1 and "401 Unauthorized" in done.stderr
    done = rds({k: v for k, v in env.items() if k != "RDS_URL"}, "vm", "ls")
    assert done.returncode == 2 and "RDS_URL" in done.stderr


def test_cp_both_ways_and_run_ts(env: dict[str, str], vm: str, tmp_path: Path) -> None:
    (tmp_path / "src" / "lib").mkdir(parents=True)
    (tmp_path / "src" / "lib" / "greet.ts").write_text(
        "export const greet = (n: string) => `hello ${n}`;\n")
    (tmp_path / "main.ts").write_text(
        'import { greet } from "./src/lib/greet.ts";\n'
        "console.log(greet(Deno.args[0]));\nresult.set({args: Deno.args});\n")
    done = rds(env, "cp", str(tmp_path / "src"), f"{vm}:/workspace/src")
    assert done.returncode == 0, done.stderr
    done = rds(env, "run-ts", vm, str(tmp_path / "main.ts"), "--", "world", "--flag")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["hello world", '{"args": ["world", "--flag"]}']
    done = rds(env, "exec", vm, "--", "mkdir -p out/sub && echo 42 > out/sub/answer.txt")
    assert done.returncode == 0, done.stderr
    done = rds(env, "cp", f"{vm}:/workspace/out", str(tmp_path / "got"))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "got" / "sub" / "answer.txt").read_text() == "42\n"
    done = rds(env, "cp", f"{vm}:/workspace/nothing-here", str(tmp_path / "none"))
    assert done.returncode == 1 and "404" in done.stderr


def test_snapshot_and_rm(env: dict[str, str], made: list[str],
                         rds_server: tuple[str, str]) -> None:
    vm_id = create(env, made)
    done = rds(env, "snapshot", vm_id)
    assert done.returncode == 0, done.stderr
    snapshot_id = done.stdout.strip()
    with Client(*rds_server) as client:
        try:
            assert client.get_snapshot(snapshot_id).source_vm_id == vm_id
            done = rds(env, "vm", "rm", vm_id)
            assert (done.returncode, done.stdout) == (0, f"{vm_id}\n")
        finally:
            client.delete_vm(vm_id, missing_ok=True)
            client.delete_snapshot(snapshot_id)
    done = rds(env, "vm", "rm", vm_id)
    assert done.returncode == 1 and "404" in done.stderr


# ---- issue 13 server features: labels, TTL, list filters, delete by label, streaming ---------

CI_SCRIPT = r"""
set -euo pipefail
VM=$(rds vm create --cpu 1 --mem 256 --label ci.job="$JOB" --label ci.step=test --ttl 600)
echo "vm=$VM"
rds cp ./src "$VM":/workspace/src
rds exec "$VM" -- 'cd src && ./build.sh'
rds cp "$VM":/workspace/src/dist ./artifacts
rds vm ls --label ci.job="$JOB" -o json > listed.json
rds vm rm --label ci.job="$JOB" > deleted.txt
"""


def test_a_ci_job_script(env: dict[str, str], made: list[str], tmp_path: Path,
                         rds_server: tuple[str, str]) -> None:
    """create with labels -> upload -> exec -> download -> delete by label, as a CI job does."""
    job = uuid.uuid4().hex[:12]
    (tmp_path / "src").mkdir()
    build = tmp_path / "src" / "build.sh"
    build.write_text("#!/bin/sh\nset -e\nmkdir -p dist\necho \"built $(uname -m)\" > "
                     "dist/app.txt\necho building\n")
    build.chmod(0o755)
    done = subprocess.run(["bash", "-c", CI_SCRIPT], env={**env, "JOB": job}, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600, check=False)
    vm_id = next((line[3:] for line in done.stdout.splitlines() if line.startswith("vm=")), "")
    if vm_id:
        made.append(vm_id)
    assert done.returncode == 0, done.stderr
    assert "building" in done.stdout
    assert (tmp_path / "artifacts" / "app.txt").read_text().startswith("built ")
    listed = json.loads((tmp_path / "listed.json").read_text())
    assert [item["id"] for item in listed] == [vm_id]
    assert listed[0]["labels"] == {"ci.job": job, "ci.step": "test"}
    assert listed[0]["expiresAt"]
    assert (tmp_path / "deleted.txt").read_text().split() == [vm_id]
    with Client(*rds_server) as client:
        assert client.list_vms(labels={"ci.job": job}) == []
    keep = rds(env, "vm", "keepalive", vm_id, "--ttl", "60")
    assert keep.returncode == 1 and "404" in keep.stderr


def test_keepalive_prints_the_new_expiry(env: dict[str, str], made: list[str]) -> None:
    vm_id = create(env, made, "--ttl", "600", "--label", "cli.test=keepalive")
    done = rds(env, "vm", "keepalive", vm_id, "--ttl", "1800")
    assert done.returncode == 0, done.stderr
    expiry = done.stdout.strip()
    assert expiry != "no expiry" and json.loads(rds(env, "vm", "get", vm_id).stdout)[
        "expiresAt"]
    done = rds(env, "vm", "ls", "--label", "cli.test=keepalive", "--state", "RUNNING")
    assert vm_id in done.stdout


def test_exec_streams_output_live(env: dict[str, str], vm: str) -> None:
    """The first line is on our stdout seconds before the command ends."""
    process = subprocess.Popen([str(RDS), "exec", vm, "--", "echo first; sleep 4; echo last"],
                               env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        first_at = time.monotonic()
        rest = process.stdout.read()
        ended_at = time.monotonic()
        assert process.wait(timeout=60) == 0
    finally:
        process.kill()
    assert (first, rest) == ("first\n", "last\n")
    assert ended_at - first_at >= 3, f"'first' came {ended_at - first_at:.1f} s before the end"
