"""Webhook deliveries across a crash of the whole service: a live gunicorn (as `make run` starts
it) queues signed deliveries to a receiver on 127.0.0.1 that fails its first attempts; the
gunicorn master is killed (SIGKILL, its workers die with it) in the middle of the retries, and
a new service delivers every event, in order, each once accepted.

Its own module: the service under test must become the host's maintainer (which runs the
delivery worker), so no other module's live server may run beside it.
"""
from __future__ import annotations

import threading
import time

import httpx

from tests.integration.conftest import kill_service, live_server
from tests.integration.test_webhooks_live import Receiver

KEY = "webhooks-restart-test-key"
ENV = {"API_KEY": KEY, "WEB_WORKERS": "2", "WEBHOOK_RETRY_BASE_S": "0.5",
       "WEBHOOK_RETRY_MAX_S": "1", "WEBHOOK_RETRY_FOR_S": "600"}
HEADERS = {"X-API-Key": KEY}


def test_a_crash_in_the_middle_of_retries_loses_no_delivery():
    receiver = Receiver(fail_first=4)
    threading.Thread(target=receiver.server.serve_forever, daemon=True).start()
    keys: list[str] = []
    try:
        with live_server(ENV) as (base, process):
            created = httpx.post(f"{base}/v1/admin/webhooks", headers=HEADERS, timeout=30,
                                 json={"name": "restart", "url": receiver.url,
                                       "eventTypes": ["apikey.created"]})
            assert created.status_code == 201, created.text
            hook = created.json()
            receiver.secret = hook["secret"]
            for number in range(3):
                key = httpx.post(f"{base}/v1/admin/api-keys", headers=HEADERS, timeout=30,
                                 json={"name": f"restart-{number}-{time.time_ns()}"})
                assert key.status_code == 201, key.text
                keys.append(key.json()["id"])
            # The first event is being retried (it failed twice): crash now.
            receiver.wait_for(lambda: len(receiver.posts) >= 2, 60, "no retry came")
            kill_service(process)
        failed_before = len(receiver.posts)
        assert receiver.accepted() == [], "nothing may have been accepted before the crash"
        with live_server(ENV) as (base, _process):
            receiver.wait_for(lambda: len(receiver.accepted()) >= 3, 120,
                              "the new service did not deliver the queue")
            listed = httpx.get(f"{base}/v1/admin/webhooks/{hook['id']}/deliveries",
                               headers=HEADERS, timeout=30).json()
            for key_id in keys:
                httpx.post(f"{base}/v1/admin/api-keys/{key_id}/revoke", headers=HEADERS,
                           timeout=30)
            httpx.delete(f"{base}/v1/admin/webhooks/{hook['id']}", headers=HEADERS, timeout=30)
    finally:
        receiver.release.set()
        receiver.server.shutdown()
        receiver.server.server_close()
    # Every event once accepted, in the order they happened, each POST signed; the event
    # retried across the crash kept its delivery id.
    assert receiver.accepted() == keys
    assert all(post["signed"] for post in receiver.posts)
    assert failed_before >= 2 and len(receiver.posts) == 3 + 4
    first = [post["delivery"] for post in receiver.posts
             if post["event"]["entity"]["id"] == keys[0]]
    assert len(set(first)) == 1 and len(first) == 5  # four failures, then the one accepted
    # (An attempt is counted before its POST: one cut off by the crash counts without a POST.)
    assert [d["state"] for d in listed] == ["delivered"] * 3
    assert [d["attempts"] for d in listed][:2] == [1, 1] and listed[2]["attempts"] >= 5
