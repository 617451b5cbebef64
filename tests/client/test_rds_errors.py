"""Every error answer becomes its exception class, carrying the server's message."""
from __future__ import annotations

import httpx
import pytest

import rds_client
from rds_client import (BadRequest, Conflict, Forbidden, NotFound, PayloadTooLarge,
                        QuotaExceeded, RdsError, ServerError, Timeout, TransportError,
                        Unauthorized, Unavailable)
from tests.client.fakeapi import VM_ID, FakeApi, error

VM_PATH = f"/v1/vms/{VM_ID}"


@pytest.mark.parametrize(("status", "cls"), [
    (400, BadRequest), (401, Unauthorized), (403, Forbidden), (404, NotFound),
    (409, Conflict), (413, PayloadTooLarge), (429, QuotaExceeded), (500, ServerError),
    (502, ServerError), (503, Unavailable), (504, Timeout), (507, ServerError),
    (418, RdsError),
])
def test_each_status_has_its_class(api: FakeApi, status: int, cls: type[RdsError]) -> None:
    api.on("POST", f"{VM_PATH}/exec",
           httpx.Response(status, json={"message": f"it went {status}"},
                          headers={"X-Request-Id": "req-1"}))
    with api.client(retries=0) as client, pytest.raises(RdsError) as caught:
        client.exec(VM_ID, "true")
    assert type(caught.value) is cls
    assert caught.value.status == status
    assert caught.value.message == f"it went {status}"
    assert caught.value.request_id == "req-1"
    assert str(caught.value) == f"{status} it went {status}"


def test_validation_details_ride_along(api: FakeApi, client: rds_client.Client) -> None:
    api.on("POST", "/v1/vms", httpx.Response(400, json={
        "message": "Invalid request", "errors": {"json": {"cpu": ["Must be at least 1."]}}}))
    with pytest.raises(BadRequest) as caught:
        client.create_vm(cpu=0)
    assert caught.value.body["errors"]["json"]["cpu"] == ["Must be at least 1."]


def test_quota_carries_retry_after(api: FakeApi, client: rds_client.Client) -> None:
    api.on("POST", "/v1/vms", error(429, "VM quota reached (20)", **{"Retry-After": "7"}))
    with pytest.raises(QuotaExceeded) as caught:
        client.create_vm()
    assert caught.value.retry_after == 7.0
    assert caught.value.message == "VM quota reached (20)"


def test_a_body_that_is_not_json_still_gives_a_message(api: FakeApi,
                                                       client: rds_client.Client) -> None:
    api.on("POST", "/v1/vms", httpx.Response(502, text="<html>Bad Gateway</html>"))
    with pytest.raises(ServerError) as caught:
        client.create_vm()
    assert caught.value.message == "<html>Bad Gateway</html>"
    api.on("POST", "/v1/vms", httpx.Response(500))
    with pytest.raises(ServerError, match="Internal Server Error"):
        client.create_vm()


def test_a_client_side_timeout_is_a_timeout_without_status(api: FakeApi) -> None:
    api.on("POST", f"{VM_PATH}/exec", httpx.ReadTimeout("slow"))
    with api.client(retries=0) as client, pytest.raises(Timeout) as caught:
        client.exec(VM_ID, "sleep 1", timeout_ms=1000)
    assert caught.value.status is None
    assert "no answer within 31 s" in caught.value.message  # 1 s + the margin


def test_a_refused_connection_is_a_transport_error(api: FakeApi) -> None:
    api.on("GET", VM_PATH, httpx.ConnectError("connection refused"))
    with api.client(retries=0) as client, pytest.raises(TransportError,
                                                        match="connection refused"):
        client.get_vm(VM_ID)


def test_unavailable_and_stream_errors_are_server_errors() -> None:
    assert issubclass(Unavailable, ServerError)
    assert all(issubclass(cls, RdsError) for cls in (
        BadRequest, Unauthorized, NotFound, Conflict, QuotaExceeded, PayloadTooLarge,
        Unavailable, Timeout, TransportError))


def test_a_json_answer_that_is_not_json_is_a_transport_error(
        api: FakeApi, client: rds_client.Client) -> None:
    api.on("GET", VM_PATH, httpx.Response(200, text="not json"))
    with pytest.raises(TransportError, match="not JSON"):
        client.get_vm(VM_ID)
