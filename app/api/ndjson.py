"""``Accept: application/x-ndjson`` on exec, run-ts and run-js: the answer streamed as JSON
lines, one per output chunk as it arrives, then the result (docs/api.md, "Streamed output").

- ``{"type": "output", "stream": "stdout"|"stderr", "data": "<text>"}``: a chunk that is
  valid UTF-8; otherwise ``"data"`` is the base64 of its bytes and ``"encoding": "base64"``
  is added. A character split between two chunks is held back until its end arrives, so
  text stays text (at most 3 bytes per stream wait).
- ``{"type": "result", ...}``: the last line, the buffered answer's fields with ``stdout``
  and ``stderr`` empty (the output lines carried them).
- ``{"type": "error", "message": "..."}``: the last line when the call failed after the 200.

Errors before the command started are ordinary JSON error answers. Nothing buffers the
lines: each leaves as it is made (``X-Accel-Buffering: no`` for nginx), and when the client
goes away the command's process tree is killed.
"""
from __future__ import annotations

import base64
import codecs
import json
import logging
import os
import select
import typing as t

from flask import Response, request, stream_with_context
from flask_smorest import Blueprint

from app.errors import AppError
from app.models import OutputChunk
from app.schemas.commands import ErrorLineSchema, OutputLineSchema

if t.TYPE_CHECKING:
    from marshmallow import Schema

    from app.services.command_stream import CommandStream

log = logging.getLogger(__name__)
NDJSON = "application/x-ndjson"
STREAM_HEADERS = {"X-Accel-Buffering": "no", "Cache-Control": "no-cache"}
POLLRDHUP = getattr(select, "POLLRDHUP", 0x2000)  # Linux: the peer closed its end


def wants_ndjson() -> bool:
    """Whether the caller asked for the streamed answer: its ``Accept`` names
    application/x-ndjson itself (not through a wildcard), ranked no lower than
    application/json. Without that, the answer is the usual JSON."""
    accept = request.accept_mimetypes
    named = any(value.lower() == NDJSON and quality > 0 for value, quality in accept)
    return named and accept.quality(NDJSON) >= accept.quality("application/json")


def document_ndjson(blp: Blueprint, result_line: type[Schema]) -> t.Callable:
    """Add the streamed alternative to a view's 200 in the OpenAPI document: a second content
    type whose schema is one line (output, the result, or an error)."""
    return blp.alt_response(
        200, content_type=NDJSON, schema={"oneOf": [OutputLineSchema, result_line,
                                                     ErrorLineSchema]},
        description="The answer; with `Accept: application/x-ndjson`, the output streamed as "
                    "it happens, one JSON object per line: `output` lines, then one `result` "
                    "line (or an `error` line)")


def ndjson_response(stream: CommandStream, result_line: Schema) -> Response:
    """The 200 that streams ``stream`` (a started command) as JSON lines.

    The stream is closed when the response ends or is closed early (the client went away:
    the WSGI server closes the response on a failed write, and a quiet command is checked
    on by :func:`client_gone`), which kills the command's process tree if it still runs.
    """
    lines = _lines(stream, result_line, client_gone(request.environ))
    return Response(stream_with_context(lines), mimetype=NDJSON, headers=STREAM_HEADERS)


def _lines(stream: CommandStream, result_line: Schema,
           gone: t.Callable[[], bool]) -> t.Iterator[bytes]:
    encoder = LineEncoder()
    try:
        yield b""  # the status and headers leave now: the command has started
        for chunk in stream.chunks(stop=gone):
            yield from encoder.encode(chunk)
        yield from encoder.flush()
        if stream.result is not None:
            yield json_line({"type": "result", **result_line.dump(stream.result)})
    except AppError as exc:
        log.warning("streamed command failed after the start error=%s", exc.message)
        yield json_line({"type": "error", "message": exc.message})
    except Exception:
        log.exception("streamed command failed after the start")
        yield json_line({"type": "error", "message": "Internal server error"})
    finally:
        stream.close()


def client_gone(environ: t.Mapping[str, t.Any]) -> t.Callable[[], bool]:
    """A check whether a long answer should end: the client has closed its connection (known
    only when the server says which socket it is: the server itself only notices when a write
    fails, and a command that prints nothing for a minute writes nothing), or the server
    process that started it is gone (a gunicorn worker whose master died must not go on
    streaming, and holding what it holds, such as the host's maintenance lock)."""
    parent = os.getppid()
    sock = environ.get("gunicorn.socket") or environ.get("werkzeug.socket")
    if sock is None:
        return lambda: os.getppid() != parent
    poller = select.poll()
    poller.register(sock, POLLRDHUP)  # hang-ups and errors are always reported too

    def gone() -> bool:
        if os.getppid() != parent:
            return True
        try:
            return bool(poller.poll(0))
        except (OSError, ValueError):
            return True
    return gone


class LineEncoder:
    """Output chunks to ``output`` lines, per stream (see the module's docstring)."""

    def __init__(self) -> None:
        self._held = {"stdout": b"", "stderr": b""}

    def encode(self, chunk: OutputChunk) -> list[bytes]:
        lines = []
        held, self._held[chunk.stream] = self._held[chunk.stream], b""
        data = held + chunk.data
        decoded = _decode(data)
        if decoded is None and held:  # the character held back never ended: send its bytes
            lines.append(output_line(chunk.stream, held))
            data = chunk.data
            decoded = _decode(data)
        if decoded is None:
            lines.append(output_line(chunk.stream, data))
        else:
            text, self._held[chunk.stream] = decoded
            if text:
                lines.append(output_line(chunk.stream, text))
        return lines

    def flush(self) -> list[bytes]:
        """What is still held back once the output ended: bytes that never became text."""
        lines = [output_line(stream, held) for stream, held in self._held.items() if held]
        self._held = {"stdout": b"", "stderr": b""}
        return lines


def _decode(data: bytes) -> tuple[str, bytes] | None:
    """``data`` as text plus the start of a character at its end; None unless UTF-8."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        text = decoder.decode(data, final=False)
    except UnicodeDecodeError:
        return None
    return text, decoder.getstate()[0]


def output_line(stream: str, data: str | bytes) -> bytes:
    if isinstance(data, str):
        return json_line({"type": "output", "stream": stream, "data": data})
    return json_line({"type": "output", "stream": stream, "encoding": "base64",
                      "data": base64.b64encode(data).decode("ascii")})


def json_line(document: dict) -> bytes:
    """One line of JSON: UTF-8, and escapes only where text cannot be UTF-8 (a lone
    surrogate in a script's ``result``)."""
    try:
        return json.dumps(document, ensure_ascii=False).encode() + b"\n"
    except UnicodeEncodeError:
        return json.dumps(document).encode() + b"\n"
