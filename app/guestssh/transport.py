"""GuestTransport: the manager's paramiko transport to a guest, AES-GCM preferred, and a
session channel requested without waiting for the guest's answer.

An AEAD cipher needs no separate MAC, and HMAC-SHA-256 is the guest sshd's largest per-byte
cost under emulation (20 MiB over SFTP: ~6 s instead of ~9.5 s on a TCG guest,
BENCHMARKS.md). For the small messages of an exec it costs the guest no more than AES-CTR with
HMAC-SHA-256 (BENCHMARKS.md, "Session 16"). The other ciphers stay as fallbacks.

paramiko's ``open_session`` sends the open request and waits for the answer: a round trip
of its own, and a TCP segment of its own into the guest, before every command.
:meth:`GuestTransport.request_session` sends the request only (it can leave with the
previous command's burst, :mod:`app.guestssh.spare`), :meth:`GuestTransport.wait_opened`
takes the answer later: together they are paramiko 3's ``open_channel`` for a session.

paramiko also remembers every channel id a connection has opened (``channels_seen``), to
ignore a message that arrives for a channel after it closed: ~100 bytes per command for as
long as the connection lives (a VM polled once a second for a day: ~8 MiB per worker).
:class:`IssuedChannelIds` answers the same question from the channel counter alone.
"""
from __future__ import annotations

import dataclasses
import threading
import time
import typing as t

import paramiko
from paramiko.common import cMSG_CHANNEL_OPEN


@dataclasses.dataclass(frozen=True)
class PendingChannel:
    """A session channel whose open request is sent; the guest's answer sets ``answered``.
    Holds the channel: the transport only keeps a weak reference to it."""

    transport: GuestTransport
    channel: paramiko.Channel
    answered: threading.Event

    def discard(self) -> None:
        """Close the channel, whatever the guest answered (or will)."""
        self.channel.close()


class IssuedChannelIds:
    """paramiko's ``Transport.channels_seen`` (id -> True for every channel id the connection
    has issued) without an entry per channel: the transport issues ids in order from 0
    (``_next_channel``, 24 bits, then wrapping), so an id was issued if it is at most the last
    one, or whatever it is once the ids have wrapped. A message for an id never issued still
    ends the connection, as paramiko decides."""

    def __init__(self) -> None:
        self._last = -1
        self._wrapped = False

    def __setitem__(self, channel_id: int, _seen: bool) -> None:
        if channel_id < self._last:
            self._wrapped = True
        self._last = channel_id

    def __contains__(self, channel_id: object) -> bool:
        if not isinstance(channel_id, int) or self._last < 0:
            return False
        return self._wrapped or channel_id <= self._last


class GuestTransport(paramiko.Transport):
    _preferred_ciphers = (
        "aes128-gcm@openssh.com", "aes256-gcm@openssh.com",
        *(name for name in paramiko.Transport._preferred_ciphers if "gcm" not in name))

    def __init__(self, *args: t.Any, **kwargs: t.Any) -> None:
        super().__init__(*args, **kwargs)
        self.channels_seen = IssuedChannelIds()

    def request_session(self) -> PendingChannel:
        """Send a session channel's open request; do not wait for the answer
        (:meth:`wait_opened`).

        :raises paramiko.SSHException: the connection is closed.
        """
        if not self.active:
            raise paramiko.SSHException("SSH session not active")
        with self.lock:
            window_size = self._sanitize_window_size(None)
            max_packet_size = self._sanitize_packet_size(None)
            channel_id = self._next_channel()
            request = paramiko.Message()
            request.add_byte(cMSG_CHANNEL_OPEN)
            request.add_string("session")
            request.add_int(channel_id)
            request.add_int(window_size)
            request.add_int(max_packet_size)
            channel = paramiko.Channel(channel_id)
            self._channels.put(channel_id, channel)
            self.channel_events[channel_id] = answered = threading.Event()
            self.channels_seen[channel_id] = True
            channel._set_transport(self)
            channel._set_window(window_size, max_packet_size)
        self._send_user_message(request)
        return PendingChannel(self, channel, answered)

    def wait_opened(self, pending: PendingChannel, timeout: float) -> paramiko.Channel:
        """The channel of ``pending`` once the guest opened it.

        :raises paramiko.ChannelException: the guest refused it (e.g. its session limit).
        :raises paramiko.SSHException: no answer within ``timeout`` s, or the connection
            closed.
        """
        assert pending.transport is self
        end = time.monotonic() + timeout
        while not pending.answered.wait(min(0.1, max(0.0, end - time.monotonic()))):
            if not self.active:
                break
            if time.monotonic() >= end:
                raise paramiko.SSHException("Timeout opening channel.")
        if not self.active:
            error = self.get_exception()
            raise error if error is not None else paramiko.SSHException(
                "Unable to open channel.")
        channel = self._channels.get(pending.channel.get_id())
        if channel is not None:
            return channel
        error = self.get_exception()  # the guest's reason, kept by paramiko
        if isinstance(error, paramiko.ChannelException):
            raise error
        raise paramiko.ChannelException(0, "the guest refused the channel")
