"""The lines of a streamed answer (app/api/ndjson.py) and the run-ts/run-js outcome taken off
a streamed stderr (app/services/outcome.py): pure code, no app."""
from __future__ import annotations

import base64
import json
import socket

import pytest
from hypothesis import given, settings, strategies as st

from app.api import ndjson
from app.api.ndjson import LineEncoder, client_gone
from app.models import CommandResult, OutputChunk
from app.schemas.commands import OutputLineSchema
from app.services.outcome import OutcomeFilter
from tests.unit.test_streaming import output


# The line encoding ########################################################################

def encode_all(chunks: list[tuple[str, bytes]]) -> list[dict]:
    encoder = LineEncoder()
    lines = [line for stream, data in chunks for line in encoder.encode(OutputChunk(stream, data))]
    return [json.loads(line) for line in [*lines, *encoder.flush()]]


def test_a_character_split_between_chunks_stays_text():
    lines = encode_all([("stdout", b"caf\xc3"), ("stdout", b"\xa9 \xf0\x9f"),
                        ("stdout", b"\x98"), ("stdout", b"\x80!\n")])
    assert [line["data"] for line in lines] == ["caf", "é ", "\U0001F600!\n"]
    assert all("encoding" not in line for line in lines)


@pytest.mark.parametrize(("chunks", "expected"), [
    ([b"\xff\xfebin"], [("base64", b"\xff\xfebin")]),
    ([b"\xed\xa0\x80"], [("base64", b"\xed\xa0\x80")]),  # an encoded lone surrogate
    ([b"ok\xc3", b"x"], [("text", "ok"), ("base64", b"\xc3"), ("text", "x")]),
    ([b"end\xe2\x82"], [("text", "end"), ("base64", b"\xe2\x82")]),  # flushed at the end
    ([b"a\x00b\n\t\x1b[0m"], [("text", "a\x00b\n\t\x1b[0m")]),  # controls are text
], ids=["binary", "surrogate", "character-never-ends", "held-at-the-end", "controls"])
def test_bytes_that_are_not_utf8_go_as_base64(chunks, expected):
    lines = encode_all([("stderr", chunk) for chunk in chunks])
    assert [("base64", base64.b64decode(line["data"])) if line.get("encoding") else
            ("text", line["data"]) for line in lines] == expected
    for line in lines:
        assert OutputLineSchema().load(line) == line


def test_each_stream_holds_its_own_split_character():
    lines = encode_all([("stdout", b"\xc3"), ("stderr", b"err"), ("stdout", b"\xa9")])
    assert [(line["stream"], line["data"]) for line in lines] == [("stderr", "err"),
                                                                  ("stdout", "é")]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["stdout", "stderr"]), st.binary(max_size=12))))
def test_the_lines_carry_exactly_the_bytes(chunks):
    lines = encode_all(chunks)
    for stream in ("stdout", "stderr"):
        assert output(lines, stream) == b"".join(data for name, data in chunks if name == stream)
    for line in lines:
        assert OutputLineSchema().load(line) == line
        assert line["data"]


def test_lines_are_single_lines_of_utf8():
    encoder = LineEncoder()
    lines = encoder.encode(OutputChunk("stdout", "a\nb\r\u2028é\n".encode()))
    assert len(lines) == 1 and lines[0].endswith(b"\n") and lines[0].count(b"\n") == 1
    assert json.loads(lines[0].decode("utf-8"))["data"] == "a\nb\r\u2028é\n"
    assert ndjson.json_line({"result": "\ud800"}) == b'{"result": "\\ud800"}\n'


# The runner's outcome on a streamed stderr ################################################

def test_the_outcome_is_taken_off_stderr_even_when_split_byte_by_byte():
    token = b"\x1e" + b"ab" * 16
    stderr = b"warn\n\n" + token + b'{"result": [1, 2]}\n'
    outcome = OutcomeFilter(token)
    visible = b"".join(outcome.feed(stderr[i:i + 1]) for i in range(len(stderr)))
    visible += outcome.flush()
    assert visible == b"warn\n"
    assert outcome.outcome(None) == {"result": [1, 2]}


def test_without_an_outcome_a_load_error_becomes_the_error():
    outcome = OutcomeFilter(b"\x1etok")
    visible = outcome.feed(b"error: SyntaxError: Unexpected token\n  at x\n") + outcome.flush()
    assert visible.startswith(b"error: SyntaxError")
    failed = CommandResult(exit_code=1, stdout=b"", stderr=b"")
    assert outcome.outcome(failed) == {
        "error": {"name": "SyntaxError", "message": "Unexpected token", "stack": ""}}


def test_a_stderr_that_only_looks_like_the_token_is_passed_on():
    outcome = OutcomeFilter(b"\x1e" + b"cd" * 16)
    visible = outcome.feed(b"x\n\x1ecdcd") + outcome.feed(b"nope\n") + outcome.flush()
    assert visible == b"x\n\x1ecdcdnope\n"


# The client's connection ##############################################################

def test_client_gone_sees_the_peer_close_and_not_its_data():
    ours, theirs = socket.socketpair()
    try:
        gone = client_gone({"gunicorn.socket": ours})
        assert not gone()
        theirs.sendall(b"GET / HTTP/1.1\r\n\r\n")  # a pipelined request is no hang-up
        assert not gone()
        theirs.close()
        assert gone()
    finally:
        ours.close()
    assert client_gone({})() is False  # no socket known (the test client): never


def test_a_stream_ends_when_the_server_process_that_started_it_is_gone(monkeypatch):
    """A gunicorn worker orphaned by its master (ppid changes to 1) ends its long answers,
    instead of streaming on for minutes with the host's maintenance lock in hand."""
    ours, theirs = socket.socketpair()
    try:
        with_socket, without = client_gone({"gunicorn.socket": ours}), client_gone({})
        assert not with_socket() and not without()
        monkeypatch.setattr("app.api.ndjson.os.getppid", lambda: 1)
        assert with_socket() and without()
    finally:
        ours.close()
        theirs.close()
