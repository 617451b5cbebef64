"""Hypervisor: a call that never reached libvirtd is retried once on a new connection."""
from __future__ import annotations

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
