"""Webhooks for real: a receiver on 127.0.0.1 (http.server in a thread) checks every signature,
fails the first attempts, and sees deliveries retried and in order.

- A real VM through the live gunicorn (``rds_server``, whose maintenance owner runs the
  delivery worker with the default backoff): vm.created and vm.deleted arrive signed, the
  first attempt failed and was retried.
- The queue across a crash: worker processes over a state database of their own (with a
  backoff of fractions of a second) send a queue that fails its first attempts; the first
  process is killed (SIGKILL) in the middle of a send, events keep coming while none runs,
  and a second process delivers everything, the interrupted one included, in order.
"""
from __future__ import annotations

import contextlib
import hashlib
import hmac
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
import typing as t
from pathlib import Path

import httpx
import pytest

from app.config import load_settings
from app.services.events import Events
from app.services.webhooks import Webhooks
from app.store.db import Store
from tests.integration.conftest import SEED_BODY

REPO = Path(__file__).resolve().parents[2]


class Receiver:
    """An HTTP receiver: checks ``X-RDS-Signature`` with ``secret``, answers 500 to the first
    ``fail_first`` POSTs, holds the first POST about ``hang_on`` (an entity id) until
    ``release`` is set, and records every POST."""

    def __init__(self, fail_first: int = 0, hang_on: str | None = None) -> None:
        self.secret = ""
        self.fail_first = fail_first
        self.hang_on = hang_on
        self.hanging = threading.Event()
        self.release = threading.Event()
        self.posts: list[dict[str, t.Any]] = []  # every attempt, as it arrived
        self.in_flight = 0
        self.most_in_flight = 0
        self._lock = threading.Lock()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/rds"

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # the name is http.server's API
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status = receiver.receive(dict(self.headers), body)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args):
                pass

        return Handler

    def receive(self, headers: dict[str, str], body: bytes) -> int:
        event = json.loads(body)
        with self._lock:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            failing = self.fail_first > 0
            self.fail_first -= 1
            hang = event["entity"]["id"] == self.hang_on and not self.hanging.is_set()
            if hang:
                self.hanging.set()
        try:
            if hang:
                self.release.wait(60)
            status = 500 if failing or hang else 204
            with self._lock:
                self.posts.append({"delivery": headers["X-RDS-Delivery"],
                                   "type": headers["X-RDS-Event"], "event": event,
                                   "signed": self.verify(headers, body), "status": status})
            return status
        finally:
            with self._lock:
                self.in_flight -= 1

    def verify(self, headers: dict[str, str], body: bytes) -> bool:
        """The check the README shows a receiver."""
        parts = dict(item.split("=", 1) for item in headers["X-RDS-Signature"].split(","))
        expected = hmac.new(self.secret.encode(), parts["t"].encode() + b"." + body,
                            hashlib.sha256).hexdigest()
        fresh = abs(time.time() - int(parts["t"])) < 300
        return fresh and hmac.compare_digest(expected, parts["v1"])

    def accepted(self) -> list[str]:
        """Entity ids of the accepted POSTs, in the order they were accepted."""
        with self._lock:
            return [post["event"]["entity"]["id"] for post in self.posts
                    if post["status"] == 204]

    def wait_for(self, predicate: t.Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, f"{what}; posts: {self.posts}"
            time.sleep(0.1)


@pytest.fixture
def receiver() -> t.Iterator[Receiver]:
    made: list[Receiver] = []

    def start(**kwargs: t.Any) -> Receiver:
        one = Receiver(**kwargs)
        threading.Thread(target=one.server.serve_forever, daemon=True).start()
        made.append(one)
        return one

    yield start  # type: ignore[misc]
    for one in made:
        one.release.set()
        one.server.shutdown()
        one.server.server_close()


def test_a_real_vms_events_are_delivered_signed_and_retried(rds_server, receiver):
    base, key = rds_server
    headers = {"X-API-Key": key}
    hook_receiver = receiver(fail_first=1)
    created = httpx.post(f"{base}/v1/admin/webhooks", headers=headers, timeout=30, json={
        "name": "live", "url": hook_receiver.url, "eventTypes": ["vm.created", "vm.deleted"]})
    assert created.status_code == 201, created.text
    hook = created.json()
    hook_receiver.secret = hook["secret"]
    try:
        vm = httpx.post(f"{base}/v1/vms", json={**SEED_BODY, "labels": {"t": "webhooks"}},
                        headers=headers, timeout=300)
        assert vm.status_code == 201, vm.text
        vm_id = vm.json()["id"]
        deleted = httpx.delete(f"{base}/v1/vms/{vm_id}?wait=true", headers=headers,
                               timeout=120)
        assert deleted.status_code == 204, deleted.text
        # The first attempt fails; the retry comes after 5-10 s (WEBHOOK_RETRY_BASE_S).
        hook_receiver.wait_for(lambda: len(hook_receiver.accepted()) >= 2, 120,
                               "vm.created and vm.deleted were not delivered")
        posts = hook_receiver.posts
        assert all(post["signed"] for post in posts)
        assert [post["type"] for post in posts] == ["vm.created", "vm.created", "vm.deleted"]
        assert [post["status"] for post in posts] == [500, 204, 204]
        assert posts[0]["delivery"] == posts[1]["delivery"]  # a retry, not a new delivery
        assert {post["event"]["entity"]["id"] for post in posts} == {vm_id}
        assert posts[0]["event"]["payload"]["labels"] == {"t": "webhooks"}
        listed = httpx.get(f"{base}/v1/admin/webhooks/{hook['id']}/deliveries",
                           headers=headers, timeout=30).json()
        assert [(d["eventType"], d["state"], d["attempts"]) for d in listed] == [
            ("vm.deleted", "delivered", 1), ("vm.created", "delivered", 2)]
        assert listed[1]["lastStatusCode"] == 204 and listed[1]["nextAttemptAt"] is None
    finally:
        gone = httpx.delete(f"{base}/v1/admin/webhooks/{hook['id']}", headers=headers,
                            timeout=30)
        assert gone.status_code == 204


def test_a_private_address_is_refused_by_the_live_server(rds_server):
    base, key = rds_server
    for url in ("http://172.16.0.1:3000/", "http://169.254.169.254/latest/meta-data/",
                "file:///etc/passwd"):
        response = httpx.post(f"{base}/v1/admin/webhooks", headers={"X-API-Key": key},
                              json={"name": "ssrf", "url": url}, timeout=30)
        assert response.status_code == 400, response.text


WORKER = """
import time
from app.config import load_settings
from app.services.webhook_delivery import DeliveryWorker
from app.store.db import Store

settings = load_settings()
store = Store(settings.state_db_path)
store.open()
worker = DeliveryWorker(settings, store)
while True:
    worker.run_once()
    time.sleep(0.1)
"""
FAST = {"WEBHOOK_RETRY_BASE_S": "0.2", "WEBHOOK_RETRY_MAX_S": "1", "WEBHOOK_RETRY_FOR_S": "120",
        "WEBHOOK_TIMEOUT_S": "30"}


@contextlib.contextmanager
def worker_process(root: Path) -> t.Iterator[subprocess.Popen]:
    """A delivery worker in a process of its own, as the maintenance owner runs it."""
    process = subprocess.Popen([sys.executable, "-c", WORKER], cwd=REPO,
                               env={**os.environ, "STORAGE_ROOT": str(root), **FAST})
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)


def test_retries_keep_the_order_and_a_crash_loses_nothing(tmp_path, receiver):
    settings = load_settings(overrides={"STORAGE_ROOT": str(tmp_path), **FAST})
    store = Store(settings.state_db_path)
    store.open()
    events = Events(settings, store)
    webhooks = Webhooks(settings, store)
    events.subscribe(webhooks.enqueue)
    hook_receiver = receiver(fail_first=3, hang_on="e3")
    hook = webhooks.create("crash", hook_receiver.url)
    hook_receiver.secret = hook.secret or ""

    def emit(*names: str) -> None:
        for name in names:
            assert events.emit("vm.created", "vm", name, {"n": name}, by="system")

    emit("e1", "e2", "e3", "e4")
    with worker_process(tmp_path) as first:
        # e1 fails three times, then e1 and e2 go; e3's first POST hangs: kill the worker
        # while it waits for the answer.
        assert hook_receiver.hanging.wait(60), hook_receiver.posts
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    hook_receiver.release.set()
    states = {d.event_id: d.state for d in webhooks.deliveries(hook.id)}
    assert "delivering" in states.values()  # claimed by the dead worker
    emit("e5", "e6")  # while no worker runs
    with worker_process(tmp_path):
        hook_receiver.wait_for(lambda: len(hook_receiver.accepted()) >= 6, 60,
                               "not everything was delivered after the restart")
        time.sleep(1)  # nothing more arrives
    assert hook_receiver.accepted() == ["e1", "e2", "e3", "e4", "e5", "e6"]
    posts = hook_receiver.posts
    assert all(post["signed"] for post in posts)
    assert [post["event"]["entity"]["id"] for post in posts[:4]] == ["e1"] * 4
    assert hook_receiver.most_in_flight == 1
    found = {json.loads(d.body)["entity"]["id"]: d for d in webhooks.deliveries(hook.id)}
    assert {name: d.state for name, d in found.items()} == {
        f"e{n}": "delivered" for n in range(1, 7)}
    assert found["e1"].attempts == 4 and found["e3"].attempts == 2
    assert found["e2"].attempts == found["e6"].attempts == 1
