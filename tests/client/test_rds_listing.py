"""Listing: label/state filters as query parameters, and the X-Next-Cursor paging iterator."""
from __future__ import annotations

import httpx
import pytest

from rds_client import Client, TransportError
from tests.client.fakeapi import FakeApi, vm_json


def ids(n: int, prefix: str = "vm") -> list[str]:
    return [f"{prefix}-{i}" for i in range(n)]


def page(vm_ids: list[str], cursor: str | None = None, **fields: object) -> httpx.Response:
    headers = {"X-Next-Cursor": cursor} if cursor else {}
    return httpx.Response(200, json=[vm_json(vm_id, **fields) for vm_id in vm_ids],
                          headers=headers)


def test_the_iterator_follows_the_cursor_with_the_same_filters(api: FakeApi,
                                                               client: Client) -> None:
    labels = {"ci.job": "42", "team": "x"}
    api.on("GET", "/v1/vms", page(ids(2), "c1", labels=labels),
           page(ids(2, "more"), "c2", labels=labels), page(["last"], labels=labels))
    got = [vm.id for vm in client.iter_vms(labels=labels, state="RUNNING", page_size=2)]
    assert got == ["vm-0", "vm-1", "more-0", "more-1", "last"]
    queries = [request.url.params for request in api.requests]
    assert [q.get("cursor") for q in queries] == [None, "c1", "c2"]
    for query in queries:
        assert query.get_list("label") == ["ci.job=42", "team=x"]
        assert query["state"] == "RUNNING" and query["limit"] == "2"


def test_the_iterator_is_lazy(api: FakeApi, client: Client) -> None:
    api.on("GET", "/v1/vms", page(ids(2), "c1"), page(ids(2, "more")))
    first = next(client.iter_vms())
    assert first.id == "vm-0" and len(api.requests) == 1


def test_a_plain_array_without_cursor_is_one_page(api: FakeApi, client: Client) -> None:
    api.on("GET", "/v1/vms", page(ids(3)))
    assert len(client.list_vms()) == 3
    assert len(api.requests) == 1


def test_a_repeated_cursor_stops_the_loop(api: FakeApi, client: Client) -> None:
    api.on("GET", "/v1/vms", page(ids(1), "same"))
    with pytest.raises(TransportError, match="repeated the list cursor"):
        client.list_vms()
    assert len(api.requests) == 2


def test_filters_are_checked_again_on_the_client(api: FakeApi, client: Client) -> None:
    """A server that ignores the filters (one that predates them) cannot widen the answer."""
    api.on("GET", "/v1/vms", httpx.Response(200, json=[
        vm_json("match", labels={"ci.job": "42", "x": "y"}),
        vm_json("other-job", labels={"ci.job": "43"}),
        vm_json("stopped", labels={"ci.job": "42"}, state="STOPPED"),
        vm_json("unlabelled")]))
    got = client.list_vms(labels={"ci.job": "42"}, state="RUNNING")
    assert [vm.id for vm in got] == ["match"]


def test_delete_by_label_sends_the_labels_and_answers_the_ids(api: FakeApi,
                                                              client: Client) -> None:
    api.on("DELETE", "/v1/vms", httpx.Response(200, json={"deleted": ["a", "b"]}))
    assert client.delete_by_label({"ci.job": "42"}) == ["a", "b"]
    assert api.requests[0].url.params.get_list("label") == ["ci.job=42"]


def test_delete_by_label_never_sends_an_empty_filter(api: FakeApi, client: Client) -> None:
    with pytest.raises(ValueError, match="at least one label"):
        client.delete_by_label({})
    assert api.requests == []


def test_vm_fields_are_parsed(api: FakeApi, client: Client) -> None:
    api.on("GET", "/v1/vms", httpx.Response(200, json=[vm_json(
        "a", labels={"k": "v"}, expiresAt="2025-01-01T12:10:00Z", idleStopSeconds=60,
        createdBy="key:ci")]))
    (vm,) = client.list_vms()
    assert vm.labels == {"k": "v"} and vm.idle_stop_seconds == 60 and vm.created_by == "key:ci"
    assert vm.expires_at is not None and vm.expires_at.isoformat() == "2025-01-01T12:10:00+00:00"
    assert vm.created_at is not None and vm.created_at.year == 2025
    assert vm.mem_mb == 256 and vm.guest_ip == "172.16.0.2" and vm.provision_mode == "snapshot"


def test_a_vm_of_an_older_server_reads_with_defaults(api: FakeApi, client: Client) -> None:
    old = {key: value for key, value in vm_json().items()
           if key not in ("labels", "expiresAt", "idleStopSeconds")}
    api.on("GET", "/v1/vms", httpx.Response(200, json=[old]))
    (vm,) = client.list_vms()
    assert vm.labels == {} and vm.expires_at is None and vm.idle_stop_seconds == 0
    assert vm.created_by is None
