"""The gunicorn worker class of the service (deploy/gunicorn.conf.py): gunicorn's ``gthread``
worker that keeps serving a kept-alive connection on the thread that answered its last request
when the client's next request follows at once.

gthread hands every request of a kept-alive connection across three threads: the main thread
polls the socket, hands it to a pool thread, and takes it back when the answer is out (a pipe
write, a poller registration and two thread wake-ups per request). A client that sends its
next request right after the answer (an SDK or CI job running commands one after another;
nginx reusing its upstream connections) pays that for every call: ~0.3 ms of the worker's
CPU and ~8 thread switches per exec on this project's 2-core host (BENCHMARKS.md, "Session
16"). Here the thread that sent the answer waits up to :data:`LINGER_S` for the next request
on the same connection and serves it itself; a connection that stays quiet longer goes back to
the main thread's poller as before (gunicorn's keep-alive timeout applies from there).

A thread lingers only while another thread of the pool is free, so a waiting connection never
keeps a new one from being served; it stops lingering when the worker stops (gunicorn's
``alive``). With a gunicorn whose ``handle`` answers otherwise than ``True`` for a kept-alive
connection (releases before 24), nothing lingers: it is plain gthread.
"""
from __future__ import annotations

import select
import threading
import typing as t

from gunicorn.workers.gthread import ThreadWorker

# Longer than a client's turnaround between two calls (tens of microseconds for nginx, a few
# milliseconds for a Python SDK on a busy host), short enough that a connection going quiet
# frees its thread quickly.
LINGER_S = 0.1


class KeepAliveThreadWorker(ThreadWorker):
    """gthread, with kept-alive connections served on their thread while requests follow."""

    def __init__(self, *args: t.Any, **kwargs: t.Any) -> None:
        super().__init__(*args, **kwargs)
        self._busy = 0  # pool threads in handle()
        self._busy_lock = threading.Lock()

    def handle(self, conn: t.Any) -> t.Any:
        with self._busy_lock:
            self._busy += 1
        try:
            result = super().handle(conn)
            while result is True and self.alive and self.next_request_ready(conn):
                result = super().handle(conn)
            return result
        finally:
            with self._busy_lock:
                self._busy -= 1

    def next_request_ready(self, conn: t.Any) -> bool:
        """Whether ``conn``'s next request is there, or arrives within :data:`LINGER_S`
        while another pool thread is free (a connection the client closed counts as ready:
        its next read ends it)."""
        unreader = getattr(conn.parser, "unreader", None)
        if unreader is not None and unreader.buf.getvalue():
            return True  # read ahead with the last request's body
        pending = getattr(conn.sock, "pending", None)  # TLS: decrypted bytes kept back
        if pending is not None and pending() > 0:
            return True
        if self._busy >= self.cfg.threads:
            return False
        try:
            poller = select.poll()  # any descriptor number (select() stops at 1024)
            poller.register(conn.sock, select.POLLIN)
            return bool(poller.poll(LINGER_S * 1000))
        except (OSError, ValueError):  # closed meanwhile
            return False
