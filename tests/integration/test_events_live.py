"""Events with a real VM through a live gunicorn (as `make run` starts it): the SSE stream
carries what happens as it happens, a client that reconnects with Last-Event-ID gets what it
missed, and the activity feed lists the same events."""
from __future__ import annotations

import json
import queue
import threading
import time

import httpx
import pytest

from tests.integration.conftest import SEED_BODY


OPEN: list[httpx.Response] = []  # the streams listening


@pytest.fixture(autouse=True)
def close_streams():
    """A stream left open would keep a server worker streaming after its test."""
    yield
    for response in OPEN:
        response.close()
    OPEN.clear()


def _listen(base: str, key: str, into: queue.Queue, stop: threading.Event,
            last_event_id: str | None = None) -> None:
    headers = {"X-API-Key": key, "Accept": "text/event-stream"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    with httpx.stream("GET", f"{base}/v1/admin/events", headers=headers,
                      timeout=httpx.Timeout(60, read=30)) as response:
        OPEN.append(response)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        fields: dict[str, str] = {}
        try:
            for line in response.iter_lines():
                if stop.is_set():
                    return
                if not line:
                    if "data" in fields:
                        into.put((int(fields["id"]), fields["event"],
                                  json.loads(fields["data"])))
                    fields = {}
                elif not line.startswith(":") and ": " in line:
                    name, value = line.split(": ", 1)
                    fields[name] = value
        except (httpx.HTTPError, httpx.StreamError, RuntimeError, OSError):
            return  # closed by close_streams


def _next(into: queue.Queue, wanted: str, timeout: float = 60) -> tuple[int, str, dict]:
    deadline = time.monotonic() + timeout
    while True:
        seq, kind, data = into.get(timeout=max(0.1, deadline - time.monotonic()))
        if kind == wanted:
            return seq, kind, data


def test_the_event_stream_follows_a_vm_and_resumes(rds_server):
    base, key = rds_server
    headers = {"X-API-Key": key}
    into: queue.Queue = queue.Queue()
    stop = threading.Event()
    listener = threading.Thread(target=_listen, args=(base, key, into, stop), daemon=True)
    listener.start()
    time.sleep(1)  # the stream starts from "now"
    created = httpx.post(f"{base}/v1/vms", json={**SEED_BODY, "labels": {"t": "events"}},
                         headers=headers, timeout=300)
    assert created.status_code == 201, created.text
    vm = created.json()
    try:
        seq, _kind, data = _next(into, "vm.created")
        assert data["entity"] == {"type": "vm", "id": vm["id"]}
        assert data["payload"]["labels"] == {"t": "events"} and data["actor"] == "api-key"
    finally:
        deleted = httpx.delete(f"{base}/v1/vms/{vm['id']}?wait=true", headers=headers,
                               timeout=120)
        assert deleted.status_code == 204
    deleted_seq, _kind, data = _next(into, "vm.deleted")
    assert deleted_seq > seq and data["entity"]["id"] == vm["id"]
    stop.set()

    # A client that was away since vm.created gets vm.deleted on reconnecting.
    again: queue.Queue = queue.Queue()
    resumed = threading.Thread(target=_listen, args=(base, key, again, threading.Event(),
                                                     str(seq)), daemon=True)
    resumed.start()
    assert _next(again, "vm.deleted")[0] == deleted_seq

    feed = httpx.get(f"{base}/v1/admin/activity?type=vm.created&type=vm.deleted&limit=10",
                     headers=headers, timeout=30).json()
    mine = [(event["seq"], event["type"]) for event in feed if event["entity"]["id"] == vm["id"]]
    assert mine == [(deleted_seq, "vm.deleted"), (seq, "vm.created")]
