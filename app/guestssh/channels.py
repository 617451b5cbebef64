"""One command on one SSH channel: sending its stdin, collecting its output until its exit or
its deadline, and streaming a large output (downloads)."""
from __future__ import annotations

import contextlib
import select
import socket
import time
import typing as t

from app.errors import CommandTimeout
from app.models import CommandResult

READ_CHUNK = 65536
STDERR_TAIL = 4 * 1024 * 1024  # kept past the cap: run-ts/run-js put their outcome last
# A function that writes a command's stdin itself, given an object with ``write(bytes)``
# (the channel): for input made while it is sent, never held whole in memory.
StdinWriter = t.Callable[[t.Any], None]


def within(phase_timeout: float, deadline: float) -> float:
    """A phase's own timeout, cut to what is left before ``deadline`` (at least 10 ms)."""
    return max(0.01, min(phase_timeout, deadline - time.monotonic()))


def close_quietly(closable: t.Any) -> None:
    # Closing a broken channel or socket may fail; fine.
    with contextlib.suppress(Exception):
        closable.close()


def timed_out(started: float) -> CommandResult:
    return CommandResult(exit_code=-1, stdout=b"", stderr=b"", timed_out=True,
                         duration_ms=int((time.monotonic() - started) * 1000))


class _ChannelWriter:
    """The write end of a channel's stdin, for a :data:`StdinWriter`."""

    def __init__(self, channel: t.Any) -> None:
        self._channel = channel

    def write(self, data: bytes) -> int:
        self._channel.sendall(data)
        return len(data)


def send_stdin(channel: t.Any, stdin: bytes | t.BinaryIO | StdinWriter) -> None:
    if isinstance(stdin, (bytes, bytearray)):
        if stdin:
            channel.sendall(stdin)
    elif callable(stdin):
        stdin(_ChannelWriter(channel))
    else:
        while True:
            chunk = stdin.read(READ_CHUNK)
            if not chunk:
                break
            channel.sendall(chunk)
    channel.shutdown_write()


def collect(channel: t.Any, started: float, timeout: float,
             max_output: int) -> CommandResult:
    """Drain stdout and stderr until exit or deadline (always drain before the exit status)."""
    deadline = started + timeout
    streams = {"out": bytearray(), "err": bytearray()}
    dropped = {"out": False, "err": False}
    err_tail = bytearray()

    def keep(name: str, data: bytes) -> None:
        buffer = streams[name]
        room = max_output - len(buffer)
        if len(data) > room:
            dropped[name] = True
        if name == "err" and dropped["err"]:  # from the first dropped byte on
            err_tail.extend(data)
            if len(err_tail) > STDERR_TAIL:
                del err_tail[:len(err_tail) - STDERR_TAIL]
        if room > 0:
            buffer += data[:room]

    timed_out = False
    while True:
        progressed = False
        while channel.recv_ready():
            keep("out", channel.recv(READ_CHUNK))
            progressed = True
        while channel.recv_stderr_ready():
            keep("err", channel.recv_stderr(READ_CHUNK))
            progressed = True
        # sshd may send the exit status before the last output: done only at EOF too.
        if channel.exit_status_ready() and (channel.eof_received or channel.closed) \
                and not channel.recv_ready() and not channel.recv_stderr_ready():
            break
        if time.monotonic() > deadline:
            timed_out = True
            break
        if not progressed:
            # Readable on stdout data and on EOF (which follows the exit status); stderr and
            # the exit status alone are picked up by the short poll.
            select.select([channel], [], [], 0.05)
    exit_code = -1 if timed_out else channel.recv_exit_status()
    return CommandResult(exit_code=exit_code, stdout=bytes(streams["out"]),
                         stderr=bytes(streams["err"]), timed_out=timed_out,
                         stdout_truncated=dropped["out"], stderr_truncated=dropped["err"],
                         duration_ms=int((time.monotonic() - started) * 1000),
                         stderr_tail=bytes(err_tail))


class OutputStream:
    """stdout of a running guest command, read in chunks until ``deadline`` (monotonic);
    stderr is kept for errors."""

    def __init__(self, channel: t.Any, deadline: float,
                 on_close: t.Callable[[], None] = lambda: None) -> None:
        self.channel = channel
        self.deadline = deadline
        self.stderr = bytearray()
        self._on_close = on_close

    def first_chunk(self) -> bytes:
        """Wait for the first stdout bytes or the exit, whichever comes first.

        :raises CommandTimeout: when the deadline passes first.
        """
        while time.monotonic() < self.deadline:
            if self.channel.recv_ready():
                return self.channel.recv(READ_CHUNK)
            self._drain_stderr()
            if self.channel.exit_status_ready() and not self.channel.recv_ready():
                return b""
            if self.channel.closed:
                break
            self.channel.status_event.wait(0.01)
        self.close()
        raise CommandTimeout("guest command gave no output in time")

    def exit_status(self) -> int | None:
        """The command's exit status once it has exited, else None."""
        if self.channel.exit_status_ready():
            self._drain_stderr()
            return self.channel.recv_exit_status()
        return None

    def chunks(self) -> t.Iterator[bytes]:
        """The rest of stdout.

        :raises CommandTimeout: when the deadline passes before the end of the output.
        """
        try:
            while True:
                left = self.deadline - time.monotonic()
                if left <= 0:
                    raise CommandTimeout("guest command did not finish its output in time")
                self.channel.settimeout(left)
                try:
                    data = self.channel.recv(READ_CHUNK)
                except socket.timeout:
                    raise CommandTimeout("guest command did not finish its output in "
                                         "time") from None
                if not data:
                    if self.channel.closed and time.monotonic() >= self.deadline:
                        raise CommandTimeout("guest command did not finish its output in time")
                    return
                yield data
        finally:
            self._drain_stderr()

    def wait_exit(self) -> int:
        """The exit status, waiting for it until the deadline (after the output ended).

        :raises CommandTimeout: when no status came in time.
        """
        while time.monotonic() < self.deadline:
            if self.channel.exit_status_ready():
                return self.exit_status()
            if self.channel.closed:
                break
            self.channel.status_event.wait(0.05)
        raise CommandTimeout("guest command gave no exit status in time")

    def _drain_stderr(self) -> None:
        while self.channel.recv_stderr_ready():
            self.stderr += self.channel.recv_stderr(READ_CHUNK)[:65536]

    def close(self) -> None:
        self._on_close()
        self.channel.close()
