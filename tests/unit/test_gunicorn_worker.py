"""app/gunicorn_worker.py: a real gunicorn (master + one worker) serving a tiny WSGI app, with
the service's worker class and, for contrast, plain gthread. The app answers how many
requests the worker's main thread has taken back so far (``finish_request``: the hand-off the
class saves)."""
from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
import typing as t

import pytest

from app.gunicorn_worker import LINGER_S

SERVICE_WORKER = "app.gunicorn_worker.KeepAliveThreadWorker"
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

APP = textwrap.dedent("""
    import json, threading
    HANDED_BACK = [0]

    def app(environ, start_response):
        body = json.dumps({"handed_back": HANDED_BACK[0],
                           "thread": threading.get_ident()}).encode()
        start_response("200 OK", [("Content-Type", "application/json"),
                                  ("Content-Length", str(len(body)))])
        return [body]
""")

CONFIG = textwrap.dedent("""
    import app.gunicorn_worker
    app.gunicorn_worker.LINGER_S = {linger}


    def post_worker_init(worker):
        import tinyapp
        original = worker.finish_request

        def counted(conn, fs):
            tinyapp.HANDED_BACK[0] += 1
            return original(conn, fs)

        worker.finish_request = counted
""")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def serve(tmp_path) -> t.Iterator[t.Callable[..., int]]:
    """Start gunicorn with a worker class, thread count and linger; returns its port."""
    (tmp_path / "tinyapp.py").write_text(APP)
    started: list[subprocess.Popen] = []

    def start(worker_class: str, threads: int, linger: float = LINGER_S) -> int:
        (tmp_path / "conf.py").write_text(CONFIG.format(linger=linger))
        port = _free_port()
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", str(tmp_path / "conf.py"),
             "--worker-class", worker_class, "--threads", str(threads), "--workers", "1",
             "--keep-alive", "5", "--bind", f"127.0.0.1:{port}", "--chdir", str(tmp_path),
             "tinyapp:app"],
            env={**os.environ, "PYTHONPATH": REPO}, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        started.append(process)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return port
            except OSError:
                assert process.poll() is None, "gunicorn exited"
                time.sleep(0.1)
        raise AssertionError("gunicorn did not listen")

    yield start
    for process in started:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _get(connection: http.client.HTTPConnection) -> dict:
    connection.request("GET", "/")
    response = connection.getresponse()
    assert response.status == 200
    return json.loads(response.read())


def test_back_to_back_requests_stay_on_their_thread(serve) -> None:
    port = serve(SERVICE_WORKER, 4)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    answers = [_get(connection) for _ in range(30)]
    connection.close()
    assert answers[-1]["handed_back"] <= 1  # the start-up probe's connection at most
    assert len({answer["thread"] for answer in answers}) == 1


def test_plain_gthread_hands_every_request_back(serve) -> None:
    """The contrast: what the class saves (and proof the count above can grow)."""
    port = serve("gthread", 4)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    answers = [_get(connection) for _ in range(30)]
    connection.close()
    assert answers[-1]["handed_back"] >= 29


def test_a_quiet_connection_goes_back_to_the_poller_and_is_served_later(serve) -> None:
    port = serve(SERVICE_WORKER, 4)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    _get(connection)
    time.sleep(LINGER_S * 4)  # the start-up probe's connection is long handed back too
    first = _get(connection)
    time.sleep(LINGER_S * 4)
    second = _get(connection)  # from the poller: handed back once in between
    connection.close()
    assert second["handed_back"] == first["handed_back"] + 1


def test_a_lingering_thread_never_holds_up_another_connection(serve) -> None:
    """One pool thread: it does not linger at all (here a linger would last 60 s), and a
    second client is served while the first client's kept-alive connection stays open and
    quiet."""
    port = serve(SERVICE_WORKER, 1, linger=60.0)
    quiet = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    _get(quiet)
    other = http.client.HTTPConnection("127.0.0.1", port, timeout=3)
    for _ in range(5):
        _get(other)  # a thread stuck on `quiet` would time this out
    assert _get(quiet)["handed_back"] >= 6
    quiet.close()
    other.close()


def test_a_client_closing_during_the_linger_frees_the_thread(serve) -> None:
    port = serve(SERVICE_WORKER, 2, linger=60.0)
    for _ in range(10):
        closing = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        _get(closing)
        closing.close()
    after = http.client.HTTPConnection("127.0.0.1", port, timeout=3)
    assert _get(after)["handed_back"] >= 10  # each closed connection ended on the main thread
    after.close()


class _Conn:
    def __init__(self, sock: t.Any, buffered: bytes = b"") -> None:
        import io
        self.sock = sock
        self.parser = type("Parser", (), {"unreader": type("U", (), {"buf": io.BytesIO(
            buffered)})()})()


def _bare_worker(threads: int, busy: int) -> t.Any:
    from app.gunicorn_worker import KeepAliveThreadWorker
    worker = object.__new__(KeepAliveThreadWorker)  # no arbiter: only what the check reads
    worker.cfg = type("Cfg", (), {"threads": threads})()
    worker._busy = busy
    return worker


def test_what_counts_as_a_next_request_ready() -> None:
    left, right = socket.socketpair()
    try:
        worker = _bare_worker(threads=4, busy=1)
        assert not worker.next_request_ready(_Conn(left))  # quiet: after LINGER_S
        assert worker.next_request_ready(_Conn(left, b"GET / HTTP/1.1\r\n"))  # read ahead
        right.sendall(b"GET / HTTP/1.1\r\n")
        assert worker.next_request_ready(_Conn(left))
        assert not _bare_worker(threads=1, busy=1).next_request_ready(_Conn(left))  # no free thread

        class TlsSocket:  # decrypted bytes kept back: the descriptor itself may be quiet
            def pending(self) -> int:
                return 5
        assert worker.next_request_ready(_Conn(TlsSocket()))
        right.close()
        left.recv(100)
        assert worker.next_request_ready(_Conn(left))  # closed by the client: its read ends it
    finally:
        left.close()
        right.close()
    assert not worker.next_request_ready(_Conn(left))  # closed here: no wait, no error
