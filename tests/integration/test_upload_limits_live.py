"""Hole 3: an upload answered early (413, 400, 404) must reach a client that is still sending.

Before the fix the server answered an oversized upload and closed the connection while the
client was still sending: the client saw a reset ("fetch failed" in Node), not the 413. Here a
raw-socket client sends the headers, streams the body from a thread without waiting for an
answer, and reads the answer meanwhile, against a live gunicorn with the deploy settings.

The server talks to the host's libvirtd but creates no VM: every request names a VM that does
not exist, and the hooks that sweep orphans, build memory snapshots or drain the warm pool are
left out (other test runs may share this libvirtd).
"""
from __future__ import annotations

import json
import socket
import threading
import uuid

import pytest

from tests.integration.conftest import live_server, no_upkeep_config

API_KEY = "upload-limits-key"
MIB = 1024 * 1024
BODY = 11 * MIB  # over the default MAX_UPLOAD_BYTES (10 MiB)
ROUNDS = 5
SEND_CHUNK = 64 * 1024

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def memory_snapshot():
    """Overrides the suite's autouse fixture: no seed VM for a module that creates none."""
    return None


@pytest.fixture(scope="module")
def port(tmp_path_factory):
    config = no_upkeep_config(tmp_path_factory.mktemp("gunicorn"))
    env = {"API_KEY": API_KEY, "WEB_WORKERS": "2", "SNAPSHOT_AUTO_BUILD": "false",
           "ENABLE_WARM_POOL": "false"}
    with live_server(env, "-c", str(config)) as (base, _process):
        yield int(base.rsplit(":", 1)[1])


class Client:
    """One HTTP/1.1 connection: a request's body is sent from a thread while the answer is
    read, as fetch() does."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.buffer = b""

    def close(self) -> None:
        self.sock.close()

    def upload(self, vm_id: str, size: int, chunked: bool, dest: str = "proj",
               content_type: str = "application/gzip") -> tuple[int, dict, dict, list]:
        """:returns: status, headers, JSON body and the errors the sending thread met."""
        framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {size}"
        head = (f"POST /v1/vms/{vm_id}/files/upload?dest={dest} HTTP/1.1\r\n"
                f"Host: 127.0.0.1:{self.port}\r\nX-API-Key: {API_KEY}\r\n"
                f"Content-Type: {content_type}\r\n{framing}\r\n\r\n")
        self.sock.sendall(head.encode())
        errors: list[BaseException] = []
        sender = threading.Thread(target=self._send_body, args=(size, chunked, errors),
                                  daemon=True)
        sender.start()
        status, headers, body = self._read_response()
        sender.join(timeout=60)
        return status, headers, json.loads(body), errors

    def _send_body(self, size: int, chunked: bool, errors: list) -> None:
        piece = bytes(SEND_CHUNK)
        try:
            while size > 0:
                data = piece[:min(size, SEND_CHUNK)]
                self.sock.sendall(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
                size -= len(data)
            if chunked:
                self.sock.sendall(b"0\r\n\r\n")
        except OSError as exc:
            errors.append(exc)

    def _read_response(self) -> tuple[int, dict, bytes]:
        while b"\r\n\r\n" not in self.buffer:
            self._receive()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {name.strip().lower(): value.strip()
                   for name, value in (line.split(":", 1) for line in lines)}
        length = int(headers["content-length"])
        while len(self.buffer) < length:
            self._receive()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return int(status_line.split()[1]), headers, body

    def _receive(self) -> None:
        data = self.sock.recv(65536)  # a reset raises ConnectionResetError: the bug
        assert data, f"connection closed before a complete response (got {self.buffer[:200]!r})"
        self.buffer += data


def _unknown_vm() -> str:
    return str(uuid.uuid4())


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_oversized_upload_gets_a_readable_413(port, chunked):
    for _round in range(ROUNDS):
        client = Client(port)
        try:
            status, _headers, body, errors = client.upload(_unknown_vm(), BODY, chunked)
        finally:
            client.close()
        assert status == 413 and body["message"], body
        assert not errors, f"the server stopped reading: {errors}"


@pytest.mark.parametrize("case", ["unknown vm", "dest outside", "content type"])
def test_other_early_answers_are_readable_too(port, case):
    expected, kwargs, size, chunked = {
        "unknown vm": (404, {}, 5 * MIB, False),
        "dest outside": (400, {"dest": "/etc"}, BODY, True),
        "content type": (400, {"content_type": "text/plain"}, BODY, False),
    }[case]
    for _round in range(ROUNDS):
        client = Client(port)
        try:
            status, _headers, body, errors = client.upload(_unknown_vm(), size, chunked,
                                                           **kwargs)
        finally:
            client.close()
        assert status == expected and body["message"], body
        assert not errors, f"the server stopped reading: {errors}"


def test_a_kept_alive_connection_serves_the_next_upload(port):
    """The body was read to its end, so the next request on the connection parses."""
    client = Client(port)
    try:
        for chunked in [False, True] * 3:
            status, headers, body, errors = client.upload(_unknown_vm(), BODY, chunked)
            assert status == 413 and body["message"] and not errors
            assert headers.get("connection", "keep-alive").lower() == "keep-alive"
    finally:
        client.close()
