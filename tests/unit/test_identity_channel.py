"""The identity channel's host side (app.virt.identity) against a stand-in guest helper on a
unix socket, and the network ports in the orphan sweep (fakes instead of ip/libvirt)."""
from __future__ import annotations

import contextlib
import socket
import threading
import time
import typing as t

import pytest

from app.errors import HypervisorError
from app.virt.identity import send_identity
from tests.unit.fakes import World

KEY = b"-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\nBBBB\n-----END OPENSSH PRIVATE KEY-----\n"


def fake_guest(path: str, answer: bytes | None,
               delay: float = 0.0) -> tuple[threading.Thread, list[bytes]]:
    """Listen on ``path`` like libvirt's bound socket; read one request as the guest helper
    does (up to the "." line), then answer after ``delay`` (or hang up without answering)."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    received: list[bytes] = []

    def serve() -> None:
        connection, _ = server.accept()
        with connection, server:
            data = b""
            while not data.endswith(b"\n.\n"):
                chunk = connection.recv(4096)
                if not chunk:
                    break
                data += chunk
            received.append(data)
            time.sleep(delay)
            if answer is not None:
                # A client that gave up before the delay (the timeout tests) is gone.
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    connection.sendall(answer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread, received


def send(path: str, **overrides: t.Any) -> None:
    args = {"mac": "52:54:00:10:00:05", "address": "172.16.0.5/24", "gateway": "172.16.0.1",
            "hostname": "rds-0b5c1a3e", "public_key": "ssh-ed25519 AAAAC3 rds", "host_key": KEY,
            "timeout": 5.0, **overrides}
    send_identity(path, **args)


def test_request_is_a_header_line_the_public_and_private_key_and_a_dot(tmp_path):
    path = str(tmp_path / "identity.sock")
    thread, received = fake_guest(path, b"ok\n")
    send(path)
    thread.join(5)
    assert received == [b"52:54:00:10:00:05 172.16.0.5/24 172.16.0.1 rds-0b5c1a3e\n"
                        b"ssh-ed25519 AAAAC3 rds\n" + KEY + b".\n"]


def test_an_error_from_the_guest_fails_the_restore(tmp_path):
    path = str(tmp_path / "identity.sock")
    fake_guest(path, b"error setting the address\n")
    with pytest.raises(HypervisorError, match="setting the address"):
        send(path)


def test_a_guest_that_hangs_up_or_stays_silent_fails_in_time(tmp_path):
    path = str(tmp_path / "identity.sock")
    fake_guest(path, None)
    with pytest.raises(HypervisorError, match="no answer"):
        send(path, timeout=1.0)


def test_a_budget_that_grows_while_waiting_keeps_a_slow_guest(tmp_path, monkeypatch):
    """A burst of creates after this one: the budget asked again grows, the guest that answers
    after the first budget is kept; a budget that stays short gives up on it."""
    monkeypatch.setattr("app.virt.identity.BUDGET_RECHECK_S", 0.1)
    asked: list[float] = []

    def growing() -> float:
        asked.append(time.monotonic())
        return 0.4 if len(asked) == 1 else 5.0

    path = str(tmp_path / "identity.sock")
    fake_guest(path, b"ok\n", delay=1.0)
    send(path, timeout=growing)
    assert len(asked) >= 3  # asked again while waiting, not once
    path = str(tmp_path / "identity2.sock")
    fake_guest(path, b"ok\n", delay=1.5)
    started = time.monotonic()
    with pytest.raises(HypervisorError, match="no answer"):
        send(path, timeout=lambda: 0.4)
    assert time.monotonic() - started < 1.2


def test_no_socket_is_an_error_not_a_hang(tmp_path):
    with pytest.raises(HypervisorError, match="identity channel"):
        send(str(tmp_path / "missing.sock"))


@pytest.mark.parametrize("field", ["mac", "address", "gateway", "hostname"])
def test_fields_with_spaces_or_empty_are_refused_before_sending(tmp_path, field):
    for bad in ("", "a b", "x\ny"):
        with pytest.raises(HypervisorError, match="invalid identity"):
            send(str(tmp_path / "unused.sock"), **{field: bad})


def test_orphan_ports_and_bindings_go_but_a_vm_keeps_its_own(tmp_path, monkeypatch):
    world = World(tmp_path, monkeypatch)
    vm = world.add_vm(1)
    world.taps.create(vm.name, vm.mac)
    world.taps.create("rds-deadbeef", "52:54:00:10:00:0a")  # its VM is gone
    world.hypervisor.bindings = {vm.name, "rds-deadbeef", "rds-feedf00d"}
    removed = world.vms.remove_orphans(min_age_s=0)
    assert "tap rds-deadbeef" in removed and "nwfilter binding rds-deadbeef" in removed
    assert "nwfilter binding rds-feedf00d" in removed and "tap rds-feedf00d" not in removed
    assert world.taps.names() == {vm.name}
    assert world.hypervisor.bindings == {vm.name}


def test_the_identity_wait_follows_the_host_load():
    from app.services.provisioner import (IDENTITY_TIMEOUT_MAX_S, IDENTITY_TIMEOUT_S,
                                          identity_timeout)
    assert identity_timeout(load=0.3, cpus=2) == IDENTITY_TIMEOUT_S  # an idle host
    assert identity_timeout(load=6.0, cpus=2) == 3 * IDENTITY_TIMEOUT_S  # 3 runnable per core
    assert identity_timeout(load=400.0, cpus=2) == IDENTITY_TIMEOUT_MAX_S
    # A burst: the load average still says idle, the creates in flight do not.
    assert identity_timeout(load=0.3, cpus=2, creating=1) == IDENTITY_TIMEOUT_S
    assert identity_timeout(load=0.3, cpus=2, creating=8) == 4 * IDENTITY_TIMEOUT_S
    assert identity_timeout(load=0.3, cpus=2, creating=20) == IDENTITY_TIMEOUT_MAX_S
    assert IDENTITY_TIMEOUT_S <= identity_timeout() <= IDENTITY_TIMEOUT_MAX_S  # this host
