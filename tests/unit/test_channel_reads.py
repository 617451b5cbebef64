"""RunningCommand's read loop against a scripted channel: no busy loop after the EOF."""
from __future__ import annotations

import os
import threading
import time

from app.guestssh.channels import RunningCommand, collect
from app.models import CommandResult


class EofFirstChannel:
    """A channel whose EOF came (its pipe readable for good, as paramiko's is) and whose exit
    status follows ``delay`` seconds later, as sshd often sends them."""

    def __init__(self, delay: float) -> None:
        self.eof_received = True
        self.closed = False
        self.status_event = threading.Event()
        self.polls = 0
        self._read_end, write_end = os.pipe()
        os.write(write_end, b"x")  # readable for good, like paramiko's pipe after EOF
        os.close(write_end)
        threading.Timer(delay, self.status_event.set).start()

    def fileno(self) -> int:
        return self._read_end

    def recv_ready(self) -> bool:
        self.polls += 1
        return False

    def recv_stderr_ready(self) -> bool:
        return False

    def exit_status_ready(self) -> bool:
        return self.status_event.is_set()

    def recv_exit_status(self) -> int:
        return 0

    def close(self) -> None:
        os.close(self._read_end)


def collect_from(channel: EofFirstChannel, deadline_s: float) -> tuple[CommandResult, float]:
    """``collect`` over ``channel`` with the command's deadline ``deadline_s`` away; returns
    the result and the seconds it took."""
    started = time.monotonic()
    running = RunningCommand(channel, started, started + deadline_s)
    result = collect(running, 1000)
    running.close()
    return result, time.monotonic() - started


def test_after_the_eof_the_exit_status_is_awaited_not_polled():
    channel = EofFirstChannel(delay=0.3)
    result, took = collect_from(channel, 10)
    assert result.exit_code == 0 and not result.timed_out
    assert took < 0.5  # answered as soon as the status came
    assert channel.polls < 10, f"{channel.polls} polls: a busy loop"


def test_a_status_that_never_comes_ends_at_the_deadline():
    channel = EofFirstChannel(delay=5)
    result, took = collect_from(channel, 0.5)
    channel.status_event.set()
    assert result.timed_out and result.exit_code == -1
    assert 0.5 <= took < 1.0
    assert channel.polls < 20
