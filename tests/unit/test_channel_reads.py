"""RunningCommand's read loop against a scripted channel (paramiko's own buffers): it sleeps
until output, the EOF or the exit status arrives; no busy loop, no polling."""
from __future__ import annotations

import socket
import threading
import time

import pytest

from paramiko.buffered_pipe import BufferedPipe

from app.guestssh.channels import RunningCommand, collect, one_segment
from app.guestssh.output_stream import OutputStream
from app.models import CommandResult


class ScriptedChannel:
    """A channel as paramiko's: stdout and stderr in ``BufferedPipe``s (closed at the EOF),
    the exit status behind ``status_event``. ``recv_ready`` counts the reader's looks."""

    def __init__(self) -> None:
        self.in_buffer = BufferedPipe()
        self.in_stderr_buffer = BufferedPipe()
        self.eof_received = False
        self.closed = False
        self.status_event = threading.Event()
        self.polls = 0

    def later(self, delay: float, *steps: str) -> None:
        """After ``delay`` s: ``out``/``err`` feed a line, ``eof`` closes both buffers,
        ``status`` sets the exit status (in this order, as sshd sends them)."""
        def run() -> None:
            for step in steps:
                if step == "out":
                    self.in_buffer.feed(b"out\n")
                elif step == "err":
                    self.in_stderr_buffer.feed(b"err\n")
                elif step == "eof":
                    self.eof_received = True
                    self.in_buffer.close()
                    self.in_stderr_buffer.close()
                elif step == "status":
                    self.status_event.set()
        threading.Timer(delay, run).start()

    def recv_ready(self) -> bool:
        self.polls += 1
        return self.in_buffer.read_ready()

    def recv_stderr_ready(self) -> bool:
        return self.in_stderr_buffer.read_ready()

    def recv(self, size: int) -> bytes:
        return self.in_buffer.read(size)

    def recv_stderr(self, size: int) -> bytes:
        return self.in_stderr_buffer.read(size)

    def exit_status_ready(self) -> bool:
        return self.status_event.is_set()

    def recv_exit_status(self) -> int:
        return 0

    def close(self) -> None:
        self.closed = True


def collect_from(channel: ScriptedChannel, deadline_s: float) -> tuple[CommandResult, float]:
    """``collect`` over ``channel`` with the command's deadline ``deadline_s`` away; returns
    the result and the seconds it took."""
    started = time.monotonic()
    running = RunningCommand(channel, started, started + deadline_s)
    result = collect(running, 1000)
    running.close()
    return result, time.monotonic() - started


def test_after_the_eof_the_exit_status_is_awaited_not_polled():
    channel = ScriptedChannel()
    channel.later(0, "eof")
    channel.later(0.3, "status")
    result, took = collect_from(channel, 10)
    assert result.exit_code == 0 and not result.timed_out
    assert took < 0.5  # answered as soon as the status came
    assert channel.polls < 10, f"{channel.polls} polls: a busy loop"


def test_a_status_that_never_comes_ends_at_the_deadline():
    channel = ScriptedChannel()
    channel.later(0, "eof")
    result, took = collect_from(channel, 0.5)
    channel.status_event.set()
    assert result.timed_out and result.exit_code == -1
    assert 0.5 <= took < 1.0
    assert channel.polls < 20


def test_a_quiet_command_is_slept_through_not_polled():
    # The reader used to wake every 50 ms while the command ran: ~40 wake-ups of a worker
    # thread for an exec that takes 2 s under load.
    channel = ScriptedChannel()
    channel.later(1.0, "out", "eof", "status")
    result, took = collect_from(channel, 10)
    assert result.stdout == b"out\n" and result.exit_code == 0
    assert took < 1.3
    assert channel.polls <= 10, f"{channel.polls} looks in 1 s: polled"


def test_stderr_alone_wakes_the_reader_at_once():
    channel = ScriptedChannel()
    channel.later(0.3, "err")
    channel.later(0.6, "eof", "status")
    started = time.monotonic()
    running = RunningCommand(channel, started, started + 10)
    first = next(running.output())
    assert first == ("stderr", b"err\n")
    assert time.monotonic() - started < 0.4  # not left to the next periodic look
    assert [part for part in running.output()] == []
    assert running.exit_code() == 0


def test_stdout_and_stderr_in_turns_lose_no_wake_up():
    # A read that empties one buffer clears the event paramiko sets: the other buffer's news
    # must still wake the reader.
    channel = ScriptedChannel()
    for index in range(10):
        channel.later(0.05 * index, "out" if index % 2 else "err")
    channel.later(0.6, "eof", "status")
    result, took = collect_from(channel, 10)
    assert result.stdout == b"out\n" * 5 and result.stderr == b"err\n" * 5
    assert took < 0.8


def test_a_stream_waits_for_its_first_chunk_without_polling():
    # A download's first chunk (the guest's tar and gzip starting) used to be polled for every
    # 10 ms.
    channel = ScriptedChannel()
    channel.later(0.5, "out")
    stream = OutputStream(channel, time.monotonic() + 10)
    started = time.monotonic()
    assert stream.first_chunk() == b"out\n"
    assert time.monotonic() - started < 0.8
    assert channel.polls <= 6, f"{channel.polls} looks in 0.5 s: polled"


def test_a_stream_without_output_ends_at_its_eof():
    channel = ScriptedChannel()
    channel.later(0.3, "err", "eof", "status")
    stream = OutputStream(channel, time.monotonic() + 10)
    started = time.monotonic()
    assert stream.first_chunk() == b""
    assert time.monotonic() - started < 0.6
    assert bytes(stream.stderr) == b"err\n"


class _Transport:
    def __init__(self, sock: object) -> None:
        self.sock = sock


class _Channel:
    def __init__(self, sock: object) -> None:
        self.transport = _Transport(sock)


def _corked(sock: socket.socket) -> int:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_CORK)


def test_one_segment_corks_a_tcp_connection_for_the_block_only() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server, \
            socket.create_connection(server.getsockname()) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        assert _corked(sock) == 0
        with one_segment(_Channel(sock)):
            assert _corked(sock) == 1
            sock.sendall(b"first")
            sock.sendall(b"second")
        assert _corked(sock) == 0
        peer, _address = server.accept()
        with peer:
            peer.settimeout(5)
            received = b""
            while len(received) < len(b"firstsecond"):
                received += peer.recv(64)
        assert received == b"firstsecond"


def test_one_segment_uncorks_when_the_block_raises() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server, \
            socket.create_connection(server.getsockname()) as sock:
        with pytest.raises(RuntimeError), one_segment(_Channel(sock)):
            raise RuntimeError("send failed")
        assert _corked(sock) == 0


def test_one_segment_leaves_sockets_that_are_not_tcp_alone() -> None:
    left, right = socket.socketpair()
    with left, right, one_segment(_Channel(left)):
        left.sendall(b"x")
    with one_segment(_Channel(None)):  # a transport without a socket of its own
        pass
