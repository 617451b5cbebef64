"""A large stdout of a guest command read as a stream, chunk by chunk until its deadline
(downloads), its stderr kept for errors."""
from __future__ import annotations

import socket
import time
import typing as t

from app.errors import CommandTimeout
from app.guestssh.channels import READ_CHUNK, STOP_CHECK_S, wake_on_output


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
        wake = wake_on_output(self.channel)
        while (left := self.deadline - time.monotonic()) > 0:
            wake.rearm()
            if self.channel.recv_ready():
                return self.channel.recv(READ_CHUNK)
            self._drain_stderr()
            if self.channel.exit_status_ready() and not self.channel.recv_ready():
                return b""
            if self.channel.closed:
                break
            # Until output, the EOF or the close (an exit status comes with the EOF; the
            # timeout bounds a status that would come alone). It used to poll every 10 ms.
            wake.wait(min(STOP_CHECK_S, left))
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
