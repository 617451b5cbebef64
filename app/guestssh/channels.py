"""One command on one SSH channel: sending its stdin, reading its output as it arrives until
its exit or its deadline (whole, for a buffered answer, or chunk by chunk, for a streamed one).
A large output read as a stream (downloads) is :mod:`app.guestssh.output_stream`."""
from __future__ import annotations

import contextlib
import socket
import threading
import time
import typing as t

from app.models import CommandResult

READ_CHUNK = 65536
STDERR_TAIL = 4 * 1024 * 1024  # kept past the cap: run-ts/run-js put their outcome last
STOP_CHECK_S = 0.2  # how often a streamed command asks whether its reader has gone
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


def _never() -> bool:
    return False


class _Wakeup(threading.Event):
    """Set when a channel's stdout or stderr buffer gets data or closes (paramiko's
    ``BufferedPipe.set_event``), so a reader sleeps until then instead of polling. A buffer
    clears its event when a read empties it, which would lose the other buffer's news: that
    clear does nothing here; the reader re-arms the event itself before it looks at the
    buffers, so whatever arrives after that look sets it again."""

    def clear(self) -> None:
        pass

    def rearm(self) -> None:
        super().clear()


def wake_on_output(channel: t.Any) -> _Wakeup:
    """An event set when ``channel`` gets stdout or stderr data, its EOF or its close."""
    wake = _Wakeup()
    channel.in_buffer.set_event(wake)
    channel.in_stderr_buffer.set_event(wake)
    return wake


class _ChannelWriter:
    """The write end of a channel's stdin, for a :data:`StdinWriter`."""

    def __init__(self, channel: t.Any) -> None:
        self._channel = channel

    def write(self, data: bytes) -> int:
        self._channel.sendall(data)
        return len(data)


def _channel_request(channel: t.Any, kind: str, want_reply: bool, *strings: str) -> t.Any:
    """A channel request message as paramiko's own methods build it."""
    import paramiko
    from paramiko.common import cMSG_CHANNEL_REQUEST

    request = paramiko.Message()
    request.add_byte(cMSG_CHANNEL_REQUEST)
    request.add_int(channel.remote_chanid)
    request.add_string(kind)
    request.add_boolean(want_reply)
    for value in strings:
        request.add_string(value)
    return request


def send_environment(channel: t.Any, environment: t.Mapping[str, str]) -> None:
    """One SSH ``env`` request per variable, none waiting for an answer (paramiko's
    ``update_environment``): they leave in the same burst as the exec request that follows.
    sshd keeps only the names its ``AcceptEnv`` lists and drops the others silently."""
    for name, value in environment.items():
        channel.transport._send_user_message(_channel_request(channel, "env", False, name,
                                                              value))


@contextlib.contextmanager
def one_segment(channel: t.Any) -> t.Iterator[None]:
    """What is sent inside leaves together, in as few TCP segments as it fits in (Linux's
    ``TCP_CORK`` on the connection's socket, lifted at the end): the manager's sockets have
    ``TCP_NODELAY``, so without it every SSH message is a segment of its own, and on an
    emulated (TCG) guest each segment costs an interrupt and a pass through its TCP stack
    (BENCHMARKS.md, "Session 15"). A message another thread sends meanwhile on the same
    connection waits at most until the end of the block. A socket that is not TCP (a test's
    socket pair) is left as it is."""
    sock = getattr(channel.transport, "sock", None)
    corked = _cork(sock, True)
    try:
        yield
    finally:
        if corked:
            _cork(sock, False)


def _cork(sock: t.Any, on: bool) -> bool:
    if not isinstance(sock, socket.socket) or sock.family not in (socket.AF_INET,
                                                                  socket.AF_INET6):
        return False
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, int(on))
    except OSError:  # closed meanwhile: sending fails on its own
        return False
    return True


def send_exec_request(channel: t.Any, command: str,
                      environment: t.Mapping[str, str] | None = None, *,
                      no_stdin: bool = False,
                      along: t.Callable[[], None] | None = None) -> None:
    """``channel.exec_command(command)``, with everything that can go with the request in the
    same TCP segment (:func:`one_segment`): the ``environment``'s env requests before it, the
    end of stdin right behind it for a command that gets no input (``no_stdin``), and what
    ``along`` sends (the next command's channel request, :mod:`app.guestssh.spare`).

    The guest then takes them in one wake-up of its sshd: on an emulated (TCG) guest every
    packet it has to wake up for costs a few ms of CPU (~6 % of an exec's when the EOF came
    alone; BENCHMARKS.md, "Load"). The request is the one paramiko's exec_command sends.

    :raises paramiko.SSHException: the guest refused the request or closed the channel.
    """
    channel._event_pending()
    with one_segment(channel):
        send_environment(channel, environment or {})
        channel.transport._send_user_message(_channel_request(channel, "exec", True, command))
        if no_stdin:
            channel.shutdown_write()
        if along is not None:
            along()
    channel._wait_for_event()


def exec_without_stdin(channel: t.Any, command: str,
                       environment: t.Mapping[str, str] | None = None) -> None:
    """:func:`send_exec_request` for a command that gets no input."""
    send_exec_request(channel, command, environment, no_stdin=True)


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


class OutputCaps:
    """What a command's result keeps of its output: at most ``max_output`` bytes per stream
    (``stdout``, ``stderr``), the rest dropped and flagged; past the cap, the last bytes of
    stderr (run-ts/run-js put their outcome last).

    :param keep: False to only count and flag (a streamed command hands its output on).
    """

    def __init__(self, max_output: int, keep: bool = True) -> None:
        self.max_output = max_output
        self.keep = keep
        self.sizes = {"stdout": 0, "stderr": 0}
        self.dropped = {"stdout": False, "stderr": False}
        self.kept = {"stdout": bytearray(), "stderr": bytearray()}
        self.err_tail = bytearray()

    def take(self, name: str, data: bytes) -> bytes:
        """:returns: the part of ``data`` within the cap of stream ``name``."""
        room = max(0, self.max_output - self.sizes[name])
        if len(data) > room:
            self.dropped[name] = True
        if self.keep and name == "stderr" and self.dropped["stderr"]:  # from the first drop on
            self.err_tail.extend(data)
            if len(self.err_tail) > STDERR_TAIL:
                del self.err_tail[:len(self.err_tail) - STDERR_TAIL]
        part = data[:room]
        self.sizes[name] += len(part)
        if self.keep:
            self.kept[name] += part
        return part

    def result(self, exit_code: int, timed_out: bool, started: float) -> CommandResult:
        return CommandResult(exit_code=exit_code, stdout=bytes(self.kept["stdout"]),
                             stderr=bytes(self.kept["stderr"]), timed_out=timed_out,
                             stdout_truncated=self.dropped["stdout"],
                             stderr_truncated=self.dropped["stderr"],
                             duration_ms=int((time.monotonic() - started) * 1000),
                             stderr_tail=bytes(self.err_tail))


class RunningCommand:
    """A command started on its own channel (:meth:`GuestSSH.start`): its output as it
    arrives, then its exit status. Close it when done.

    :param errors: what the channel raises when its connection breaks.
    :param on_broken: turns such an error into the one to raise (and drops the connection).
    """

    def __init__(self, channel: t.Any, started: float, deadline: float,
                 errors: tuple[type[BaseException], ...] = (OSError, EOFError),
                 on_broken: t.Callable[[BaseException], Exception] | None = None) -> None:
        self.channel = channel
        self.started = started
        self.deadline = deadline
        self.timed_out = False
        self.stopped = False
        self._errors = errors
        self._on_broken = on_broken

    @classmethod
    def expired(cls, started: float) -> RunningCommand:
        """A command whose deadline passed before it could start: no output, timed out."""
        running = cls(None, started, started)
        running.timed_out = True
        return running

    def output(self, stop: t.Callable[[], bool] = _never) -> t.Iterator[tuple[str, bytes]]:
        """``("stdout" | "stderr", data)`` as the data arrives, until the command exits (exit
        status and EOF), the deadline passes (:attr:`timed_out`) or ``stop()``, asked every
        :data:`STOP_CHECK_S`, answers True (:attr:`stopped`).

        :raises: what ``on_broken`` makes of a broken connection (before the deadline).
        """
        if self.channel is None:
            return
        try:
            yield from self._read(stop)
        except self._errors as exc:
            if time.monotonic() >= self.deadline:
                self.timed_out = True
                return
            if self._on_broken is None:
                raise
            raise self._on_broken(exc) from exc

    def _read(self, stop: t.Callable[[], bool]) -> t.Iterator[tuple[str, bytes]]:
        channel = self.channel
        wake = wake_on_output(channel)
        asked = time.monotonic()
        while True:
            wake.rearm()
            progressed = False
            while channel.recv_ready():
                yield "stdout", channel.recv(READ_CHUNK)
                progressed = True
            while channel.recv_stderr_ready():
                yield "stderr", channel.recv_stderr(READ_CHUNK)
                progressed = True
            # sshd may send the exit status before the last output: done only at EOF too.
            if channel.exit_status_ready() and (channel.eof_received or channel.closed) \
                    and not channel.recv_ready() and not channel.recv_stderr_ready():
                return
            now = time.monotonic()
            if now > self.deadline:
                self.timed_out = True
                return
            if now - asked >= STOP_CHECK_S:
                asked = now
                if stop():
                    self.stopped = True
                    return
            if progressed:
                continue
            if channel.eof_received:
                # No more output: only the exit status (or the close) is still to come. The
                # channel stays readable from its EOF on, so select() would return at once,
                # again and again (sshd often sends the EOF before the exit status, which under
                # emulation can come tens of ms later): wait for the status itself.
                channel.status_event.wait(min(STOP_CHECK_S, max(0.0, self.deadline - now)))
            else:
                # Woken by output on either stream, the EOF or the close (a command's whole
                # life, seconds under load, used to be polled every 50 ms: ~40 wake-ups of
                # the worker per exec; RELIABILITY.md, "Load").
                wake.wait(min(STOP_CHECK_S, max(0.0, self.deadline - now)))

    def exit_code(self) -> int:
        """The exit status once :meth:`output` ended; -1 when timed out or stopped (always
        drain the output first: the status can wait behind it)."""
        if self.timed_out or self.stopped or self.channel is None:
            return -1
        return self.channel.recv_exit_status()

    def close(self) -> None:
        if self.channel is not None:
            self.channel.close()


def collect(running: RunningCommand, max_output: int) -> CommandResult:
    """Drain stdout and stderr until exit or deadline (always drain before the exit status)."""
    caps = OutputCaps(max_output)
    for name, data in running.output():
        caps.take(name, data)
    return caps.result(running.exit_code(), running.timed_out, running.started)
