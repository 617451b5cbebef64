"""Hypervisor: a call that never reached libvirtd is retried once on a new connection; a lost
connection is reopened within its reconnect window only."""
from __future__ import annotations

import concurrent.futures
import threading
import time

import pytest

libvirt = pytest.importorskip("libvirt", reason="libvirt-python is not installed here")

from app.errors import HypervisorError  # noqa: E402 - only with libvirt-python
from app.virt.connection import Hypervisor  # noqa: E402


class _ClosedConnection:
    def close(self) -> None:
        pass


def _rpc_error(message: str) -> libvirt.libvirtError:
    error = libvirt.libvirtError(message)
    error.err = (libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_FROM_RPC, message, 2, message,
                 None, None, 0, 0)
    return error


@pytest.mark.parametrize("message, retried", [
    ("Cannot write data: Broken pipe", True),
    ("internal error: client socket is closed", True),
    ("Cannot recv data: Connection reset by peer", False),  # may have been carried out
])
def test_a_call_that_never_left_is_sent_again_once(monkeypatch, message, retried):
    hypervisor = Hypervisor("qemu:///system", timeout=10)
    stale, fresh = _ClosedConnection(), object()
    connections = iter([stale, fresh])
    monkeypatch.setattr(hypervisor, "_connection", lambda: next(connections))
    seen = []

    def call(conn):
        seen.append(conn)
        if conn is stale:
            raise _rpc_error(message)
        return "answer"

    if retried:
        assert hypervisor._run(call) == "answer" and seen == [stale, fresh]
    else:
        with pytest.raises(HypervisorError, match="Cannot recv data"):
            hypervisor._run(call)
        assert seen == [stale]


@pytest.mark.parametrize("window, attempts", [(None, "several"), (0, 1)])
def test_a_lost_connection_is_retried_for_its_window_only(monkeypatch, window, attempts):
    """The local host's connection retries for RECONNECT_WINDOW_S after a loss (libvirtd
    restarting); a remote host's (window 0) fails at once: the host is gone."""
    monkeypatch.setattr("app.virt.connection.RECONNECT_INTERVAL_S", 0.01)
    hypervisor = Hypervisor("qemu+tcp://10.210.0.2/system", timeout=10,
                            reconnect_window_s=window)
    tries = []

    def refuse(uri):
        tries.append(uri)
        if len(tries) < 5:
            raise _rpc_error("unable to connect to server: Connection refused")
        return "connection"

    monkeypatch.setattr(libvirt, "open", refuse)
    hypervisor._lost_at = time.monotonic()
    if attempts == 1:
        with pytest.raises(libvirt.libvirtError, match="Connection refused"):
            hypervisor._open()
        assert len(tries) == 1
    else:
        assert hypervisor._open() == "connection" and len(tries) == 5


def test_a_call_that_timed_out_while_queued_never_runs(monkeypatch):
    """Behind a hung call (a remote host that does not answer), calls whose callers gave up are
    dropped instead of piling up and running minutes later (remote hosts' connections)."""
    hypervisor = Hypervisor("qemu+tcp://10.210.0.2/system", timeout=10, drop_late_calls=True)
    hypervisor._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    monkeypatch.setattr(hypervisor, "_run", lambda fn, *args: fn(None, *args))
    hung, ran = threading.Event(), []
    with pytest.raises(HypervisorError, match="did not answer hung within"):
        hypervisor._call("hung", lambda _conn: hung.wait(10), timeout=0.1)
    with pytest.raises(HypervisorError, match="did not answer queued within"):
        hypervisor._call("queued", lambda _conn: ran.append(True), timeout=0.1)
    hung.set()
    hypervisor._pool.shutdown(wait=True)
    assert ran == []
