"""GuestSSH: one paramiko client per VM, one channel per command, the VM's host key pinned.

Right after boot an SSH session can stall for minutes after authentication (seen on TCG hosts),
so every phase has its own hard timeout (TCP connect, banner, auth, ``open_session``, reads)
and callers retry on a fresh transport. Never AutoAddPolicy: the guest's host key is generated
by the manager and pinned here. This package is the only one that imports paramiko.
"""
from __future__ import annotations

import base64
import dataclasses
import io
import logging
import re
import socket
import threading
import time
import typing as t

import paramiko

from app.errors import CommandTimeout, GuestBusy, GuestUnreachable, InvalidRequest
from app.guestssh.channels import (RunningCommand, StdinWriter, close_quietly, collect,
                                   send_exec_request, send_stdin, within)
from app.guestssh.output_stream import OutputStream
from app.guestssh.spare import SpareSession
from app.guestssh.transport import GuestTransport
from app.guestssh.watchdog import WATCHDOG
from app.models import CommandResult

log = logging.getLogger(__name__)
GUEST_USER = "user"
# sshd runs a command as `bash -c COMMAND`, one argv string, which Linux caps at 32 pages
# including its NUL (MAX_ARG_STRLEN); a longer one fails to start.
MAX_COMMAND_BYTES = 32 * 4096 - 1
GUEST_MAX_SESSIONS = 64  # the guest sshd's MaxSessions (guest/rootfs/etc/ssh/sshd_config)
ENV_REQUEST_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# What a channel raises when its connection breaks.
CHANNEL_ERRORS = (paramiko.SSHException, OSError, EOFError)
# Connection errors that another attempt cannot mend: the guest is not who it should be, or
# refuses the manager's key.
FINAL_CONNECT_ERRORS = (paramiko.BadHostKeyException, paramiko.AuthenticationException)
CONNECT_RETRY_PAUSES_S = (0.1, 0.25, 0.5, 1.0)  # then 1 s between attempts
MIN_CONNECT_ATTEMPT_S = 0.5  # no new attempt with less time than this left


@dataclasses.dataclass(frozen=True)
class SshTimeouts:
    connect: float = 5.0
    auth: float = 10.0
    channel: float = 10.0


def check_command_line(command: str) -> None:
    """Refuse a command line before it reaches the guest's sshd.

    OpenSSH treats a NUL in an exec request, or a request over its packet limit (256 KiB), as
    a protocol error and drops the connection, which all of the VM's commands share; a lone
    surrogate cannot be sent at all. The API's schemas refuse these per field; this is the
    last check, for any caller.

    :raises InvalidRequest: NUL, not encodable as UTF-8, or over :data:`MAX_COMMAND_BYTES`.
    """
    if "\0" in command:
        raise InvalidRequest("the command line contains a NUL character")
    try:
        size = len(command.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidRequest("the command line is not valid Unicode text") from None
    if size > MAX_COMMAND_BYTES:
        raise InvalidRequest(f"the command line is {size} bytes long; the guest runs at most "
                             f"{MAX_COMMAND_BYTES} (shorten cmd, args or env)")


def check_environment(environment: t.Mapping[str, str]) -> None:
    """Refuse env requests the guest's sshd would choke on (as :func:`check_command_line`):
    a name that is not a shell variable's, a NUL or text that is not Unicode.

    :raises InvalidRequest: naming the variable.
    """
    for name, value in environment.items():
        if not ENV_REQUEST_NAME.fullmatch(name):
            raise InvalidRequest(f"env request name {name!r} is not a variable name")
        if "\0" in value:
            raise InvalidRequest(f"env request {name} contains a NUL character")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidRequest(f"env request {name} is not valid Unicode text") from None


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
        self._retired = False
        self._spare = SpareSession()

    # Connection ############################################################################

    def _connect(self, deadline: float) -> paramiko.SSHClient:
        """Connect and authenticate; every phase ends by ``deadline`` at the latest (a
        watchdog closes the socket if paramiko is still waiting then)."""
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        pinned = parse_public_key(self.host_key)
        client.get_host_keys().add(self.host, pinned.get_name(), pinned)
        try:
            sock = socket.create_connection((self.host, self.port),
                                            timeout=within(self.timeouts.connect, deadline))
            # Requests are small and each one is waited for: no Nagle delay behind the last
            # one's ACK (the guest's delayed ACK), as OpenSSH's own client does.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as exc:
            raise GuestUnreachable(
                f"cannot connect to guest {self.host}:{self.port}: {exc}") from exc
        token = WATCHDOG.arm(deadline, lambda: close_quietly(sock))
        try:
            client.connect(self.host, username=GUEST_USER, pkey=self.client_key, sock=sock,
                           timeout=within(self.timeouts.connect, deadline),
                           banner_timeout=within(self.timeouts.connect, deadline),
                           auth_timeout=within(self.timeouts.auth, deadline),
                           channel_timeout=within(self.timeouts.channel, deadline),
                           look_for_keys=False, allow_agent=False,
                           transport_factory=GuestTransport)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            client.close()
            sock.close()
            raise GuestUnreachable(f"SSH to guest {self.host} failed: {exc}") from exc
        finally:
            WATCHDOG.disarm(token)
        transport = client.get_transport()
        if transport is not None:
            transport.set_keepalive(30)
        return client

    def _transport(self, deadline: float) -> paramiko.Transport:
        """The VM's connection, made if there is none: a failed attempt is retried until
        ``deadline``. On a saturated host one attempt's phase can run out (the guest's ARP
        reply, the banner or the auth answer late) while the call still has time, and a
        guest whose sshd cannot fork for a moment (its process limit reached) refuses a
        connection that works a second later. A pinned key that does not match, or a key
        the guest refuses, fails at once.

        :raises GuestUnreachable: no connection by ``deadline`` (the last attempt's error).
        """
        attempt = 0
        while True:
            try:
                return self._current_or_new(deadline)
            except GuestUnreachable as exc:
                if isinstance(exc.__cause__, FINAL_CONNECT_ERRORS) or self._retired:
                    raise
                pause = CONNECT_RETRY_PAUSES_S[min(attempt, len(CONNECT_RETRY_PAUSES_S) - 1)]
                if deadline - time.monotonic() < pause + MIN_CONNECT_ATTEMPT_S:
                    raise
                log.info("guest %s: connection attempt %d failed (%s); retrying",
                         self.host, attempt + 1, exc.message)
                attempt += 1
                time.sleep(pause)

    def _current_or_new(self, deadline: float) -> paramiko.Transport:
        """One attempt. Callers on the same VM wait for each other's attempt, each no
        longer than its own deadline."""
        if not self._lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise GuestUnreachable(f"guest {self.host}: still connecting at the deadline")
        try:
            if self._retired:
                raise GuestUnreachable(f"guest {self.host}: its VM stopped or was deleted")
            transport = self._client.get_transport() if self._client else None
            if transport is None or not transport.is_active():
                if self._client is not None:
                    self._client.close()
                self._client = None
                self._client = self._connect(deadline)
                transport = self._client.get_transport()
            assert transport is not None
            return transport
        finally:
            self._lock.release()

    def _drop(self, transport: paramiko.Transport) -> None:
        """Close ``transport`` if it is still the current one (it stalled): the next command
        connects afresh."""
        with self._lock:
            if self._client is not None and self._client.get_transport() is transport:
                self._spare.forget()
                self._client.close()
                self._client = None
        transport.close()

    def close(self) -> None:
        with self._lock:
            self._spare.forget()
            if self._client is not None:
                self._client.close()
                self._client = None

    def retire(self) -> None:
        """Close for good (the VM stops or goes): a call still connecting or waiting to
        connect again fails at once instead of retrying until its deadline."""
        self._retired = True
        self.close()

    # Commands ############################################################################

    def _open_channel(self, deadline: float) -> t.Any:
        """A session channel: the spare the previous command requested (:mod:`.spare`), or
        a new one."""
        transport = self._transport(deadline)
        spare = self._spare.take(transport)
        try:
            if spare is not None:
                try:
                    return transport.wait_opened(spare, within(self.timeouts.channel, deadline))
                except paramiko.ChannelException:
                    pass  # refused (the guest's session limit, say): ask once more, now
            return transport.open_session(timeout=within(self.timeouts.channel, deadline))
        except paramiko.ChannelException as exc:
            # The guest answered no: its sshd runs MaxSessions commands on this connection
            # already. They and the connection are fine.
            raise GuestBusy(f"guest {self.host} runs as many commands at once as it allows "
                            f"({GUEST_MAX_SESSIONS}); retry when one has ended") from exc
        except CHANNEL_ERRORS as exc:
            self._drop(transport)  # a stalled transport: the next call starts afresh
            raise GuestUnreachable(f"guest {self.host} did not open a channel: {exc}") from exc

    def run(self, command: str, timeout: float,
            stdin: bytes | t.BinaryIO | StdinWriter = b"",
            max_output: int = 1_000_000,
            environment: t.Mapping[str, str] | None = None) -> CommandResult:
        """Run ``command`` on a fresh channel and collect its output.

        ``stdin`` is bytes, a file read in chunks, or a :data:`StdinWriter`; an error the
        writer raises (other than the channel's own) propagates, and the channel is closed
        without sending EOF.

        ``environment`` goes as SSH ``env`` requests before the exec request: the guest's
        sshd keeps the names its ``AcceptEnv`` lists (RDS_EXEC_ID) and drops the others.

        Output beyond ``max_output`` bytes per stream is drained but dropped (and flagged).
        ``timeout`` bounds the whole call, every phase included (connect, auth, channel open,
        exec request, stdin, output, exit status): when it passes, the result has
        ``timed_out=True`` and ``exit_code=-1``, and the caller decides how to kill what is
        left in the guest. A connection that did not answer a channel request in that time is
        closed (the next command connects afresh).

        :raises GuestUnreachable: when the transport or channel breaks or cannot be set up
            before the deadline.
        :raises GuestBusy: the guest runs :data:`GUEST_MAX_SESSIONS` commands already.
        :raises InvalidRequest: a command line sshd would refuse (:func:`check_command_line`).
        """
        running = self.start(command, timeout, stdin, environment)
        try:
            return collect(running, max_output)
        finally:
            running.close()

    def start(self, command: str, timeout: float,
              stdin: bytes | t.BinaryIO | StdinWriter = b"",
              environment: t.Mapping[str, str] | None = None) -> RunningCommand:
        """Start ``command`` on a fresh channel and send its stdin (as :meth:`run`); read its
        output as it arrives from the answer, and close that.

        ``timeout`` bounds the whole command as in :meth:`run`: a deadline that passes before
        the command started gives a :class:`RunningCommand` that is already timed out.

        :raises GuestUnreachable: / :raises GuestBusy: / :raises InvalidRequest: as :meth:`run`.
        """
        check_command_line(command)
        environment = dict(environment or {})
        check_environment(environment)
        started = time.monotonic()
        deadline = started + timeout
        try:
            channel = self._open_channel(deadline)
        except GuestUnreachable:
            if time.monotonic() >= deadline:
                return RunningCommand.expired(started)
            raise
        stage = {"name": "exec"}
        token = WATCHDOG.arm(deadline, lambda: close_quietly(channel))
        try:
            channel.settimeout(within(self.timeouts.channel, deadline))
            no_stdin = isinstance(stdin, (bytes, bytearray)) and not stdin
            transport = channel.get_transport()
            send_exec_request(channel, command, environment, no_stdin=no_stdin,
                              along=lambda: self._spare.request(transport))
            if no_stdin:
                stdin = None  # sent: its end went with the request
            stage["name"] = "stdin"
            channel.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                if stdin is not None:
                    send_stdin(channel, stdin)
            except CHANNEL_ERRORS:
                # The command may exit without reading all of its input; that is its answer
                # (after the deadline: what it wrote until then, timed out).
                if not (time.monotonic() >= deadline or channel.closed
                        or channel.exit_status_ready() or channel.eof_received):
                    raise
        except CHANNEL_ERRORS as exc:
            channel.close()
            if time.monotonic() >= deadline:
                if stage["name"] == "exec":  # no answer to the exec request: stalled
                    self._drop(channel.get_transport())
                return RunningCommand.expired(started)
            raise self._broken(exc) from exc
        except BaseException:
            channel.close()
            raise
        finally:
            # Reading output never blocks (RunningCommand polls up to the deadline itself):
            # the watchdog must not close the channel under it.
            WATCHDOG.disarm(token)
        return RunningCommand(channel, started, deadline, CHANNEL_ERRORS, self._broken)

    def _broken(self, exc: BaseException) -> GuestUnreachable:
        """A command's connection broke: drop it (the next command connects afresh)."""
        self.close()
        return GuestUnreachable(f"guest {self.host} dropped the command: {exc}")

    def open_stream(self, command: str, timeout: float) -> "OutputStream":
        """Start ``command`` and hand back its stdout as a stream (for large downloads);
        ``timeout`` bounds the whole transfer.

        :raises GuestUnreachable: when the channel cannot be set up.
        :raises GuestBusy: the guest runs :data:`GUEST_MAX_SESSIONS` commands already.
        :raises CommandTimeout: when the deadline passed before the command started.
        :raises InvalidRequest: a command line sshd would refuse (:func:`check_command_line`).
        """
        check_command_line(command)
        deadline = time.monotonic() + timeout
        channel = self._open_channel(deadline)
        token = WATCHDOG.arm(deadline, lambda: close_quietly(channel))
        try:
            channel.settimeout(within(self.timeouts.channel, deadline))
            channel.exec_command(command)
            channel.shutdown_write()
        except CHANNEL_ERRORS as exc:
            WATCHDOG.disarm(token)
            channel.close()
            if time.monotonic() >= deadline:
                self._drop(channel.get_transport())
                raise CommandTimeout(f"guest {self.host} did not start the command within "
                                     f"{timeout:.0f}s") from exc
            raise self._broken(exc) from exc
        return OutputStream(channel, deadline, lambda: WATCHDOG.disarm(token))

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
                result = self.run(probe, timeout=max(0.5, min(15.0, deadline - time.monotonic())))
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
