"""Streamed exec / run-ts / run-js (``Accept: application/x-ndjson``) against a real guest,
through the real HTTP stack: a live gunicorn with the deploy settings, and the shipped nginx
site in front of it (tests/integration/nginx_site.py).

"Lines arrive while the command runs" is shown without timing: the command prints a line and
then waits for a file that the test creates only after it has received that line; it then
prints whether it saw the file or gave up waiting. A buffered answer could only say "gave up".

The server shares this session's libvirtd and VM but runs none of the hooks that sweep
orphans, build memory snapshots or drain the warm pool. It has one worker with one long-call
slot, so a slot that a stream failed to give back shows as a 429 that never ends.
"""
from __future__ import annotations

import base64
import contextlib
import http.client
import json
import random
import socket
import time
import typing as t
import uuid

import pytest

from tests.integration.conftest import REPO, guest_sh, live_server
from tests.integration.nginx_site import nginx_site

API_KEY = "stream-test-key"
NDJSON = "application/x-ndjson"
CONFIG = f"""
exec(compile(open({str(REPO / "deploy" / "gunicorn.conf.py")!r}).read(), "gunicorn.conf.py",
             "exec"))
# No orphan sweep, no maintainer, no warm-pool drain: this server must not touch libvirt state.
del on_starting, post_worker_init, on_exit
"""
SLOT_WAIT_S = 20  # a slot freed by a stream that ended comes back within this

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    config = tmp_path_factory.mktemp("gunicorn") / "gunicorn.conf.py"
    config.write_text(CONFIG)
    env = {"API_KEY": API_KEY, "WEB_WORKERS": "1", "LONG_CALL_SLOTS": "1",
           "SNAPSHOT_AUTO_BUILD": "false", "ENABLE_WARM_POOL": "false"}
    with live_server(env, "-c", str(config)) as (base, _process):
        port = int(base.rsplit(":", 1)[1])
        yield lambda: http.client.HTTPConnection("127.0.0.1", port, timeout=90)


@pytest.fixture(scope="module")
def proxy(server, tmp_path_factory):
    """nginx with the shipped site in front of the test server (TLS on loopback)."""
    upstream = server().port
    with nginx_site(upstream, tmp_path_factory.mktemp("nginx")) as (port, context):
        yield lambda: http.client.HTTPSConnection("127.0.0.1", port, timeout=90,
                                                  context=context)


@pytest.fixture(params=["direct", "nginx"])
def connect(request):
    return request.getfixturevalue("server" if request.param == "direct" else "proxy")


class Stream:
    """One streamed call: its lines as they arrive."""

    def __init__(self, connection: http.client.HTTPConnection, path: str, body: dict,
                 headers: dict | None = None) -> None:
        self.connection = connection
        connection.request("POST", path, body=json.dumps(body), headers={
            "X-API-Key": API_KEY, "Content-Type": "application/json", "Accept": NDJSON,
            **(headers or {})})
        self.response = connection.getresponse()
        self.lines: list[dict] = []

    def next(self) -> dict:
        raw = self.response.readline()
        assert raw.endswith(b"\n"), f"the stream ended early: {raw!r} after {self.lines}"
        self.lines.append(json.loads(raw))
        return self.lines[-1]

    def next_output(self) -> dict:
        line = self.next()
        assert line["type"] == "output", line
        return line

    def rest(self) -> list[dict]:
        """The lines up to the last one (a result or an error)."""
        while not self.lines or self.lines[-1]["type"] == "output":
            self.next()
        assert self.response.read() == b""
        return self.lines

    def output(self, stream: str) -> bytes:
        return b"".join(base64.b64decode(line["data"]) if line.get("encoding") == "base64"
                        else line["data"].encode() for line in self.lines
                        if line["type"] == "output" and line["stream"] == stream)

    def hang_up(self) -> None:
        """Go away mid-stream, as a killed CI job does."""
        with contextlib.suppress(OSError):
            self.connection.sock.shutdown(socket.SHUT_RDWR)
        self.connection.close()


def stream(connect: t.Callable, vm_id: str, route: str, body: dict,
           headers: dict | None = None) -> Stream:
    """A streamed call, retried while the server's one long-call slot is still taken."""
    deadline = time.monotonic() + SLOT_WAIT_S
    while True:
        started = Stream(connect(), f"/v1/vms/{vm_id}/{route}", body, headers)
        if started.response.status != 429 or time.monotonic() > deadline:
            return started
        started.hang_up()
        time.sleep(0.5)


def buffered(connect: t.Callable, vm_id: str, route: str, body: dict) -> tuple[int, dict]:
    """The plain JSON call, retried while the long-call slot is still taken."""
    deadline = time.monotonic() + SLOT_WAIT_S
    while True:
        connection = connect()
        try:
            connection.request("POST", f"/v1/vms/{vm_id}/{route}", body=json.dumps(body),
                               headers={"X-API-Key": API_KEY,
                                        "Content-Type": "application/json"})
            response = connection.getresponse()
            status, answer = response.status, json.loads(response.read())
        finally:
            connection.close()
        if status != 429 or time.monotonic() > deadline:
            return status, answer
        time.sleep(0.5)


def wait_for_file_then_say(path: str) -> str:
    """Shell: wait (30 s and more) for ``path``, then print whether it came."""
    return (f"i=0; while [ ! -e {path} ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done; "
            f"if [ -e {path} ]; then echo saw-it; else echo gave-up; fi")


def without_output(answer: dict) -> dict:
    """An answer without what the output lines carry or differs from run to run (the time,
    the name of the file Deno ran, in the stack)."""
    kept = {key: value for key, value in answer.items()
            if key not in ("type", "stdout", "stderr", "durationMs")}
    if isinstance(kept.get("error"), dict):
        kept["error"] = {**kept["error"], "stack": kept["error"]["stack"].split("\n")[0]}
    return kept


# Lines arrive while the command runs ######################################################

def test_lines_arrive_while_the_command_runs(connect, services, shared_vm):
    go = f"/workspace/go-{uuid.uuid4().hex}"
    call = stream(connect, shared_vm["id"], "exec",
                  {"cmd": f"echo first; {wait_for_file_then_say(go)}; echo done >&2",
                   "timeoutMs": 90_000},
                  headers={"Accept-Encoding": "gzip"})
    assert call.response.status == 200
    assert call.response.getheader("Content-Type") == NDJSON
    assert call.response.getheader("Content-Encoding") is None  # never gzipped
    assert call.next_output() == {"type": "output", "stream": "stdout", "data": "first\n"}
    guest_sh(services, shared_vm["id"], f"touch {go}")  # only now may the command go on
    lines = call.rest()
    assert call.output("stdout") == b"first\nsaw-it\n"
    assert call.output("stderr") == b"done\n"
    assert lines[-1]["type"] == "result" and lines[-1]["exitCode"] == 0
    assert (lines[-1]["stdout"], lines[-1]["stderr"]) == ("", "")


def test_run_ts_lines_arrive_while_it_runs(connect, services, shared_vm):
    go = f"/workspace/go-{uuid.uuid4().hex}"
    code = ("console.log('first');\nlet seen = false;\n"
            "for (let i = 0; i < 300 && !seen; i++) {\n"
            f"  try {{ Deno.statSync('{go}'); seen = true; }}\n"
            "  catch { await new Promise((done) => setTimeout(done, 100)); }\n}\n"
            "console.error('bye');\nresult.set({seen});\n")
    call = stream(connect, shared_vm["id"], "run-ts", {"code": code, "timeoutMs": 90_000})
    assert call.response.status == 200
    assert call.next_output() == {"type": "output", "stream": "stdout", "data": "first\n"}
    guest_sh(services, shared_vm["id"], f"touch {go}")
    lines = call.rest()
    assert call.output("stderr") == b"bye\n"  # the runner's outcome is not in it
    assert lines[-1]["type"] == "result" and lines[-1]["result"] == {"seen": True}


# The same answer as the buffered call #####################################################

@pytest.mark.parametrize(("route", "body"), [
    ("exec", {"cmd": "printf 'out\\n'; printf 'caf\\303'; sleep 0.3; printf '\\251\\n'; "
                     "echo err >&2; exit 3"}),
    ("run-ts", {"code": "console.log('ts'); console.error('warn'); "
                        "result.error(new TypeError('nope'))"}),
    ("run-js", {"code": "console.log('js'); result.set([1, 'a'])"}),
])
def test_the_result_line_is_the_buffered_answer(server, shared_vm, route, body):
    status, whole = buffered(server, shared_vm["id"], route, body)
    assert status == 200, whole
    call = stream(server, shared_vm["id"], route, body)
    lines = call.rest()
    assert all(line["type"] == "output" for line in lines[:-1])
    assert all("encoding" not in line for line in lines[:-1])  # a split "é" stayed text
    assert call.output("stdout").decode() == whole["stdout"]
    assert call.output("stderr").decode() == whole["stderr"]
    assert without_output(lines[-1]) == without_output(whole)
    if route != "exec":
        assert whole.get("result", whole.get("error")) is not None


def test_output_that_is_not_utf8_arrives_byte_for_byte(server, shared_vm):
    call = stream(server, shared_vm["id"], "exec",
                  {"cmd": "printf 'ok\\377\\376\\000end'; head -c 3000 /dev/urandom >&2"})
    lines = call.rest()
    assert call.output("stdout") == b"ok\xff\xfe\x00end"
    assert len(call.output("stderr")) == 3000
    assert any(line.get("encoding") == "base64" for line in lines[:-1])
    assert lines[-1]["exitCode"] == 0


def test_timeout_and_cap_as_in_the_buffered_answer(server, shared_vm, services):
    cap = services.settings.max_output_bytes
    call = stream(server, shared_vm["id"], "exec",
                  {"cmd": "head -c 1500000 /dev/zero | tr '\\0' x; sleep 4341",
                   "timeoutMs": 3000})
    lines = call.rest()
    assert call.output("stdout") == b"x" * cap
    assert "timed out after 3000 ms" in call.output("stderr").decode()
    assert lines[-1]["timedOut"] is True and lines[-1]["exitCode"] == -1
    assert lines[-1]["stdoutTruncated"] is True
    assert guest_sh(services, shared_vm["id"], "ps -eo args | grep -c '[s]leep 4341' || true"
                    ).strip() == "0"


# A client that goes away ##################################################################

def test_hanging_up_kills_the_process_tree(connect, shared_vm):
    tag = random.randint(10_000, 99_999)  # names this test's processes
    call = stream(connect, shared_vm["id"], "exec", {
        "cmd": f"echo started; sleep {tag}1 & (sleep {tag}2 &); sleep {tag}3; echo never",
        "timeoutMs": 100_000})
    assert call.next_output()["data"] == "started\n"
    call.hang_up()
    deadline = time.monotonic() + 30
    while True:  # also shows that the stream gave its long-call slot back
        status, answer = buffered(connect, shared_vm["id"], "exec",
                                  {"cmd": f"ps -eo args | grep -c '[s]leep {tag}' || true"})
        assert status == 200, answer
        if answer["stdout"].strip() == "0" or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert answer["stdout"].strip() == "0", "the command outlived its client"


# Bad input ################################################################################

@pytest.mark.parametrize(("route", "body"), [
    ("exec", {"cmd": "pwd", "cwd": "does/not/exist"}), ("exec", {"cmd": "x", "cwd": "/etc"}),
    ("exec", {"cmd": "true", "timeoutMs": 120_001}), ("exec", {"cmd": 5}),
    ("exec", {"cmd": "a\u0000b"}), ("run-ts", {"code": "1", "denoFlags": ["--allow-all"]}),
])
def test_bad_input_is_the_buffered_error_not_a_stream(connect, shared_vm, route, body):
    status, whole = buffered(connect, shared_vm["id"], route, body)
    call = stream(connect, shared_vm["id"], route, body)
    try:
        assert call.response.status == status == 400
        assert call.response.getheader("Content-Type") == "application/json"
        assert json.loads(call.response.read())["message"] == whole["message"]
    finally:
        call.hang_up()
