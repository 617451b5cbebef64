"""Handing a VM restored from a memory snapshot its identity, over its own virtio-serial port.

Every domain has the port ``org.rundatsheesh.identity`` (:mod:`app.virt.domain_xml`), whose
host end is a unix socket in the VM's directory that libvirt binds. In a memory-snapshot seed,
the guest's one-shot helper ``/usr/local/lib/rds/reidentify`` is already waiting on the port
when the seed is saved, so a restored clone only needs one exchange, without the guest agent's
process spawning and polling (~0.8 s under emulation against ~0.2 s)::

    manager → guest   MAC ADDRESS/PREFIX GATEWAY HOSTNAME\\n
                      the VM's SSH host key (OpenSSH private key lines)\\n
                      .\\n
    guest → manager   ok\\n   (or: error <what failed>\\n)

Only root can open the port inside the guest, and the helper exits after one request, so
nothing in the sandbox can use the channel afterwards. The network is not involved (the guest's
eth0 is down until the helper brings it up with the VM's own MAC and address).

On a remote host (issue 17) the socket lies on that host: the same request goes through
libvirt's ``virDomainOpenChannel`` instead (``Hypervisor.channel_exchange``, built here by
:func:`identity_request`, its answer checked by :func:`check_reply`).
"""
from __future__ import annotations

import socket
import time
import typing as t

from app.errors import HypervisorError

REPLY_LIMIT = 4096
# How often a changing budget is asked again while the guest has not answered.
BUDGET_RECHECK_S = 2.0


def identity_request(mac: str, address: str, gateway: str, hostname: str, public_key: str,
                     host_key: bytes) -> bytes:
    """The request line, the keys and the end mark, as the guest helper reads them.

    :param address: ``ADDRESS/PREFIX``.
    :param public_key: the VM's public host key (``ssh-ed25519 AAAA...``).
    :param host_key: the VM's OpenSSH private host key.
    :raises HypervisorError: a field that does not fit the format.
    """
    fields = (mac, address, gateway, hostname)
    if any(not field or any(c.isspace() for c in field) for field in fields):
        raise HypervisorError(f"invalid identity fields {fields!r}")
    key_lines = host_key.decode("ascii").strip().splitlines()
    if "." in key_lines or "\n" in public_key.strip():
        raise HypervisorError("the host key does not fit the identity channel's format")
    return (" ".join(fields) + "\n" + public_key.strip() + "\n" + "\n".join(key_lines)
            + "\n.\n").encode("ascii")


def check_reply(reply: str) -> None:
    """:raises HypervisorError: the guest did not answer ``ok``."""
    if reply != "ok":
        raise HypervisorError(f"the guest could not take its identity: {reply or 'no answer'}")


def send_identity(socket_path: str, mac: str, address: str, gateway: str, hostname: str,
                  public_key: str, host_key: bytes,
                  timeout: float | t.Callable[[], float]) -> None:
    """Send the VM's identity to the waiting guest helper and wait for its answer.

    The fields are :func:`identity_request`'s.

    :param timeout: seconds from now, or a function that says how many seconds from now
        the wait may last in all, asked again every ``BUDGET_RECHECK_S`` while the guest has
        not answered (a burst of creates that starts after this one slows this guest too).
    :raises HypervisorError: no answer within ``timeout`` or an error from the guest.
    """
    request = identity_request(mac, address, gateway, hostname, public_key, host_key)
    budget = timeout if callable(timeout) else _fixed(timeout)
    started = time.monotonic()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as channel:
        channel.settimeout(max(0.001, budget()))
        try:
            channel.connect(socket_path)
            channel.sendall(request)
            reply = _read_line(channel, started, budget)
        except OSError as exc:
            raise HypervisorError(f"identity channel {socket_path}: {exc}") from exc
    check_reply(reply)


def _fixed(seconds: float) -> t.Callable[[], float]:
    def budget() -> float:
        return seconds
    return budget


def _read_line(channel: socket.socket, started: float, budget: t.Callable[[], float]) -> str:
    reply = b""
    while not reply.endswith(b"\n") and len(reply) < REPLY_LIMIT:
        remaining = started + budget() - time.monotonic()
        if remaining <= 0:
            raise socket.timeout("no answer in time")
        channel.settimeout(min(remaining, BUDGET_RECHECK_S))
        try:
            chunk = channel.recv(REPLY_LIMIT)
        except socket.timeout:
            continue  # ask the budget again
        if not chunk:
            break
        reply += chunk
    return reply.decode("ascii", errors="replace").strip()
