"""Holes inside the guest (issue #11), each probed from a real guest through the real API:
setuid binaries and mounts, the warm-Deno spool and cache, Deno's readable paths, a stuck SSH
session, and kill-marked fed hostile file names."""
from __future__ import annotations

import pwd
import subprocess
import time
import uuid

import pytest

from app.services.commands import deno_run_flags, warm_deno_key
from tests.integration.conftest import SEED_BODY, exec_ok

SPOOLS = "/run/rds-deno /tmp/.rds-deno"  # today's spool, and where it was before


def _run(api, vm, **body) -> dict:
    response = api.request("POST", f"/v1/vms/{vm['id']}/run-ts", json=body)
    assert response.status_code == 200, response.json
    return response.json


def _exec(api, vm, cmd: str, **body) -> dict:
    response = api.request("POST", f"/v1/vms/{vm['id']}/exec", json={"cmd": cmd, **body})
    assert response.status_code == 200, response.json
    return response.json


@pytest.fixture
def own_vm(api):
    """A VM of its own for tests that leave a guest in a state others should not share."""
    created = api.create_vm(SEED_BODY)
    yield created
    api.delete_vm(created["id"])


# Setuid and mounts ########################################################################

def test_setuid_binaries_are_gone_and_su_cannot_be_used(api, shared_vm):
    out = exec_ok(api, shared_vm["id"],
                  "find / /workspace /tmp /var/tmp -xdev -type f -perm /6000 2>/dev/null; "
                  "echo --; su -c id root </dev/null 2>&1; echo su=$?", timeoutMs=60000)
    found, _, su = out["stdout"].partition("--\n")
    assert found.split() == [], f"setuid/setgid files in the image: {found}"
    assert "su=0" not in su and "uid=0" not in su, su


@pytest.mark.parametrize("directory", ["/workspace", "/tmp", "/var/tmp"])
def test_writable_directories_are_mounted_nosuid_nodev(api, shared_vm, directory):
    out = exec_ok(api, shared_vm["id"], f"findmnt -n -o TARGET,OPTIONS -T {directory}")
    target, options = out["stdout"].split()
    assert target == directory
    assert {"nosuid", "nodev"} <= set(options.split(",")), options


# run-ts: spool, cache, readable paths #####################################################

def test_a_run_cannot_touch_the_spool_or_the_deno_cache(api, shared_vm):
    _run(api, shared_vm, code="result.set(1)")  # a spare exists now
    for code in ("Deno.writeTextFileSync('/run/rds-deno/x.pid', '1')",
                 "Deno.readDirSync('/run/rds-deno')",
                 "Deno.readDirSync('/var/cache/rds-deno')",
                 "Deno.writeTextFileSync('/var/cache/rds-deno/x', '1')"):
        body = _run(api, shared_vm, code=code)
        assert body["error"]["name"] == "NotCapable", (code, body)


def test_a_planted_spare_never_gets_the_next_runs_secrets(api, own_vm):
    """uid 1000 (an earlier exec) fakes an idle warm Deno for the next run's flags: fifos and
    a .pid naming a process it controls, with readers waiting on the request and program
    fifos. The next run must not claim it: its env secret and code stay unseen."""
    env = ["SECRET=top-secret-value"]
    key = warm_deno_key(deno_run_flags({"SECRET": "x"}, True, []), [], {"SECRET": "x"})
    assert key
    plant = f"""
        for spool in {SPOOLS}; do [ -d $spool ] && break; done
        stem=$spool/{key}.{uuid.uuid4().hex}
        mkfifo $stem.request $stem.ts $stem.out $stem.err $stem.status
        (exec -a deno sleep 300) </dev/null >/dev/null 2>&1 & echo $! > $stem.pid
        (timeout 60 cat $stem.request > /workspace/stolen.request) </dev/null 2>/dev/null &
        (timeout 60 cat $stem.ts > /workspace/stolen.ts) </dev/null 2>/dev/null &
        echo planted $stem
    """
    _run(api, own_vm, code="1")  # a first run-ts (other flags): the spool exists
    exec_ok(api, own_vm["id"], plant)
    body = _run(api, own_vm, code="result.set(Deno.env.get('SECRET').length)", env=env,
                timeoutMs=30000)
    assert body["result"] == len("top-secret-value") and body["timedOut"] is False, body
    stolen = _exec(api, own_vm, "cat /workspace/stolen.request /workspace/stolen.ts "
                                "2>/dev/null; true")["stdout"]
    assert "top-secret-value" not in stolen and "SECRET" not in stolen, stolen
    _exec(api, own_vm, "pkill -u user -f 'sleep 300|cat /run/rds-deno|cat /tmp/.rds-deno'; "
                       "true")


def test_deno_may_read_what_dns_and_tls_need_and_nothing_else(api, shared_vm):
    code = ("const paths = ['/etc/resolv.conf', '/etc/hosts', '/etc/nsswitch.conf', "
            "'/etc/ssl/certs/ca-certificates.crt'];\n"
            "result.set(paths.map((p) => Deno.readTextFileSync(p).length > 0))")
    body = _run(api, shared_vm, code=code)
    assert body["result"] == [True, True, True, True], body
    for path in ("/etc/passwd", "/etc/ssh/sshd_config", "/proc/self/environ"):
        body = _run(api, shared_vm, code=f"Deno.readTextFileSync('{path}')")
        assert body["error"]["name"] == "NotCapable", (path, body)


# Timeouts that the sandbox user cannot stretch ############################################

def test_timeout_holds_when_the_sandbox_user_stops_its_sshd_session(api, own_vm):
    """`kill -STOP` on the sshd process that serves the connection freezes every channel of
    it: the answer must still come by the deadline + 2 s, and the VM keep working."""
    started = time.monotonic()
    body = _exec(api, own_vm, "kill -STOP $PPID; sleep 30", timeoutMs=3000)
    elapsed = time.monotonic() - started
    assert body["timedOut"] is True and body["exitCode"] == -1, body
    assert elapsed < 3.0 + 2.0, elapsed
    # A new command on a stalled connection: also answered by its deadline.
    started = time.monotonic()
    response = api.request("POST", f"/v1/vms/{own_vm['id']}/exec",
                           json={"cmd": "echo alive", "timeoutMs": 5000})
    assert response.status_code in (200, 504) and time.monotonic() - started < 5.0 + 2.0
    assert exec_ok(api, own_vm["id"], "echo alive")["stdout"] == "alive\n"
    exec_ok(api, own_vm["id"], "pkill -CONT -u user sshd; true")


# kill-marked with hostile names in the spool ##############################################

def test_a_fifo_named_claim_cannot_keep_a_timed_out_tree_alive(api, own_vm):
    """kill-marked read every *.claim with a blocking open: a fifo there kept a timed-out
    tree alive although the answer said it was killed."""
    exec_ok(api, own_vm["id"], f"for spool in {SPOOLS}; do mkdir -p $spool 2>/dev/null; "
                               "mkfifo $spool/trap.claim 2>/dev/null; "
                               "touch \"$spool/a b*.claim\" 2>/dev/null; done; true")
    tag = uuid.uuid4().hex[:12]
    body = _exec(api, own_vm, f"sleep 300 & (exec -a sleeper-{tag} sleep 300) & wait",
                 timeoutMs=2000)
    assert body["timedOut"] is True
    deadline = time.monotonic() + 20
    while True:
        left = _exec(api, own_vm, f"ps -eo args= | grep '^sleeper-{tag}' || true")["stdout"]
        left = left.split()
        if not left or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert left == [], "the timed-out process tree survived"


def test_hostile_claim_names_cannot_make_root_kill_other_processes(api, services, own_vm):
    """Through the guest agent kill-marked runs as root: a claim file whose name splits into
    grep patterns (" -e sshd") must not make it kill sshd or anything not the sandbox's."""
    marker = uuid.uuid4().hex
    exec_ok(api, own_vm["id"],
            f"for spool in {SPOOLS}; do [ -d $spool ] || continue; "
            f"printf %s {marker} > \"$spool/x -e sshd.claim\"; "
            f"printf %s {marker} > \"$spool/y -e init.claim\"; done; true")
    code = services.hypervisor.guest_agent_exec(own_vm["id"], "/usr/local/lib/rds/kill-marked",
                                                [marker], 30)
    assert code == 0
    assert exec_ok(api, own_vm["id"], "echo still-here")["stdout"] == "still-here\n"
    assert services.hypervisor.guest_agent_exec(own_vm["id"], "/bin/sh",
                                                ["-c", "pgrep -x sshd >/dev/null"], 30) == 0


# QEMU confinement ##########################################################################

def test_qemu_runs_as_an_unprivileged_user(api, services, shared_vm):
    """A guest that escaped QEMU is libvirt-qemu on the host, not root."""
    out = subprocess.run(["ps", "-ewwo", "user:32,args"], capture_output=True, text=True,
                         timeout=30, check=True).stdout
    lines = [line for line in out.splitlines() if f"guest={shared_vm['name']}" in line]
    assert lines, out
    user = lines[0].split()[0]
    assert user != "root" and pwd.getpwnam(user).pw_uid != 0, lines[0]


# Bad input that reaches the guest's command line ##########################################

@pytest.mark.parametrize("body", [
    {"cmd": "echo a\u0000b"}, {"cmd": "true", "env": {"A": "x\u0000y"}},
    {"cmd": "true", "env": {"A\u0000": "x"}}, {"cmd": "true", "cwd": "/workspace/\u0000"}])
def test_nul_on_a_guest_command_line_is_400_and_the_vm_keeps_working(api, shared_vm, body):
    """OpenSSH drops the whole connection (every concurrent command) on a NUL in an exec
    request: it must never get that far."""
    response = api.request("POST", f"/v1/vms/{shared_vm['id']}/exec", json=body)
    assert response.status_code == 400 and response.json["message"], response.json
    assert exec_ok(api, shared_vm["id"], "echo ok")["stdout"] == "ok\n"


@pytest.mark.parametrize("raw", [
    b'{"cmd": "echo \\ud800"}', b'{"cmd": "true", "env": {"\\udfff": "x"}}',
    b'{"cmd": ' + b'[' * 5000 + b']' * 5000 + b'}'])
def test_lone_surrogates_and_deep_json_are_400(api, shared_vm, raw):
    response = api.request("POST", f"/v1/vms/{shared_vm['id']}/exec", data=raw,
                           content_type="application/json")
    assert response.status_code == 400 and response.json["message"], response.json
    assert exec_ok(api, shared_vm["id"], "echo ok")["stdout"] == "ok\n"
