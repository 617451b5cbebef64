"""GuestSSH: one paramiko client per VM, one channel per command, the VM's host key pinned.

Right after boot an SSH session can stall for minutes after authentication (seen on TCG hosts),
so every phase has its own hard timeout (TCP connect, banner, auth, ``open_session``, reads)
and callers retry on a fresh transport. Never AutoAddPolicy: the guest's host key is generated
by the manager and pinned here. The only module that imports paramiko.
"""
from __future__ import annotations

import base64
import dataclasses
import io
import logging
import select
import socket
import threading
import time
import typing as t

import paramiko

from app.errors import CommandTimeout, GuestUnreachable
from app.models import CommandResult

log = logging.getLogger(__name__)
GUEST_USER = "user"
READ_CHUNK = 65536
STDERR_TAIL = 4 * 1024 * 1024  # kept past the cap: run-ts/run-js put their outcome last
# A function that writes a command's stdin itself, given an object with ``write(bytes)``
# (the channel): for input made while it is sent, never held whole in memory.
StdinWriter = t.Callable[[t.Any], None]


class GuestTransport(paramiko.Transport):
    """paramiko's transport with AES-GCM preferred: an AEAD cipher needs no separate MAC, and
    HMAC-SHA-256 is the guest sshd's largest per-byte cost under emulation (20 MiB over SFTP:
    ~6 s instead of ~9.5 s on a TCG guest, BENCHMARKS.md). The other ciphers stay as
    fallbacks."""

    _preferred_ciphers = (
        "aes128-gcm@openssh.com", "aes256-gcm@openssh.com",
        *(name for name in paramiko.Transport._preferred_ciphers if "gcm" not in name))


@dataclasses.dataclass(frozen=True)
class SshTimeouts:
    connect: float = 5.0
    auth: float = 10.0
    channel: float = 10.0


def load_private_key(pem: str) -> paramiko.PKey:
    return paramiko.Ed25519Key.from_private_key(io.StringIO(pem))


def parse_public_key(line: str) -> paramiko.PKey:
    """An OpenSSH public key line (``ssh-ed25519 AAAA...``) as a paramiko key."""
    kind, blob = line.split()[:2]
    return paramiko.PKey.from_type_string(kind, base64.b64decode(blob))


class GuestSSH:
    """SSH to one guest as the sandbox user.

    :param host: the guest's IP address.
    :param host_key: the guest's pinned public host key (OpenSSH line).
    :param client_key: the manager's private key.
    :param port: the guest's SSH port (tests run a server on an ephemeral port).
    """

    def __init__(self, host: str, host_key: str, client_key: paramiko.PKey,
                 timeouts: SshTimeouts, port: int = 22) -> None:
        self.host = host
        self.port = port
        self.host_key = host_key
        self.client_key = client_key
        self.timeouts = timeouts
        self._client: paramiko.SSHClient | None = None
        self._lock = threading.Lock()

    # Connection ############################################################################

    def _connect(self) -> paramiko.SSHClient:
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        pinned = parse_public_key(self.host_key)
        client.get_host_keys().add(self.host, pinned.get_name(), pinned)
        try:
            sock = socket.create_connection((self.host, self.port),
                                            timeout=self.timeouts.connect)
        except OSError as exc:
            raise GuestUnreachable(
                f"cannot connect to guest {self.host}:{self.port}: {exc}") from exc
        try:
            client.connect(self.host, username=GUEST_USER, pkey=self.client_key, sock=sock,
                           timeout=self.timeouts.connect, banner_timeout=self.timeouts.connect,
                           auth_timeout=self.timeouts.auth,
                           channel_timeout=self.timeouts.channel,
                           look_for_keys=False, allow_agent=False,
                           transport_factory=GuestTransport)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            client.close()
            sock.close()
            raise GuestUnreachable(f"SSH to guest {self.host} failed: {exc}") from exc
        transport = client.get_transport()
        if transport is not None:
            transport.set_keepalive(30)
        return client

    def _transport(self) -> paramiko.Transport:
        with self._lock:
            transport = self._client.get_transport() if self._client else None
            if transport is None or not transport.is_active():
                if self._client is not None:
                    self._client.close()
                self._client = self._connect()
                transport = self._client.get_transport()
            assert transport is not None
            return transport

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    # Commands ############################################################################

    def _open_channel(self) -> t.Any:
        transport = self._transport()
        try:
            return transport.open_session(timeout=self.timeouts.channel)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            self.close()  # a stalled transport: the next call starts afresh
            raise GuestUnreachable(f"guest {self.host} did not open a channel: {exc}") from exc

    def run(self, command: str, timeout: float,
            stdin: bytes | t.BinaryIO | StdinWriter = b"",
            max_output: int = 1_000_000) -> CommandResult:
        """Run ``command`` on a fresh channel.

        ``stdin`` is bytes, a file read in chunks, or a :data:`StdinWriter`; an error the
        writer raises (other than the channel's own) propagates, and the channel is closed
        without sending EOF.

        Output beyond ``max_output`` bytes per stream is drained but dropped (and flagged).
        When ``timeout`` passes, the result has ``timed_out=True`` and ``exit_code=-1``;
        the caller decides how to kill what is left in the guest.

        :raises GuestUnreachable: when the transport or channel cannot be set up or breaks.
        """
        started = time.monotonic()
        channel = self._open_channel()
        try:
            channel.settimeout(self.timeouts.channel)
            channel.exec_command(command)
            try:
                _send_stdin(channel, stdin)
            except (OSError, EOFError, paramiko.SSHException):
                # The command may exit without reading all of its input; that is its answer.
                if not (channel.closed or channel.exit_status_ready() or channel.eof_received):
                    raise
            return _collect(channel, started, timeout, max_output)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            self.close()
            raise GuestUnreachable(f"guest {self.host} dropped the command: {exc}") from exc
        finally:
            channel.close()

    def open_stream(self, command: str, timeout: float) -> "OutputStream":
        """Start ``command`` and hand back its stdout as a stream (for large downloads).

        :raises GuestUnreachable: when the channel cannot be set up.
        """
        channel = self._open_channel()
        try:
            channel.settimeout(timeout)
            channel.exec_command(command)
            channel.shutdown_write()
        except (paramiko.SSHException, OSError, EOFError) as exc:
            channel.close()
            self.close()
            raise GuestUnreachable(f"guest {self.host} dropped the command: {exc}") from exc
        return OutputStream(channel, timeout)

    def wait_until_ready(self, deadline: float, probe: str = "id -u") -> str:
        """Retry connect + ``probe`` until it succeeds or ``deadline`` (monotonic) passes.

        :returns: the probe's stdout.
        :raises GuestUnreachable: when the guest never answered.
        """
        last_error = "no attempt made"
        attempt = 0
        while time.monotonic() < deadline:
            attempt += 1
            try:
                result = self.run(probe, timeout=max(1.0, min(15.0, deadline - time.monotonic())))
                if result.exit_code == 0:
                    return result.stdout.decode(errors="replace")
                last_error = ("probe timed out" if result.timed_out
                              else f"probe exited {result.exit_code}")
                self.close()
            except GuestUnreachable as exc:
                last_error = exc.message
                self.close()
            # Fast at first: a restored guest's sshd is back within a fraction of a second.
            time.sleep(0.05 if attempt < 40 else 0.5 if attempt < 80 else 1.0)
        raise GuestUnreachable(f"guest {self.host} did not answer over SSH in time "
                               f"(last error: {last_error})")


class _ChannelWriter:
    """The write end of a channel's stdin, for a :data:`StdinWriter`."""

    def __init__(self, channel: t.Any) -> None:
        self._channel = channel

    def write(self, data: bytes) -> int:
        self._channel.sendall(data)
        return len(data)


def _send_stdin(channel: t.Any, stdin: bytes | t.BinaryIO | StdinWriter) -> None:
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


def _collect(channel: t.Any, started: float, timeout: float,
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
    """stdout of a running guest command, read in chunks; stderr is kept for errors."""

    def __init__(self, channel: t.Any, timeout: float) -> None:
        self.channel = channel
        self.timeout = timeout
        self.stderr = bytearray()

    def first_chunk(self) -> bytes:
        """Wait for the first stdout bytes or the exit, whichever comes first."""
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.channel.recv_ready():
                return self.channel.recv(READ_CHUNK)
            self._drain_stderr()
            if self.channel.exit_status_ready() and not self.channel.recv_ready():
                return b""
            self.channel.status_event.wait(0.01)
        raise CommandTimeout(f"guest command gave no output within {self.timeout:.0f}s")

    def exit_status(self) -> int | None:
        if self.channel.exit_status_ready():
            self._drain_stderr()
            return self.channel.recv_exit_status()
        return None

    def chunks(self) -> t.Iterator[bytes]:
        try:
            while True:
                data = self.channel.recv(READ_CHUNK)
                if not data:
                    return
                yield data
        finally:
            self.close()

    def _drain_stderr(self) -> None:
        while self.channel.recv_stderr_ready():
            self.stderr += self.channel.recv_stderr(READ_CHUNK)[:65536]

    def close(self) -> None:
        self.channel.close()
