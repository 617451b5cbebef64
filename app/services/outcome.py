"""The outcome of a run-ts / run-js: the runner (guest/README.md, "run-ts") writes
``"\\n" RS <token> <json> "\\n"`` as the last thing on stderr, and the manager takes it off what
the caller sees: from a whole stderr (:func:`split_outcome`) or from stderr as it streams
(:class:`OutcomeFilter`)."""
from __future__ import annotations

import dataclasses
import json

from app.models import CommandResult, RunResult

MAX_OUTCOME = 4 * 1024 * 1024  # the JSON after the token, as much as a buffered call keeps
ERROR_HEAD = 64 * 1024  # of the visible stderr, for load_error (its first line)


def load_error(command: CommandResult) -> dict:
    """No outcome: the runtime stopped before the runner ran, e.g. Deno could not parse the
    caller's code ("error: SyntaxError: ..."). That first line becomes ``error``."""
    if command.timed_out or command.exit_code in (0, -1) or not command.stderr.startswith(
            b"error: "):
        return {}
    first = command.stderr.split(b"\n", 1)[0].decode(errors="replace").removeprefix("error: ")
    name, sep, message = first.partition(": ")
    if not sep or not name.isidentifier():
        name, message = "Error", first
    return {"error": {"name": name, "message": message, "stack": ""}}


def parse_outcome(text: bytes) -> dict:
    """The runner's JSON after the token; a ResultError when it cannot be read."""
    try:
        outcome = json.loads(text.decode(errors="replace").strip())
    except ValueError:
        outcome = {"error": {"name": "ResultError", "stack": "",
                             "message": "the script's result could not be read"}}
    return outcome if isinstance(outcome, dict) else {}


def split_outcome(command: CommandResult, token: bytes) -> RunResult:
    """Take the runner's outcome (after the last ``token`` on stderr) off the visible stderr.

    The outcome is searched in the untruncated tail of stderr, so a script that printed more
    than the cap still gets its ``result``.
    """
    stderr, tail = command.stderr, command.stderr_tail or command.stderr
    at = tail.rfind(token)
    if at < 0:
        return RunResult(command=command, outcome=load_error(command))
    head_at = stderr.rfind(token)
    if head_at >= 0:
        stderr = stderr[:head_at]
        stderr = stderr[:-1] if stderr.endswith(b"\n") else stderr
    visible = dataclasses.replace(command, stderr=stderr, stderr_tail=b"")
    return RunResult(command=visible, outcome=parse_outcome(tail[at + len(token):]))


class OutcomeFilter:
    """Takes the outcome off stderr as it streams: :meth:`feed` answers what the caller may
    see now, holding back a tail that could be the start of ``"\\n" + token`` (so a stderr
    ending in a newline keeps that newline until more comes); everything after the token is
    the outcome (at most :data:`MAX_OUTCOME` bytes)."""

    def __init__(self, token: bytes) -> None:
        self.token = token
        self._held = b""
        self._outcome: bytearray | None = None
        self.head = bytearray()  # the first ERROR_HEAD visible bytes, for load_error

    def feed(self, data: bytes) -> bytes:
        if self._outcome is not None:
            self._outcome += data[:MAX_OUTCOME + 1 - len(self._outcome)]
            return b""
        data = self._held + data
        at = data.find(self.token)
        if at >= 0:
            self._outcome = bytearray()
            self._held = b""
            self.feed(data[at + len(self.token):])
            visible = data[:at]
            return self._seen(visible[:-1] if visible.endswith(b"\n") else visible)
        keep = max(_partial_suffix(data, b"\n" + self.token), _partial_suffix(data, self.token))
        self._held = data[len(data) - keep:] if keep else b""
        return self._seen(data[:len(data) - keep])

    def flush(self) -> bytes:
        """What is still held back, once stderr has ended."""
        held, self._held = self._held, b""
        return self._seen(held)

    def outcome(self, command: CommandResult) -> dict:
        """The outcome once stderr has ended (``command``: the result, stderr aside)."""
        if self._outcome is None:
            return load_error(dataclasses.replace(command, stderr=bytes(self.head)))
        if len(self._outcome) > MAX_OUTCOME:
            return parse_outcome(b"")  # too large to read: a ResultError
        return parse_outcome(bytes(self._outcome))

    def _seen(self, visible: bytes) -> bytes:
        if len(self.head) < ERROR_HEAD:
            self.head += visible[:ERROR_HEAD - len(self.head)]
        return visible


def _partial_suffix(data: bytes, marker: bytes) -> int:
    """The length of the longest end of ``data`` that is a start of ``marker``."""
    for size in range(min(len(data), len(marker) - 1), 0, -1):
        if marker.startswith(data[-size:]):
            return size
    return 0
