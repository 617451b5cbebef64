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
                           look_for_keys=False, allow_agent=False)
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

    # Commands ##############################################################################

    def run(self, command: str, timeout: float, stdin: bytes = b"",
            max_output: int = 1_000_000) -> CommandResult:
        """Run ``command`` on a fresh channel; output beyond ``max_output`` bytes is dropped.

        :raises GuestUnreachable: when the transport or channel cannot be set up.
        :raises CommandTimeout: when the command does not finish within ``timeout`` seconds.
        """
        transport = self._transport()
        try:
            channel = transport.open_session(timeout=self.timeouts.channel)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            self.close()  # a stalled transport: the next call starts afresh
            raise GuestUnreachable(f"guest {self.host} did not open a channel: {exc}") from exc
        try:
            channel.settimeout(min(timeout, 1.0))
            channel.exec_command(command)
            if stdin:
                channel.sendall(stdin)
            channel.shutdown_write()
            return _collect(channel, timeout, max_output)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            self.close()
            raise GuestUnreachable(f"guest {self.host} dropped the command: {exc}") from exc
        finally:
            channel.close()

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
                last_error = f"probe exited {result.exit_code}"
            except (GuestUnreachable, CommandTimeout) as exc:
                last_error = exc.message
                self.close()
            time.sleep(0.5 if attempt < 20 else 1.0)
        raise GuestUnreachable(f"guest {self.host} did not answer over SSH in time "
                               f"(last error: {last_error})")


def _collect(channel: t.Any, timeout: float, max_output: int) -> CommandResult:
    """Drain stdout and stderr until exit, respecting the deadline (drain before exit status)."""
    deadline = time.monotonic() + timeout
    out, err = bytearray(), bytearray()
    while True:
        progressed = False
        while channel.recv_ready():
            data = channel.recv(READ_CHUNK)
            progressed = True
            if len(out) < max_output:
                out += data[: max_output - len(out)]
        while channel.recv_stderr_ready():
            data = channel.recv_stderr(READ_CHUNK)
            progressed = True
            if len(err) < max_output:
                err += data[: max_output - len(err)]
        if channel.exit_status_ready() and not channel.recv_ready() \
                and not channel.recv_stderr_ready():
            break
        if time.monotonic() > deadline:
            raise CommandTimeout(f"command did not finish within {timeout:.0f}s")
        if not progressed:
            channel.status_event.wait(0.02)
    return CommandResult(exit_code=channel.recv_exit_status(), stdout=bytes(out),
                         stderr=bytes(err))
