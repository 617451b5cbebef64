"""A session channel requested one command ahead, per guest connection.

Every command runs on a channel of its own, and opening one is a round trip: the open request
goes alone into the guest (one TCP segment, one wake-up of its sshd: a few ms of CPU on an
emulated guest), and the command's thread waits for the answer before it can send the exec
request. So a command that sends its exec request also requests the channel of the next one,
in the same segment (:func:`app.guestssh.channels.send_exec_request`): the next command finds
it open, usually answered long before, and sends its own request at once (BENCHMARKS.md,
"Session 17").

An unused spare is one idle session in the guest's sshd (no process: sshd forks only for a
command), one of its ``MaxSessions``. It belongs to one connection: a new connection starts
without one.
"""
from __future__ import annotations

import threading

import paramiko

from app.guestssh.transport import GuestTransport, PendingChannel


class SpareSession:
    """At most one requested, not yet used session channel."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: PendingChannel | None = None

    def take(self, transport: GuestTransport) -> PendingChannel | None:
        """The spare, if there is one on ``transport`` (one on another connection is closed
        and forgotten); the next command requests a new one."""
        with self._lock:
            pending, self._pending = self._pending, None
        if pending is not None and pending.transport is not transport:
            pending.discard()
            return None
        return pending

    def request(self, transport: GuestTransport) -> None:
        """Request a spare on ``transport`` unless there is one: called while a command's
        requests are being sent (they leave together). A connection that fails meanwhile
        fails that command's requests too: nothing to do here."""
        with self._lock:
            if self._pending is not None and self._pending.transport is transport:
                return
            stale, self._pending = self._pending, None
            try:
                self._pending = transport.request_session()
            except (paramiko.SSHException, OSError, EOFError):
                return
            finally:
                if stale is not None:
                    stale.discard()

    def forget(self) -> None:
        """Drop the spare (its connection is being closed)."""
        with self._lock:
            self._pending = None
