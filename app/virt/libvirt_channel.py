"""Channel calls of :class:`app.virt.connection.Hypervisor` (a mixin): one request and its
one-line answer over a domain's virtio-serial port, reached through libvirt
(``virDomainOpenChannel``) rather than the port's unix socket, which on a remote host (issue
17) lies on that host. libvirt connects to the socket there and relays the bytes over the
connection's stream.

The stream is non-blocking (the event loop of :mod:`app.virt.libvirt_events` moves its bytes),
so the wait checks its deadline between polls instead of blocking in ``recv``.
"""
from __future__ import annotations

import contextlib
import time
import typing as t

import libvirt

from app.errors import HypervisorError

POLL_S = 0.02
WOULD_BLOCK = -2  # virStreamSend/Recv on a non-blocking stream with nothing to move


class ChannelCalls:
    """Needs the connection's ``_call``."""

    _call: t.Callable[..., t.Any]

    def channel_exchange(self, uuid: str, channel: str, request: bytes, limit: int,
                         budget: t.Callable[[], float], longest: float) -> str:
        """Send ``request`` on the domain's channel ``channel`` (its target name) and return
        the first line the guest answers (at most ``limit`` bytes, stripped).

        :param budget: how many seconds from the start the wait may last, asked again while
            there is no answer (at most ``longest``).
        :raises HypervisorError: no such channel, the guest closed it, or no answer in time.
        """
        started = time.monotonic()

        def in_time() -> None:
            if time.monotonic() - started > min(budget(), longest):
                raise HypervisorError(f"no answer on channel {channel} in time")

        def exchange(conn: t.Any) -> str:
            stream = conn.newStream(libvirt.VIR_STREAM_NONBLOCK)
            try:
                conn.lookupByUUIDString(uuid).openChannel(channel, stream, 0)
                pending = request
                while pending:
                    sent = stream.send(pending)
                    if sent == WOULD_BLOCK:
                        in_time()
                        time.sleep(POLL_S)
                        continue
                    pending = pending[sent:]
                reply = b""
                while not reply.endswith(b"\n") and len(reply) < limit:
                    data = stream.recv(limit - len(reply))
                    if data == WOULD_BLOCK:
                        in_time()
                        time.sleep(POLL_S)
                        continue
                    if not data:
                        break  # the guest closed its end
                    reply += data
            finally:
                with contextlib.suppress(libvirt.libvirtError):
                    stream.abort()
            return reply.decode("ascii", errors="replace").strip()
        return self._call("channel exchange", exchange, timeout=longest + 5)
