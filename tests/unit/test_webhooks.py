"""Webhooks on the real services over fakes, with a fake clock and a fake sender: the CRUD
routes, the SSRF guard, deliveries enqueued with their event, signatures, order and one in
flight per webhook, the backoff schedule, recovery after a crash, redeliver, and bad input."""
from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import threading
import typing as t

import pytest

from app.config import ConfigError, load_settings
from app.services import webhook_urls
from app.services.webhook_delivery import DeliveryWorker, HttpSender, SendFailed, signature

BODY = {"name": "ci", "url": "http://127.0.0.1:9/hook"}


class FakeSender:
    """Answers with the scripted statuses (then 200); records every POST."""

    def __init__(self, *answers: int | Exception) -> None:
        self.answers = list(answers)
        self.by_port: dict[int, list[int]] = {}  # scripted answers for one receiver
        self.sent: list[tuple[webhook_urls.Target, bytes, dict[str, str]]] = []

    def __call__(self, target, body, headers, timeout):
        self.sent.append((target, body, dict(headers)))
        scripted = self.by_port.get(target.port) or self.answers
        answer = scripted.pop(0) if scripted else 200
        if isinstance(answer, Exception):
            raise answer
        return answer

    def events(self) -> list[str]:
        return [json.loads(body)["entity"]["id"] for _target, body, _headers in self.sent]


@pytest.fixture
def sender() -> FakeSender:
    return FakeSender()


@pytest.fixture
def worker(services, clock, sender) -> DeliveryWorker:
    """Sends inside run_once; jitter 1.0: each wait is the whole backoff step."""
    return DeliveryWorker(services.settings, services.webhooks.store, sender=sender,
                          clock=clock, jitter=lambda: 1.0, parallel=False)


def create(client, auth, **body: t.Any) -> dict:
    response = client.post("/v1/admin/webhooks", json={**BODY, **body}, headers=auth)
    assert response.status_code == 201, response.text
    return response.get_json()


def emit(services, entity: str, type_: str = "vm.created") -> None:
    assert services.events.emit(type_, "vm", entity, {"n": entity}, by="system")


def deliveries(client, auth, webhook: dict, query: str = "") -> list[dict]:
    response = client.get(f"/v1/admin/webhooks/{webhook['id']}/deliveries{query}",
                          headers=auth)
    assert response.status_code == 200, response.text
    return response.get_json()


# CRUD ######################################################################################

def test_create_shows_the_secret_once(client, auth):
    hook = create(client, auth, eventTypes=["vm.deleted", "vm.created", "vm.created"])
    assert hook["secret"].startswith("whsec_") and len(hook["secret"]) > 40
    assert hook["eventTypes"] == ["vm.created", "vm.deleted"] and hook["enabled"] is True
    assert hook["createdBy"] == "api-key"
    listed, = client.get("/v1/admin/webhooks", headers=auth).get_json()
    fetched = client.get(f"/v1/admin/webhooks/{hook['id']}", headers=auth).get_json()
    assert "secret" not in listed and "secret" not in fetched
    assert fetched == {key: value for key, value in hook.items() if key != "secret"}


def test_update_and_delete(client, auth, services):
    hook = create(client, auth)
    path = f"/v1/admin/webhooks/{hook['id']}"
    changed = client.patch(path, json={"name": "renamed", "enabled": False, "eventTypes": []},
                           headers=auth)
    assert changed.status_code == 200, changed.text
    assert changed.get_json()["name"] == "renamed" and changed.get_json()["enabled"] is False
    emit(services, "a")  # disabled: nothing is queued
    assert deliveries(client, auth, hook) == []
    assert client.delete(path, headers=auth).status_code == 204
    for method in (client.get, client.delete):
        assert method(path, headers=auth).status_code == 404
    assert client.patch(path, json={"name": "x"}, headers=auth).status_code == 404
    assert client.get(path + "/deliveries", headers=auth).status_code == 404


def test_too_many_webhooks_is_429(client, auth, monkeypatch):
    monkeypatch.setattr("app.services.webhooks.MAX_WEBHOOKS", 2)
    create(client, auth)
    create(client, auth)
    assert client.post("/v1/admin/webhooks", json=BODY, headers=auth).status_code == 429


# The SSRF guard ############################################################################

@pytest.mark.parametrize("url", [
    "http://172.16.0.5/hook",  # a guest
    "http://172.16.0.1:3000/",  # the host's address on the guests' bridge
    "http://169.254.169.254/latest/meta-data",  # a metadata service
    "http://[fe80::1]/", "http://[::ffff:169.254.169.254]/", "http://[::ffff:172.16.0.9]/",
    "http://0.0.0.0/", "http://[::]/", "http://224.0.0.1/",
    "ftp://example.com/", "file:///etc/passwd", "gopher://127.0.0.1/", "javascript:alert(1)",
    "http://user:pw@127.0.0.1/", "http:///path", "http://127.0.0.1:99999/",
    "http://127.0.0.1/a b", "http://127.0.0.1/#frag", "127.0.0.1/hook",
    "http://guest.example/",  # resolves into the guests' network (fake resolver)
    "http://mixed.example/",  # one of its addresses is link-local
    "http://nowhere.example/",  # does not resolve
])
def test_urls_webhooks_may_not_go_to_are_refused(client, auth, services, url):
    hook = create(client, auth)
    services.webhooks.resolver = fake_resolver
    response = client.post("/v1/admin/webhooks", json={**BODY, "url": url}, headers=auth)
    assert response.status_code == 400, response.text
    assert "url" in response.get_json()["message"] or "resolve" in response.get_json()[
        "message"]
    patched = client.patch(f"/v1/admin/webhooks/{hook['id']}", json={"url": url},
                           headers=auth)
    assert patched.status_code == 400, patched.text


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080/hook", "https://[::1]/x?y=1",
                                 "http://localhost.example/", "https://10.1.2.3/"])
def test_loopback_and_other_host_addresses_are_allowed(client, auth, services, url):
    services.webhooks.resolver = fake_resolver
    create(client, auth, url=url)


def fake_resolver(host: str, port: int, timeout: float) -> list[str]:
    known = {"guest.example": ["172.16.0.7"], "mixed.example": ["8.8.8.8", "169.254.1.1"],
             "localhost.example": ["127.0.0.1", "::1"], "receiver.example": ["127.0.0.1"]}
    if host not in known:
        raise webhook_urls.InvalidRequest(f"the webhook's host {host!r} does not resolve")
    return known[host]


def test_the_address_is_checked_again_at_send_time(client, auth, services, worker, sender):
    answers = {"receiver.example": ["127.0.0.1"]}
    services.webhooks.resolver = worker.resolver = lambda host, port, timeout: answers[host]
    hook = create(client, auth, url="http://receiver.example:8000/in")
    answers["receiver.example"] = ["172.16.0.3"]  # DNS rebinding to a guest
    emit(services, "a")
    worker.run_once()
    assert sender.sent == []
    delivery, = deliveries(client, auth, hook)
    assert delivery["state"] == "pending" and delivery["attempts"] == 1
    assert delivery["lastError"].startswith("refused:") and "172.16.0.3" in delivery[
        "lastError"]
    assert delivery["lastStatusCode"] is None


def test_the_send_connects_to_the_checked_address_with_the_urls_host():
    target = webhook_urls.check("https://receiver.example:8443/in?x=1",
                                webhook_urls.ipaddress.ip_network("172.16.0.0/24"),
                                lambda host, port, timeout: ["::1"])
    assert target.pinned_url() == "https://[::1]:8443/in?x=1"
    assert target.host_header == "receiver.example:8443"


# The queue and the worker ##################################################################

def test_a_delivery_is_signed_and_carries_the_event(client, auth, services, worker, sender,
                                                     clock):
    hook = create(client, auth)
    emit(services, "vm-1")
    assert worker.run_once() == 1
    target, body, headers = sender.sent[0]
    assert (target.address, target.port, target.path) == ("127.0.0.1", 9, "/hook")
    event = json.loads(body)
    assert event["type"] == "vm.created" and event["entity"] == {"type": "vm", "id": "vm-1"}
    assert event == services.events.recent(1)[0].to_json()
    assert headers["Content-Type"] == "application/json"
    assert headers["X-RDS-Event"] == "vm.created"
    stamp, mac = headers["X-RDS-Signature"].split(",")
    assert stamp == f"t={int(clock())}"
    expected = hmac.new(hook["secret"].encode(), f"{int(clock())}.".encode() + body,
                        hashlib.sha256).hexdigest()
    assert mac == f"v1={expected}"
    delivery, = deliveries(client, auth, hook)
    assert headers["X-RDS-Delivery"] == delivery["id"]
    assert delivery["state"] == "delivered" and delivery["lastStatusCode"] == 200
    assert delivery["nextAttemptAt"] is None and delivery["finishedAt"]
    assert worker.run_once() == 0


def test_only_wanted_types_of_enabled_webhooks_are_queued(client, auth, services):
    deleted_only = create(client, auth, eventTypes=["vm.deleted"])
    everything = create(client, auth)
    create(client, auth, enabled=False)
    emit(services, "a", "vm.created")
    emit(services, "a", "vm.deleted")
    assert [d["eventType"] for d in deliveries(client, auth, deleted_only)] == ["vm.deleted"]
    assert [d["eventType"] for d in deliveries(client, auth, everything)] == [
        "vm.deleted", "vm.created"]


def test_order_is_kept_and_one_is_in_flight_per_webhook(client, auth, services, worker,
                                                        sender, clock):
    slow = create(client, auth, url="http://127.0.0.1:1/slow")
    create(client, auth, url="http://127.0.0.1:2/fast")
    sender.by_port[1] = [500]  # slow's first POST fails
    for name in "abc":
        emit(services, name)
    jobs = worker.claim(10)
    assert sorted(job.webhook_id for job in jobs) == sorted({job.webhook_id for job in jobs})
    assert len(jobs) == 2  # one head per webhook
    for job in jobs:
        worker.deliver(job)
    while worker.run_once():  # the fast one drains; the slow one waits for its retry
        pass
    assert by_port_of(sender) == {1: ["a"], 2: ["a", "b", "c"]}
    clock.advance(10)
    while worker.run_once():
        pass
    assert by_port_of(sender)[1] == ["a", "a", "b", "c"]
    assert [d["state"] for d in deliveries(client, auth, slow)] == ["delivered"] * 3


def by_port_of(sender: FakeSender) -> dict[int, list[str]]:
    found: dict[int, list[str]] = {}
    for target, body, _headers in sender.sent:
        found.setdefault(target.port, []).append(json.loads(body)["entity"]["id"])
    return found


def test_backoff_doubles_to_its_cap_for_an_hour_then_fails(client, auth, services, worker,
                                                           sender, clock):
    hook = create(client, auth)
    emit(services, "a")
    emit(services, "b")
    sender.answers = [503] * 1000
    waits, started = [], clock()
    while True:
        assert worker.run_once() == 1
        delivery = deliveries(client, auth, hook)[-1]
        if delivery["state"] == "failed":
            break
        wait = clock_of(delivery["nextAttemptAt"]) - clock()
        waits.append(round(wait))
        clock.advance(wait - 1)
        assert worker.run_once() == 0  # not before it is due
        clock.advance(1)
    assert waits[:8] == [10, 20, 40, 80, 160, 320, 640, 900]
    assert set(waits[8:]) == {900}
    assert clock() - started >= 3600
    assert delivery["attempts"] == len(waits) + 1 and delivery["lastError"] == "HTTP 503"
    assert events_sent(sender) == {"a"}
    sender.answers = []
    assert worker.run_once() == 1  # the next one goes once the head failed
    assert deliveries(client, auth, hook)[0]["state"] == "delivered"


def events_sent(sender: FakeSender) -> set[str]:
    return set(sender.events())


def clock_of(iso: str) -> float:
    import datetime as dt
    return dt.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def test_jitter_waits_between_half_and_all_of_the_step(services, clock):
    for jitter, expected in ((0.0, 5.0), (0.5, 7.5), (0.999, 9.995)):
        worker = DeliveryWorker(services.settings, services.webhooks.store, FakeSender(),
                                clock, jitter=lambda value=jitter: value, parallel=False)
        assert worker.backoff(1) == pytest.approx(expected)


def test_connection_errors_and_redirects_are_failed_attempts(client, auth, services, worker,
                                                             sender, clock):
    hook = create(client, auth)
    sender.answers = [SendFailed("ConnectError: refused"), 302]
    emit(services, "a")
    worker.run_once()
    assert deliveries(client, auth, hook)[0]["lastError"] == "ConnectError: refused"
    clock.advance(10)
    worker.run_once()
    delivery = deliveries(client, auth, hook)[0]
    assert (delivery["lastStatusCode"], delivery["lastError"]) == (302, "HTTP 302")


def test_a_delivery_claimed_by_a_dead_worker_is_sent_again(client, auth, services, worker,
                                                           sender, clock):
    hook = create(client, auth)
    emit(services, "a")
    emit(services, "b")
    dead = DeliveryWorker(services.settings, services.webhooks.store, FakeSender(), clock,
                          parallel=False)
    assert len(dead.claim(5)) == 1  # then its process died mid-send
    assert deliveries(client, auth, hook)[-1]["state"] == "delivering"
    worker.run_once()  # a new owner puts it back and sends it, then the next
    while worker.run_once():
        pass
    assert sender.events() == ["a", "b"]
    first = deliveries(client, auth, hook)[-1]
    assert first["state"] == "delivered" and first["attempts"] == 2


def test_an_expired_claim_is_retried_without_a_new_owner(client, auth, services, worker,
                                                         sender, clock):
    create(client, auth)
    emit(services, "a")
    worker.recover()
    worker._recovered = True
    other = DeliveryWorker(services.settings, services.webhooks.store, FakeSender(), clock,
                           parallel=False)
    other.claim(5)
    assert worker.run_once() == 0  # claimed and not expired
    clock.advance(services.settings.webhook_timeout_s + 60)
    assert worker.run_once() == 1 and sender.events() == ["a"]


def test_the_pool_sends_in_the_background(client, auth, services, clock):
    sent = threading.Event()

    def send(target, body, headers, timeout):
        sent.set()
        return 204

    create(client, auth)
    emit(services, "a")
    pooled = DeliveryWorker(services.settings, services.webhooks.store, send, clock)
    try:
        assert pooled.run_once() == 1
        assert sent.wait(10)
    finally:
        pooled.close()


# Redeliver #################################################################################

def test_redeliver(client, auth, services, worker, sender, clock):
    hook = create(client, auth)
    emit(services, "a")
    emit(services, "b")
    path = f"/v1/admin/webhooks/{hook['id']}/deliveries"
    sender.answers = [500]
    worker.run_once()
    first = deliveries(client, auth, hook)[-1]
    # Waiting for its retry: tried now, in its place.
    again = client.post(f"{path}/{first['id']}/redeliver", headers=auth)
    assert again.status_code == 200, again.text
    assert again.get_json()["nextAttemptAt"] == again.get_json()["createdAt"]
    while worker.run_once():
        pass
    assert sender.events() == ["a", "a", "b"]
    # Delivered: sent again, after the rest of the queue, with its attempts reset.
    redone = client.post(f"{path}/{first['id']}/redeliver", headers=auth).get_json()
    assert redone["state"] == "pending" and redone["attempts"] == 0
    assert [d["eventId"] for d in deliveries(client, auth, hook)][0] == first["eventId"]
    worker.run_once()
    assert sender.events() == ["a", "a", "b", "a"]
    assert sender.sent[-1][2]["X-RDS-Delivery"] == first["id"]
    # Being sent: 409; unknown: 404.
    emit(services, "c")
    worker.claim(5)
    current = deliveries(client, auth, hook, "?state=delivering")[0]
    assert client.post(f"{path}/{current['id']}/redeliver", headers=auth).status_code == 409
    assert client.post(f"{path}/nope/redeliver", headers=auth).status_code == 404
    assert client.post(f"/v1/admin/webhooks/nope/deliveries/{first['id']}/redeliver",
                       headers=auth).status_code == 404


def test_deliveries_filter_and_limit(client, auth, services, worker, sender):
    hook = create(client, auth)
    for name in "abc":
        emit(services, name)
    worker.run_once()
    assert len(deliveries(client, auth, hook, "?limit=2")) == 2
    assert len(deliveries(client, auth, hook, "?state=pending")) == 2
    assert len(deliveries(client, auth, hook, "?state=pending&state=delivered")) == 3


def test_old_finished_deliveries_are_pruned(client, auth, services, worker, clock):
    hook = create(client, auth)
    emit(services, "a")
    worker.run_once()
    emit(services, "b")
    clock.advance(services.settings.events_max_age_s + 1)
    assert services.webhooks.prune() == 1
    assert [d["state"] for d in deliveries(client, auth, hook)] == ["pending"]


def test_deleting_a_webhook_drops_its_queue(client, auth, services, worker, sender):
    hook = create(client, auth)
    emit(services, "a")
    jobs = worker.claim(5)
    client.delete(f"/v1/admin/webhooks/{hook['id']}", headers=auth)
    assert worker.deliver(jobs[0]) == "delivered"  # the send in flight ends unrecorded
    assert worker.run_once() == 0


# The real sender ###########################################################################

class _Receiver(http.server.BaseHTTPRequestHandler):
    seen: list[tuple[str, dict[str, str], bytes]] = []

    def do_POST(self):  # the name is http.server's API
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Receiver.seen.append((self.path, dict(self.headers), body))
        self.send_response(302 if self.path == "/redirect" else 204)
        self.send_header("Location", "http://127.0.0.1:1/elsewhere")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_args):
        pass


def test_the_http_sender_keeps_the_host_and_follows_no_redirect():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    sender = HttpSender()
    try:
        target = webhook_urls.check(f"http://receiver.example:{port}/in",
                                    webhook_urls.ipaddress.ip_network("172.16.0.0/24"),
                                    lambda host, port, timeout: ["127.0.0.1"])
        assert sender(target, b'{"a":1}', {"X-RDS-Event": "vm.created"}, 5) == 204
        redirect = webhook_urls.check(f"http://127.0.0.1:{port}/redirect",
                                      webhook_urls.ipaddress.ip_network("172.16.0.0/24"))
        assert sender(redirect, b"{}", {}, 5) == 302
    finally:
        sender.close()
        server.shutdown()
        server.server_close()
    (path, headers, body), (second, _h, _b) = _Receiver.seen[-2:]
    assert (path, body, headers["Host"]) == ("/in", b'{"a":1}', f"receiver.example:{port}")
    assert second == "/redirect"
    with pytest.raises(SendFailed):
        HttpSender()(target, b"{}", {}, 2)  # the server is gone


def test_signature_helper_matches_the_documented_formula():
    assert signature("whsec_x", 1700000000, '{"a":1}') == "t=1700000000,v1=" + hmac.new(
        b"whsec_x", b'1700000000.{"a":1}', hashlib.sha256).hexdigest()


# Settings ##################################################################################

@pytest.mark.parametrize("env", [{"WEBHOOK_RETRY_MAX_S": "5"}, {"WEBHOOK_TIMEOUT_S": "0"},
                                 {"WEBHOOK_RETRY_FOR_S": "nan"}, {"WEBHOOK_PARALLEL": "0"},
                                 {"WEBHOOK_RETRY_BASE_S": "inf"}])
def test_bad_webhook_settings_stop_the_start(env):
    with pytest.raises(ConfigError, match="WEBHOOK_"):
        load_settings(environ=env)


# Bad input #################################################################################

SURROGATE = "\ud800"
BAD_BODIES = [
    {"name": 5}, {"url": ["http://127.0.0.1/"]}, {"eventTypes": "vm.created"},
    {"eventTypes": ["vm.nope"]}, {"eventTypes": [5]}, {"eventTypes": ["vm.created"] * 1000},
    {"enabled": "yes"}, {"enabled": 1}, {"enabled": None}, {"name": ""},
    {"name": "x" * 100_000}, {"url": "http://127.0.0.1/" + "a" * 5000},
    {"name": "a\0b"}, {"url": "http://127.0.0.1/\0"}, {"unknown": 1}, {"secret": "mine"},
    {"id": "mine"},
]


@pytest.mark.parametrize("bad", BAD_BODIES)
def test_bad_bodies_are_400(client, auth, bad):
    hook = create(client, auth)
    response = client.post("/v1/admin/webhooks", json={**BODY, **bad}, headers=auth)
    assert response.status_code == 400, response.text
    assert response.get_json()["message"]
    patched = client.patch(f"/v1/admin/webhooks/{hook['id']}", json=bad, headers=auth)
    assert patched.status_code == 400, patched.text


@pytest.mark.parametrize("raw", [
    '{"name": "\\ud800", "url": "http://127.0.0.1/"}',
    '{"name": "ci", "url": "http://127.0.0.1/\\udfff"}',
    '[' * 10_000 + ']' * 10_000, '{"name": 1e999999}', "not json", "[]", '"text"', "{}",
    '{"name": "ci", "url": "http://127.0.0.1/", "enabled": NaN}',
    '{"name": "ci", "url": "http://127.0.0.1/", "n": ' + "9" * 5000 + "}",
])
def test_hostile_json_is_400(client, auth, raw):
    hook = create(client, auth)
    for method, path in (("POST", "/v1/admin/webhooks"),
                         ("PATCH", f"/v1/admin/webhooks/{hook['id']}")):
        response = client.open(path, method=method, data=raw, content_type="application/json",
                               headers=auth)
        assert response.status_code == 400, (method, raw[:40], response.text)


@pytest.mark.parametrize("query", ["?limit=0", "?limit=501", "?limit=abc", "?limit=" + "9" * 40,
                                   "?state=bogus", "?limit=1.5"])
def test_bad_delivery_queries_are_400(client, auth, query):
    hook = create(client, auth)
    response = client.get(f"/v1/admin/webhooks/{hook['id']}/deliveries{query}", headers=auth)
    assert response.status_code == 400, response.text


@pytest.mark.parametrize("ident", ["%00", "%ED%A0%80", "x" * 5000, "%F0%9F%92%A9", "..%2F.."])
def test_hostile_ids_are_404(client, auth, ident):
    for method, path in (
            ("GET", f"/v1/admin/webhooks/{ident}"), ("DELETE", f"/v1/admin/webhooks/{ident}"),
            ("PATCH", f"/v1/admin/webhooks/{ident}"),
            ("GET", f"/v1/admin/webhooks/{ident}/deliveries"),
            ("POST", f"/v1/admin/webhooks/{ident}/deliveries/{ident}/redeliver")):
        response = client.open(path, method=method, json={"name": "x"}, headers=auth)
        assert response.status_code in (404, 405), (method, path[:60], response.text)
        assert response.status_code != 500


def test_webhooks_need_credentials(client):
    assert client.get("/v1/admin/webhooks").status_code == 401
    assert client.post("/v1/admin/webhooks", json=BODY).status_code == 401
