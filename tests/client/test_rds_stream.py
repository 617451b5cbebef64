"""Streamed exec: ndjson lines however the chunks fall, UTF-8 and base64 output, the result
line, error lines, and a server that does not stream."""
from __future__ import annotations

import base64
import json

import httpx
import pytest

from rds_client import (Client, CommandResult, Conflict, OutputChunk, RunResult, ServerError,
                        TransportError)
from rds_client.streaming import ndjson_lines, stream_events
from tests.client.fakeapi import VM_ID, FakeApi, error, ndjson, result_json

EXEC = f"/v1/vms/{VM_ID}/exec"
OUT = {"type": "output", "stream": "stdout", "data": "hé\n"}
ERR = {"type": "output", "stream": "stderr", "data": "warn\n"}
RESULT = {"type": "result", **result_json(3)}


def test_lines_split_anywhere_across_chunks() -> None:
    body = b"".join(json.dumps(line).encode() + b"\n" for line in (OUT, ERR, RESULT))
    for size in (1, 2, 7, len(body)):
        chunks = [body[i:i + size] for i in range(0, len(body), size)]
        assert list(ndjson_lines(chunks)) == [OUT, ERR, RESULT]


def test_blank_lines_and_a_missing_last_newline_are_fine() -> None:
    assert list(ndjson_lines([b"\n", json.dumps(OUT).encode(), b"\n\n",
                              json.dumps(RESULT).encode()])) == [OUT, RESULT]


@pytest.mark.parametrize("line", [b"{not json}\n", b"[1, 2]\n"])
def test_a_malformed_line_is_a_transport_error(line: bytes) -> None:
    with pytest.raises(TransportError, match="malformed stream line"):
        list(ndjson_lines([line]))


def test_utf8_and_base64_chunks_become_bytes() -> None:
    raw = b"\xff\xfe binary \x00"
    events = list(stream_events([
        OUT, {"type": "output", "stream": "stdout", "encoding": "base64",
              "data": base64.b64encode(raw).decode()}, ERR, RESULT], CommandResult))
    chunks, result = events[:-1], events[-1]
    assert [(c.stream, c.data) for c in chunks] == [
        ("stdout", "hé\n".encode()), ("stdout", raw), ("stderr", b"warn\n")]
    assert chunks[1].text == "\ufffd\ufffd binary \x00"
    assert isinstance(result, CommandResult) and result.exit_code == 3
    # The result reads like a plain answer: the output the chunks carried is in it.
    assert result.stdout == "hé\n\ufffd\ufffd binary \x00" and result.stderr == "warn\n"


def test_run_results_keep_result_and_error() -> None:
    (result,) = stream_events([{"type": "result", **result_json(1), "result": None,
                                "error": {"name": "Error", "message": "nope"}}], RunResult)
    assert isinstance(result, RunResult)
    assert result.has_result and result.result is None and result.error["message"] == "nope"


def test_an_error_line_raises_the_servers_message() -> None:
    events = stream_events([OUT, {"type": "error", "message": "guest went away"}],
                           CommandResult)
    assert next(events) == OutputChunk("stdout", "hé\n".encode())
    with pytest.raises(ServerError, match="guest went away"):
        next(events)


def test_a_stream_without_result_is_a_transport_error() -> None:
    with pytest.raises(TransportError, match="without a result"):
        list(stream_events([OUT], CommandResult))


@pytest.mark.parametrize("line", [
    {"type": "output", "stream": "stdin", "data": "x"},
    {"type": "output", "stream": "stdout", "data": 5},
    {"type": "output", "stream": "stdout", "encoding": "base64", "data": "!!"},
    {"type": "output", "stream": "stdout", "encoding": "rot13", "data": "x"},
])
def test_malformed_output_lines_are_refused(line: dict) -> None:
    with pytest.raises(TransportError):
        list(stream_events([line, RESULT], CommandResult))


def test_unknown_line_types_are_skipped() -> None:
    events = list(stream_events([{"type": "progress", "pct": 50}, RESULT], CommandResult))
    assert len(events) == 1


def test_stream_asks_for_ndjson_and_yields_chunks_then_the_result(api: FakeApi,
                                                                   client: Client) -> None:
    api.on("POST", EXEC, ndjson(OUT, ERR, RESULT))
    with client.stream(VM_ID, "make", env={"A": "1"}, timeout_ms=5000) as stream:
        events = list(stream)
    assert [type(event) for event in events] == [OutputChunk, OutputChunk, CommandResult]
    assert stream.result is events[-1]
    request = api.requests[0]
    assert request.headers["Accept"].startswith("application/x-ndjson")
    assert json.loads(request.content) == {"cmd": "make", "env": {"A": "1"}, "timeoutMs": 5000}


def test_a_server_without_streaming_answers_json_and_that_works_too(api: FakeApi,
                                                                     client: Client) -> None:
    api.on("POST", EXEC, httpx.Response(200, json=result_json(0, "out\n", "err\n")))
    events = list(client.stream(VM_ID, "true"))
    assert events[:2] == [OutputChunk("stdout", b"out\n"), OutputChunk("stderr", b"err\n")]
    assert isinstance(events[2], CommandResult) and events[2].stdout == "out\n"


def test_errors_before_the_stream_raise_at_the_call(api: FakeApi, client: Client) -> None:
    api.on("POST", EXEC, error(409, "VM is STOPPED"))
    with pytest.raises(Conflict, match="VM is STOPPED"):
        client.stream(VM_ID, "true")


def test_run_ts_streams_through_its_own_route(api: FakeApi, client: Client) -> None:
    path = f"/v1/vms/{VM_ID}/run-ts"
    api.on("POST", path, ndjson(OUT, {"type": "result", **result_json(0), "result": 4}))
    events = list(client.stream_ts(VM_ID, "result.set(4)", env={"K": "V"}))
    assert isinstance(events[-1], RunResult) and events[-1].result == 4
    assert json.loads(api.requests[0].content)["env"] == ["K=V"]


def test_a_connection_that_breaks_mid_stream_is_a_transport_error(api: FakeApi,
                                                                  client: Client) -> None:
    class Broken(httpx.SyncByteStream):
        def __iter__(self):
            yield json.dumps(OUT).encode() + b"\n"
            raise httpx.ReadError("connection reset")

    api.on("POST", EXEC, lambda request: httpx.Response(
        200, headers={"Content-Type": "application/x-ndjson"}, stream=Broken()))
    stream = client.stream(VM_ID, "true")
    with pytest.raises(TransportError, match="connection reset"):
        list(stream)
