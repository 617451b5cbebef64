"""Streamed exec / run-ts / run-js: the ndjson answer as chunks, then the result.

With ``Accept: application/x-ndjson`` the server answers one JSON object per line as output
happens: ``{"type": "output", "stream": "stdout"|"stderr", "data": ...}`` (with
``"encoding": "base64"`` when the bytes are not UTF-8), then one ``{"type": "result", ...}``
with the fields of the plain answer (its stdout/stderr empty), or ``{"type": "error",
"message": ...}`` when something failed after the 200 was sent. A server that does not stream
answers plain JSON; :class:`ExecStream` then yields that answer's output as two chunks.
"""
from __future__ import annotations

import json
import typing as t

import httpx

from rds_client.errors import ServerError, TransportError
from rds_client.http import transport_error
from rds_client.models import CommandResult, OutputChunk

NDJSON = "application/x-ndjson"
R = t.TypeVar("R", bound=CommandResult)


def ndjson_lines(chunks: t.Iterable[bytes]) -> t.Iterator[dict[str, t.Any]]:
    """The JSON objects of an ndjson byte stream, however its chunks split the lines.

    :raises TransportError: a line is not a JSON object.
    """
    buffer = bytearray()
    for chunk in chunks:
        buffer += chunk
        start = 0
        while (end := buffer.find(b"\n", start)) >= 0:
            line = bytes(buffer[start:end])
            start = end + 1
            if line.strip():
                yield _decode(line)
        del buffer[:start]
    if bytes(buffer).strip():
        yield _decode(bytes(buffer))


def _decode(line: bytes) -> dict[str, t.Any]:
    try:
        value = json.loads(line)
    except ValueError as exc:
        raise TransportError(f"malformed stream line: {line[:200]!r}") from exc
    if not isinstance(value, dict):
        raise TransportError(f"malformed stream line: {line[:200]!r}")
    return value


def stream_events(lines: t.Iterable[dict[str, t.Any]],
                  result_type: type[R]) -> t.Iterator[OutputChunk | R]:
    """Output chunks as they come, then the result, its ``stdout``/``stderr`` filled in with
    the output the chunks carried (so that it reads like a non-streamed answer).

    :raises ServerError: an ``error`` line (the command's fate is unknown).
    :raises TransportError: a malformed line, or the stream ended without a result.
    """
    output: dict[str, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}
    for line in lines:
        kind = line.get("type")
        if kind == "output":
            try:
                chunk = OutputChunk.from_json(line)
            except ValueError as exc:
                raise TransportError(str(exc)) from exc
            output[chunk.stream] += chunk.data
            yield chunk
        elif kind == "result":
            body = dict(line)
            body.pop("type")
            for name, data in output.items():
                if data and not body.get(name):
                    body[name] = data.decode("utf-8", errors="replace")
            yield result_type.from_json(body)
            return
        elif kind == "error":
            raise ServerError(str(line.get("message") or "the stream ended with an error"))
        # Other types: a newer server's additions, skipped.
    raise TransportError("the stream ended without a result")


class ExecStream(t.Generic[R]):
    """An open streamed command: iterate for :class:`OutputChunk` items and, last, the result
    (``CommandResult`` or ``RunResult``), also kept in :attr:`result`.

    Use it in a ``with`` block or iterate it to the end: closing it early drops the connection,
    and the server then kills the command's process tree.
    """

    def __init__(self, response: httpx.Response, result_type: type[R], what: str,
                 timeout: float) -> None:
        self._response = response
        self._result_type = result_type
        self._what = what
        self._timeout = timeout
        self.result: R | None = None

    def __enter__(self) -> ExecStream[R]:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._response.close()

    def __iter__(self) -> t.Iterator[OutputChunk | R]:
        try:
            for event in self._events():
                if isinstance(event, CommandResult):
                    self.result = event
                yield event
        except httpx.HTTPError as exc:
            raise transport_error(exc, self._what, self._timeout) from exc
        finally:
            self.close()

    def _events(self) -> t.Iterator[OutputChunk | R]:
        content_type = self._response.headers.get("Content-Type", "")
        if content_type.split(";")[0].strip() == NDJSON:
            yield from stream_events(ndjson_lines(self._response.iter_bytes()),
                                     self._result_type)
            return
        # A server without streaming answered the whole result at once.
        self._response.read()
        try:
            body = self._response.json()
        except ValueError as exc:
            raise TransportError(f"{self._what}: the answer is neither ndjson nor "
                                 f"JSON") from exc
        result = self._result_type.from_json(body)
        for name in ("stdout", "stderr"):
            text = getattr(result, name)
            if text:
                yield OutputChunk(name, text.encode("utf-8"))
        yield result
