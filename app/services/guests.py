"""How the service reaches its guests: the manager's SSH key, and one SSH client per VM.

A client is made on first use and reused by every command to that VM in this process (one
connection, one channel per command; see :mod:`app.guestssh`). It is forgotten when the VM
stops or goes, and rebuilt when the VM's host key changed (a warm-pool VM's identity).
"""
from __future__ import annotations

import threading
import time
import typing as t
from pathlib import Path

from app.config import Settings
from app.errors import GuestUnreachable
from app.guestssh import GuestSSH, SshTimeouts, load_private_key
from app.models import VmRecord
from app.sshkeys import KeyPair, manager_keypair


class ManagerKey:
    """The manager's SSH client key: made once per installation, read once per process."""

    def __init__(self, keys_dir: Path) -> None:
        self.keys_dir = keys_dir
        self._pair: KeyPair | None = None
        self._lock = threading.Lock()

    def pair(self) -> KeyPair:
        with self._lock:
            if self._pair is None:
                self._pair = manager_keypair(self.keys_dir)
            return self._pair


class GuestClients:
    """One :class:`GuestSSH` per VM. Thread-safe; one per worker process.

    :param connect: makes a client (``GuestSSH``; unit tests pass a fake).
    """

    def __init__(self, settings: Settings, key: ManagerKey,
                 connect: t.Callable[..., GuestSSH] = GuestSSH) -> None:
        self.settings = settings
        self.key = key
        self.connect = connect
        self._clients: dict[str, GuestSSH] = {}
        self._lock = threading.Lock()

    def client(self, record: VmRecord) -> GuestSSH:
        """The VM's client (the state of the VM is the caller's business)."""
        with self._lock:
            client = self._clients.get(record.id)
            if client is None or client.host_key != record.host_key:
                settings = self.settings
                client = self.connect(record.guest_ip, record.host_key,
                                      load_private_key(self.key.pair().private_openssh),
                                      SshTimeouts(settings.ssh_connect_timeout_s,
                                                  settings.ssh_auth_timeout_s,
                                                  settings.ssh_channel_timeout_s))
                self._clients[record.id] = client
            return client

    def wait_ready(self, record: VmRecord) -> None:
        """Until a command runs in the guest, at most ``BOOT_TIMEOUT_S``.

        :raises GuestUnreachable: when it never did.
        """
        timeout = self.settings.boot_timeout_s
        try:
            self.client(record).wait_until_ready(time.monotonic() + timeout, probe="true")
        except GuestUnreachable as exc:
            self.forget(record.id)
            raise GuestUnreachable(f"VM {record.id} did not become ready within "
                                   f"{timeout:.0f}s: {exc.message}") from exc

    def forget(self, vm_id: str) -> None:
        """Close and drop the VM's client (it stopped or is going); a call of this process
        that is still connecting to it fails at once."""
        with self._lock:
            client = self._clients.pop(vm_id, None)
        if client is not None:
            client.retire()

    def close(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()
