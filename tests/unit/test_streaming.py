"""Streamed exec / run-ts / run-js (``Accept: application/x-ndjson``) through the API on fakes:
the lines and the result as in the buffered answer, caps and timeouts, a client that goes away,
the long-call slot, and bad input answered exactly as the buffered call answers it. The line
encoding itself: test_ndjson_lines.py."""
from __future__ import annotations

import base64
import dataclasses
import json
import re

import pytest

from app import create_app
from app.api import ndjson
from app.api.ndjson import NDJSON
from app.errors import GuestUnreachable
from app.models import VmSpec
from app.schemas.commands import ErrorLineSchema

STREAM = {"Accept": NDJSON}
TOKEN_IN_REQUEST = re.compile(r'"token": "([0-9a-f]{32})"')


@pytest.fixture
def vm_id(services) -> str:
    return services.vms.create(VmSpec(cpu=1, mem_mb=256)).id


@pytest.fixture
def guest(services, vm_id):
    """The VM's FakeGuest, with no command seen yet."""
    fake = services.vms.guest(vm_id)
    fake.commands.clear()
    return fake


def post(client, auth, vm_id: str, route: str, body: dict, streamed: bool = True, **kwargs):
    headers = {**auth, **(STREAM if streamed else {})}
    return client.post(f"/v1/vms/{vm_id}/{route}", json=body, headers=headers, **kwargs)


def lines_of(response) -> list[dict]:
    assert response.status_code == 200, response.text
    assert response.mimetype == NDJSON
    body = response.get_data()
    response.close()  # as a WSGI server does at the end
    assert body.endswith(b"\n")
    return [json.loads(line) for line in body.split(b"\n")[:-1]]


def output(lines: list[dict], stream: str) -> bytes:
    """The bytes the output lines of ``stream`` carried, in order."""
    return b"".join(base64.b64decode(line["data"]) if line.get("encoding") == "base64"
                    else line["data"].encode() for line in lines
                    if line["type"] == "output" and line["stream"] == stream)


def kills(fake) -> list[str]:
    return [command for command in fake.commands if "kill-marked" in command]


def marker_of(command: str) -> str:
    return re.search(r"RDS_EXEC_ID=([0-9a-f]{32})", command).group(1)


# The streamed answer ######################################################################

def test_output_lines_as_they_come_then_the_result(client, auth, vm_id, guest):
    guest.scripts.append({"steps": [("stdout", b"one\n"), ("stderr", b"warn\n"),
                                    ("stdout", b"two\n")], "exit_code": 3})
    response = post(client, auth, vm_id, "exec", {"cmd": "work"})
    assert response.headers["X-Accel-Buffering"] == "no"
    lines = lines_of(response)
    assert lines[:-1] == [
        {"type": "output", "stream": "stdout", "data": "one\n"},
        {"type": "output", "stream": "stderr", "data": "warn\n"},
        {"type": "output", "stream": "stdout", "data": "two\n"}]
    assert lines[-1] == {"type": "result", "exitCode": 3, "stdout": "", "stderr": "",
                         "timedOut": False, "stdoutTruncated": False,
                         "stderrTruncated": False, "durationMs": lines[-1]["durationMs"]}
    assert guest.started[0].closed and not kills(guest)


@pytest.mark.parametrize("route", ["exec", "run-ts", "run-js"])
def test_the_result_line_is_the_buffered_answer(client, auth, vm_id, guest, route):
    def outcome(running):
        token = TOKEN_IN_REQUEST.search(running.command + running.stdin.decode())
        return "stderr", b"\n\x1e" + token.group(1).encode() + b'{"result": {"n": 1}}\n'

    script = {"steps": [("stdout", b"out\xc3"), ("stdout", b"\xa9\n"), ("stderr", b"err\n"),
                        *([outcome] if route != "exec" else [])], "exit_code": 0}
    body = {"cmd": "x"} if route == "exec" else {"code": "x"}
    guest.scripts.append(dict(script))
    buffered = post(client, auth, vm_id, route, body, streamed=False).get_json()
    guest.scripts.append(dict(script))
    lines = lines_of(post(client, auth, vm_id, route, body))
    result = dict(lines[-1])
    assert result.pop("type") == "result"
    assert output(lines, "stdout").decode() == buffered["stdout"] == "outé\n"
    assert output(lines, "stderr").decode() == buffered["stderr"] == "err\n"
    for answer in (buffered, result):
        del answer["durationMs"], answer["stdout"], answer["stderr"]
    assert result == buffered
    assert ("result" in result) is (route != "exec")


@pytest.mark.parametrize(("accept", "streamed"), [
    (None, False), ("*/*", False), ("application/json", False), ("text/html", False),
    ("application/json, application/x-ndjson;q=0.5", False), ("application/*", False),
    ("application/x-ndjson", True), ("application/x-ndjson, application/json", True),
    ("application/json;q=0.5, application/x-ndjson", True),
    ("application/x-ndjson, */*;q=0.1", True)])
def test_only_an_accept_that_prefers_ndjson_streams(client, auth, vm_id, guest, accept,
                                                   streamed):
    headers = {**auth, **({"Accept": accept} if accept else {})}
    response = client.post(f"/v1/vms/{vm_id}/exec", json={"cmd": "true"}, headers=headers)
    assert response.status_code == 200
    assert response.mimetype == (NDJSON if streamed else "application/json")
    assert bool(guest.started) is streamed
    if not streamed:
        assert response.get_json()["exitCode"] == 0


def test_output_past_the_cap_is_dropped_and_flagged(client, auth, services, vm_id, guest):
    services.commands.settings = dataclasses.replace(services.settings, max_output_bytes=10)
    guest.scripts.append({"steps": [("stdout", b"01234567"), ("stdout", b"89abcdef"),
                                    ("stderr", b"a\xc3\xa9bc\xe2\x82\xac"), ("stdout", b"z")]})
    lines = lines_of(post(client, auth, vm_id, "exec", {"cmd": "x"}))
    assert output(lines, "stdout") == b"0123456789"
    assert output(lines, "stderr") == "aébc€".encode()  # 9 bytes: within the cap
    assert lines[-1]["stdoutTruncated"] is True and lines[-1]["stderrTruncated"] is False


def test_a_cap_inside_a_character_sends_its_bytes(client, auth, services, vm_id, guest):
    services.commands.settings = dataclasses.replace(services.settings, max_output_bytes=2)
    guest.scripts.append({"steps": [("stdout", b"a\xc3\xa9")]})
    lines = lines_of(post(client, auth, vm_id, "exec", {"cmd": "x"}))
    assert lines[:-1] == [{"type": "output", "stream": "stdout", "data": "a"},
                          {"type": "output", "stream": "stdout", "data": "ww==",
                           "encoding": "base64"}]
    assert lines[-1]["stdoutTruncated"] is True


def test_a_timeout_kills_the_tree_and_ends_with_the_note(client, auth, vm_id, guest):
    guest.scripts.append({"steps": [("stdout", b"started\n"), 10.0]})
    lines = lines_of(post(client, auth, vm_id, "exec", {"cmd": "x", "timeoutMs": 300}))
    assert lines[0] == {"type": "output", "stream": "stdout", "data": "started\n"}
    assert lines[-2]["stream"] == "stderr" and "timed out after 300 ms" in lines[-2]["data"]
    assert lines[-1]["timedOut"] is True and lines[-1]["exitCode"] == -1
    assert lines[-1]["durationMs"] >= 300
    assert kills(guest) == [f"/usr/local/lib/rds/kill-marked "
                            f"{marker_of(guest.started[0].command)}"]


def test_an_error_after_the_start_is_the_last_line(client, auth, vm_id, guest):
    guest.scripts.append({"steps": [("stdout", b"a\n"),
                                    GuestUnreachable("guest 172.16.0.9 dropped the command")]})
    lines = lines_of(post(client, auth, vm_id, "exec", {"cmd": "x"}))
    assert lines[0]["data"] == "a\n"
    assert lines[-1] == {"type": "error", "message": "guest 172.16.0.9 dropped the command"}
    assert ErrorLineSchema().load(lines[-1]) == lines[-1]
    assert len(kills(guest)) == 1  # it may still run: killed to be sure


def test_a_cwd_the_guest_refuses_is_a_400_before_any_line(client, auth, vm_id, guest):
    guest.scripts.append({"refuse": (210, b"rds-exec: cwd /workspace/nope does not exist or "
                                          b"is not a directory\n")})
    response = post(client, auth, vm_id, "exec", {"cmd": "x", "cwd": "/workspace/nope"})
    assert response.status_code == 400
    assert response.get_json() == {
        "message": "cwd /workspace/nope does not exist or is not a directory"}
    assert guest.started[0].closed and not kills(guest)


# A client that goes away ##################################################################

@pytest.fixture
def one_slot_app(services):
    services.settings = dataclasses.replace(services.settings, long_call_slots=1)
    return create_app({"TESTING": True}, services=services)


def test_closing_the_stream_kills_the_tree_and_frees_the_slot(one_slot_app, auth, vm_id, guest):
    client = one_slot_app.test_client()
    guest.scripts.append({"steps": [("stdout", b"tick\n"), 30.0]})
    response = post(client, auth, vm_id, "exec", {"cmd": "x"}, buffered=False)
    body = iter(response.response)
    first = b""
    while not first:
        first = next(body)
    assert json.loads(first)["data"] == "tick\n"
    busy = post(client, auth, vm_id, "exec", {"cmd": "true"}, streamed=False)
    assert busy.status_code == 429  # the stream still holds the worker's one slot
    response.close()  # what the WSGI server does when the client has gone
    assert kills(guest) == [f"/usr/local/lib/rds/kill-marked "
                            f"{marker_of(guest.started[0].command)}"]
    assert guest.started[0].closed
    assert post(client, auth, vm_id, "exec", {"cmd": "true"}, streamed=False).status_code == 200


def test_a_finished_stream_frees_the_slot(one_slot_app, auth, vm_id, guest):
    client = one_slot_app.test_client()
    for _round in range(3):
        assert lines_of(post(client, auth, vm_id, "exec", {"cmd": "x"}))[-1]["exitCode"] == 0
    assert not kills(guest)


def test_a_quiet_command_is_killed_once_its_client_is_gone(client, auth, vm_id, guest,
                                                         monkeypatch):
    gone = {"now": False}
    monkeypatch.setattr(ndjson, "client_gone", lambda _environ: lambda: gone["now"])
    guest.scripts.append({"steps": [("stdout", b"tick\n"), 0.2,
                                    lambda _running: gone.update(now=True) or 30.0]})
    lines = lines_of(post(client, auth, vm_id, "exec", {"cmd": "x"}))
    assert lines == [{"type": "output", "stream": "stdout", "data": "tick\n"}]  # no result
    assert guest.started[0].stopped and len(kills(guest)) == 1


# Bad input: the same answer as the buffered call ##########################################

DEEP = "[" * 2000 + "]" * 2000
BAD_INPUT = [
    ("exec", {"cmd": 1}), ("exec", {"cmd": ""}), ("exec", {"cmd": "a\0b"}),
    ("exec", {"cmd": "x", "timeoutMs": 10**9}), ("exec", {"cmd": "x", "timeoutMs": "5"}),
    ("exec", {"cmd": "x", "timeoutMs": 0}), ("exec", {"cmd": "x", "env": ["NOEQUALS"]}),
    ("exec", {"cmd": "x", "env": {"1A": "x"}}), ("exec", {"cmd": "x", "env": {"A": "\0"}}),
    ("exec", {"cmd": "x", "cwd": "/etc"}), ("exec", {"cmd": "x", "extra": 1}),
    ("exec", {"cmd": "é" * 99_000}), ("exec", '{"cmd": "\\ud800"}'), ("exec", DEEP),
    ("exec", '{"cmd": "x", "timeoutMs": NaN}'), ("exec", "not json"),
    ("run-ts", {"code": "1", "path": "a.ts"}), ("run-ts", {}),
    ("run-ts", {"code": "1", "denoFlags": ["--allow-all"]}),
    ("run-ts", {"code": "1", "env": ["NOEQUALS"]}), ("run-ts", {"code": "1", "args": "a"}),
    ("run-ts", {"path": "../etc/passwd"}), ("run-ts", '{"code": "\\udfff"}'),
    ("run-ts", {"code": "1", "timeoutMs": 120_001}), ("run-js", {"code": 5}),
    ("run-js", {"code": "1", "nodeFlags": ["--inspect"]}), ("run-js", DEEP),
]


@pytest.mark.parametrize(("route", "body"), BAD_INPUT)
def test_bad_input_gets_the_buffered_answer(client, auth, vm_id, guest, route, body):
    def send(streamed: bool):
        headers = {**auth, **(STREAM if streamed else {})}
        data = body if isinstance(body, str) else json.dumps(body)
        return client.post(f"/v1/vms/{vm_id}/{route}", data=data, headers=headers,
                           content_type="application/json")

    buffered, streamed = send(False), send(True)
    assert 400 <= buffered.status_code < 500, buffered.text
    assert streamed.status_code == buffered.status_code
    assert streamed.mimetype == "application/json"
    # The same message (a streamed command line is longer by the start announcement).
    assert re.sub(r"\d+", "N", streamed.get_json()["message"]) == \
        re.sub(r"\d+", "N", buffered.get_json()["message"])
    assert guest.started == []


@pytest.mark.parametrize("route", ["exec", "run-ts", "run-js"])
def test_unknown_and_stopped_vms_are_json_errors(client, auth, services, vm_id, route):
    body = {"cmd": "x"} if route == "exec" else {"code": "x"}
    response = post(client, auth, "00000000-0000-4000-8000-00000000dead", route, body)
    assert response.status_code == 404 and response.get_json()["message"]
    services.vms.stop(vm_id)
    response = post(client, auth, vm_id, route, body)
    assert response.status_code == 409 and response.get_json()["message"]
