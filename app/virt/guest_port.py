"""Reading what a guest writes to one of its virtio-serial ports, on the host.

The port's host end is a unix socket that libvirt binds in the VM's directory (like the
identity port, :mod:`app.virt.identity`). An image's build VM writes its setup script's output
to ``org.rundatsheesh.build-log`` (:data:`app.virt.domain_xml.BUILD_LOG_CHANNEL`); a
:class:`PortReader` copies it to the build log as it comes, in a thread of its own. The guest
can only write while a reader is connected, so the reader connects before the script starts.
"""
from __future__ import annotations

import logging
import socket
import threading
import time
import typing as t

from app.errors import HypervisorError

log = logging.getLogger(__name__)
CHUNK = 64 * 1024
POLL_S = 0.2


class PortReader:
    """Copies a port's bytes to ``sink`` until :meth:`stop` (or the guest side closes).

    :param socket_path: the port's host end.
    :param sink: called with each chunk, from the reader's thread.
    """

    def __init__(self, socket_path: str, sink: t.Callable[[bytes], None]) -> None:
        self.socket_path = socket_path
        self.sink = sink
        self._socket: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._last_data = time.monotonic()

    def start(self, timeout: float) -> None:
        """Connect (QEMU creates the socket when the VM starts) and start copying.

        :raises HypervisorError: when the socket does not take a connection in ``timeout``.
        """
        deadline = time.monotonic() + timeout
        while True:
            channel = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                channel.connect(self.socket_path)
                break
            except OSError as exc:
                channel.close()
                if time.monotonic() > deadline:
                    raise HypervisorError(f"port {self.socket_path}: {exc}") from exc
                time.sleep(POLL_S)
        channel.settimeout(POLL_S)
        self._socket = channel
        self._thread = threading.Thread(target=self._copy, name="rds-port-reader", daemon=True)
        self._thread.start()

    def stop(self, quiet_s: float = 0.5, timeout: float = 5.0) -> None:
        """Wait until the port was quiet for ``quiet_s`` (what the guest wrote last is still
        on its way), at most ``timeout``; then stop and close."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._thread is not None and \
                self._thread.is_alive() and time.monotonic() - self._last_data < quiet_s:
            time.sleep(0.05)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(POLL_S * 5)
        if self._socket is not None:
            self._socket.close()

    def _copy(self) -> None:
        assert self._socket is not None
        while not self._stop.is_set():
            try:
                chunk = self._socket.recv(CHUNK)
            except TimeoutError:
                continue
            except OSError as exc:
                log.debug("port reader stops path=%s error=%s", self.socket_path, exc)
                return
            if not chunk:
                return
            self._last_data = time.monotonic()
            try:
                self.sink(chunk)
            except Exception:  # the build goes on; its log is the casualty
                log.exception("writing port output failed path=%s", self.socket_path)
                return
