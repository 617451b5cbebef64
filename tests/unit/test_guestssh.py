"""GuestSSH against a real paramiko server on 127.0.0.1 (NullServer style, as paramiko tests)."""
from __future__ import annotations

import contextlib
import pathlib
import socket
import threading
import time

import paramiko
import pytest
from paramiko.common import cMSG_CHANNEL_DATA

from app.errors import CommandTimeout, GuestBusy, GuestUnreachable, InvalidRequest
from app.guestssh.transport import IssuedChannelIds
from app.guestssh import (GUEST_MAX_SESSIONS, GUEST_USER, MAX_COMMAND_BYTES, GuestSSH,
                          GuestTransport, SshTimeouts, check_command_line, load_private_key)
from app.sshkeys import KeyPair, generate_keypair

TIMEOUTS = SshTimeouts(connect=2.0, auth=2.0, channel=2.0)


def run_command(channel: paramiko.Channel, command: str) -> None:
    """The 'guest': a handful of canned commands."""
    time.sleep(0.05)  # like sshd: the exec request is answered before any output or close
    if command in ("sleep", "stall-transport"):
        time.sleep(5)  # never answers in time: the client must give up
        return
    if command == "cat":
        while data := channel.recv(4096):
            channel.sendall(data)
        code = 0
    elif command == "id -u":
        channel.sendall(b"1000\n")
        code = 0
    elif command == "demo":
        channel.sendall(b"out\n")
        channel.sendall_stderr(b"err\n")
        code = 3
    elif command == "tick":  # output, a pause, more output: a streamed command
        try:
            channel.sendall(b"a\n")
            time.sleep(0.5)
            channel.sendall_stderr(b"b\n")
            time.sleep(0.5)
            channel.sendall(b"c\n")
        except OSError:  # the client stopped reading and closed the channel
            return
        code = 0
    elif command == "env":  # what the channel's env requests set, as sshd's AcceptEnv keeps
        channel.sendall("".join(f"{name}={value}\n" for name, value
                                in ENV_REQUESTS.pop(channel.get_id(), ())).encode())
        code = 0
    elif command.startswith("yes "):
        channel.sendall(b"y" * int(command.split()[1]))
        code = 0
    else:
        channel.sendall_stderr(f"{command}: not found\n".encode())
        code = 127
    channel.send_exit_status(code)
    # Like OpenSSH's sshd: exit status, then EOF and close once the output is drained.
    channel.shutdown_write()
    channel.close()


# Each server channel's env requests, in order, as they arrived (before its exec request);
# taken by its `env` command (channel ids are reused).
ENV_REQUESTS: dict[int, list[tuple[str, str]]] = {}


class NullServer(paramiko.ServerInterface):
    refused_sessions: frozenset[int] = frozenset()  # these session requests (1, 2, ...) fail

    def __init__(self, client_key: paramiko.PKey) -> None:
        self.client_key = client_key
        self.sessions = 0  # session channels requested on this connection

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        if username == GUEST_USER and key.asbytes() == self.client_key.asbytes():
            return paramiko.AUTH_SUCCESSFUL
        return paramiko.AUTH_FAILED

    def check_channel_request(self, kind: str, chanid: int) -> int:
        if kind == "session":
            self.sessions += 1
            if self.sessions in self.refused_sessions:  # as sshd past its MaxSessions
                return paramiko.OPEN_FAILED_RESOURCE_SHORTAGE
            return paramiko.OPEN_SUCCEEDED
        return paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_env_request(self, channel: paramiko.Channel, name: bytes,
                                  value: bytes) -> bool:
        ENV_REQUESTS.setdefault(channel.get_id(), []).append((name.decode(), value.decode()))
        return True

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        if command == b"stall-transport":
            # Like an sshd session process the sandbox user stopped (kill -STOP): the server
            # side of the whole connection hangs, no channel request is answered.
            time.sleep(8)
        # Reply first (we return), run in the background like a real shell would.
        threading.Thread(target=run_command, args=(channel, command.decode()),
                         daemon=True).start()
        return True


class SshServer:
    """Listens on 127.0.0.1:<ephemeral>; one paramiko Transport per connection."""

    def __init__(self, host_key: KeyPair, client_key: KeyPair, refuse_first: int = 0) -> None:
        """:param refuse_first: close this many connections at once, as an sshd that cannot
            fork (its guest's process limit reached) does."""
        self.refuse_first = refuse_first
        self.refused = 0
        self.host_key = load_private_key(host_key.private_openssh)
        self.client_key = load_private_key(client_key.private_openssh)
        self.transports: list[paramiko.Transport] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            if self.refused < self.refuse_first:
                self.refused += 1
                conn.close()
                continue
            transport = paramiko.Transport(conn)
            transport.add_server_key(self.host_key)
            self.transports.append(transport)
            threading.Thread(target=self._negotiate, args=(transport,), daemon=True).start()

    def _negotiate(self, transport: paramiko.Transport) -> None:
        # The client may walk away (e.g. it rejects our host key).
        with contextlib.suppress(paramiko.SSHException, EOFError, OSError):
            transport.start_server(server=NullServer(self.client_key))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()
        for transport in self.transports:
            transport.close()


@pytest.fixture(scope="module")
def host_key() -> KeyPair:
    return generate_keypair()


@pytest.fixture(scope="module")
def client_key() -> KeyPair:
    return generate_keypair("manager")


@pytest.fixture(scope="module")
def ssh_server(host_key, client_key):
    server = SshServer(host_key, client_key)
    yield server
    server.close()


@pytest.fixture
def guest(ssh_server, host_key, client_key):
    client = GuestSSH("127.0.0.1", host_key.public_openssh,
                      load_private_key(client_key.private_openssh), TIMEOUTS,
                      port=ssh_server.port)
    yield client
    client.close()


def test_run_returns_exit_code_stdout_and_stderr(guest):
    result = guest.run("demo", timeout=5)
    assert (result.exit_code, result.stdout, result.stderr) == (3, b"out\n", b"err\n")
    assert not result.timed_out


def test_stdin_reaches_the_command(guest):
    assert guest.run("cat", timeout=5, stdin=b"hello\x00world").stdout == b"hello\x00world"


def test_stdin_writer_streams_to_the_command(guest):
    """A StdinWriter gets the channel as a sink: input made as it is sent (upload re-pack)."""
    pieces = [bytes([index]) * 50_000 for index in range(40)]

    def write(sink) -> None:
        for piece in pieces:
            sink.write(piece)

    result = guest.run("cat", timeout=10, stdin=write, max_output=10_000_000)
    assert result.exit_code == 0 and result.stdout == b"".join(pieces)


def test_stdin_writer_errors_propagate_and_the_connection_survives(guest):
    class Refused(Exception):
        pass

    def write(sink) -> None:
        sink.write(b"partial")
        raise Refused("the input went bad half-way")

    with pytest.raises(Refused):
        guest.run("sleep", timeout=5, stdin=write)  # "sleep" never writes to the closed channel
    assert guest.run("id -u", timeout=5).stdout == b"1000\n"


def test_commands_share_one_connection(guest, ssh_server):
    before = len(ssh_server.transports)
    assert guest.run("id -u", timeout=5).stdout == b"1000\n"
    assert guest.run("nope", timeout=5).exit_code == 127
    assert len(ssh_server.transports) == before + 1
    guest.close()
    assert guest.run("id -u", timeout=5).exit_code == 0
    assert len(ssh_server.transports) == before + 2


def count_session_opens(monkeypatch) -> list[float]:
    """Calls of paramiko's open_session (a request plus a wait for its answer)."""
    opened: list[float] = []
    real = GuestTransport.open_session

    def counted(self, *args, **kwargs):
        opened.append(time.monotonic())
        return real(self, *args, **kwargs)

    monkeypatch.setattr(GuestTransport, "open_session", counted)
    return opened


def test_each_command_requests_the_next_ones_channel(guest, ssh_server, monkeypatch):
    """The channel request of the next command goes with a command's exec request
    (app/guestssh/spare.py): only a connection's first command opens one and waits."""
    opened = count_session_opens(monkeypatch)
    for _ in range(5):
        assert guest.run("id -u", timeout=5).stdout == b"1000\n"
    assert guest.run("cat", timeout=5, stdin=b"in").stdout == b"in"  # with stdin as well
    assert guest.run("demo", timeout=5).exit_code == 3
    assert len(opened) == 1
    assert ssh_server.transports[-1].server_object.sessions == 7 + 1  # one spare waiting
    guest.close()  # a new connection: its first command has no spare
    assert guest.run("id -u", timeout=5).exit_code == 0
    assert len(opened) == 2


def test_concurrent_commands_leave_one_spare_channel(guest, ssh_server):
    failures: list[object] = []

    def commands() -> None:
        for _ in range(10):
            result = guest.run("id -u", timeout=10)
            if result.stdout != b"1000\n":
                failures.append(result)

    threads = [threading.Thread(target=commands) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not failures and not any(thread.is_alive() for thread in threads)
    # Each command used one channel, and at most one request was made ahead: the last.
    assert ssh_server.transports[-1].server_object.sessions == 80 + 1


def test_a_refused_spare_channel_is_asked_for_again(guest, ssh_server, monkeypatch):
    """The guest refuses the channel requested ahead (e.g. its session limit was reached):
    the next command asks for one itself, and the connection stays."""
    monkeypatch.setattr(NullServer, "refused_sessions", frozenset({2}))
    opened = count_session_opens(monkeypatch)
    assert guest.run("id -u", timeout=5).stdout == b"1000\n"
    assert guest.run("demo", timeout=5).exit_code == 3
    assert guest.run("id -u", timeout=5).stdout == b"1000\n"  # on the second one's spare
    assert len(opened) == 2
    assert ssh_server.transports[-1].server_object.sessions == 4 + 1


def test_a_guest_at_its_session_limit_answers_busy_and_keeps_its_connection(
        guest, ssh_server, monkeypatch):
    """The guest refuses a channel (as sshd past its MaxSessions): that command is refused
    (GuestBusy, 429), the connection and what runs on it stay."""
    monkeypatch.setattr(NullServer, "refused_sessions", frozenset({2, 3}))
    assert guest.run("id -u", timeout=5).stdout == b"1000\n"  # its spare (2) is refused
    connections = len(ssh_server.transports)
    with pytest.raises(GuestBusy, match="as many commands at once"):
        guest.run("id -u", timeout=5)  # and its own request (3)
    assert guest.run("id -u", timeout=5).stdout == b"1000\n"
    assert len(ssh_server.transports) == connections
    assert GuestBusy("x").http_status == 429 and GuestBusy("x").headers == {"Retry-After": "1"}


def test_a_spare_channel_from_a_dropped_connection_is_not_used(guest, ssh_server):
    assert guest.run("id -u", timeout=5).exit_code == 0
    old = ssh_server.transports[-1]
    old.close()  # the guest's sshd went away, the spare with it
    time.sleep(0.5)  # the client's transport sees the connection end
    assert guest.run("id -u", timeout=5).stdout == b"1000\n"
    assert guest.run("id -u", timeout=5).stdout == b"1000\n"
    assert ssh_server.transports[-1] is not old


def test_guest_connections_prefer_aes_gcm(guest, ssh_server):
    assert guest.run("id -u", timeout=5).exit_code == 0
    server_side = ssh_server.transports[-1]
    assert server_side.remote_cipher == "aes128-gcm@openssh.com"
    assert "aes128-ctr" in GuestTransport._preferred_ciphers  # still a fallback


def test_output_is_capped_and_flagged(guest):
    result = guest.run("yes 300000", timeout=5, max_output=1000)
    assert result.exit_code == 0
    assert result.stdout == b"y" * 1000
    assert (result.stdout_truncated, result.stderr_truncated) == (True, False)
    full = guest.run("yes 300000", timeout=5)
    assert (len(full.stdout), full.stdout_truncated) == (300000, False)


def test_command_timeout_gives_a_timed_out_result(guest):
    started = time.monotonic()
    result = guest.run("sleep", timeout=0.5)
    assert (result.timed_out, result.exit_code) == (True, -1)
    assert 0.5 <= time.monotonic() - started < 3
    assert guest.run("id -u", timeout=5).exit_code == 0  # the connection survives


def test_a_started_command_hands_its_output_on_as_it_arrives(guest):
    running = guest.start("tick", timeout=5)
    try:
        seen = []
        for name, data in running.output():
            seen.append((name, data, running.channel.exit_status_ready()))
        assert seen[:2] == [("stdout", b"a\n", False), ("stderr", b"b\n", False)]
        assert b"".join(data for name, data, _ in seen if name == "stdout") == b"a\nc\n"
        assert running.exit_code() == 0 and not running.timed_out
    finally:
        running.close()


def test_a_started_command_stops_when_asked_or_at_its_deadline(guest):
    running = guest.start("tick", timeout=5)
    asked = []
    try:
        chunks = list(running.output(stop=lambda: asked.append(1) or True))
    finally:
        running.close()
    assert chunks == [("stdout", b"a\n")] and running.stopped and asked
    assert running.exit_code() == -1
    running = guest.start("sleep", timeout=0.5)
    try:
        assert list(running.output()) == [] and running.timed_out
    finally:
        running.close()
    assert guest.run("id -u", timeout=5).exit_code == 0  # the connection survives


def test_late_messages_for_closed_channels_keep_the_connection(guest, ssh_server):
    """A guest's sshd may answer a channel the client closed (a timed-out command) long
    after: its message for a channel id the client no longer holds is ignored (paramiko's
    channels_seen, kept here without an entry per channel), not taken for a protocol error
    that ends the connection; one for an id never issued still ends it."""
    for _ in range(40):
        assert guest.run("id -u", timeout=5).stdout == b"1000\n"
    connections = len(ssh_server.transports)
    server_side = ssh_server.transports[-1]

    def data_for(channel_id: int) -> None:
        message = paramiko.Message()
        message.add_byte(cMSG_CHANNEL_DATA)
        message.add_int(channel_id)
        message.add_string(b"late")
        server_side._send_user_message(message)

    for channel_id in (0, 1, 20, 38):
        data_for(channel_id)
    time.sleep(0.3)
    assert guest.run("id -u", timeout=5).stdout == b"1000\n"
    assert len(ssh_server.transports) == connections
    seen = guest._transport(time.monotonic() + 5).channels_seen
    assert isinstance(seen, IssuedChannelIds)
    assert set(vars(seen)) == {"_last", "_wrapped"}  # no entry per channel
    data_for(10**6)  # never issued: paramiko ends the connection
    time.sleep(0.3)
    assert guest.run("id -u", timeout=5).stdout == b"1000\n"
    assert len(ssh_server.transports) == connections + 1


def test_issued_channel_ids_follow_the_counter_and_its_wrap():
    seen = IssuedChannelIds()
    assert 0 not in seen
    for channel_id in range(3):
        seen[channel_id] = True
    assert [i in seen for i in range(4)] == [True, True, True, False]
    seen[0xFFFFFF] = True
    seen[0] = True  # the counter wrapped: every id may be a closed one now
    assert 5 in seen and 0xFFFFFE in seen


def test_host_key_mismatch_is_refused(ssh_server, client_key):
    impostor = GuestSSH("127.0.0.1", generate_keypair().public_openssh,
                        load_private_key(client_key.private_openssh), TIMEOUTS,
                        port=ssh_server.port)
    with pytest.raises(GuestUnreachable, match="does not match"):
        impostor.run("id -u", timeout=5)
    impostor.close()


def test_a_guest_that_is_not_the_pinned_one_gets_one_attempt_only(ssh_server, client_key):
    impostor = GuestSSH("127.0.0.1", generate_keypair().public_openssh,
                        load_private_key(client_key.private_openssh), TIMEOUTS,
                        port=ssh_server.port)
    before = len(ssh_server.transports)
    with pytest.raises(GuestUnreachable, match="does not match"):
        impostor.run("id -u", timeout=10)
    impostor.close()
    assert len(ssh_server.transports) == before + 1


def test_refused_connections_are_retried_within_the_call(host_key, client_key):
    """A guest whose sshd cannot fork for a moment closes new connections at once; the call
    connects again while its deadline allows (RELIABILITY.md, density: first execs on a
    saturated host)."""
    server = SshServer(host_key, client_key, refuse_first=3)
    client = GuestSSH("127.0.0.1", host_key.public_openssh,
                      load_private_key(client_key.private_openssh), TIMEOUTS, port=server.port)
    try:
        assert client.run("id -u", timeout=10).stdout == b"1000\n"
        assert server.refused == 3
    finally:
        client.close()
        server.close()


def test_connection_retries_stop_before_the_deadline(host_key, client_key):
    server = SshServer(host_key, client_key, refuse_first=1000)
    client = GuestSSH("127.0.0.1", host_key.public_openssh,
                      load_private_key(client_key.private_openssh), TIMEOUTS, port=server.port)
    try:
        started = time.monotonic()
        with pytest.raises(GuestUnreachable, match="SSH to guest 127.0.0.1 failed"):
            client.run("id -u", timeout=2.0)
        assert time.monotonic() - started < 2.0  # an error, not a command timed out
        assert server.refused > 3
    finally:
        client.close()
        server.close()


def test_unknown_client_key_is_refused(ssh_server, host_key):
    stranger = GuestSSH("127.0.0.1", host_key.public_openssh,
                        load_private_key(generate_keypair().private_openssh), TIMEOUTS,
                        port=ssh_server.port)
    with pytest.raises(GuestUnreachable, match="Authentication failed"):
        stranger.run("id -u", timeout=5)
    stranger.close()


def test_wait_until_ready_returns_the_probe_output(guest):
    assert guest.wait_until_ready(time.monotonic() + 5) == "1000\n"


def test_wait_until_ready_gives_up_on_a_closed_port(host_key, client_key):
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]  # free again once closed: nothing listens there
    client = GuestSSH("127.0.0.1", host_key.public_openssh,
                      load_private_key(client_key.private_openssh), TIMEOUTS, port=port)
    started = time.monotonic()
    with pytest.raises(GuestUnreachable, match=f"cannot connect to guest 127.0.0.1:{port}"):
        client.wait_until_ready(time.monotonic() + 1.0)
    assert time.monotonic() - started < 4


def test_a_stalled_exec_request_is_a_timeout_within_the_deadline(guest, ssh_server):
    """paramiko waits for the reply to an exec request without a timeout of its own: the
    request's deadline must cover it, and the stalled connection must be dropped."""
    before = len(ssh_server.transports)
    started = time.monotonic()
    result = guest.run("stall-transport", timeout=1.0)
    assert (result.timed_out, result.exit_code) == (True, -1)
    assert time.monotonic() - started < 1.0 + 2.0
    started = time.monotonic()
    assert guest.run("id -u", timeout=5).stdout == b"1000\n"  # on a new connection
    assert time.monotonic() - started < 3
    assert len(ssh_server.transports) == before + 2


def test_a_stalled_connection_times_out_the_next_commands_too(guest):
    """A command that opens its channel on a connection that stalled meanwhile."""
    assert guest.run("id -u", timeout=5).exit_code == 0

    def stall() -> None:
        with contextlib.suppress(GuestUnreachable):  # its connection is dropped under it
            guest.run("stall-transport", 20.0)

    stalled = threading.Thread(target=stall, daemon=True)
    stalled.start()
    time.sleep(0.3)
    started = time.monotonic()
    result = guest.run("id -u", timeout=1.0)
    assert result.timed_out and time.monotonic() - started < 1.0 + 2.0


def test_the_stream_deadline_covers_the_whole_transfer(guest):
    started = time.monotonic()
    stream = guest.open_stream("sleep", timeout=1.0)
    with pytest.raises(CommandTimeout):
        stream.first_chunk()
    assert time.monotonic() - started < 3


@pytest.mark.parametrize(("command", "words"), [
    ("echo a\0b", "NUL"), ("echo \ud800", "Unicode"),
    ("x" * (MAX_COMMAND_BYTES + 1), "bytes"), ("é" * (MAX_COMMAND_BYTES // 2 + 1), "bytes")])
def test_command_line_sshd_would_drop_is_refused_before_any_channel(command, words):
    keys = generate_keypair()  # 192.0.2.1 is unroutable: a connect would fail differently
    guest = GuestSSH("192.0.2.1", keys.public_openssh,
                     load_private_key(keys.private_openssh), TIMEOUTS)
    with pytest.raises(InvalidRequest, match=words):
        guest.run(command, timeout=1.0)
    with pytest.raises(InvalidRequest, match=words):
        guest.open_stream(command, timeout=1.0)


def test_command_line_at_the_limit_is_allowed():
    check_command_line("x" * MAX_COMMAND_BYTES)


def test_a_command_without_input_sees_the_end_of_its_stdin_at_once(guest):
    """With no stdin the EOF goes right behind the exec request (exec_without_stdin): a
    command that reads its input (cat) ends at once, with nothing read."""
    started = time.monotonic()
    result = guest.run("cat", timeout=5)
    assert (result.exit_code, result.stdout, result.timed_out) == (0, b"", False)
    assert time.monotonic() - started < 2
    assert guest.run("demo", timeout=5).exit_code == 3  # the channel's answers still read


@pytest.mark.parametrize("stdin", [b"", b"input"], ids=["no-stdin", "stdin"])
def test_env_requests_go_before_the_exec_request(guest, stdin):
    """The marker reaches the guest as SSH env requests (sshd's AcceptEnv), with or without
    stdin, and each channel gets its own."""
    first = guest.run("env", timeout=5, stdin=stdin,
                      environment={"RDS_EXEC_ID": "abc123", "B": "x y"})
    second = guest.run("env", timeout=5, stdin=stdin, environment={"RDS_EXEC_ID": "def456"})
    assert first.stdout == b"RDS_EXEC_ID=abc123\nB=x y\n", first
    assert second.stdout == b"RDS_EXEC_ID=def456\n"
    assert guest.run("env", timeout=5, stdin=stdin).stdout == b""


@pytest.mark.parametrize("environment, words", [
    ({"A B": "x"}, "not a variable name"), ({"": "x"}, "not a variable name"),
    ({"A": "x\0y"}, "NUL"), ({"A": "\udc80"}, "not valid Unicode"),
])
def test_bad_env_requests_are_refused_before_they_leave(guest, environment, words):
    with pytest.raises(InvalidRequest, match=words):
        guest.run("env", timeout=5, environment=environment)
    assert guest.run("id -u", timeout=5).stdout == b"1000\n"  # the connection is intact


def test_a_refused_exec_request_is_an_error_not_a_hang(guest, monkeypatch):
    """The guest answers the exec request with a failure: the call fails (as paramiko's own
    exec_command does), it does not wait for output that never comes."""
    monkeypatch.setattr(NullServer, "check_channel_exec_request",
                        lambda self, channel, command: False, raising=False)
    with pytest.raises(GuestUnreachable):
        guest.run("id -u", timeout=5)


def test_a_retired_client_stops_retrying_at_once(host_key, client_key):
    """A call still connecting when its VM is stopped or deleted (GuestClients.forget) fails
    at once, not after retrying until its deadline."""
    server = SshServer(host_key, client_key, refuse_first=1000)
    client = GuestSSH("127.0.0.1", host_key.public_openssh,
                      load_private_key(client_key.private_openssh), TIMEOUTS, port=server.port)
    failed: list[tuple[float, BaseException]] = []

    def call() -> None:
        try:
            client.run("id -u", timeout=30)
        except GuestUnreachable as exc:
            failed.append((time.monotonic(), exc))

    caller = threading.Thread(target=call)
    try:
        caller.start()
        time.sleep(1.0)  # several refused attempts
        assert caller.is_alive() and server.refused >= 2
        retired_at = time.monotonic()
        client.retire()
        caller.join(10)
        assert not caller.is_alive()
        ended, error = failed[0]
        assert ended - retired_at < 2.0  # at most the attempt or pause under way
        refused = server.refused
        with pytest.raises(GuestUnreachable, match="stopped or was deleted"):
            client.run("id -u", timeout=30)
        assert server.refused == refused  # no new connection
    finally:
        client.close()
        server.close()


def test_the_session_limit_is_the_guest_sshds():
    config = (pathlib.Path(__file__).resolve().parents[2]
              / "guest/rootfs/etc/ssh/sshd_config").read_text()
    assert f"\nMaxSessions {GUEST_MAX_SESSIONS}\n" in config
