"""Retries: GET and DELETE only (plus any call whose connection never opened), bounded, with
backoff that honours Retry-After."""
from __future__ import annotations

import httpx
import pytest

from rds_client import (Conflict, NotFound, QuotaExceeded, ServerError, Timeout,
                        TransportError, Unavailable)
from tests.client.fakeapi import VM_ID, FakeApi, error, result_json, vm_json

VM_PATH = f"/v1/vms/{VM_ID}"


@pytest.mark.parametrize("failure", [
    error(503, "libvirt is down"), error(502, "bad gateway"),
    error(429, "long-call slots full", **{"Retry-After": "1"}),
    httpx.ConnectError("refused"), httpx.ReadTimeout("slow"),
    httpx.RemoteProtocolError("server disconnected"),
], ids=["503", "502", "429", "connect", "read-timeout", "disconnect"])
def test_get_is_retried_until_it_succeeds(api: FakeApi, failure: object) -> None:
    api.on("GET", VM_PATH, failure, failure, httpx.Response(200, json=vm_json()))
    with api.client(retries=3) as client:
        assert client.get_vm(VM_ID).id == VM_ID
    assert len(api.sent("GET", VM_PATH)) == 3
    assert len(api.sleeps) == 2


def test_retries_are_bounded(api: FakeApi) -> None:
    api.on("GET", VM_PATH, error(503, "still down"))
    with api.client(retries=2) as client, pytest.raises(Unavailable, match="still down"):
        client.get_vm(VM_ID)
    assert len(api.sent("GET", VM_PATH)) == 3  # the first attempt and two retries


def test_backoff_grows_and_is_capped(api: FakeApi) -> None:
    api.on("GET", VM_PATH, error(503, "down"))
    with api.client(retries=6, backoff=1.0, max_backoff=4.0) as client, \
            pytest.raises(Unavailable):
        client.get_vm(VM_ID)
    # Jitter keeps each delay within [half, all] of 1, 2, 4, 4, 4, 4 seconds.
    for delay, full in zip(api.sleeps, [1, 2, 4, 4, 4, 4], strict=True):
        assert full / 2 <= delay <= full


def test_retry_after_is_honoured(api: FakeApi) -> None:
    api.on("DELETE", VM_PATH, error(429, "busy", **{"Retry-After": "5"}),
           httpx.Response(204))
    with api.client(backoff=0.1) as client:
        assert client.delete_vm(VM_ID) is True
    assert api.sleeps == [5.0]


def test_delete_is_retried_on_a_dropped_connection(api: FakeApi) -> None:
    api.on("DELETE", VM_PATH, httpx.ReadError("reset"), httpx.Response(204))
    with api.client() as client:
        client.delete_vm(VM_ID)
    assert len(api.sent("DELETE", VM_PATH)) == 2


@pytest.mark.parametrize("failure", [
    error(503, "no capacity"), error(429, "slots full", **{"Retry-After": "1"}),
    error(502, "bad gateway"),
    httpx.ReadTimeout("slow"), httpx.RemoteProtocolError("server disconnected"),
    httpx.ReadError("reset"),
], ids=["503", "429", "502", "read-timeout", "disconnect", "read-error"])
def test_a_sent_post_is_never_repeated(api: FakeApi, failure: object) -> None:
    api.on("POST", "/v1/vms", failure, httpx.Response(201, json=vm_json()))
    with api.client(retries=3) as client, \
            pytest.raises((ServerError, QuotaExceeded, Timeout, TransportError)):
        client.create_vm()
    assert len(api.sent("POST", "/v1/vms")) == 1
    assert api.sleeps == []


@pytest.mark.parametrize("failure", [httpx.ConnectError("refused"),
                                     httpx.ConnectTimeout("no SYN-ACK"),
                                     httpx.PoolTimeout("pool busy")])
def test_a_post_that_never_left_is_retried(api: FakeApi, failure: Exception) -> None:
    api.on("POST", f"{VM_PATH}/exec", failure, httpx.Response(200, json=result_json()))
    with api.client() as client:
        assert client.exec(VM_ID, "true").ok
    assert len(api.sent("POST", f"{VM_PATH}/exec")) == 2


@pytest.mark.parametrize("status, cls", [(404, NotFound), (409, Conflict)])
def test_answers_that_will_not_change_are_not_retried(api: FakeApi, status: int,
                                                      cls: type[Exception]) -> None:
    api.on("DELETE", VM_PATH, error(status, "no"))
    with api.client() as client, pytest.raises(cls):
        client.delete_vm(VM_ID)
    assert len(api.sent("DELETE", VM_PATH)) == 1


def test_a_bad_url_is_not_retried(api: FakeApi) -> None:
    api.on("GET", VM_PATH, httpx.UnsupportedProtocol("no scheme"))
    with api.client() as client, pytest.raises(TransportError, match="no scheme"):
        client.get_vm(VM_ID)
    assert len(api.requests) == 1 and api.sleeps == []


def test_retries_zero_means_one_attempt(api: FakeApi) -> None:
    api.on("GET", VM_PATH, httpx.ConnectError("refused"))
    with api.client(retries=0) as client, pytest.raises(TransportError):
        client.get_vm(VM_ID)
    assert len(api.requests) == 1


def test_every_attempt_carries_the_same_request_id(api: FakeApi) -> None:
    api.on("GET", VM_PATH, error(503, "down"), httpx.Response(200, json=vm_json()))
    with api.client() as client:
        client.get_vm(VM_ID)
    ids = {request.headers["X-Request-Id"] for request in api.requests}
    assert len(ids) == 1 and ids.pop().startswith("rds-")


def test_an_upload_is_rebuilt_for_a_retry_after_a_refused_connection(api: FakeApi,
                                                                       tmp_path) -> None:
    (tmp_path / "a.txt").write_text("hello")
    api.on("POST", f"{VM_PATH}/files/upload", httpx.ConnectError("refused"),
           httpx.Response(204))
    with api.client() as client:
        client.upload(VM_ID, tmp_path / "a.txt", "/workspace")
    first, second = api.sent("POST", f"{VM_PATH}/files/upload")
    assert second.content and second.content[:2] == b"\x1f\x8b"  # a whole gzip, not a rest
