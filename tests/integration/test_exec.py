"""POST /v1/vms/{id}/exec against a real guest."""
from __future__ import annotations

import concurrent.futures
import re
import time

import paramiko
import pytest

from app.guestssh import GUEST_MAX_SESSIONS, GuestTransport
from tests.integration.conftest import HEADERS, exec_ok


def _exec(api, vm, **body):
    return api.request("POST", f"/v1/vms/{vm['id']}/exec", json=body)


def test_runs_as_uid_1000_in_workspace(api, shared_vm):
    out = exec_ok(api, shared_vm["id"], "id -u; id -g; pwd")
    assert out["stdout"].split() == ["1000", "1000", "/workspace"]
    assert out["timedOut"] is False and out["stderr"] == ""


def test_sandbox_environment_and_limits(api, shared_vm):
    """What every command starts with: the sandbox's fixed environment (from the guest's sshd),
    nothing of the SSH session, and the process/open-file limits that keep a fork bomb from
    exhausting the VM."""
    out = exec_ok(api, shared_vm["id"],
                  'ulimit -u; ulimit -n; echo "$HOME|$PATH|$DENO_DIR|$TMPDIR|$USER"; '
                  'env | grep -c -E "^(SSH_|MAIL=)" || true; '
                  'echo "$RDS_EXEC_ID"')["stdout"].split("\n")
    assert out[:2] == ["512", "4096"]
    assert out[2] == "/workspace|/usr/local/bin:/usr/bin:/bin|/var/cache/rds-deno|/tmp|user"
    assert out[3] == "0"
    assert re.fullmatch(r"[0-9a-f]{32}", out[4])  # the marker, from the env request


def test_only_the_sandbox_users_processes_lose_address_randomization_and_only_under_tcg(
        api, services, shared_vm):
    """Under TCG the login shell (sandbox-shell) sets ADDR_NO_RANDOMIZE for the command and
    everything it starts: libc lands where it did for the last command. Root's processes
    (sshd, the guest agent) keep randomization, and so does the whole guest under KVM."""
    tcg = api.request("GET", "/healthz").json["accelerator"] == "tcg"
    out = exec_ok(api, shared_vm["id"],
                  "cat /proc/self/personality; cat /proc/sys/kernel/randomize_va_space; "
                  "for i in 1 2; do bash -c 'grep -m1 libc /proc/self/maps'; done; "
                  "bash -c 'cat /proc/self/personality'")["stdout"].split("\n")
    assert out[0] == ("00040000" if tcg else "00000000")
    assert out[1] == "2"
    assert (out[2] == out[3]) is tcg  # the same libc address twice only without randomization
    assert out[4] == out[0]  # inherited
    # As root through the guest agent: its shell, and every sshd (the listener, the session
    # monitors, the sessions' own sshd processes) run randomized.
    root_check = ('[ "$(cat /proc/self/personality)" = 00000000 ] || exit 2; n=0; '
                  'for p in /proc/[0-9]*; do [ "$(cat $p/comm 2>/dev/null)" = sshd ] || continue; '
                  '[ "$(cat $p/personality)" = 00000000 ] || exit 3; n=$((n + 1)); done; '
                  '[ $n -gt 0 ] || exit 4')
    assert services.hypervisor.guest_agent_exec(shared_vm["id"], "/bin/sh", ["-c", root_check],
                                                30) == 0


def test_exit_code_stderr_and_env(api, shared_vm):
    response = _exec(api, shared_vm, cmd='echo "$GREETING $OTHER"; echo oops >&2; exit 7',
                     env={"GREETING": "hello world", "OTHER": "it's"})
    assert response.status_code == 200
    assert response.json["exitCode"] == 7
    assert response.json["stdout"] == "hello world it's\n"
    assert response.json["stderr"] == "oops\n"


@pytest.mark.parametrize("cwd, expected", [("sub", "/workspace/sub"),
                                           ("/workspace/sub", "/workspace/sub"),
                                           ("/home/user/sub", "/workspace/sub")])
def test_cwd_inside_workspace(api, shared_vm, cwd, expected):
    exec_ok(api, shared_vm["id"], "mkdir -p /workspace/sub")
    assert exec_ok(api, shared_vm["id"], "pwd", cwd=cwd)["stdout"].strip() == expected


@pytest.mark.parametrize("cwd", ["/etc", "../", "/workspace/../etc", "/home/user/../../root"])
def test_cwd_outside_workspace_is_400(api, shared_vm, cwd):
    response = _exec(api, shared_vm, cmd="pwd", cwd=cwd)
    assert response.status_code == 400 and "workspace" in response.json["message"]


def test_cwd_through_symlink_out_is_400(api, shared_vm):
    exec_ok(api, shared_vm["id"], "ln -sfn /etc /workspace/etc-link")
    response = _exec(api, shared_vm, cmd="pwd", cwd="etc-link")
    assert response.status_code == 400 and "outside /workspace" in response.json["message"]


def test_missing_cwd_is_400(api, shared_vm):
    response = _exec(api, shared_vm, cmd="pwd", cwd="does/not/exist")
    assert response.status_code == 400 and "does not exist" in response.json["message"]


@pytest.mark.parametrize("body", [{"cmd": "true", "timeoutMs": 120_001},
                                  {"cmd": "true", "timeoutMs": 0},
                                  {"cmd": "true", "env": {"BAD NAME": "x"}},
                                  {"cmd": ""}, {}])
def test_invalid_exec_is_400(api, shared_vm, body):
    response = _exec(api, shared_vm, **body)
    assert response.status_code == 400 and response.json["message"]


def test_timeout_kills_the_whole_tree(api, shared_vm):
    """Children, grandchildren, one that cleared its environment (found by its session) and
    one in a session of its own (found by the marker sshd put in its environment: the env
    request, AcceptEnv). A process an earlier command left running is not of that tree and
    stays."""
    exec_ok(api, shared_vm["id"], "setsid sleep 4331 > /dev/null 2>&1 < /dev/null & true")
    response = _exec(api, shared_vm, cmd="sleep 4321 & (sleep 4322 &); env -i /bin/sleep 4324 & "
                                         "setsid sleep 4325 & sleep 4323; echo never",
                     timeoutMs=2000)
    assert response.status_code == 200
    body = response.json
    assert body["exitCode"] == -1 and body["timedOut"] is True
    assert "timed out" in body["stderr"] and "never" not in body["stdout"]
    left = exec_ok(api, shared_vm["id"], "ps -eo args | grep -c '[s]leep 432' || true")
    assert left["stdout"].strip() == "0"
    other = exec_ok(api, shared_vm["id"], "ps -eo args | grep -c '[s]leep 4331' || true")
    exec_ok(api, shared_vm["id"], "pkill -f 'slee[p] 4331'; true")
    assert other["stdout"].strip() == "1"


def test_big_output_is_truncated_and_flagged(api, shared_vm, services):
    cap = services.settings.max_output_bytes
    body = exec_ok(api, shared_vm["id"], "head -c 5000000 /dev/zero | tr '\\0' x; echo e >&2")
    assert body["stdoutTruncated"] is True and len(body["stdout"]) == cap
    assert set(body["stdout"]) == {"x"}
    assert body["stderrTruncated"] is False and body["stderr"] == "e\n"


def test_binary_output_does_not_break_the_response(api, shared_vm):
    body = exec_ok(api, shared_vm["id"], "printf 'ok\\377\\376\\000end'")
    assert body["stdout"].startswith("ok") and body["stdout"].endswith("end")
    assert "\ufffd" in body["stdout"]


def test_concurrent_execs(app, shared_vm):
    def run(index: int) -> str:
        client = app.test_client()
        response = client.post(f"/v1/vms/{shared_vm['id']}/exec", headers=HEADERS,
                               json={"cmd": f"sleep 1; echo job-{index}"})
        assert response.status_code == 200, response.json
        return response.json["stdout"].strip()

    with concurrent.futures.ThreadPoolExecutor(max_workers=6) as pool:
        outputs = list(pool.map(run, range(6)))
    assert outputs == [f"job-{i}" for i in range(6)]


def test_sandbox_user_cannot_become_root_or_read_secrets(api, shared_vm):
    script = r"""
        command -v sudo && echo HAVE_SUDO
        su -c id root </dev/null 2>/dev/null && echo SU_WORKED
        cat /etc/ssh/ssh_host_ed25519_key 2>/dev/null && echo READ_HOST_KEY
        cat /sys/firmware/qemu_fw_cfg/by_name/opt/org.rundatsheesh/ssh_host_ed25519_key/raw \
            2>/dev/null && echo READ_FWCFG
        cat /etc/shadow 2>/dev/null && echo READ_SHADOW
        touch /etc/x /usr/x /x 2>/dev/null && echo WROTE_OUTSIDE
        touch /workspace/ok /tmp/ok /var/tmp/ok && echo WRITES_OK
    """
    body = exec_ok(api, shared_vm["id"], script)
    assert body["stdout"].split() == ["WRITES_OK"]


def test_the_guest_connection_uses_aes_gcm(services, shared_vm):
    """AES-GCM needs no separate MAC: the cheapest choice for an emulated guest's sshd."""
    guest = services.vms.guest(shared_vm["id"])
    assert guest.run("true", timeout=30).exit_code == 0
    assert guest._transport(time.monotonic() + 30).remote_cipher == "aes128-gcm@openssh.com"


def test_execs_run_on_channels_requested_ahead_and_leave_none_open(api, shared_vm,
                                                                   monkeypatch):
    """Each command's exec request carries the next command's channel request
    (app/guestssh/spare.py). On a real guest: 80 execs in a row, more than its sshd's
    MaxSessions (64), so a session left open per exec would fail the last ones, and none
    after the first waits for a channel open of its own."""
    opened: list[float] = []
    open_session = GuestTransport.open_session

    def counted(self, *args, **kwargs):
        opened.append(time.monotonic())
        return open_session(self, *args, **kwargs)

    monkeypatch.setattr(GuestTransport, "open_session", counted)
    for index in range(80):
        assert exec_ok(api, shared_vm["id"], f"echo {index}")["stdout"] == f"{index}\n"
    assert len(opened) <= 1  # 0 when an earlier test's command left a spare


def test_a_vm_at_its_session_limit_answers_429_and_keeps_its_commands(api, services,
                                                                      shared_vm):
    """The guest's sshd runs at most MaxSessions (64) channels per connection; the channels
    held here run nothing (no process in the guest). Past the limit an exec is refused with
    429, and the connection and its channels stay: one fewer, and execs run again."""
    guest = services.vms.guest(shared_vm["id"])
    guest.close()  # a new connection, with no channel requested ahead
    transport = guest._transport(time.monotonic() + 30)
    held = []
    try:
        with pytest.raises(paramiko.ChannelException):
            while len(held) <= GUEST_MAX_SESSIONS:
                held.append(transport.open_session(timeout=10))
        assert len(held) == GUEST_MAX_SESSIONS
        response = _exec(api, shared_vm, cmd="true")
        assert response.status_code == 429, response.json
        assert response.headers["Retry-After"] == "1"
        assert "as many commands at once" in response.json["message"]
        assert guest._transport(time.monotonic() + 30) is transport
        assert not any(channel.closed for channel in held)
        held.pop().close()
        time.sleep(0.5)  # the guest's sshd frees the session
        assert exec_ok(api, shared_vm["id"], "echo again")["stdout"] == "again\n"
    finally:
        for channel in held:
            channel.close()
